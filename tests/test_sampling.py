"""disca.sampling: the plain loops the diffusers host, DisCa-mini and the demo sample with."""

import pytest
import torch

from disca.sampling import distilled, euler_step, guided, sample_cached, sample_euler
from disca.schedules import flow_sigmas
from training.tiny import TINY_LATENT, tiny_conditioning, tiny_host
from training.batches import guidance_for


@pytest.fixture(scope="module")
def meanflow_host():
    host = tiny_host(guidance=True)
    host.add_time_r_embedder()
    torch.nn.init.normal_(host.time_r_in.linear_2.weight, std=0.05)  # r must matter
    return host.eval()


def _inputs(batch=2, seed=0):
    cond = tiny_conditioning("hunyuan_video", batch, seed)
    noise = torch.randn(batch, 16, *TINY_LATENT["hunyuan_video"], generator=torch.Generator().manual_seed(seed))
    return cond, noise


def test_every_step_an_anchor_is_the_plain_sampler(meanflow_host):
    cond, noise = _inputs()
    sigmas = flow_sigmas(6, 2.0)
    plain = sample_euler(distilled(meanflow_host, cond, 5.0), noise, sigmas)
    for mode in ("predictor", "reuse_output", "reuse_cache", "taylor"):
        cached = sample_cached(meanflow_host, noise, sigmas, cond, range(6), mode=mode, predictor=torch.nn.Identity(),
                               guidance=5.0)
        assert torch.equal(cached, plain)


def test_predicted_steps_use_the_anchor_cache(meanflow_host):
    """One anchor then a predicted step, written out by hand with the host's own methods."""
    from disca.hosts.diffusers import predictor_from_dit
    predictor = predictor_from_dit(meanflow_host, zero_gates=False).eval()
    cond, noise = _inputs()
    sigmas = flow_sigmas(2, 2.0)
    s0, s1, s2 = (sigmas[i].expand(2) for i in range(3))
    g = guidance_for(meanflow_host, 5.0, 2, "cpu")
    with torch.no_grad():
        u0, cache = meanflow_host.forward_with_cache(noise, s0, cond, s1, g)
        x1 = euler_step(noise, u0, s0, s1)
        u1 = meanflow_host.predict(predictor, x1, s1, cond, cache, s2, g)
        expected = euler_step(x1, u1, s1, s2)
    got = sample_cached(meanflow_host, noise, sigmas, cond, {0}, mode="predictor", predictor=predictor, guidance=5.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    reuse = sample_cached(meanflow_host, noise, sigmas, cond, {0}, mode="reuse_output", guidance=5.0)
    torch.testing.assert_close(reuse, euler_step(x1, u0, s1, s2), rtol=0, atol=0)
    assert not torch.allclose(got, reuse)
    reuse_cache = sample_cached(meanflow_host, noise, sigmas, cond, {0}, mode="reuse_cache", guidance=5.0)
    with torch.no_grad():
        expected = euler_step(x1, meanflow_host.reuse_cache(x1, s1, cond, cache, s2, g), s1, s2)
    torch.testing.assert_close(reuse_cache, expected, rtol=0, atol=0)


class LinearVelocityHost(torch.nn.Module):
    """A closed-form 'DiT' whose output is a + b * sigma: first-order extrapolation in sigma must be exact on it."""
    is_meanflow, is_guidance_embedded = False, False

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.randn(1, 3), torch.randn(1, 3)
        self.calls = 0

    def forward(self, x, sigma, cond, sigma_next=None, guidance=None):
        self.calls += 1
        return self.a + self.b * sigma.view(-1, 1)

    def forward_with_cache(self, x, sigma, cond, sigma_next=None, guidance=None):
        return self.forward(x, sigma, cond), (torch.zeros(1),)


def test_taylor_extrapolation_is_exact_for_a_linear_velocity():
    host = LinearVelocityHost()
    noise, sigmas = torch.zeros(1, 3), flow_sigmas(8, 3.0)
    full = sample_euler(lambda x, s, sn: host(x, s, None), noise, sigmas)
    host.calls = 0
    taylor = sample_cached(host, noise, sigmas, {}, {0, 2, 4, 6}, mode="taylor")
    assert host.calls == 4
    # steps 1 (one anchor seen: reuse) differ; from step 3 on, extrapolation from two anchors is exact
    reuse_error = (sample_cached(host, noise, sigmas, {}, {0, 2, 4, 6}, mode="reuse_output") - full).abs().max()
    taylor_error = (taylor - full).abs().max()
    step1_error = ((sigmas[2] - sigmas[1]) * host.b * (sigmas[1] - sigmas[0])).abs().max()
    assert taylor_error <= step1_error + 1e-6 and taylor_error < 0.5 * reuse_error


def test_cfg_sampler_batches_both_branches(meanflow_host):
    plain = tiny_host(guidance=False).eval()
    cond, noise = _inputs()
    negative = {k: v[:1] for k, v in tiny_conditioning("hunyuan_video", 1, 9).items()}
    out = guided(plain, cond, negative, 3.0)(noise, torch.full((2,), 0.7), None)
    with torch.no_grad():
        neg = {k: v.expand(2, *v.shape[1:]) for k, v in negative.items()}
        expected = plain(noise, torch.full((2,), 0.7), neg) + 3.0 * (plain(noise, torch.full((2,), 0.7), cond) -
                                                                    plain(noise, torch.full((2,), 0.7), neg))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_refused(meanflow_host):
    cond, noise = _inputs()
    sigmas = flow_sigmas(4, 2.0)
    with pytest.raises(ValueError, match="must include step 0"):
        sample_cached(meanflow_host, noise, sigmas, cond, {1, 2}, guidance=5.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        sample_cached(meanflow_host, noise, sigmas, cond, {0}, mode="fora", guidance=5.0)
    with pytest.raises(ValueError, match="needs the predictor"):
        sample_cached(meanflow_host, noise, sigmas, cond, {0}, guidance=5.0)
