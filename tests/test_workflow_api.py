"""The UI -> API workflow converter (tests/workflow_api.py) and the shipped workflow files, without ComfyUI (CPU, CI).

The rule tests with real node definitions use the object_info entries captured from the two testbeds
(tests/object_info_fixtures.py); each expected prompt is what that frontend's own graphToPrompt gave for the same
workflow in the browser (tests/test_comfyui_browser.py checks the shipped workflows the same way, live).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from object_info_fixtures import COMFYUI_VERSIONS, load_fixture
from workflow_api import (FRONTEND_1_35, FRONTEND_1_49, WorkflowError, build_widgets, parse_frontend_version,
                          restore_widgets, ui_to_api)

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
SHIPPED = sorted(WORKFLOWS_DIR.glob("*.json"))

# A small stand-in for GET /object_info: V1 list combos, V3 "COMBO" specs, optional widgets, a seed with
# control_after_generate, a legacy "seed" name, an upload combo and a forceInput string.
DEFS = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "output": ["MODEL", "STRING"], "output_name": ["MODEL", "report"]},
    "Noise": {"input": {"required": {"noise_seed": ["INT", {"default": 0, "control_after_generate": True}]}},
              "input_order": {"required": ["noise_seed"]}, "output": ["NOISE"]},
    "LegacySeed": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}, "output": ["INT"]},
    "Apply": {"input": {"required": {"model": ["MODEL", {}], "schedule": ["COMBO", {"options": ["x", "y"]}],
                                     "strength": ["FLOAT", {}]},
                        "optional": {"predictor": ["PREDICTOR", {}], "label": ["STRING", {}]}},
              "input_order": {"required": ["model", "schedule", "strength"], "optional": ["predictor", "label"]},
              "output": ["MODEL"]},
    "Sink": {"input": {"required": {"model": ["MODEL", {}], "value": ["INT", {}],
                                    "text": ["STRING", {"forceInput": True}]}},
             "input_order": {"required": ["model", "value", "text"]}, "output": []},
    "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": True}]}}, "output": ["IMAGE", "MASK"]},
}


def node(node_id, node_type, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    entry = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": 0, "mode": mode,
             "inputs": [dict(name=name, type=kind, link=link, **extra) for name, kind, link, *rest in inputs
                        for extra in [rest[0] if rest else {}]],
             "outputs": [{"name": name, "type": kind, "links": links} for name, kind, links in outputs],
             "properties": {}, "widgets_values": widgets if widgets is not None else []}
    if title:
        entry["title"] = title
    return entry


def workflow(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links], default=0),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def chain(middle_mode=0, middle_type="Apply"):
    """Loader -> Apply (mode) -> Sink, plus a Note."""
    return workflow([
        node(1, "Loader", ["b.safetensors"], outputs=[("MODEL", "MODEL", [1]), ("report", "STRING", [])]),
        node(2, middle_type, ["y", 0.5, "hi"], inputs=[("model", "MODEL", 1), ("predictor", "PREDICTOR", None)],
             outputs=[("MODEL", "MODEL", [2])], mode=middle_mode),
        node(3, "Sink", [7], inputs=[("model", "MODEL", 2), ("text", "STRING", None)]),
        node(4, "Note", ["read me"]),
    ], [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]])


def test_widgets_in_definition_order_and_links_as_source_and_slot():
    prompt = ui_to_api(chain(), DEFS)
    assert prompt == {
        "1": {"class_type": "Loader", "inputs": {"ckpt_name": "b.safetensors"}, "_meta": {"title": "Loader"}},
        "2": {"class_type": "Apply", "inputs": {"schedule": "y", "strength": 0.5, "label": "hi", "model": ["1", 0]},
              "_meta": {"title": "Apply"}},
        "3": {"class_type": "Sink", "inputs": {"value": 7, "model": ["2", 0]}, "_meta": {"title": "Sink"}},
    }


def test_output_slot_and_title_are_kept():
    graph = workflow([
        node(1, "Loader", ["a.safetensors"], outputs=[("MODEL", "MODEL", []), ("report", "STRING", [1])]),
        node(2, "Sink", [1], inputs=[("model", "MODEL", None), ("text", "STRING", 1)], title="My sink"),
    ], [[1, 1, 1, 2, 1, "STRING"]])
    assert ui_to_api(graph, DEFS)["2"] == {"class_type": "Sink", "inputs": {"value": 1, "text": ["1", 1]},
                                           "_meta": {"title": "My sink"}}


@pytest.mark.parametrize("values, expected", [([42, "randomize"], 42), ([42, "fixed"], 42), ([42], 42)])
def test_control_after_generate_value_is_skipped(values, expected):
    graph = workflow([node(1, "Noise", values, outputs=[("NOISE", "NOISE", [])])], [])
    assert ui_to_api(graph, DEFS)["1"]["inputs"] == {"noise_seed": expected}


def test_legacy_seed_name_gets_a_control_value_too():
    graph = workflow([node(1, "LegacySeed", [5, "increment", 20], outputs=[("INT", "INT", [])])], [])
    assert ui_to_api(graph, DEFS)["1"]["inputs"] == {"seed": 5, "steps": 20}


def test_upload_button_value_is_skipped():
    graph = workflow([node(1, "LoadImage", ["example.png", "image"], outputs=[("IMAGE", "IMAGE", []),
                                                                             ("MASK", "MASK", [])])], [])
    assert ui_to_api(graph, DEFS)["1"]["inputs"] == {"image": "example.png"}


def test_widget_converted_to_input_takes_the_link():
    graph = workflow([
        node(1, "LegacySeed", [3, "fixed", 9], outputs=[("INT", "INT", [1])]),
        node(2, "Loader", ["a.safetensors"], outputs=[("MODEL", "MODEL", [2]), ("report", "STRING", [])]),
        node(3, "Sink", [1], inputs=[("model", "MODEL", 2), ("text", "STRING", None),
                                     ("value", "INT", 1, {"widget": {"name": "value"}})]),
    ], [[1, 1, 0, 3, 2, "INT"], [2, 2, 0, 3, 0, "MODEL"]])
    assert ui_to_api(graph, DEFS)["3"]["inputs"] == {"value": ["1", 0], "model": ["2", 0]}


def test_bypassed_node_passes_its_matching_input_through():
    prompt = ui_to_api(chain(middle_mode=4), DEFS)
    assert set(prompt) == {"1", "3"}
    assert prompt["3"]["inputs"]["model"] == ["1", 0]


def test_bypassed_node_without_a_matching_input_leaves_the_consumer_unconnected():
    graph = chain(middle_mode=4)
    graph["nodes"][1]["outputs"][0]["type"] = graph["links"][1][5] = "OTHER"
    assert "model" not in ui_to_api(graph, DEFS)["3"]["inputs"]


def test_muted_node_is_dropped_with_its_outgoing_links():
    prompt = ui_to_api(chain(middle_mode=2), DEFS)
    assert set(prompt) == {"1", "3"}
    assert prompt["3"]["inputs"] == {"value": 7}


def test_reroutes_are_followed_and_notes_dropped():
    graph = workflow([
        node(1, "Loader", ["a.safetensors"], outputs=[("MODEL", "MODEL", [1]), ("report", "STRING", [])]),
        node(2, "Reroute", [], inputs=[("", "*", 1)], outputs=[("", "MODEL", [2])]),
        node(3, "Reroute", [], inputs=[("", "*", 2)], outputs=[("", "MODEL", [3])]),
        node(4, "Sink", [2], inputs=[("model", "MODEL", 3), ("text", "STRING", None)]),
        node(5, "MarkdownNote", ["# hi"]),
    ], [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 4, 0, "MODEL"]])
    prompt = ui_to_api(graph, DEFS)
    assert set(prompt) == {"1", "4"}
    assert prompt["4"]["inputs"]["model"] == ["1", 0]


def test_dict_form_links_are_accepted():
    graph = chain()
    graph["links"] = [dict(id=l[0], origin_id=l[1], origin_slot=l[2], target_id=l[3], target_slot=l[4], type=l[5])
                      for l in graph["links"]]
    assert ui_to_api(graph, DEFS) == ui_to_api(chain(), DEFS)


def test_values_left_over_are_ignored_and_widgets_left_over_keep_their_defaults():
    """As LiteGraph's configure does: a workflow saved by another ComfyUI version loads without an error."""
    graph = chain()
    graph["nodes"][1]["widgets_values"] = ["y", 0.5, "hi", "extra"]
    assert ui_to_api(graph, DEFS)["2"]["inputs"]["label"] == "hi"
    graph["nodes"][1]["widgets_values"] = ["y"]
    assert ui_to_api(graph, DEFS)["2"]["inputs"] == {"schedule": "y", "strength": 0, "label": "", "model": ["1", 0]}


