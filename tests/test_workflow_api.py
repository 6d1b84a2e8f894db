"""The UI -> API workflow converter (tests/workflow_api.py) and the shipped workflow files, without ComfyUI (CPU, CI)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from workflow_api import WorkflowError, ui_to_api

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


@pytest.mark.parametrize("values, message", [
    (["y", 0.5, "hi", "extra"], r"node 2 \(Apply\): widgets_values .* 1 value\(s\) more than its widgets"),
    (["y"], r"node 2 \(Apply\): widgets_values \['y'\] has no value for widget 'strength'"),
])
def test_widget_count_mismatch_names_the_node(values, message):
    graph = chain()
    graph["nodes"][1]["widgets_values"] = values
    with pytest.raises(WorkflowError, match=message):
        ui_to_api(graph, DEFS)


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


@pytest.mark.parametrize("path, preset, steps, shift", [
    (WORKFLOWS_DIR / "hunyuanvideo10_t2v_rmeanflow_disca.json", "t2v_official_10of20", 20, 5.0),
    (WORKFLOWS_DIR / "hunyuanvideo10_t2v_disca_ab_compare.json", "t2v_official_10of20", 20, 5.0),
    (WORKFLOWS_DIR / "hunyuanvideo15_i2v_480p_step_distilled_disca.json", "i2v_official_4of8", 8, 7.0),
], ids=lambda v: v.stem if isinstance(v, Path) else None)
def test_shipped_workflow_uses_the_official_schedule(path, preset, steps, shift):
    from disca.schedules import PRESETS

    graph = json.loads(path.read_text())
    by_type = {}
    for n in graph["nodes"]:
        by_type.setdefault(n["type"], []).append(n["widgets_values"])
    assert by_type["DisCaApply"] == [[preset, 2, by_type["DisCaApply"][0][2], "predictor", "compute_device", "with_model"]]
    assert by_type["DisCaSigmas"] == [[preset, steps, shift]]
    assert (PRESETS[preset].steps, PRESETS[preset].shift) == (steps, shift)
    assert by_type["KSamplerSelect"] == [["euler"]]  # shared by both samplers in the A/B workflow
