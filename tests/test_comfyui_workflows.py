"""The shipped workflows (workflows/*.json) run headlessly in a real ComfyUI server on the tiny models (CPU).

One server subprocess for the module (tests/comfyui_server.py: `main.py --cpu --cache-none` with this repo and the
test-only stub pack linked into a temporary custom_nodes folder, and the tiny models saved under the file names
the workflows load). Each workflow is converted UI -> API (tests/workflow_api.py) with the server's /object_info,
then changed in two ways only:
- the loaders of weights that cannot exist here (text encoders, VAE, CLIP vision) become the stub loaders, with
  the same inputs; every other node runs stock, and the DisCa nodes run for real;
- the resolution/length widgets shrink to 64x64, 5 frames, so that each run takes seconds on CPU.
Sigmas, schedules, seeds and everything else stay as shipped, so the DisCa summary lines show the official counts.

Run with the testbed python: see README "Tests". Skipped elsewhere, with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from comfyui_env import REPO_ROOT, requires_comfyui
from comfyui_server import PACK_LINK, STUBS_LINK, Server
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
def server(tmp_path_factory):
    instance = Server(tmp_path_factory.mktemp("comfyui_workflows"))
    instance.prepare()
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())


def prepare_prompt(workflow: dict, object_info: dict) -> dict:
    """UI -> API, stub loaders swapped in, resolution and length shrunk for CPU; nothing else changes."""
    prompt = ui_to_api(workflow, object_info)
    for node in prompt.values():
        node["class_type"] = STUB_LOADERS.get(node["class_type"], node["class_type"])
        if node["class_type"] in SIZE_NODES:
            node["inputs"].update(CPU_SIZE)
    return prompt


def write_start_images(server: Server, workflow: dict) -> None:
    from PIL import Image

    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            gradient = Image.linear_gradient("L").resize((96, 80)).convert("RGB")
            gradient.save(server.input_dir / node["widgets_values"][0])


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


def test_workflows_are_served_as_example_workflows(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_LINK]) == sorted(CASES)
    for name in CASES:
        served = server.get(f"/api/workflow_templates/{PACK_LINK}/{name}.json")
        assert served == load_workflow(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_workflow_runs_headlessly(server, object_info, name):
    summaries, dit_file, width = CASES[name]
    workflow = load_workflow(name)
    write_start_images(server, workflow)
    prompt = prepare_prompt(workflow, object_info)
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
