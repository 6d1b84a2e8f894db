"""The trainer feeds its DiT the timesteps, r and guidance that ComfyUI feeds the deployed DiT, for bf16 and fp32 DiTs.

`comfyui_dit_inputs` below is ComfyUI's own arithmetic (0.8.0 and 0.33.0 compute it identically; file:line in
v0.33.0 / v0.8.0), written out in plain torch so these tests need no ComfyUI; tests/test_comfyui_export.py pins it
against the real functions in the testbed. The Euler state and sigmas stay fp32 as in ComfyUI's sampler.
"""

from types import SimpleNamespace

import pytest
import torch

from disca.formats import ARCH_HV10, ARCH_HV15
from disca.hosts.diffusers import predictor_from_dit
from disca.schedules import flow_sigmas
from training.tiny import TINY_CONFIGS, TINY_LATENT, tiny_conditioning, tiny_host

GUIDANCE = 6.0


def comfyui_dit_inputs(sigmas: torch.Tensor, step: int, guidance: float, model_dtype: torch.dtype):
    """The (timestep, r, guidance) values ComfyUI's HunyuanVideo embeds at `step` of the fp32 `sigmas` schedule."""
    sigma = sigmas[step:step + 1]
    # comfy/model_base.py BaseModel._apply_model (v0.33.0 l. 223, v0.8.0 l. 184): t = model_sampling.timestep(t).float(),
    # comfy/model_sampling.py ModelSamplingDiscreteFlow.timestep (l. 316 / 274): sigma * multiplier (1000)
    t = (sigma * 1000).float()
    # comfy/ldm/hunyuan_video/model.py (l. 316-320 both): r = sample_sigmas[i + 1] cast to t's dtype, embedded by
    # timestep_embedding(r, 256, time_factor=1000.0), whose first line is t = time_factor * t (flux/layers.py l. 38)
    r = 1000.0 * sigmas[step + 1:step + 2].to(t.dtype)
    # comfy/model_base.py HunyuanVideo.extra_conds (l. 1381 / 1053): guidance = FloatTensor([6.0]); _apply_model casts
    # every extra cond to the model dtype (convert_tensor, l. 154-160 / 116-122); model.py l. 349:
    # timestep_embedding(guidance, 256) -> 1000.0 * guidance in that dtype
    g = 1000.0 * torch.FloatTensor([guidance]).to(model_dtype)
    return t.double(), r.double(), g.double()  # the embedding reads each as .float(): compare exact values


def _host(arch: str, dtype: torch.dtype):
    host = tiny_host(arch, seed=3)
    host.add_time_r_embedder()
    if arch == ARCH_HV15:
        host.add_guidance_embedder()
    return host.to(dtype).eval()


class _FedTimes:
    """Records every number the DiT's sinusoidal time projections (diffusers `Timesteps`) are fed."""

    def __init__(self, host):
        from diffusers.models.embeddings import Timesteps

        self.values: list[float] = []
        self.handles = [m.register_forward_pre_hook(self._record) for m in host.modules() if isinstance(m, Timesteps)]

    def _record(self, module, args):
        self.values += args[0].double().tolist()

    def close(self):
        for handle in self.handles:
            handle.remove()