def test_seed_control_widget_takes_the_next_value_whatever_it_is():
    """The control widget always exists after a seed; the frontend does not check that its value is a control."""
    graph = workflow([node(1, "LegacySeed", [5, 20, 30], outputs=[("INT", "INT", [])])], [])
    assert ui_to_api(graph, DEFS)["1"]["inputs"] == {"seed": 5, "steps": 30}


@pytest.mark.parametrize("frontend", [FRONTEND_1_35, FRONTEND_1_49])
def test_legacy_force_input_value_is_dropped_before_restoring(frontend):
    """A save from before forceInput inputs lost their widgets_values slot: one value per widget or forceInput input,
    so the forceInput's stale value would otherwise land in the widget after it."""
    defs = {"TextFirst": {"input": {"required": {"text": ["STRING", {"forceInput": True}], "value": ["INT", {}]}},
                          "output": []}}
    legacy = workflow([node(1, "TextFirst", ["stale text", 7], inputs=[("text", "STRING", None)])], [])
    current = workflow([node(1, "TextFirst", [7], inputs=[("text", "STRING", None)])], [])
    assert ui_to_api(legacy, defs, frontend)["1"]["inputs"] == ui_to_api(current, defs, frontend)["1"]["inputs"] == {
        "value": 7}


def test_frontend_version_is_parsed_or_refused():
    assert parse_frontend_version("1.35.9") == FRONTEND_1_35
    with pytest.raises(WorkflowError, match="frontend version 'v1.35' is not of the form 1.35.9"):
        parse_frontend_version("v1.35")


