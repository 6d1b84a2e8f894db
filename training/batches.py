"""Batch helpers the training stages share: rows of the conditioning, the guidance input, moving a batch to the device."""

from __future__ import annotations

import torch

# batch entries that stay fp32 whatever the DiT's dtype: the sampler's state and its sigmas (`disca.timesteps`)
FP32_KEYS = ("latents", "sigma", "sigma_next")


def select_rows(cond: dict[str, torch.Tensor], rows, device=None) -> dict[str, torch.Tensor]:
    """The conditioning of the given prompt rows (a list or index tensor), moved to `device` when given."""
    return {k: v[rows] if device is None else v[rows].to(device) for k, v in cond.items()}


def guidance_for(host, scale: float, batch: int, device) -> torch.Tensor | None:
    """The embedded-guidance input of a batch, None for a model without a guidance embedder."""
    return torch.full((batch,), scale, device=device) if host.is_guidance_embedded else None


def to_device(value, device, dtype, key: str | None = None):
    """A batch (nested dicts and tuples of tensors) on `device`: floats in `dtype` except the FP32_KEYS entries."""
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype, k) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_device(v, device, dtype, key) for v in value)
    if not value.is_floating_point():
        return value.to(device)
    return value.to(device, torch.float32 if key in FP32_KEYS else dtype)
