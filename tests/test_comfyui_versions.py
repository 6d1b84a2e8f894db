"""The same DisCa run gives the same numbers on every supported ComfyUI (in-process, CPU, fp32).

ComfyUI 0.14 changed HunyuanVideo's token order ([img ‖ txt] -> [txt ‖ img]), its double blocks' attention order and
its QK norm module (PR #12432). DisCa must compute the same thing on both sides of that change: every model output
of an N2 run (anchors and predicted steps) on tiny fixed weights and inputs is compared with the outputs recorded on
ComfyUI 0.8.0, `tests/data/comfyui_0.8.0_disca_outputs.safetensors`. HunyuanVideo-1.0 runs with a padded text
mask (two of six text tokens masked), so the mask's placement in the sequence is checked too.

To record the reference again (only on a 0.8.0 testbed):
    DISCA_RECORD_REFERENCE=1 COMFYUI_PATH=... $COMFYUI_PYTHON -m pytest -q tests/test_comfyui_versions.py
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
import torch

from comfyui_disca import add_probe, apply, conditioning, load, noise
from comfyui_env import COMFYUI_PATH, requires_comfyui
from disca.formats import ARCH_HV10, ARCH_HV15, load_safetensors, save_safetensors
from disca.schedules import flow_sigmas

pytestmark = [requires_comfyui, pytest.mark.comfyui]

REFERENCE_VERSION = "0.8.0"
REFERENCE = Path(__file__).resolve().parent / "data" / f"comfyui_{REFERENCE_VERSION}_disca_outputs.safetensors"
RECORD = os.environ.get("DISCA_RECORD_REFERENCE") == "1"


def comfyui_version() -> str:
    return runpy.run_path(str(Path(COMFYUI_PATH) / "comfyui_version.py"))["__version__"]


def padded_conditioning(arch: str):
    cond = conditioning(arch, 1)
    if arch == ARCH_HV10:
        cond[0][1]["attention_mask"] = torch.tensor([[1, 1, 1, 1, 0, 0]])
    return cond


def disca_outputs(comfyui, arch: str) -> dict[str, torch.Tensor]:
    """Every model output of an N2 run over 4 steps (anchor, predicted, anchor, predicted) and the final latent."""
    model, predictor = load(comfyui, arch)
    patched = apply(comfyui, model, predictor, interval=2)
    calls = []
    add_probe(comfyui, patched, calls)
    final = comfyui.sample(patched, noise(arch, 0), flow_sigmas(4, 5.0), padded_conditioning(arch))
    assert [c["blocks"] > 0 for c in calls] == [True, False, True, False]
    outputs = {f"{arch}.call{i}": c["out"] for i, c in enumerate(calls)}
    outputs[f"{arch}.final"] = final
    return outputs


def test_disca_outputs_equal_those_on_comfyui_080(comfyui):
    outputs = {}
    for arch in (ARCH_HV10, ARCH_HV15):
        outputs.update(disca_outputs(comfyui, arch))
    version = comfyui_version()
    if RECORD:
        assert version == REFERENCE_VERSION, f"record the reference on ComfyUI {REFERENCE_VERSION}, not {version}"
        REFERENCE.parent.mkdir(exist_ok=True)
        save_safetensors(str(REFERENCE), {k: v.contiguous() for k, v in outputs.items()},
                         {"comfyui_version": version, "torch": torch.__version__})
    reference, metadata = load_safetensors(str(REFERENCE))
    assert sorted(reference) == sorted(outputs)
    for name, expected in reference.items():
        relative = ((outputs[name] - expected).norm() / expected.norm()).item()
        print(f"ComfyUI {version} vs {metadata['comfyui_version']}: {name} relative difference {relative:.2e}")
        assert relative <= 1e-5, (name, relative)