def test_unknown_node_type_and_subgraphs_are_refused():
    with pytest.raises(WorkflowError, match=r"node 2: type 'Missing' is not among the server's nodes"):
        ui_to_api(chain(middle_type="Missing"), DEFS)
    graph = chain()
    graph["definitions"] = {"subgraphs": [{"id": "s"}]}
    with pytest.raises(WorkflowError, match="subgraphs"):
        ui_to_api(graph, DEFS)


def test_dangling_link_is_refused():
    graph = chain()
    graph["links"].pop()
    with pytest.raises(WorkflowError, match="link 2 is referenced by a node but missing"):
        ui_to_api(graph, DEFS)


def test_stub_shapes_match_the_tiny_models():
    """tests/comfyui_stubs runs inside the ComfyUI server without tests/ on sys.path, so its constants are checked here."""
    import tiny_models

    constants = {}
    for statement in ast.parse((Path(__file__).resolve().parent / "comfyui_stubs" / "__init__.py").read_text()).body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            try:
                constants[statement.targets[0].id] = ast.literal_eval(statement.value)
            except ValueError:
                continue
    for name in ("TEXT_DIM", "POOLED_DIM", "VISION_DIM"):
        assert constants[name] == getattr(tiny_models, name), name


# ---- the shipped workflow files (structure only; tests/test_comfyui_workflows.py runs them in ComfyUI)


