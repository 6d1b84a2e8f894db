"""An exported DiT is what ComfyUI detects (MeanFlow HunyuanVideo) and its ComfyUI forward matches diffusers'; the
trainer feeds its DiT the timesteps, r and guidance ComfyUI's own functions compute.

1.0 exports load in the stock loader; 1.5 exports carry Tencent's split q/k/v (the layout the official code loads),
which DisCa Load Distilled Model fuses for ComfyUI, as it does for Tencent's own 1.5 files.

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


def _export_and_load(comfy, host, tmp_path, dtype=torch.float32):
    from disca.formats import ARCH_HV10, load_safetensors
    from disca.hosts.comfyui import load_distilled_model
    from training.export import export_dit

    path = export_dit(str(tmp_path / "dit.safetensors"), host, R=0.2, dtype=None)
    if host.arch == ARCH_HV10:  # the stock loader (UNETLoader's)
        state, _ = load_safetensors(path)
        patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})
    else:  # split q/k/v: the pack's loader (DisCa Load Distilled Model)
        patcher, _ = load_distilled_model(path, {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype])
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_trainer_feeds_the_timesteps_and_guidance_comfyui_computes(comfy, tmp_path, monkeypatch, dtype):
    """ComfyUI's own path (extra_conds, BaseModel.apply_model, the HunyuanVideo forward) on the exported DiT: every
    number its timestep_embedding multiplies out (t, the token refiner's t, r, guidance) equals what
    disca.timesteps.dit_time_inputs gives and what our host's time projections are fed, in a bf16 and an fp32 model."""
    import comfy.ldm.hunyuan_video.model as hunyuan
    from diffusers.models.embeddings import Timesteps

    from disca.formats import ARCH_HV10
    from disca.schedules import flow_sigmas
    from disca.timesteps import dit_time_inputs
    from training.tiny import TINY_LATENT, tiny_conditioning

    host = _meanflow_host(ARCH_HV10)
    model, _ = _export_and_load(comfy, host, tmp_path, dtype)
    # on a GPU ComfyUI runs bf16 weights in bf16; the CPU testbed would pick an fp32 manual cast instead
    model.manual_cast_dtype = None
    assert model.get_dtype() == dtype  # what _apply_model casts to without a manual cast (0.8.0 and 0.33.0)
    theirs, ours = [], []
    embed = hunyuan.timestep_embedding

    def recording(t, dim, max_period=10000, time_factor=1000.0):
        theirs.extend((time_factor * t).double().tolist())  # the function's first line, in t's own dtype
        return embed(t, dim, max_period=max_period, time_factor=time_factor)

    monkeypatch.setattr(hunyuan, "timestep_embedding", recording)
    host = host.to(dtype)
    hooks = [m.register_forward_pre_hook(lambda _, args: ours.extend(args[0].double().tolist()))
             for m in host.modules() if isinstance(m, Timesteps)]
    cond = tiny_conditioning(ARCH_HV10, 1, 13, padded=False)
    sigmas = flow_sigmas(20, 5.0)
    x = torch.randn(1, 16, *TINY_LATENT[ARCH_HV10], generator=torch.Generator().manual_seed(14))
    extra = model.extra_conds(pooled_output=cond["pooled_embeds"], cross_attn=cond["prompt_embeds"], guidance=6.0,
                              attention_mask=cond["prompt_mask"], device="cpu", noise=x)
    for step in (0, 1, 7, 19):
        sigma, sigma_next = sigmas[step:step + 1], sigmas[step + 1:step + 2]
        theirs.clear(), ours.clear()
        with torch.no_grad():
            model.apply_model(x, sigma, transformer_options={"sigmas": sigma, "sample_sigmas": sigmas},
                              **{k: v.cond for k, v in extra.items()})
            host(x, sigma, cond, sigma_next, torch.tensor([6.0]))
        t, r, g = (v.double().item() for v in dit_time_inputs(sigma, sigma_next, torch.tensor([6.0]), dtype))
        assert sorted(theirs) == sorted(ours) == sorted([t, t, r, g]), step
    assert g == (6016.0 if dtype == torch.bfloat16 else 6000.0)
    for hook in hooks:
        hook.remove()
