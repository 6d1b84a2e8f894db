"""GAN discriminator for the predictor: frozen DiT features at several depths + small spectral-norm heads.

Design (reference/distillation.md §6.1, after LADD / SANA-Sprint): the frozen distilled DiT is the feature
extractor; it sees a sample built from a velocity, the DiT's own (real) or the predictor's (fake), from the same x_t:
by default the clean estimate x_t - t * u at sigma 0, optionally the next sample x_r at r (`disc_input`;
`training.predictor.discriminator_input` says why the default is the clean estimate). Image tokens after a few
tapped blocks go to one head each; a head is a per-token MLP
(a 1x1 conv, as StyleGAN-T/SANA heads) with spectral normalisation on every linear, giving one logit per token.
Loss: hinge (D: relu(1 - D(real)) + relu(1 + D(fake)); predictor: -D(fake)), averaged over tokens and heads.

The trunk is not part of this module: it is frozen, shared with the rest of the stage and never DDP-wrapped; only
the heads train (and are replicated by DDP). The generator loss back-propagates through the trunk up to the deepest
tap; with gradient checkpointing on, that pass keeps ~2 sqrt(n) block inputs instead of n (`trunk_features`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from disca.hosts.diffusers import HunyuanVideoHost


def default_taps(num_blocks: int, count: int = 3) -> tuple[int, ...]:
    """`count` block indices spread over the depth, ending at the last block (e.g. 60 blocks -> 19, 39, 59)."""
    count = min(count, num_blocks)
    return tuple(sorted({round((i + 1) * num_blocks / count) - 1 for i in range(count)}))


class TokenHead(nn.Module):
    """[B, L, D] tokens -> [B, L] logits; spectral norm keeps each head 1-Lipschitz per layer."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(hidden_size, elementwise_affine=False),  # DiT residual streams grow with depth; normalise per tap
            spectral_norm(nn.Linear(hidden_size, width)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(width, width)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(width, 1)),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens.float()).squeeze(-1)


class FeatureDiscriminator(nn.Module):
    """One TokenHead per tapped block. forward(features) -> logits [num_taps, B, L_img]."""

    def __init__(self, hidden_size: int, taps: tuple[int, ...], width: int = 256):
        super().__init__()
        self.taps = tuple(taps)
        self.heads = nn.ModuleList([TokenHead(hidden_size, width) for _ in self.taps])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([head(f) for head, f in zip(self.heads, features)])


def trunk_features(host: HunyuanVideoHost, taps: tuple[int, ...], sample: torch.Tensor, sigma: torch.Tensor,
                   cond: dict[str, torch.Tensor], guidance: torch.Tensor | None,
                   segment_blocks: int | None = None) -> list[torch.Tensor]:
    """Frozen-DiT image tokens of `sample` at time `sigma` (r = sigma for MeanFlow models: the flow-matching boundary).

    With grad and the DiT's gradient checkpointing on (the generator pass), the trunk is checkpointed in segments of
    `segment_blocks` blocks (default ~sqrt of the blocks run), each block again inside (`block_features`).
    """
    sigma_next = sigma if host.is_meanflow else None
    e = host.embed(sample, sigma, cond, sigma_next, guidance)
    return host.block_features(e, taps, segment_blocks)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