def _autocast(dtype):
    # the trainer runs its bf16 base inside bf16 autocast (training/loop.py base_dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def _expected(sigmas, steps, dtype, batch):
    """Per DiT call: t (time_in and the token refiner's embedder), r and guidance, each once per row."""
    out = []
    for step in steps:
        t, r, g = comfyui_dit_inputs(sigmas, step, GUIDANCE, dtype)
        out += [t.item(), t.item(), r.item(), g.item()] * batch
    return sorted(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_trajectory_pool_feeds_the_deployments_timesteps_and_guidance(arch, dtype):
    """The predictor stage's pool (`build_pool`, the official 20-step shift-5 schedule): every DiT call embeds
    ComfyUI's t, r and guidance, the Euler state is ComfyUI's fp32 update of the DiT's outputs, and the conditioning
    reaches the DiT in the model dtype whatever dtype the caller holds it in (ComfyUI casts it)."""
    from training.predictor import build_pool

    host = _host(arch, dtype)
    config = SimpleNamespace(steps=20, shift=5.0, guidance=GUIDANCE, seed=0, latent_shape=TINY_LATENT[arch],
                             trajectories_per_prompt=1, trajectory_batch=2, pool_on_device=False)
    sigmas = flow_sigmas(config.steps, config.shift)
    cond = tiny_conditioning(arch, 2, 2)  # fp32, as training.data.load_embeddings returns it
    fed = _FedTimes(host)
    with _autocast(dtype):
        pool = build_pool(host, cond, [0, 1], config, 0, "cpu")
    fed.close()
    assert sorted(fed.values) == _expected(sigmas, range(20), dtype, batch=2)
    if dtype == torch.bfloat16:  # what a bf16 path gets wrong: 978.26 fed as 976, 6016 fed as 6000
        assert any(v % 4 for v in fed.values if 900 < v < 1000) and 6016.0 in fed.values and 6000.0 not in fed.values
    for trajectory in pool:
        x = trajectory.latents
        assert x.dtype == torch.float32
        # the Euler update in fp32 on the upcast output: the official scheduler's x + dt u (ComfyUI's sample_euler
        # reaches the same through its fp32 denoised, to fp32 rounding)
        for i in range(19):
            torch.testing.assert_close(x[i + 1], x[i] + (sigmas[i + 1] - sigmas[i]) * trajectory.velocities[i].float(),
                                       rtol=0, atol=2e-7)
    with _autocast(dtype):
        cast_first = build_pool(host, {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()},
                                [0, 1], config, 0, "cpu")
    assert all(torch.equal(a.velocities, b.velocities) for a, b in zip(pool, cast_first))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_training_batches_feed_the_deployments_timesteps_and_guidance(dtype):
    """A training batch (`draw_batch`) keeps sigmas and states fp32; the predicted step feeds ComfyUI's values."""
    from training.batches import guidance_for
    from training.predictor import Trajectory, _predicted, draw_batch

    arch = ARCH_HV10
    host = _host(arch, dtype)
    sigmas = flow_sigmas(20, 5.0)
    shape = (20, TINY_CONFIGS[arch]["out_channels"], *TINY_LATENT[arch])
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad(), _autocast(dtype):
        cache = host.forward_with_cache(torch.randn(1, *shape[1:]), sigmas[:1], tiny_conditioning(arch, 1, 5),
                                        sigmas[1:2], torch.tensor([GUIDANCE]))[1]
    trajectory = Trajectory(0, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator).to(dtype),
                            tuple(c[0].expand(20, *c.shape[1:]).clone() for c in cache))
    pairs = [(0, 1), (2, 3), (5, 7), (15, 18)]
    batch = draw_batch([trajectory], pairs, tiny_conditioning(arch, 1, 5), sigmas, torch.Generator().manual_seed(6), 4,
                       "cpu", dtype)
    assert batch["latents"].dtype == batch["sigma"].dtype == batch["sigma_next"].dtype == torch.float32
    steps = [int((sigmas == s).nonzero()) for s in batch["sigma"]]
    assert torch.equal(batch["sigma_next"], sigmas[[j + 1 for j in steps]])
    assert torch.equal(batch["latents"], trajectory.latents[steps])
    fed = _FedTimes(host)
    with torch.no_grad(), _autocast(dtype):
        _predicted(host, predictor_from_dit(host), batch, guidance_for(host, GUIDANCE, 4, "cpu"))
    fed.close()
    assert sorted(fed.values) == _expected(sigmas, steps, dtype, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_helper_is_comfyuis_arithmetic(dtype):
    from disca.timesteps import dit_time_inputs

    sigmas = flow_sigmas(20, 5.0)
    for step in range(20):
        for scale in (1.0, 3.5, 6.0, 7.3):
            t, r, g = dit_time_inputs(sigmas[step:step + 1], sigmas[step + 1:step + 2], torch.tensor([scale]), dtype)
            want = comfyui_dit_inputs(sigmas, step, scale, dtype)
            assert (t.double().item(), r.double().item(), g.double().item()) == tuple(v.item() for v in want)
    assert dit_time_inputs(sigmas[1:2], None, torch.tensor([6.0]), torch.bfloat16)[2].item() == 6016.0
    assert dit_time_inputs(sigmas[1:2], None, torch.tensor([6.0]), torch.float32)[2].item() == 6000.0
