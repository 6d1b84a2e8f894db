"""Re-save the shipped workflows (workflows/*.json) through the real ComfyUI frontend, and write their thumbnails.

    COMFYUI_PATH=/path/to/ComfyUI $COMFYUI_PYTHON tests/resave_workflows.py

Run it on the ComfyUI 0.33.0 testbed (frontend 1.49.6): its saves load with every widget as intended in 1.35.9
too, while a 1.35.9 save reloads its own PreviewAny with `previewMode` null (workflow_api.py, step 2). Each workflow
is loaded, its DisCa nodes are set to the settings below (every other node keeps its shipped values), then:
- node sizes: the DisCa nodes keep their width and take the height their widgets need (a DynamicCombo shows only
  its option's widgets); every other node keeps its shipped size unless the frontend needs more (CreateVideo's
  new bit_depth widget); a node that grew pushes the ones below it down, and their group grows with them;
- the note is NOTE_WIDTH wide (its file table fits, tests/test_comfyui_browser.py measures it), as tall as its
  text, left of the graph;
- the saved view shows the whole graph in a 1920x1080 window;
- the JSON is what the frontend's Export writes (`graphToPrompt().workflow` plus the view), indented the same way;
- `<name>.jpg`, the card image ComfyUI's template browser requests for a custom-node template
  (`/api/workflow_templates/<pack>/<name>.jpg`), is a screenshot of the graph's groups (where the DisCa nodes
  are), THUMBNAIL_WIDTH pixels wide.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS_DIR.parent), str(TESTS_DIR)]

from comfyui_browser import Frontend, store_frontend_settings  # noqa: E402
from comfyui_server import WORKFLOWS_DIR, Server  # noqa: E402

SETTINGS = {  # workflow -> node type -> widget -> value
    "hunyuanvideo10_t2v_rmeanflow_disca": {
        "DisCaApply": {"schedule": "t2v_official_10of20", "mode": "predictor", "cache_device": "compute_device",
                       "predictor_device": "with_model", "predictor_dtype": "auto"},
        "DisCaSigmas": {"preset": "t2v_official_10of20"},
    },
    "hunyuanvideo10_t2v_disca_ab_compare": {
        "DisCaApply": {"schedule": "t2v_official_10of20", "mode": "predictor", "cache_device": "compute_device",
                       "predictor_device": "with_model", "predictor_dtype": "auto"},
        "DisCaSigmas": {"preset": "t2v_official_10of20"},
    },
    "hunyuanvideo15_i2v_480p_step_distilled_disca": {
        "DisCaApply": {"schedule": "i2v_official_4of8", "mode": "predictor", "cache_device": "compute_device",
                       "predictor_device": "with_model", "predictor_dtype": "auto"},
        "DisCaSigmas": {"preset": "i2v_official_4of8"},
    },
}
NOTE_WIDTH = 800  # the widest file table (the 1.5 workflow's) needs 780 px of content
NOTE_GAP = 40  # between the note and the graph's left edge
NODE_GAP = 10  # between a node and the next one down its column, as shipped
GRID = 20  # the note's height is rounded up to the canvas grid
CANVAS_MARGIN = {"left": 70, "top": 90, "right": 30, "bottom": 30}  # the frontend's side bar and top bar
THUMBNAIL_WIDTH = 640
THUMBNAIL_QUALITY = 80

_RESAVE_JS = """
const [workflow, settings, noteWidth, noteGap, nodeGap, grid, margin] = args;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const roundUp = (value) => Math.ceil(value / grid) * grid;
await app.loadGraphData(workflow);
await sleep(500);
const shippedSize = Object.fromEntries(workflow.nodes.map((node) => [node.id, node.size]));
for (const node of app.graph._nodes) {
  for (const [name, value] of Object.entries(settings[node.type] ?? {})) {
    const widget = node.widgets.find((candidate) => candidate.name === name);
    if (!widget) throw new Error(`${node.type} ${node.id} has no widget ${name}`);
    widget.value = value;
    widget.callback?.(value);
  }
}
await sleep(300);
const graphNodes = app.graph._nodes.filter((node) => node.type !== 'MarkdownNote');
const inside = (group, node) => node.pos[0] >= group.pos[0] && node.pos[0] < group.pos[0] + group.size[0]
                                && node.pos[1] >= group.pos[1] && node.pos[1] < group.pos[1] + group.size[1];
