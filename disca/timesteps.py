"""What a HunyuanVideo DiT is fed for time and guidance, computed as the deployment computes it.

A predictor or a distilled model learns from its frozen DiT's outputs, so the DiT must see in training the numbers it
sees where it is deployed. ComfyUI (0.8.0 and 0.33.0) and the official Tencent code (HunyuanVideo-1.0 with DisCa's
R-MeanFlow, HunyuanVideo-1.5) agree on them:

- timestep t = 1000 * sigma in fp32, from the sampler's fp32 sigmas. ComfyUI: `BaseModel._apply_model` calls
  `model_sampling.timestep(sigma).float()` and the flow sampling's `timestep` is `sigma * multiplier` (1000);
  official: `FlowMatchDiscreteScheduler.timesteps = (sigmas[:-1] * 1000).to(float32)`.
- MeanFlow's r = 1000 * (the next sigma), fp32. ComfyUI: `sample_sigmas[i + 1]` cast to t's dtype, then
  `timestep_embedding(r, time_factor=1000.0)`; official: `timesteps[i + 1]`.
- embedded guidance = 1000 * scale, computed in the *model's* dtype. ComfyUI casts every extra cond to the model
  dtype (`model_base.convert_tensor`) before `timestep_embedding` multiplies by 1000; the official pipelines compute
  `tensor(scale, float32).to(target_dtype) * 1000.0`. In bf16, 6.0 becomes 6016, not 6000.

Each is then embedded sinusoidally in fp32 (both codes upcast the input) and the embedding is cast to the model
dtype; the sampler's Euler update stays in fp32. So the caller keeps sigmas and the sampler state in fp32, and
only what enters the DiT is cast. (diffusers' own pipelines differ: the 1.0 pipeline casts its latents back to the
model dtype after every scheduler step and then the timestep with them, the 1.5 one keeps latents and timesteps in
the model dtype throughout; they are not what ComfyUI or the official code run.)
"""

from __future__ import annotations

import torch

TIME_SCALE = 1000.0  # sigma -> the DiT's timestep input; also the guidance multiplier


def dit_time_inputs(sigma: torch.Tensor, sigma_next: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(timestep, r, guidance) as the deployed DiT embeds them, for a DiT computing in `dtype`.

    sigma, sigma_next: [B] on the sigma scale (0..1) in fp32, the sampler's dtype (fp64 is rounded to fp32, as
    ComfyUI's sigmas are; a bf16 or fp16 sigma has already lost what matters, 0.97826 being 0.97656 in bf16, so
    callers keep their sigmas fp32 and this cannot repair them); guidance: [B] CFG scales (e.g. 6.0).
    Returns fp32 tensors holding exactly the numbers the deployed DiT embeds (its sinusoidal embedding upcasts to
    fp32, so a bf16 6016 and an fp32 6016 embed alike); r and guidance are None when not given.
    """
    timestep = sigma.float() * TIME_SCALE
    r = None if sigma_next is None else sigma_next.float() * TIME_SCALE
    g = None if guidance is None else (guidance.to(dtype) * TIME_SCALE).float()
    return timestep, r, g
