"""Plain sampling loops for hosts without a sampler of their own (the diffusers host: trainer, DisCa-mini, demo).

ComfyUI reaches the same math through its samplers and our wrappers (`disca.hosts.comfyui`); here it is in plain
sight, k-diffusion style. Flow convention: x_sigma = (1 - sigma) x_0 + sigma eps, the model returns the velocity
(MeanFlow: the average velocity over [r, t] with r = the next sigma), and one step is

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * u_i

A host is any module with `forward(x, sigma, cond, sigma_next, guidance)`, `forward_with_cache(...)` ->
(velocity, cache), `predict(predictor, x, sigma, cond, cache, sigma_next, guidance)` and the flags `is_meanflow`,
`is_guidance_embedded` (`disca.hosts.diffusers.HunyuanVideoHost`). sigma, sigma_next and guidance are [B].

As in ComfyUI (and in the official code's Euler update), sigmas and the sampler state x stay fp32 whatever the
model's dtype: the host casts what enters the DiT (`disca.timesteps`), and its outputs are combined and stepped in
fp32.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

from .runtime import MODE_PREDICTOR, MODES, DisCaConfig, DisCaRun
from .schedules import AnchorSchedule

log = logging.getLogger("disca")
BATCH_KEY = ("batch",)  # the runtime keys its cache by the conds of a call; here every call is the whole batch


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Euler / MeanFlow step x_r = x_t + (r - t) * u; x, velocity: [B, ...]; sigma, sigma_next: [B]."""
    return x + (sigma_next - sigma).view(-1, *([1] * (x.ndim - 1))) * velocity


def _r(host, sigma_next: torch.Tensor) -> torch.Tensor | None:
    return sigma_next if host.is_meanflow else None


@torch.no_grad()
def sample_euler(model: Callable, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler through `sigmas` (1D, from ~1 down to 0) with `model(x, sigma[B], sigma_next[B]) -> velocity`."""
    x, batch = noise.float(), noise.shape[0]
    sigmas = sigmas.to(noise.device, torch.float32)  # once: the loop then makes no host copies
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        x = euler_step(x, model(x, sigma, sigma_next), sigma, sigma_next)
    return x


def guided(host, cond: dict, negative: dict, scale: float) -> Callable:
    """Classifier-free guidance on an undistilled host: u = u(neg) + scale (u(c) - u(neg)), both in one batch."""
    def model(x, sigma, sigma_next):
        batch = x.shape[0]
        both = {k: torch.cat([cond[k], negative[k].expand(batch, *negative[k].shape[1:])]) for k in cond}
        out = host(torch.cat([x, x]), torch.cat([sigma, sigma]), both).float()  # CFG on fp32, as ComfyUI's denoised
        positive, uncond = out[:batch], out[batch:]
        return uncond + scale * (positive - uncond)
    return model


def distilled(host, cond: dict, guidance: float | None = None) -> Callable:
    """One branch per step: guidance folded in (`guidance_in`), MeanFlow's r = the next sigma."""
    def model(x, sigma, sigma_next):
        g = torch.full_like(sigma, guidance) if host.is_guidance_embedded else None
        return host(x, sigma, cond, _r(host, sigma_next), g)
    return model


@torch.no_grad()
def sample_cached(host, noise: torch.Tensor, sigmas: torch.Tensor, cond: dict, anchors: Iterable[int], *,
                  mode: str = MODE_PREDICTOR, predictor: torch.nn.Module | None = None,
                  guidance: float | None = None, on_step: Callable | None = None,
                  log_summary: bool = False) -> torch.Tensor:
    """DisCa's alternation on a distilled host, through the runtime every host uses (`disca.runtime.DisCaRun`):
    anchor steps run the full DiT (and refresh the cache), the others get their output from `mode`. Step 0 must be
    an anchor: nothing is cached before it.

    `on_step(i, x, sigma, sigma_next, velocity, cache)`, if given, sees every step's input, times, the output the step
    uses and the last anchor's hidden state, before the Euler update (the trainer builds on-policy pairs from these).
    `log_summary` logs the run's summary (steps, times, cache size) at the end, as the ComfyUI host does."""
    anchors = tuple(sorted(set(anchors)))
    if 0 not in anchors:
        raise ValueError(f"anchors {list(anchors)} must include step 0: a cached step needs an anchor before it")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == MODE_PREDICTOR and predictor is None:
        raise ValueError("mode 'predictor' needs the predictor module")
    x, batch = noise.float(), noise.shape[0]
    sigmas = sigmas.to(noise.device, torch.float32)
    run = DisCaRun(DisCaConfig(AnchorSchedule(anchors=anchors), mode=mode), len(sigmas) - 1, predictor)
    latest = {}  # the last anchor's hidden state, for on_step (the runtime keeps only what the mode needs)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        g = torch.full_like(sigma, guidance) if host.is_guidance_embedded else None
        r = _r(host, sigma_next)

        def full_step(capture):
            velocity, latest["cache"] = host.forward_with_cache(x, sigma, cond, r, g)
            return velocity, latest["cache"]

        def cached_step(cache):
            if mode == MODE_PREDICTOR:
                return host.predict(predictor, x, sigma, cond, cache, r, g)
            return host.reuse_cache(x, sigma, cond, cache, r, g)

        velocity = run.call(BATCH_KEY, x, sigma, full_step, cached_step)
        if on_step is not None:
            on_step(i, x, sigma, sigma_next, velocity, latest["cache"])
        x = euler_step(x, velocity.float(), sigma, sigma_next)
        run.step_finished(i)
    if log_summary:
        log.info(run.summary())
    return x
