"""The real ComfyUI frontend in headless Chromium (selenium), for the browser tests and the workflow re-save tool.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (see README "ComfyUI integration
tests"); `browser_skip_reason()` says which is missing. `Frontend` opens a running server's page
(tests/comfyui_server.py), waits until the DisCa nodes are registered, and runs small async JavaScript snippets
against the page's own `app` and `LiteGraph` objects, the same ones the frontend's UI calls.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER_NAME = "chromedriver"
WINDOW_SIZE = (1920, 1080)
PAGE_READY_S = 120
SCRIPT_TIMEOUT_S = 120
# settings stored for the test user before the page opens: no first-start template browser over the graph,
# no minimap in screenshots
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
# text the frontends show for a graph that cannot run: 1.35.9's dialogs "This workflow has missing nodes" and
# "Missing Models", 1.49.6's overlay "Missing node: <type>" and "<n> errors found"
BLOCKING_MESSAGES = ("missing node", "missing model", "errors found", "error found")

_READY_JS = """
return Boolean(window.app && app.graph && app.canvas && window.LiteGraph
               && LiteGraph.registered_node_types[args[0]]);
"""

# The node's widgets as (name, value, hidden); hidden is the frontend's own flag (a DynamicCombo's unused
# options have no widget at all, so they are not listed).
_WIDGETS_JS_FUNCTION = """
const widgetsOf = (node) => (node.widgets || []).map(
    (widget) => [widget.name, widget.value === undefined ? null : widget.value,
                 Boolean(widget.hidden || widget.options?.hidden)]);
"""

_LOAD_JS = _WIDGETS_JS_FUNCTION + """
const [workflow, settleMs] = args;
await app.loadGraphData(workflow);
await new Promise((resolve) => setTimeout(resolve, settleMs));  // model checks and dialogs come asynchronously
const nodes = {};
for (const node of app.graph._nodes) {
  nodes[node.id] = {type: node.type, widgets: widgetsOf(node), hasErrors: Boolean(node.has_errors),
                    registered: Boolean(LiteGraph.registered_node_types[node.type])};
}
return {nodes, pageText: document.body.innerText};
"""

_GRAPH_TO_PROMPT_JS = """
const {workflow, output} = await app.graphToPrompt();
return {workflow, output};
"""

_FRESH_NODE_JS = _WIDGETS_JS_FUNCTION + """
const [nodeType, choices] = args;  // choices: [[widget name, value], ...] set one after the other
const node = LiteGraph.createNode(nodeType);
app.graph.add(node);
const states = [widgetsOf(node)];
for (const [name, value] of choices) {
  const widget = node.widgets.find((candidate) => candidate.name === name);
  widget.value = value;
  widget.callback?.(value);
  states.push(widgetsOf(node));
}
app.graph.remove(node);
return states;
"""

# Shows a node at scale 1 and measures its markdown widget: the rendered content must fit the widget.
_MARKDOWN_FIT_JS = """
const [nodeId] = args;
const node = app.graph.getNodeById(nodeId);
app.canvas.ds.scale = 1;
app.canvas.ds.offset[0] = -node.pos[0] + 80;
app.canvas.ds.offset[1] = -node.pos[1] + 80;
app.canvas.setDirty(true, true);
await new Promise((resolve) => setTimeout(resolve, 600));
const box = [...document.querySelectorAll('.comfy-markdown')].find((element) => element.clientWidth > 0);
if (!box) return null;
const top = box.getBoundingClientRect().top;
const blocks = [...box.querySelectorAll('h1, h2, h3, p, table, ul, ol, pre')];
return {width: box.clientWidth, height: box.clientHeight, scrollWidth: box.scrollWidth,
        tableWidths: [...box.querySelectorAll('table')].map((table) => table.scrollWidth),
        contentHeight: Math.max(...blocks.map((block) => block.getBoundingClientRect().bottom)) - top};
"""


# Opens the template browser (the sidebar's Templates button runs this command), picks a custom node pack's
# category and reports each card's image, once every card's image has finished loading or after 10 s.
_TEMPLATE_CARDS_JS = """
const [pack] = args;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
await app.extensionManager.command.execute('Comfy.BrowseTemplates');
const packEntry = () => [...document.querySelectorAll('*')].find(
    (element) => element.children.length === 0 && element.textContent.trim() === pack);
