"""The DisCa predictor: fusion MLP(s) + a few DiT blocks that the host supplies.

DisCa (arXiv 2602.05449, §3.2) replaces the DiT's blocks on non-anchor steps with a light predictor P that
reads the cache C (the last-layer hidden tokens of the preceding anchor step) and the current step's
embedded tokens:

    HunyuanVideo-1.0 (single-stream):  x = fusion_mlp([tokens ‖ C])          tokens = [img ‖ txt]
                                       x = single_block_k(x, vec, pe) for k in 0..depth-1
    HunyuanVideo-1.5 (double-stream):  img = fusion_mlp_img([img ‖ C_img]),  txt = fusion_mlp_txt([txt ‖ C_txt])
                                       img, txt = double_block_k(img, txt, vec, pe) for k in 0..depth-1

then the DiT's own final layer maps the image tokens to the output. Top-level module names are those of the
official files (`fusion_mlp`, `mm_single_blocks`, `fusion_mlp_img`, `fusion_mlp_txt`, `double_blocks`); the
block internals are the host's (ComfyUI or diffusers), so each host renames block keys on load.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .formats import (ARCH_HV10, DOUBLE_STREAM_BLOCKS, FUSION_IMG, FUSION_SINGLE, FUSION_TXT,
                      SINGLE_STREAM_BLOCKS, PredictorSpec)


def build_fusion_mlp(hidden_size: int, operations=nn, dtype=None, device=None) -> nn.Sequential:
    """Linear(2D -> D), SiLU, Linear(D -> D): keys `.0.*` and `.2.*` as in the official files."""
    return nn.Sequential(
        operations.Linear(2 * hidden_size, hidden_size, dtype=dtype, device=device),
        nn.SiLU(),
        operations.Linear(hidden_size, hidden_size, dtype=dtype, device=device),
    )


class DisCaPredictor(nn.Module):
    """Fusion + host blocks: `blocks` are `spec.depth` blocks of the host, of the spec's type (single or double)."""

    def __init__(self, spec: PredictorSpec, blocks: Iterable[nn.Module], operations=nn, dtype=None, device=None):
        super().__init__()
        self.spec = spec
        self.trained_only_on_lists: tuple[tuple[int, ...], ...] | None = None  # PredictorFile.trained_only_on_lists
        blocks = nn.ModuleList(blocks)
        if len(blocks) != spec.depth:
            raise ValueError(f"a depth-{spec.depth} predictor needs {spec.depth} blocks, got {len(blocks)}")
        if spec.arch == ARCH_HV10:
            setattr(self, FUSION_SINGLE, build_fusion_mlp(spec.hidden_size, operations, dtype, device))
            setattr(self, SINGLE_STREAM_BLOCKS, blocks)
        else:
            setattr(self, FUSION_IMG, build_fusion_mlp(spec.hidden_size, operations, dtype, device))
            setattr(self, FUSION_TXT, build_fusion_mlp(spec.hidden_size, operations, dtype, device))
            setattr(self, DOUBLE_STREAM_BLOCKS, blocks)

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self, SINGLE_STREAM_BLOCKS if self.spec.arch == ARCH_HV10 else DOUBLE_STREAM_BLOCKS)

    def fuse_tokens(self, tokens: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        """Single-stream fusion. tokens, cache: [B, L, D] -> [B, L, D]."""
        return getattr(self, FUSION_SINGLE)(torch.cat([tokens, cache], dim=-1))

    def fuse_streams(self, img: torch.Tensor, txt: torch.Tensor, cache_img: torch.Tensor,
                     cache_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Double-stream fusion. img/cache_img: [B, L_img, D], txt/cache_txt: [B, L_txt, D] -> same shapes."""
        return (getattr(self, FUSION_IMG)(torch.cat([img, cache_img], dim=-1)),
                getattr(self, FUSION_TXT)(torch.cat([txt, cache_txt], dim=-1)))


def predictor_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
