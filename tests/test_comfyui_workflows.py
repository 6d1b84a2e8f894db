"""The shipped workflows (workflows/*.json) run headlessly in a real ComfyUI server on the tiny models (CPU), and the
server refuses bad DisCa inputs over HTTP with the intended messages.

One server subprocess for the session (tests/comfyui_server.py: `main.py --cpu --cache-none` with this repo and the
test-only stub pack linked into a temporary custom_nodes folder, the tiny models saved under the file names the
workflows load). Each workflow is converted UI -> API (tests/workflow_api.py) with the server's /object_info,
then changed in two ways only:
- the loaders of weights that cannot exist here (text encoders, VAE, CLIP vision) become the stub loaders, with
  the same inputs; every other node runs stock, and the DisCa nodes run for real;
- the resolution/length widgets shrink to 64x64, 5 frames, so that each run takes seconds on CPU.
Sigmas, schedules, seeds and everything else stay as shipped, so the DisCa summary lines show the official counts.
The conversion follows the frontend that this ComfyUI pins (tests/test_comfyui_browser.py checks it is the same).

Run with the testbed python: see README "Tests". Skipped elsewhere, with the reason.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from comfyui_env import REPO_ROOT, requires_comfyui
from comfyui_server import PACK_LINK, STUBS_LINK
from object_info_fixtures import build_fixture, fixture_path, load_fixture, write_fixture
from tiny_model_files import WORKFLOW_HV10_DIT, WORKFLOW_HV10_PREDICTOR, WORKFLOW_HV15_DIT, WORKFLOW_HV15_PREDICTOR
from workflow_api import ui_to_api

pytestmark = [requires_comfyui, pytest.mark.comfyui]

WORKFLOWS_DIR = REPO_ROOT / "workflows"
DISCA_NODES = ("DisCaLoadDistilledModel", "DisCaLoadPredictor", "DisCaApply", "DisCaSigmas")

# stock loader -> test stand-in with the same inputs (tests/comfyui_stubs)
STUB_LOADERS = {
    "DualCLIPLoader": "DisCaTestStubDualCLIPLoader",
    "VAELoader": "DisCaTestStubVAELoader",
    "CLIPVisionLoader": "DisCaTestStubCLIPVisionLoader",
}
# the only widgets changed for CPU: 64x64 pixels, 5 frames (2 latent frames)
CPU_SIZE = {"width": 64, "height": 64, "length": 5}
SIZE_NODES = ("EmptyHunyuanLatentVideo", "HunyuanVideo15ImageToVideo")
FRAMES = 5

SUMMARY = re.compile(r"DisCa \[[^\]]+\]: \d+ full \+ \d+ predicted of \d+ steps \(\d+ \+ \d+ model calls\)")
T2V_SUMMARY = "DisCa [t2v_official_10of20, predictor]: 10 full + 10 predicted of 20 steps (10 + 10 model calls)"
I2V_SUMMARY = "DisCa [i2v_official_4of8, predictor]: 4 full + 4 predicted of 8 steps (4 + 4 model calls)"
CASES = {
    # workflow: (DisCa summary lines of one run, DiT file, output video width)
    "hunyuanvideo10_t2v_rmeanflow_disca": ([T2V_SUMMARY], WORKFLOW_HV10_DIT, 64),
    "hunyuanvideo15_i2v_480p_step_distilled_disca": ([I2V_SUMMARY], WORKFLOW_HV15_DIT, 64),
    # one branch through DisCa, one plain: a single summary line; the two 64-wide videos stitched with 16 px spacing
    "hunyuanvideo10_t2v_disca_ab_compare": ([T2V_SUMMARY], WORKFLOW_HV10_DIT, 64 + 16 + 64),
}


@pytest.fixture(scope="module")
def server(comfyui_server):
    return comfyui_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


@pytest.fixture(scope="module")
def frontend_version(server):
    return server.frontend_version()


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def prepare_prompt(workflow: dict, object_info: dict, frontend_version: tuple[int, ...]) -> dict:
    """UI -> API, stub loaders swapped in, resolution and length shrunk for CPU; nothing else changes."""
    prompt = ui_to_api(workflow, object_info, frontend_version)
    for node in prompt.values():
        node["class_type"] = STUB_LOADERS.get(node["class_type"], node["class_type"])
        if node["class_type"] in SIZE_NODES:
            node["inputs"].update(CPU_SIZE)
    return prompt


def video_frames(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_pack_imports_and_its_nodes_are_listed_with_tooltips(server, object_info):
    failed = [line for line in server.log().splitlines() if "IMPORT FAILED" in line and
              (PACK_LINK in line or STUBS_LINK in line)]
    assert failed == []
    assert f"custom_nodes/{PACK_LINK}" in server.log()  # it was imported (listed under "Import times")
    for node_id in DISCA_NODES:
        definition = object_info[node_id]
        assert definition["category"] == "DisCa" and definition["description"]
        for section in ("required", "optional"):
            for name, spec in definition["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert WORKFLOW_HV10_DIT in object_info["DisCaLoadDistilledModel"]["input"]["required"]["unet_name"][1]["options"]
    predictors = object_info["DisCaLoadPredictor"]["input"]["required"]["predictor_name"][1]["options"]
    assert {WORKFLOW_HV10_PREDICTOR, WORKFLOW_HV15_PREDICTOR} <= set(predictors)


def test_workflows_are_served_as_example_workflows_with_thumbnails(server):
    """The template browser lists workflows/*.json and shows `<name>.jpg` as each card's image."""
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_LINK]) == sorted(CASES)
    for name in CASES:
        served = server.get(f"/api/workflow_templates/{PACK_LINK}/{name}.json")
        assert served == load_workflow(name)
        content_type, thumbnail = server.get_raw(f"/api/workflow_templates/{PACK_LINK}/{name}.jpg")
        assert content_type == "image/jpeg" and thumbnail[:3] == b"\xff\xd8\xff" and len(thumbnail) < 150 * 1024


def test_object_info_fixture_of_this_comfyui_is_current(server, object_info, tmp_path):
    """The CPU tests convert with tests/data/object_info_comfyui_<version>.json; its DisCa entries must be the
    server's (stock nodes only change with the ComfyUI version)."""
    system = server.get("/system_stats")["system"]
    fixture = load_fixture(system["comfyui_version"])
    fresh = build_fixture(system["comfyui_version"], system["required_frontend_version"], object_info)
    stale = [node_type for node_type, definition in fresh["object_info"].items()
             if node_type.startswith("DisCa") and fixture["object_info"].get(node_type) != definition]
    if stale or set(fixture["object_info"]) != set(fresh["object_info"]):
        write_fixture(tmp_path / fixture_path(system["comfyui_version"]).name, fresh)
        pytest.fail(f"{fixture_path(system['comfyui_version'])} is stale ({stale or 'node types differ'}); "
                    f"copy {tmp_path / fixture_path(system['comfyui_version']).name} over it")
    assert fixture["frontend_version"] == system["required_frontend_version"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_workflow_runs_headlessly(server, object_info, frontend_version, name):
    summaries, dit_file, width = CASES[name]
    workflow = load_workflow(name)
    prompt = prepare_prompt(workflow, object_info, frontend_version)
    assert not {node["class_type"] for node in prompt.values()} & set(STUB_LOADERS)

    entry, log = server.run(prompt)

    assert entry["status"]["status_str"] == "success"
    assert SUMMARY.findall(log) == summaries, log[-4000:]
    samplers = [node_id for node_id, node in prompt.items() if node["class_type"] == "SamplerCustomAdvanced"]
    reports = [entry["outputs"][node_id]["text"][0] for node_id, node in prompt.items()
               if node["class_type"] == "PreviewAny"]
    assert len(reports) == 1 and reports[0].startswith(f"{dit_file}: ") and "MeanFlow" in reports[0]
    assert len(samplers) == (2 if "ab_compare" in name else 1)
    videos = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveVideo"]
    assert len(videos) == 1 and videos[0] in entry["outputs"]
    saved = entry["outputs"][videos[0]]["images"]
    assert len(saved) == 1
    path = server.output_dir / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.stat().st_size > 0
    frames = video_frames(path)
    assert len(frames) == FRAMES
    assert frames[0].shape == (CPU_SIZE["height"], width, 3)
    if "ab_compare" in name:  # left: DisCa (random tiny predictor), right: the plain model; they must differ
        side = CPU_SIZE["width"]
        left, right = frames[-1][:, :side].astype(int), frames[-1][:, -side:].astype(int)
        assert abs(left - right).mean() > 1.0


# ---- bad inputs over HTTP: POST /prompt answers 400 with the node's error, once, naming the input


@pytest.fixture(scope="module")
def video_only_prompt(object_info, frontend_version):
    """The T2V workflow without its model report: ComfyUI queues the outputs that validate and answers 200, so a bad
    input refuses the whole prompt (400) only when the video is the one output."""
    prompt = prepare_prompt(load_workflow("hunyuanvideo10_t2v_rmeanflow_disca"), object_info, frontend_version)
    return {node_id: node for node_id, node in prompt.items() if node["class_type"] != "PreviewAny"}


def node_id_of(prompt: dict, class_type: str) -> str:
    (node_id,) = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    return node_id


@pytest.mark.parametrize("class_type, change, error_type, message, details", [
    ("DisCaApply", {"schedule": "interval", "schedule.interval": 0},
     "value_smaller_than_min", "Value 0 smaller than min of 1", "schedule.interval"),
    ("DisCaApply", {"schedule": "interval", "schedule.interval": 1000},
     "value_bigger_than_max", "Value 1000 bigger than max of 100", "schedule.interval"),
    ("DisCaApply", {"predictor_device": "bogus"},
     "value_not_in_list", "Value not in list", "predictor_device: 'bogus' not in ['with_model', 'cpu_offload']"),
    ("DisCaSigmas", {"preset": "custom", "preset.steps": 0, "preset.shift": 5.0},
     "value_smaller_than_min", "Value 0 smaller than min of 1", "preset.steps"),
], ids=["interval_0", "interval_1000", "predictor_device_bogus", "custom_steps_0"])
def test_bad_input_is_refused_at_validation(server, video_only_prompt, class_type, change, error_type, message,
                                            details):
    prompt = copy.deepcopy(video_only_prompt)
    node_id = node_id_of(prompt, class_type)
    prompt[node_id]["inputs"].update(change)

    status, answer = server.request("/prompt", {"prompt": prompt})

    assert status == 400, answer
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(answer["node_errors"]) == [node_id]
    (error,) = answer["node_errors"][node_id]["errors"]  # once, not once per input of the node
    assert (error["type"], error["message"], error["details"]) == (error_type, message, details)
    assert error["extra_info"]["input_name"] == details.split(":")[0]


def test_unknown_schedule_fails_at_execution_naming_the_choices(server, video_only_prompt):
    """ComfyUI (0.8.0, 0.33.0) does not check a DynamicCombo's value against its options and drops the input, so
    DisCa Apply says what is wrong when it runs."""
    prompt = copy.deepcopy(video_only_prompt)
    node_id = node_id_of(prompt, "DisCaApply")
    prompt[node_id]["inputs"]["schedule"] = "bogus"

    entry = server.wait(server.queue(prompt))

    assert entry["status"]["status_str"] == "error"
    errors = [details for kind, details in entry["status"]["messages"] if kind == "execution_error"]
    assert [(error["node_id"], error["node_type"]) for error in errors] == [(node_id, "DisCaApply")]
    assert errors[0]["exception_message"].startswith("DisCa Apply: 'schedule' must be one of ['t2v_official_10of20'")


def test_bad_step_list_passes_validation_and_fails_at_execution_naming_step_list(server, video_only_prompt):
    prompt = copy.deepcopy(video_only_prompt)
    node_id = node_id_of(prompt, "DisCaApply")
    prompt[node_id]["inputs"].update({"schedule": "step_list", "schedule.step_list": "1 2 3"})

    entry = server.wait(server.queue(prompt))

    assert entry["status"]["status_str"] == "error"
    errors = [details for kind, details in entry["status"]["messages"] if kind == "execution_error"]
    assert [(error["node_id"], error["node_type"]) for error in errors] == [(node_id, "DisCaApply")]
    assert errors[0]["exception_message"].startswith(
        "step_list [1, 2, 3] must start with step 0: the first step has no cache to predict from")
