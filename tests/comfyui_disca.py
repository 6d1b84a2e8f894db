"""DisCa runs on the tiny models inside in-process ComfyUI: inputs, loading, applying, probing model calls."""

from __future__ import annotations

import inspect
import types

import torch

from disca.formats import ARCH_HV10, ARCH_HV15
from tiny_model_files import HV10_DIT, HV10_PREDICTOR, HV15_DIT, HV15_PREDICTOR

CASES = {
    ARCH_HV10: dict(dit=HV10_DIT, predictor=HV10_PREDICTOR, channels=16, patch=(1, 2, 2)),
    ARCH_HV15: dict(dit=HV15_DIT, predictor=HV15_PREDICTOR, channels=32, patch=(1, 1, 1)),
}


def conditioning(arch: str, seed: int, length: int = 6, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, length, 32, generator=g)
    if arch == ARCH_HV10:
        return [[context, {"pooled_output": torch.randn(batch, 768, generator=g), "guidance": 6.0}]]
    vision = types.SimpleNamespace(last_hidden_state=torch.randn(batch, 3, 1152, generator=g))
    return [[context, {"pooled_output": None, "clip_vision_output": vision}]]


def noise(arch: str, seed: int, batch: int = 1, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    channels = CASES[arch]["channels"]
    side = size if arch == ARCH_HV10 else size // 2  # HunyuanVideo-1.5 latents are 16x downsampled
    return torch.randn(batch, channels, 2, side, side, generator=g)


def load(comfyui, arch: str):
    model, report = comfyui.run_node("DisCaLoadDistilledModel", unet_name=CASES[arch]["dit"], weight_dtype="default",
                                     allow_non_distilled=False)
    predictor = comfyui.run_node("DisCaLoadPredictor", predictor_name=CASES[arch]["predictor"])[0]
    return model, predictor


def apply(comfyui, model, predictor, interval: int = 2, mode: str = "predictor", schedule: str = "interval",
          step_list: str | None = None, **kw):
    """DisCa Apply as ComfyUI calls it: the `schedule` choice and its own input in one dict (a DynamicCombo)."""
    choice = {"schedule": schedule}
    if schedule == "interval":
        choice["interval"] = interval
    elif schedule == "step_list":
        choice["step_list"] = step_list
    options = dict(schedule=choice, mode=mode, cache_device="compute_device", predictor_device="with_model",
                   predictor_dtype="auto")
    options.update(kw)
    return comfyui.run_node("DisCaApply", model=model, predictor=predictor, **options)[0]


def add_probe(comfyui, model, calls: list) -> None:
    """Record every diffusion-model call (inputs, output, DiT blocks run). Registered after DisCa: runs inside it."""
    module = model.model.diffusion_model
    counter = {"blocks": 0}

    def count(*_):
        counter["blocks"] += 1

    for block in list(module.double_blocks) + list(module.single_blocks):
        if not getattr(block, "_disca_test_counted", False):
            block.register_forward_hook(count)
            block._disca_test_counted = True
    module._disca_test_counter = counter

    def probe(executor, *args, **kwargs):
        bound = inspect.signature(executor.original).bind(*args, **kwargs)
        before = module._disca_test_counter["blocks"]
        out = executor(*args, **kwargs)
        options = bound.arguments["transformer_options"]
        calls.append(dict(arguments={k: v for k, v in bound.arguments.items() if k != "transformer_options"},
                          sigma=options["sigmas"].clone(), sample_sigmas=options["sample_sigmas"].clone(),
                          uuids=tuple(options["uuids"]), out=out.clone(),
                          blocks=module._disca_test_counter["blocks"] - before))
        return out

    model.add_wrapper_with_key(comfyui.comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)


def stock_capture(model, call: dict, patches: dict) -> None:
    """Run ComfyUI's stock forward on a recorded call's inputs, with the test's own block patches."""
    options = {"sigmas": call["sigma"], "sample_sigmas": call["sample_sigmas"], "patches_replace": {"dit": patches}}
    args = dict(call["arguments"])
    with torch.no_grad():
        model.model.diffusion_model(**args, transformer_options=options)


def image_then_text(tokens: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """A single-stream token sequence in the official [img ‖ txt] order. ComfyUI >= 0.14 runs [txt ‖ img] and says
    where the image tokens are (`img_slice`); earlier versions run [img ‖ txt] and set no slice."""
    img_slice = transformer_options.get("img_slice")
    if img_slice is None:
        return tokens.clone()
    start, end = img_slice
    return torch.cat([tokens[:, start:end], tokens[:, :start]], dim=1)
