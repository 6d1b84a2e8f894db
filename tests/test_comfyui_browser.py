"""The shipped workflows and the DisCa nodes in the real ComfyUI frontend (headless Chromium, selenium).

The frontend is the one the testbed's ComfyUI pins (1.35.9 for 0.8.0, 1.49.6 for 0.33.0), served by a real server
(tests/comfyui_server.py). For each shipped workflow, loaded with `app.loadGraphData` as the template browser does:
every node type is registered and the frontend reports nothing missing; every node's widgets hold the values the
workflow's JSON gives them under that frontend's rules (tests/workflow_api.py); the frontend's own
`app.graphToPrompt()` output equals `ui_to_api(workflow, object_info)`; the note's text fits the note; a screenshot
goes to $DISCA_SCREENSHOT_DIR (default: a pytest temporary folder). Fresh DisCa nodes show only the widgets of the
chosen schedule/preset, and the template browser shows each workflow's thumbnail.

Skipped without the ComfyUI testbed, or without chromium, chromedriver or selenium (README says how to install them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from comfyui_browser import BLOCKING_MESSAGES, Frontend, browser_skip_reason, store_frontend_settings
from comfyui_env import requires_comfyui
from comfyui_server import PACK_LINK, WORKFLOWS_DIR
from workflow_api import build_widgets, parse_frontend_version, restore_widgets, ui_to_api

pytestmark = [requires_comfyui, pytest.mark.comfyui,
              pytest.mark.skipif(browser_skip_reason() is not None, reason=browser_skip_reason() or "")]

SHIPPED = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
INTENDED = {  # workflow -> the DisCa settings it ships with
    "hunyuanvideo10_t2v_rmeanflow_disca": "t2v_official_10of20",
    "hunyuanvideo10_t2v_disca_ab_compare": "t2v_official_10of20",
    "hunyuanvideo15_i2v_480p_step_distilled_disca": "i2v_official_4of8",
}
NOTE_TYPE = "MarkdownNote"
# the frontend's display-only widgets, e.g. "$$canvas-image-preview", which LoadImage gets once its image is shown
INTERNAL_WIDGET_PREFIX = "$$"


@pytest.fixture(scope="module")
def frontend(comfyui_server):
    store_frontend_settings(comfyui_server)
    with Frontend(comfyui_server.url) as page:
        yield page


@pytest.fixture(scope="module")
def object_info(comfyui_server):
    return comfyui_server.get("/object_info")


@pytest.fixture(scope="module")
def rules(frontend):
    """The frontend version whose rules the converter applies: the page's own."""
    return parse_frontend_version(frontend.version)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("DISCA_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def blocking_messages(page_text: str) -> list[str]:
    return [message for message in BLOCKING_MESSAGES if message in page_text.lower()]


def test_the_page_runs_the_frontend_this_comfyui_pins(frontend, comfyui_server, rules):
    assert rules == comfyui_server.frontend_version()


def test_a_missing_node_type_is_reported(frontend):
    """The check below can fail: an unknown type is unregistered, flagged and announced by the frontend."""
    workflow = load_workflow(SHIPPED[0])
    workflow["nodes"][0]["type"] = "DisCaNoSuchNode"
    try:
        loaded = frontend.load_workflow(workflow)
        announced = frontend.wait_for_text("missing node")
    finally:
        frontend.dismiss_dialogs()
    node = loaded["nodes"][str(workflow["nodes"][0]["id"])]
    assert (node["type"], node["registered"], node["hasErrors"]) == ("DisCaNoSuchNode", False, True)
    assert announced


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_loads_and_converts_in_the_real_frontend(frontend, object_info, rules, screenshot_dir,
                                                                   name):
    workflow = load_workflow(name)
    loaded = frontend.load_workflow(workflow)
    frontend.screenshot(screenshot_dir / f"{name}_frontend_{frontend.version}.png")

    assert {node["type"] for node in loaded["nodes"].values() if not node["registered"]} == set()
    assert [node_id for node_id, node in loaded["nodes"].items() if node["hasErrors"]] == []
    assert blocking_messages(loaded["pageText"]) == []
    for node in workflow["nodes"]:
        live = [(widget_name, value) for widget_name, value, _ in loaded["nodes"][str(node["id"])]["widgets"]
                if not widget_name.startswith(INTERNAL_WIDGET_PREFIX)]
        if node["type"] == NOTE_TYPE:  # frontend-only, no server definition
            assert live == [("text", node["widgets_values"][0])]
        else:
            restored = restore_widgets(node, object_info[node["type"]], rules)
            assert live == [(widget.name, widget.value) for widget in restored], f"node {node['id']} ({node['type']})"
    disca = {node["type"]: {widget_name: value for widget_name, value, _ in node["widgets"]}
             for node in loaded["nodes"].values() if node["type"] in ("DisCaApply", "DisCaSigmas")}
    assert disca["DisCaApply"]["schedule"] == disca["DisCaSigmas"]["preset"] == INTENDED[name]

    assert frontend.graph_to_prompt()["output"] == ui_to_api(workflow, object_info, rules)
    assert blocking_messages(frontend.page_text()) == []  # again, for a dialog that came late


@pytest.mark.parametrize("name", SHIPPED)
def test_note_text_fits_the_note(frontend, name):
    workflow = load_workflow(name)
    frontend.load_workflow(workflow, settle_ms=300)
    (note,) = [node for node in workflow["nodes"] if node["type"] == NOTE_TYPE]

    fit = frontend.markdown_fit(note["id"])

    assert fit["tableWidths"] and max(fit["tableWidths"]) <= fit["width"]
    assert fit["scrollWidth"] <= fit["width"] and fit["contentHeight"] <= fit["height"]


def visible_widgets(state: list) -> list[tuple[str, object]]:
    return [(name, value) for name, value, hidden in state if not hidden]


def test_fresh_disca_apply_shows_only_the_chosen_schedules_widgets(frontend, object_info, rules):
    default, interval, step_list, back = frontend.fresh_node_widgets(
        "DisCaApply", [("schedule", "interval"), ("schedule", "step_list"), ("schedule", "t2v_official_10of20")])
    expected = [(widget.name, widget.value) for widget in build_widgets("DisCaApply", object_info["DisCaApply"], rules)]

    assert visible_widgets(default) == [(name, value) for name, value, _ in default] == expected
    assert expected[0] == ("schedule", "t2v_official_10of20")
    assert not [name for name, _ in expected if "interval" in name or "step_list" in name]
    assert visible_widgets(interval)[:2] == [("schedule", "interval"), ("schedule.interval", 4)]
    assert visible_widgets(step_list)[:2] == [("schedule", "step_list"), ("schedule.step_list", "0 1 2 5 9 13 17 19")]
    assert visible_widgets(back) == expected
    for state in (interval, step_list):
        assert visible_widgets(state)[2:] == expected[1:]


def test_fresh_disca_sigmas_shows_steps_and_shift_only_for_custom(frontend, object_info, rules):
    default, custom = frontend.fresh_node_widgets("DisCaSigmas", [("preset", "custom")])
    expected = [(widget.name, widget.value)
                for widget in build_widgets("DisCaSigmas", object_info["DisCaSigmas"], rules)]

    assert visible_widgets(default) == expected == [("preset", "t2v_official_10of20")]
    assert visible_widgets(custom) == [("preset", "custom"), ("preset.steps", 20), ("preset.shift", 5)]


def test_template_browser_shows_each_workflows_thumbnail(frontend):
    """Each card shows `<name>.jpg` (without it, 1.49.6 shows a 224-pixel-wide placeholder instead)."""
    from PIL import Image

    cards = frontend.template_cards(PACK_LINK)

    assert sorted(cards) == SHIPPED
    for name, image in cards.items():
        with Image.open(WORKFLOWS_DIR / f"{name}.jpg") as thumbnail:
            assert image is not None and image["loaded"] and image["size"] == list(thumbnail.size), (name, image)