for (let attempt = 0; attempt < 40 && !packEntry(); attempt++) await sleep(250);
if (!packEntry()) throw new Error(`the template browser lists no category ${pack}`);
packEntry().click();
const prefix = 'template-workflow-';
let cards = [];
for (let attempt = 0; attempt < 40; attempt++) {
  await sleep(250);
  cards = [...document.querySelectorAll(`[data-testid^="${prefix}"]`)];
  const images = cards.map((card) => card.querySelector('img'));
  if (cards.length && images.every((image) => image && image.complete)) break;
}
return Object.fromEntries(cards.map((card) => {
  const image = card.querySelector('img');
  return [card.dataset.testid.slice(prefix.length),
          image && {loaded: image.complete && image.naturalWidth > 0,
                    size: [image.naturalWidth, image.naturalHeight]}];
}));
"""


def chromium_path() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def browser_skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this python (pip install selenium; see README)"
    if chromium_path() is None:
        return "no chromium on PATH (apt-get install chromium chromium-driver; see README)"
    if shutil.which(CHROMEDRIVER_NAME) is None:
        return "no chromedriver on PATH (apt-get install chromium-driver; see README)"
    return None


def store_frontend_settings(server) -> None:
    for name, value in FRONTEND_SETTINGS.items():
        status, answer = server.request(f"/settings/{name}", value)
        if status != 200:
            raise RuntimeError(f"POST /settings/{name} -> {status}: {answer}")


class Frontend:
    """One headless Chromium page on a ComfyUI server, after its frontend has registered the DisCa nodes."""

    def __init__(self, url: str, ready_node_type: str = "DisCaApply"):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = chromium_path()
        # --no-sandbox: the testbeds run as root, where Chromium's sandbox refuses to start
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER_NAME)), options=options)
        self.driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        try:
            self.driver.get(url)
            self._wait_until_ready(ready_node_type)
            self.version = self.run("return window.__COMFYUI_FRONTEND_VERSION__;")
        except BaseException:
            self.driver.quit()
            raise

    def _wait_until_ready(self, node_type: str) -> None:
        deadline = time.monotonic() + PAGE_READY_S
        while time.monotonic() < deadline:
            if self.run(_READY_JS, node_type):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the frontend did not register {node_type} within {PAGE_READY_S} s; console:\n"
                           + "\n".join(self.console_errors()))

    def close(self) -> None:
        self.driver.quit()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, body: str, *args: Any) -> Any:
        """Runs `body` as an async function of `args` in the page; returns its JSON-able result (errors raise)."""
        script = ("const done = arguments[arguments.length - 1];"
                  "const args = JSON.parse(arguments[0]);"
                  f"(async () => {{ {body} }})().then("
                  "(result) => done(JSON.stringify({result: result === undefined ? null : result})),"
                  "(error) => done(JSON.stringify({error: String(error) + '\\n' + (error.stack || '')})));")
        answer = json.loads(self.driver.execute_async_script(script, json.dumps(list(args))))
        if "error" in answer:
            raise RuntimeError(f"JavaScript error in the page: {answer['error']}")
        return answer["result"]

    def load_workflow(self, workflow: dict, settle_ms: int = 1500) -> dict:
        """`app.loadGraphData(workflow)`; returns {nodes: {id: {type, widgets, hasErrors, registered}}, pageText}."""
        return self.run(_LOAD_JS, workflow, settle_ms)

    def page_text(self) -> str:
        return self.run("return document.body.innerText;")

    def wait_for_text(self, fragment: str, timeout_s: float = 10.0) -> bool:
        """Whether the page shows `fragment` (case-insensitive) within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if fragment.lower() in self.page_text().lower():
                return True
            time.sleep(0.25)
        return False

    def graph_to_prompt(self) -> dict:
        """The frontend's own `app.graphToPrompt()`: {workflow (what Export saves), output (the API prompt)}."""
        return self.run(_GRAPH_TO_PROMPT_JS)

    def fresh_node_widgets(self, node_type: str, choices: list[tuple[str, Any]] = ()) -> list[list]:
        """The widgets of a node created as the node library creates it, then after each (widget, value) choice."""
        return self.run(_FRESH_NODE_JS, node_type, [list(choice) for choice in choices])

    def markdown_fit(self, node_id: int) -> dict | None:
        return self.run(_MARKDOWN_FIT_JS, node_id)

    def template_cards(self, pack: str) -> dict[str, dict | None]:
        """{workflow: {loaded, size} of its card's image (None without one)} in the template browser's category of a
        custom node pack; the browser is closed again."""
        try:
            return self.run(_TEMPLATE_CARDS_JS, pack)
        finally:
            self.dismiss_dialogs()

    def dismiss_dialogs(self) -> None:
        """Closes the open dialogs (1.35.9 keeps its missing-nodes dialog over every graph loaded after)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        for _ in range(2):  # a dialog may open another behind it
            ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()
            time.sleep(0.3)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"could not write the screenshot {path}")

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