def test_the_three_workflows_are_shipped():
    assert [path.name for path in SHIPPED] == ["hunyuanvideo10_t2v_disca_ab_compare.json",
                                               "hunyuanvideo10_t2v_rmeanflow_disca.json",
                                               "hunyuanvideo15_i2v_480p_step_distilled_disca.json"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_graph_is_consistent(path):
    graph = json.loads(path.read_text())
    assert graph["version"] == 0.4
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert len(nodes) == len(graph["nodes"]) and graph["last_node_id"] == max(nodes)
    assert graph["last_link_id"] == max(link[0] for link in graph["links"])
    for link_id, from_id, from_slot, to_id, to_slot, link_type in graph["links"]:
        source, target = nodes[from_id]["outputs"][from_slot], nodes[to_id]["inputs"][to_slot]
        assert link_id in source["links"] and target["link"] == link_id
        assert source["type"] == link_type and target["type"] in (link_type, "*")
    linked = {link[0] for link in graph["links"]}
    for n in graph["nodes"]:
        assert all(i["link"] is None or i["link"] in linked for i in n.get("inputs", []))
        assert all(set(o["links"] or []) <= linked for o in n.get("outputs", []))
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
    positions = [tuple(n["pos"]) for n in graph["nodes"]]
    assert len(set(positions)) == len(positions), "nodes stacked on one another"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_names_its_model_files(path):
    graph = json.loads(path.read_text())
    notes = [n["widgets_values"][0] for n in graph["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert len(notes) == 1
    models = [m for n in graph["nodes"] for m in n["properties"].get("models", [])]
    assert {m["directory"] for m in models} >= {"diffusion_models", "disca", "text_encoders", "vae"}
    for n in graph["nodes"]:
        for model in n["properties"].get("models", []):
            assert set(model) == {"name", "url", "directory"}
            assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
            assert model["name"] in n["widgets_values"], f"{n['type']} does not load {model['name']}"
            assert model["name"] in notes[0] and f"models/{model['directory']}" in notes[0]


# ---- rules with the real node definitions of both testbeds (expected: the frontend's own graphToPrompt)

FIXTURES = {version: load_fixture(version) for version in COMFYUI_VERSIONS}
OLD, NEW = "0.8.0", "0.33.0"  # frontends 1.35.9 and 1.49.6


def convert(comfyui_version: str, node_type: str, values: list | None, links: tuple = ()) -> dict:
    """One node of `node_type` with `values` (and sockets fed by node 99), converted with that testbed's rules."""
    fixture = FIXTURES[comfyui_version]
    link_ids = [100 + index for index in range(len(links))]
    graph = workflow([node(1, node_type, values, inputs=[(name, "ANY", link) for name, link in zip(links, link_ids)]),
                      node(99, "Loader", ["a.safetensors"], outputs=[("MODEL", "MODEL", link_ids)])],
                     [[link, 99, 0, 1, index, "ANY"] for index, link in enumerate(link_ids)])
    return ui_to_api(graph, {**fixture["object_info"], "Loader": DEFS["Loader"]},
                     parse_frontend_version(fixture["frontend_version"]))["1"]["inputs"]


def test_fixtures_pair_each_comfyui_with_its_frontend():
    assert {version: FIXTURES[version]["frontend_version"] for version in COMFYUI_VERSIONS} == {
        "0.8.0": "1.35.9", "0.33.0": "1.49.6"}


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
def test_dynamic_combo_option_inputs_follow_the_combo_as_dotted_widgets(version):
    assert convert(version, "DisCaApply", ["interval", 7, "reuse_output", "cpu", "cpu_offload", "bf16"],
                   links=("model",)) == {
        "schedule": "interval", "schedule.interval": 7, "mode": "reuse_output", "cache_device": "cpu",
        "predictor_device": "cpu_offload", "predictor_dtype": "bf16", "model": ["99", 0]}
    assert convert(version, "DisCaApply", ["step_list", "0 2 4 7", "predictor", "compute_device", "with_model",
                                           "auto"])["schedule.step_list"] == "0 2 4 7"
    assert convert(version, "DisCaSigmas", ["custom", 12, 6.5]) == {"preset": "custom", "preset.steps": 12,
                                                                    "preset.shift": 6.5}


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
def test_dynamic_combo_without_option_inputs_and_unknown_options_add_no_widgets(version):
    assert convert(version, "DisCaSigmas", ["i2v_official_4of8"]) == {"preset": "i2v_official_4of8"}
    assert convert(version, "DisCaApply", ["bogus", "reuse_output", "cpu"]) == {
        "schedule": "bogus", "mode": "reuse_output", "cache_device": "cpu", "predictor_device": "with_model",
        "predictor_dtype": "auto"}


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
def test_dynamic_combo_option_inputs_missing_from_the_save_take_their_defaults(version):
    assert convert(version, "DisCaSigmas", ["custom", 12]) == {"preset": "custom", "preset.steps": 12,
                                                              "preset.shift": 5.0}


def test_nested_dynamic_combos_insert_depth_first():
    """0.33's SaveVideo: format (DynamicCombo) -> codec (DynamicCombo) -> encoding (DynamicCombo) -> crf, color_space,
    then its own hidden optional codec; 0.8.0's SaveVideo has plain combos, and the extra values are ignored."""
    values = ["x", "mp4", "h264", "re-encode", 20, "sRGB", "auto"]
    assert convert(NEW, "SaveVideo", values) == {
        "filename_prefix": "x", "format": "mp4", "format.codec": "h264", "format.codec.encoding": "re-encode",
        "format.codec.encoding.crf": 20, "format.codec.encoding.color_space": "sRGB", "codec": "auto"}
    assert convert(OLD, "SaveVideo", values) == {"filename_prefix": "x", "format": "mp4", "codec": "h264"}


def test_a_save_from_the_older_frontend_fills_new_widgets_with_defaults():
    assert convert(NEW, "SaveVideo", ["video/x", "auto", "auto"]) == {
        "filename_prefix": "video/x", "format": "auto", "format.codec": "auto", "codec": "auto"}
    assert convert(NEW, "CreateVideo", [24]) == {"fps": 24, "bit_depth": 8}  # new optional widget
    assert convert(NEW, "CreateVideo", [24, 10, "extra"]) == {"fps": 24, "bit_depth": 10}
    assert convert(OLD, "CreateVideo", [24, 10]) == {"fps": 24}


def test_preview_any_widgets_come_from_the_frontend_and_differ_between_versions():
    """1.35.9 sends its preview widgets and saves [null, null, false], then reads the first null into previewMode;
    1.49.6 neither saves nor sends them."""
    assert convert(OLD, "PreviewAny", [None, None, False]) == {"preview": "", "previewMode": None}
    assert convert(OLD, "PreviewAny", []) == {"preview": "", "previewMode": False}
    assert convert(NEW, "PreviewAny", [None, None, False]) == {}
    assert convert(NEW, "PreviewAny", []) == {}
    assert [widget.name for widget in build_widgets("PreviewAny", FIXTURES[NEW]["object_info"]["PreviewAny"],
                                                    FRONTEND_1_49)] == ["preview_text", "preview_mode"]


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
def test_advanced_inputs_are_widgets_like_any_other(version):
    tiled = FIXTURES[version]["object_info"]["VAEDecodeTiled"]["input"]["required"]
    assert tiled["tile_size"][1].get("advanced") is (True if version == NEW else None)
    assert convert(version, "VAEDecodeTiled", [256, 64, 64, 8]) == {"tile_size": 256, "overlap": 64,
                                                                    "temporal_size": 64, "temporal_overlap": 8}
    assert convert(version, "DualCLIPLoader", ["a", "b", "hunyuan_video", "cpu"])["device"] == "cpu"


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
def test_control_and_upload_widgets_are_saved_but_not_sent(version):
    assert convert(version, "RandomNoise", [42, "fixed"]) == {"noise_seed": 42}
    assert convert(version, "KSampler", [3, "increment", 20, 8.0, "euler", "simple", 1.0])["seed"] == 3
    assert convert(version, "LoadImage", ["example.png", "image"]) == {"image": "example.png"}


def test_unmodelled_inputs_are_refused_with_the_node_and_input():
    defs = {"Audio": {"input": {"required": {"audio": [["a.wav"], {"audio_upload": True}]}}, "output": ["AUDIO"]},
            "Grow": {"input": {"required": {"values": ["COMFY_AUTOGROW_V3", {}]}}, "output": ["INT"]}}
    with pytest.raises(WorkflowError, match="Audio.audio: the audio_upload widgets are not modelled"):
        ui_to_api(workflow([node(1, "Audio", ["a.wav"])], []), defs)
    with pytest.raises(WorkflowError, match="Grow.values: Autogrow inputs are not modelled"):
        ui_to_api(workflow([node(1, "Grow", [])], []), defs)


# ---- the shipped workflows, converted with each testbed's definitions and frontend rules

INTENDED = {  # workflow -> (DisCa Apply schedule, DisCa Sigmas preset)
    "hunyuanvideo10_t2v_rmeanflow_disca": "t2v_official_10of20",
    "hunyuanvideo10_t2v_disca_ab_compare": "t2v_official_10of20",
    "hunyuanvideo15_i2v_480p_step_distilled_disca": "i2v_official_4of8",
}


@pytest.mark.parametrize("version", COMFYUI_VERSIONS)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_converts_with_the_intended_disca_settings(path, version):
    from disca.schedules import PRESETS

    fixture = FIXTURES[version]
    prompt = ui_to_api(json.loads(path.read_text()), fixture["object_info"],
                       parse_frontend_version(fixture["frontend_version"]))
    by_type = {}
    for entry in prompt.values():
        widgets = {name: value for name, value in entry["inputs"].items() if not isinstance(value, list)}
        by_type.setdefault(entry["class_type"], []).append(widgets)
    preset = INTENDED[path.stem]
    assert by_type["DisCaApply"] == [{"schedule": preset, "mode": "predictor", "cache_device": "compute_device",
                                      "predictor_device": "with_model", "predictor_dtype": "auto"}]
    assert by_type["DisCaSigmas"] == [{"preset": preset}]
    assert PRESETS[preset].steps == {"t2v_official_10of20": 20, "i2v_official_4of8": 8}[preset]
    assert by_type["KSamplerSelect"] == [{"sampler_name": "euler"}]  # shared by both samplers in the A/B workflow


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_is_a_complete_save_of_the_newest_frontend(path):
    """Saved by 1.49.6 (it loads cleanly in 1.35.9 too): every widget has its value and no value is left over."""
    graph = json.loads(path.read_text())
    assert graph["extra"]["frontendVersion"] == FIXTURES[NEW]["frontend_version"]
    definitions = FIXTURES[NEW]["object_info"]
    for entry in graph["nodes"]:
        if entry["type"] in definitions:
            saved = [widget for widget in restore_widgets(entry, definitions[entry["type"]], FRONTEND_1_49)
                     if widget.saved]
            assert len(saved) == len(entry.get("widgets_values") or []), (entry["type"], entry.get("widgets_values"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_workflow_has_a_template_thumbnail(path):
    """ComfyUI's template browser shows `<name>.jpg` (mediaSubtype jpg) as a custom-node template's card."""
    from PIL import Image

    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.stat().st_size < 150 * 1024
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.width == 640 and 0.5 < image.height / image.width <= 1.0


def test_comfyui_serves_the_workflows_folder_as_the_packs_templates():
    """ComfyUI takes the first of these folders a custom node has as its template folder (app/custom_node_manager.py,
    0.8.0 and 0.33.0): any of them in the repo root would hide workflows/ from the template browser."""
    root = Path(__file__).resolve().parents[1]
    assert (root / "workflows").is_dir()
    assert [name for name in ("example_workflows", "example", "examples", "workflow") if (root / name).exists()] == []