const groupNodes = app.graph._groups.map((group) => graphNodes.filter((node) => inside(group, node)));
for (const node of graphNodes) {
  const [width, height] = shippedSize[node.id];
  const needed = node.computeSize().map(Math.ceil);
  node.setSize(node.type in settings ? [width, needed[1]] : [Math.max(width, needed[0]), Math.max(height, needed[1])]);
}
// a node that grew pushes the nodes below it in its column down, and its group grows with them
const columns = {};
for (const node of graphNodes) (columns[node.pos[0]] ??= []).push(node);
for (const column of Object.values(columns)) {
  column.sort((upper, lower) => upper.pos[1] - lower.pos[1]);
  for (const [index, node] of column.entries()) {
    if (index === 0) continue;
    const above = column[index - 1];
    node.pos[1] = Math.max(node.pos[1], above.pos[1] + above.size[1] + LiteGraph.NODE_TITLE_HEIGHT + nodeGap);
  }
}
for (const [index, group] of app.graph._groups.entries()) {
  const bottom = Math.max(...groupNodes[index].map((node) => node.pos[1] + node.size[1]));
  group.size[1] = Math.max(group.size[1], bottom + nodeGap - group.pos[1]);
}
const note = app.graph._nodes.find((node) => node.type === 'MarkdownNote');
note.pos[0] = -(noteWidth + noteGap);
note.setSize([noteWidth, 2000]);
app.canvas.ds.scale = 1;
app.canvas.ds.offset[0] = -note.pos[0] + 80;
app.canvas.ds.offset[1] = -note.pos[1] + 80;
app.canvas.setDirty(true, true);
await sleep(600);
const box = [...document.querySelectorAll('.comfy-markdown')].find((element) => element.clientWidth > 0);
const blocks = [...box.querySelectorAll('h1, h2, h3, p, table, ul, ol, pre')];
const contentHeight = Math.max(...blocks.map((block) => block.getBoundingClientRect().bottom))
                      - box.getBoundingClientRect().top;
note.setSize([noteWidth, roundUp(contentHeight + (note.size[1] - box.clientHeight) + grid)]);
const boundsOf = (boxes) => {
  let [left, top, right, bottom] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y, w, h] of boxes) {
    left = Math.min(left, x); top = Math.min(top, y); right = Math.max(right, x + w); bottom = Math.max(bottom, y + h);
  }
  return [left, top, right, bottom];
};
const fitView = async ([left, top, right, bottom]) => {  // centres the box in the canvas area left free by the UI
  const view = {x: margin.left, y: margin.top, width: window.innerWidth - margin.left - margin.right,
                height: window.innerHeight - margin.top - margin.bottom};
  const scale = Math.min(view.width / (right - left), view.height / (bottom - top));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset[0] = view.x / scale - left + (view.width / scale - (right - left)) / 2;
  app.canvas.ds.offset[1] = view.y / scale - top + (view.height / scale - (bottom - top)) / 2;
  app.canvas.setDirty(true, true);
  await sleep(800);
  return [...app.canvas.ds.convertOffsetToCanvas([left, top]), ...app.canvas.ds.convertOffsetToCanvas([right, bottom])];
};
// a node's size leaves out its title bar
const nodeBoxes = app.graph._nodes.map((node) => [node.pos[0], node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
                                                  node.size[0], node.size[1] + LiteGraph.NODE_TITLE_HEIGHT]);
const groupBoxes = app.graph._groups.map((group) => [group.pos[0], group.pos[1], group.size[0], group.size[1]]);
await fitView(boundsOf([...nodeBoxes, ...groupBoxes]));
const saved = (await app.graphToPrompt()).workflow;
saved.extra.ds = {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset]};  // what Export adds
// the thumbnail shows the groups, where the DisCa nodes are, nearly square as the template cards are
const thumbnailBox = await fitView(boundsOf(groupBoxes));
return {workflow: saved, thumbnailBox};
"""


def thumbnail(screenshot_png: bytes, box: list[float]) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(screenshot_png)).convert("RGB")
    x0, y0, x1, y1 = (round(value) for value in box)
    image = image.crop((max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height)))
    image = image.resize((THUMBNAIL_WIDTH, round(image.height * THUMBNAIL_WIDTH / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="disca_resave_") as root:
        server = Server(Path(root))
        server.prepare()
        server.start()
        try:
            store_frontend_settings(server)
            with Frontend(server.url) as frontend:
                print(f"frontend {frontend.version}")
                for name, settings in SETTINGS.items():
                    path = WORKFLOWS_DIR / f"{name}.json"
                    result = frontend.run(_RESAVE_JS, json.loads(path.read_text()), settings, NOTE_WIDTH, NOTE_GAP,
                                          NODE_GAP, GRID, CANVAS_MARGIN)
                    path.write_text(json.dumps(result["workflow"], indent=2, ensure_ascii=False) + "\n")
                    image = thumbnail(frontend.driver.get_screenshot_as_png(), result["thumbnailBox"])
                    path.with_suffix(".jpg").write_bytes(image)
                    print(f"{path.name}, {path.with_suffix('.jpg').name} ({len(image) // 1024} KiB)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
