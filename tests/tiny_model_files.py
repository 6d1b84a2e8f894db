"""The tiny model files the ComfyUI tests and workflow runs use, written in the real formats."""

from __future__ import annotations

from pathlib import Path

from disca.formats import ARCH_HV10, ARCH_HV15, META_BASE_FINGERPRINT, build_metadata, save_safetensors
from tiny_models import official_predictor_state_dict, tencent_dit_state_dict

HV10_DIT = "tiny_hv10_rmeanflow.safetensors"
HV10_PLAIN_DIT = "tiny_hv10_plain.safetensors"
HV15_DIT = "tiny_hv15_i2v_step_distilled.safetensors"
HV10_PREDICTOR = "tiny_hv10_predictor.safetensors"
HV10_PREDICTOR_TP = "tiny_hv10_predictor_tensor_parallel.safetensors"
HV10_PREDICTOR_WIDE = "tiny_hv10_predictor_hidden256.safetensors"
HV10_PREDICTOR_OTHER_BASE = "tiny_hv10_predictor_other_base.safetensors"
HV15_PREDICTOR = "tiny_hv15_predictor.safetensors"


def _hv10_dit():
    return tencent_dit_state_dict(ARCH_HV10, double_blocks=1, single_blocks=2)


def _hv15_dit():
    return tencent_dit_state_dict(ARCH_HV15, double_blocks=2, single_blocks=0, guidance=False)


def _write(models_dir: Path, dits: dict, predictors: dict) -> None:
    """{file name: state dict or (state dict, metadata)} into models/diffusion_models and models/disca."""
    for folder, files in (("diffusion_models", dits), ("disca", predictors)):
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            tensors, metadata = content if isinstance(content, tuple) else (content, {})
            save_safetensors(str(models_dir / folder / name), tensors, metadata)


def write_tiny_model_files(models_dir: Path) -> None:
    other = build_metadata("predictor", ARCH_HV10, base_fingerprint="0123456789abcdef")
    assert other[META_BASE_FINGERPRINT] == "0123456789abcdef"
    _write(models_dir,
           {HV10_DIT: _hv10_dit(), HV10_PLAIN_DIT: tencent_dit_state_dict(ARCH_HV10, meanflow=False), HV15_DIT: _hv15_dit()},
           {HV10_PREDICTOR: official_predictor_state_dict(ARCH_HV10),
            HV10_PREDICTOR_TP: official_predictor_state_dict(ARCH_HV10, layout="tensor_parallel"),
            HV10_PREDICTOR_WIDE: official_predictor_state_dict(ARCH_HV10, hidden=256, heads=2),
            HV15_PREDICTOR: official_predictor_state_dict(ARCH_HV15),
            HV10_PREDICTOR_OTHER_BASE: (official_predictor_state_dict(ARCH_HV10), other)})


# The file names the shipped workflows (workflows/*.json) load; tests/test_comfyui_workflows.py runs them on these.
WORKFLOW_HV10_DIT = "hyvideo10_t2v_restricted_meanflow_540p.safetensors"
WORKFLOW_HV10_PREDICTOR = "hyvideo10_t2v_predictor_540p.safetensors"
WORKFLOW_HV15_DIT = "hunyuanvideo1.5_480p_i2v_step_distilled_fp16.safetensors"
WORKFLOW_HV15_PREDICTOR = "hyvideo15_i2v_predictor_480p.safetensors"


def write_workflow_model_files(models_dir: Path) -> None:
    """Tiny models (as HV10_DIT, HV15_DIT, HV10_PREDICTOR, HV15_PREDICTOR) saved under the workflows' file names."""
    _write(models_dir, {WORKFLOW_HV10_DIT: _hv10_dit(), WORKFLOW_HV15_DIT: _hv15_dit()},
           {WORKFLOW_HV10_PREDICTOR: official_predictor_state_dict(ARCH_HV10),
            WORKFLOW_HV15_PREDICTOR: official_predictor_state_dict(ARCH_HV15)})
