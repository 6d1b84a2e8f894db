"""DisCa-mini evaluation: attribute classifier (semantic proxy), Fréchet distance in its features (quality proxy),
PSNR against a reference, and a DiT-call counter (issue 6).

The classifier is trained on real rendered clips only (never on generated ones) and frozen; every method is scored
by the same frozen network on the same held-out prompts and noises:

- accuracy: fraction of generated clips whose predicted attribute equals the prompt's (per attribute);
- Fréchet distance (Heusel et al. 2017, eq. 6) between Gaussians fitted to its penultimate features of generated
  and of real held-out clips: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2));
- PSNR against the 50-step CFG teacher's clip from the same prompt and noise (pixels in [-1, 1], peak-to-peak 2);
- DiT calls per video, counted by a hook on the DiT's first block (predictor calls do not run it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from benchmarks.mini.dataset import ATTRIBUTES, TRAIN_SEED, ClipSpec, make_batch

logger = logging.getLogger(__name__)

META_CONFIG = "disca_mini.classifier_config"
META_SPEC = "disca_mini.clip_spec"


@dataclass(frozen=True)
class ClassifierConfig:
    """Attribute classifier shape; stored in the safetensors metadata so `load_classifier` rebuilds it.

    width: channels of the first conv; the next two have 2x and 4x (default 16; more is slower on CPU).
    feature_dim: width of the penultimate features the Fréchet distance uses (default 128).
    """

    width: int = 16
    feature_dim: int = 128

    def __post_init__(self):
        if self.width < 1 or self.feature_dim < 2:
            raise ValueError(f"ClassifierConfig: width={self.width} must be >= 1 and feature_dim={self.feature_dim} >= 2")


class AttributeClassifier(nn.Module):
    """Small 3D conv net: video [B, 3, F, H, W] in [-1, 1] -> {attribute: logits [B, n]}; `features` -> [B, feature_dim]."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig(), spec: ClipSpec = ClipSpec()):
        super().__init__()
        self.config, self.spec = config, spec
        w = config.width
        # 4x4 patchify and 2x frame stride first (frame differences carry the motion at full rate): the CPU cost is
        # in the first layer
        self.trunk = nn.Sequential(
            nn.Conv3d(6, w, kernel_size=(3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0)), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv3d(w, 2 * w, kernel_size=3, stride=(1, 2, 2), padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.Conv3d(2 * w, 4 * w, kernel_size=3, stride=2, padding=1), nn.GroupNorm(4, 4 * w), nn.SiLU(),
        )
        # flattened (where the object is at which time: direction, speed) + mean/max pooled (what: shape, texture)
        with torch.no_grad():
            flat = self.trunk(torch.zeros(1, 6, spec.frames, spec.size, spec.size)).numel() + 8 * w
        self.project = nn.Sequential(nn.Linear(flat, config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(values)) for name, values in ATTRIBUTES.items()})

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim]; the trunk sees the frames and their differences (motion)."""
        difference = torch.cat([video[:, :, 1:] - video[:, :, :-1], torch.zeros_like(video[:, :, :1])], dim=2)
        x = self.trunk(torch.cat([video, difference], dim=1))
        return self.project(torch.cat([x.flatten(1), x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1))

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(video)
        return {name: head(features) for name, head in self.heads.items()}


@dataclass(frozen=True)
class ClassifierTraining:
    """How `train_classifier` fits the classifier on real clips of split `seed`.

    clips: distinct training clips, rendered once (default 2048; the 600-clip test reaches > 0.9 on every attribute).
    steps: optimiser steps of `batch_size` clips drawn from them (default 600).
    learning_rate: AdamW, cosine-decayed to 0 (default 3e-3).
    """

    clips: int = 2048
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = TRAIN_SEED

    def __post_init__(self):
        if self.clips < self.batch_size or self.steps < 1 or self.learning_rate <= 0:
            raise ValueError(f"ClassifierTraining: need clips >= batch_size, steps >= 1, learning_rate > 0; got {self}")


def _learning_rate(step: int, training: ClassifierTraining) -> float:
    return training.learning_rate * 0.5 * (1 + math.cos(math.pi * step / training.steps))


def train_classifier(training: ClassifierTraining = ClassifierTraining(),
                     config: ClassifierConfig = ClassifierConfig(), spec: ClipSpec = ClipSpec()) -> AttributeClassifier:
    """Fit the classifier on real clips 0..clips-1 of split `training.seed` (cross-entropy summed over attributes)."""
    torch.manual_seed(training.seed)
    model = AttributeClassifier(config, spec)
    video, labels, _ = make_batch(training.seed, range(training.clips), spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(training.seed)
    model.train()
    for step in range(training.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, training)
        rows = torch.randint(training.clips, (training.batch_size,), generator=generator)
        logits = model(video[rows])
        loss = sum(nn.functional.cross_entropy(logits[name], labels[name][rows]) for name in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logger.debug("classifier step %d loss %.4f", step, loss.item())
    logger.info("trained the DisCa-mini classifier: %d steps on %d clips, last loss %.4f",
                training.steps, training.clips, loss.item())
    return model.eval()


@torch.no_grad()
def classify(model: AttributeClassifier, video: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """video [N, 3, F, H, W] -> (predicted labels {attribute: [N]}, features [N, feature_dim])."""
    model.eval()
    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    features = []
    for start in range(0, len(video), batch_size):
        chunk_features = model.features(video[start:start + batch_size])
        features.append(chunk_features)
        for name, head in model.heads.items():
            predictions[name].append(head(chunk_features).argmax(dim=1))
    return {name: torch.cat(values) for name, values in predictions.items()}, torch.cat(features)


def attribute_accuracy(predicted: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy plus 'all' (every attribute of a clip right) over [N] label tensors."""
    correct = {name: predicted[name] == labels[name] for name in ATTRIBUTES}
    result = {name: value.float().mean().item() for name, value in correct.items()}
    result["all"] = torch.stack(list(correct.values())).all(dim=0).float().mean().item()
    return result


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features [N, D] and [M, D] (Heusel et al. 2017, eq. 6), float64.

    Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)), a symmetric PSD matrix: no scipy needed.
    """
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError(f"Fréchet distance needs >= 2 samples per side, got {len(features_a)} and {len(features_b)}")
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle).item()


def psnr(video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR in dB of video vs reference, both [N, 3, F, H, W] in [-1, 1] (peak-to-peak 2) -> [N]."""
    if video.shape != reference.shape:
        raise ValueError(f"PSNR: video {tuple(video.shape)} and reference {tuple(reference.shape)} differ in shape")
    mse = (video.double() - reference.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-12))


