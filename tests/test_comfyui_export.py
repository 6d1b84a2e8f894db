"""An exported DiT is what stock ComfyUI detects (MeanFlow HunyuanVideo) and its ComfyUI forward matches diffusers'.

Runs only in the ComfyUI testbed (COMFYUI_PATH set, ComfyUI's python with diffusers/accelerate installed):

    COMFYUI_PATH=/tmp/comfyui-testbed/ComfyUI /tmp/comfyui-testbed/venv/bin/python -m pytest tests/test_comfyui_export.py
"""

import importlib.util
import os
import sys

import pytest
import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")


def _skip_reason() -> str | None:
    if not COMFYUI_PATH or not os.path.isdir(os.path.join(COMFYUI_PATH, "comfy")):
        return "COMFYUI_PATH is not set to a ComfyUI checkout; run with the ComfyUI testbed (see module docstring)"
    for module in ("aiohttp", "diffusers", "accelerate"):  # ComfyUI's requirements + the trainer's
        if importlib.util.find_spec(module) is None:
            return f"this python ({sys.executable}) lacks {module}; use the ComfyUI testbed's python with diffusers installed"
    return None


pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


@pytest.fixture(scope="module")
def comfy():
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        # the testbed's torchaudio wheel does not load with its torch; ComfyUI already runs without it
        # ("torchaudio missing"), and hiding it keeps transformers (imported by diffusers) from crashing on it
        sys.modules["torchaudio"] = None
    if COMFYUI_PATH not in sys.path:
        sys.path.insert(0, COMFYUI_PATH)
    if "comfy.options" not in sys.modules:
        sys.argv = [sys.argv[0], "--cpu"]
        import comfy.options

        comfy.options.enable_args_parsing()
    import comfy.sd

    return comfy


def _export_and_load(comfy, host, tmp_path):
    from disca.formats import load_safetensors
    from training.export import export_dit

    path = export_dit(str(tmp_path / "dit.safetensors"), host, R=0.2, dtype=None)
    state, _ = load_safetensors(path)
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})
    assert patcher is not None, "ComfyUI did not recognise the exported file"
    return patcher.model, patcher.model.diffusion_model


def _meanflow_host(arch):
    from training.tiny import tiny_host

    host = tiny_host(arch, seed=11)
    host.add_time_r_embedder()
    generator = torch.Generator().manual_seed(12)
    for module in (host.time_r_in, getattr(host.transformer, "time_embed", None)):
        if module is not None:
            for p in module.parameters():  # a trained-looking r-embedder, so a wrong r convention shows
                p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return host.eval()


def test_hv10_export_is_comfyui_meanflow_and_forward_matches(comfy, tmp_path):
    from disca.formats import ARCH_HV10
    from disca.schedules import flow_sigmas
    from training.tiny import TINY_LATENT, tiny_conditioning

    host = _meanflow_host(ARCH_HV10)
    model, module = _export_and_load(comfy, host, tmp_path)
    assert type(model).__name__ == "HunyuanVideo"
    assert module.params.meanflow and not module.params.meanflow_sum and module.params.guidance_embed
    cond = tiny_conditioning(ARCH_HV10, 1, 13, padded=False)  # ComfyUI pools unmasked: compare with all tokens valid
    latents = torch.randn(1, 16, *TINY_LATENT[ARCH_HV10], generator=torch.Generator().manual_seed(14))
    schedule = flow_sigmas(8, 5.0)
    for step in (0, 3, 7):
        sigma, sigma_next = schedule[step:step + 1], schedule[step + 1:step + 2]
        with torch.no_grad():
            ours = host(latents, sigma, cond, sigma_next, torch.tensor([6.0]))
            theirs = module(latents, sigma * 1000, cond["prompt_embeds"], y=cond["pooled_embeds"],
                            guidance=torch.tensor([6.0]), attention_mask=cond["prompt_mask"],
                            transformer_options={"sigmas": sigma, "sample_sigmas": schedule})
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
        # the r term matters: without it (ComfyUI's disable_time_r) the outputs differ
        with torch.no_grad():
            no_r = module(latents, sigma * 1000, cond["prompt_embeds"], y=cond["pooled_embeds"],
                          guidance=torch.tensor([6.0]), attention_mask=cond["prompt_mask"], disable_time_r=True,
                          transformer_options={"sigmas": sigma, "sample_sigmas": schedule})
        assert (no_r - ours).abs().max() > 1e-3


def test_hv15_export_is_comfyui_meanflow_and_forward_matches(comfy, tmp_path):
    from disca.formats import ARCH_HV15
    from disca.schedules import flow_sigmas
    from training.tiny import TINY_LATENT, tiny_conditioning

    host = _meanflow_host(ARCH_HV15)
    model, module = _export_and_load(comfy, host, tmp_path)
    assert type(model).__name__ == "HunyuanVideo15"
    assert module.params.meanflow and module.params.meanflow_sum
    cond = tiny_conditioning(ARCH_HV15, 1, 15, padded=False)
    latents = torch.randn(1, 32, *TINY_LATENT[ARCH_HV15], generator=torch.Generator().manual_seed(16))
    schedule = flow_sigmas(8, 7.0)
    for step in (0, 5):
        sigma, sigma_next = schedule[step:step + 1], schedule[step + 1:step + 2]
        with torch.no_grad():
            ours = host(latents, sigma, cond, sigma_next)
            theirs = module(torch.cat([latents, cond["image_latents"]], 1), sigma * 1000, cond["prompt_embeds"],
                            txt_byt5=cond["byt5_embeds"], clip_fea=cond["image_embeds"],
                            attention_mask=None,  # every token valid (ComfyUI's mask covers the LLM tokens only)
                            transformer_options={"sigmas": sigma, "sample_sigmas": schedule})
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