class DiTCallCounter:
    """Counts full DiT passes through a forward pre-hook on a module every pass runs exactly once.

    Use the DiT's first block (`host.main_blocks()[0]` for `disca.hosts.diffusers.HunyuanVideoHost`): a DisCa
    predictor step embeds tokens and runs the DiT's final layer but not its blocks, so it is not counted. Batched
    CFG (cond + uncond in one batch of 2) counts 2 rows, as "50x2" in the paper.
    """

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]

    def per_video(self, videos: int) -> float:
        """DiT rows per generated video: batch rows summed over calls / videos."""
        return self.rows / videos


@contextlib.contextmanager
def count_dit_calls(first_block: nn.Module):
    """`with count_dit_calls(host.main_blocks()[0]) as counter: ...`; the hook is removed on exit."""
    counter = DiTCallCounter()
    handle = first_block.register_forward_pre_hook(counter._hook)
    try:
        yield counter
    finally:
        handle.remove()


def save_classifier(path: str, model: AttributeClassifier) -> None:
    from disca.formats import save_safetensors

    state = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    save_safetensors(path, state, {META_CONFIG: json.dumps(asdict(model.config)), META_SPEC: json.dumps(asdict(model.spec))})


def load_classifier(path: str) -> AttributeClassifier:
    """The frozen classifier saved by `save_classifier`, rebuilt from its metadata, in eval mode."""
    from disca.formats import load_safetensors

    state, metadata = load_safetensors(path)
    missing = [key for key in (META_CONFIG, META_SPEC) if key not in metadata]
    if missing:
        raise ValueError(f"{path}: no {missing} metadata; not a DisCa-mini classifier written by save_classifier")
    model = AttributeClassifier(ClassifierConfig(**json.loads(metadata[META_CONFIG])),
                                ClipSpec(**json.loads(metadata[META_SPEC])))
    model.load_state_dict(state)
    return model.eval()
