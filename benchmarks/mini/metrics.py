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

from benchmarks.mini.dataset import ATTRIBUTES, DIRECTIONS, TRAIN_SEED, ClipSpec, make_batch

logger = logging.getLogger(__name__)

META_CONFIG = "disca_mini.classifier_config"
META_SPEC = "disca_mini.clip_spec"


@dataclass(frozen=True)
class ClassifierConfig:
    """Attribute classifier shape; stored in the safetensors metadata so `load_classifier` rebuilds it.

    width: channels of the appearance branch's first conv; the next three have 2x, 4x and 4x (default 16).
    motion_width: channels of the motion branch's first conv; the next three have 2x, 4x and 4x (default 8).
    feature_dim: width of the penultimate features the Fréchet distance uses (default 128).
    appearance_frames: evenly spaced frames (first and last included) the appearance branch sees (default 3).
    """

    width: int = 16
    motion_width: int = 8
    feature_dim: int = 128
    appearance_frames: int = 3

    def __post_init__(self):
        if min(self.width, self.motion_width, self.appearance_frames) < 1 or self.feature_dim < 2:
            raise ValueError(f"ClassifierConfig: width, motion_width and appearance_frames must be >= 1 and "
                             f"feature_dim >= 2; got {self}")


def _conv(dims: int, inputs: int, outputs: int, stride) -> list[nn.Module]:
    """3x3(x3) conv (padding 1, no bias) + BatchNorm + SiLU; dims 2 (per frame) or 3 (space-time)."""
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return [conv(inputs, outputs, 3, stride, 1, bias=False), norm(outputs), nn.SiLU()]


class AttributeClassifier(nn.Module):
    """Two-branch conv net: video [B, 3, F, H, W] in [-1, 1] -> {attribute: logits [B, n]}; `features` -> [B, feature_dim].

    Both branches see the RGB frames plus a chroma channel (max - min over RGB: the saturated objects stand out from
    the grey textured background whatever their colour; a white object stands out by its RGB values).

    - appearance (shape, background texture, count, colour): a per-frame 2D net on `appearance_frames` frames at
      full resolution, 3x3 convs with strides 2, 2, 2, 1 (64 -> 8 px, receptive field 31 px; the textures' periods
      are 7-26 px), on several frames so that a small second object hidden by the primary in one frame still shows;
    - motion (direction, speed): every frame plus its difference to the next, a per-frame 2D stem (3x3, strides 2,
      2) then two 3D convs (stride 2 in time and space, then 2 in time);
    - each branch is mean- and max-pooled over frames and positions (what, not where: no flattened map), and the
      pooled vector goes through Linear + SiLU to the features, then one linear head per attribute.

    Ablations (1024 clips, 400 steps of 32, one CPU thread; held-out shape / background / count, README.md): a 3x3
    stride-2 per-frame stem with GroupNorm and a flattened map 0.56 / 0.74 / 0.86; BatchNorm and pooled-only
    features 0.89 / 0.76 / 0.91; + chroma and brightness channels 0.98 / 0.74 / 0.97; + the separate appearance
    branch 0.996 / 0.80 / 0.99. Background (stripes vs checks) is learnt last and abruptly (appearance-only runs:
    0.81-0.99 after 400 steps depending on the seed, >= 0.99 after 800), hence the longer default run.
    BatchNorm uses running statistics in eval mode; `classify` always runs in eval mode.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig(), spec: ClipSpec = ClipSpec()):
        super().__init__()
        self.config, self.spec = config, spec
        w, m = config.width, config.motion_width
        frames = torch.linspace(0, spec.frames - 1, config.appearance_frames).round().long()
        self.register_buffer("appearance_index", frames, persistent=False)
        self.appearance = nn.Sequential(*_conv(2, 4, w, 2), *_conv(2, w, 2 * w, 2), *_conv(2, 2 * w, 4 * w, 2),
                                        *_conv(2, 4 * w, 4 * w, 1))
        self.motion_stem = nn.Sequential(*_conv(2, 7, m, 2), *_conv(2, m, 2 * m, 2))
        self.motion = nn.Sequential(*_conv(3, 2 * m, 4 * m, 2), *_conv(3, 4 * m, 4 * m, (2, 1, 1)))
        self.project = nn.Sequential(nn.Linear(8 * w + 8 * m, config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, len(values)) for name, values in ATTRIBUTES.items()})

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim] of video [B, 3, F, H, W]."""
        b, _, f, h, w = video.shape
        x = torch.cat([video, video.amax(1, keepdim=True) - video.amin(1, keepdim=True)], dim=1)  # + chroma
        frames = x[:, :, self.appearance_index.clamp(max=f - 1)]
        look = self.appearance(frames.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, frames.shape[2]))
        difference = x[:, :3, 1:] - x[:, :3, :-1]
        difference = torch.cat([difference, torch.zeros_like(difference[:, :, :1])], dim=2)
        move = self.motion_stem(torch.cat([x, difference], dim=1).transpose(1, 2).flatten(0, 1))
        move = self.motion(move.unflatten(0, (b, f)).transpose(1, 2))
        pooled = [look.mean(dim=(1, 3, 4)), look.amax(dim=(1, 3, 4)), move.mean(dim=(2, 3, 4)), move.amax(dim=(2, 3, 4))]
        return self.project(torch.cat(pooled, dim=1))

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(video)
        return {name: head(features) for name, head in self.heads.items()}


@dataclass(frozen=True)
class ClassifierTraining:
    """How `train_classifier` fits the classifier on real clips of split `seed`.

    The defaults are sized for a GPU (well under a minute of training on an H100). Measured on one CPU thread, 17-frame
    clips: 2048 clips and 2000 steps of 32 (12 min) reach >= 0.99 on every attribute on 512 held-out clips (README.md).

    clips: distinct training clips, rendered once (default 4096).
    steps: optimiser steps of `batch_size` clips drawn from them, each randomly mirrored left-right and/or played
        backwards with the direction label mapped to match (default 2000).
    batch_size: clips per step (default 64).
    learning_rate: AdamW, cosine-decayed to 0 (default 3e-3).
    """

    clips: int = 4096
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = TRAIN_SEED

    def __post_init__(self):
        if self.clips < self.batch_size or self.batch_size < 2 or self.steps < 1 or self.learning_rate <= 0:
            raise ValueError(f"ClassifierTraining: need clips >= batch_size >= 2, steps >= 1, learning_rate > 0; got {self}")


def _learning_rate(step: int, training: ClassifierTraining) -> float:
    return training.learning_rate * 0.5 * (1 + math.cos(math.pi * step / training.steps))


_LEFT, _RIGHT, _UP, _DOWN = (DIRECTIONS.index(name) for name in ("left", "right", "up", "down"))


def _augment(video: torch.Tensor, direction: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving symmetries of the dataset: mirror left-right (every shape, texture and layout stays a valid
    clip; left <-> right) and play backwards (the object starts where it ended; left <-> right, up <-> down).
    No vertical mirror: the triangle points up."""
    mirror, backwards = (torch.rand(2, len(video), generator=generator) < 0.5).to(video.device)
    video = torch.where(mirror.view(-1, 1, 1, 1, 1), video.flip(4), video)
    video = torch.where(backwards.view(-1, 1, 1, 1, 1), video.flip(2), video)
    swap = {_LEFT: _RIGHT, _RIGHT: _LEFT, _UP: _DOWN, _DOWN: _UP}
    swapped = torch.tensor([swap[i] for i in range(len(DIRECTIONS))], device=direction.device)[direction]
    horizontal = (direction == _LEFT) | (direction == _RIGHT)
    flip = torch.where(horizontal, mirror ^ backwards, backwards)
    return video, torch.where(flip, swapped, direction)


_RESIDENT_BYTES = 8 << 30  # training clips up to this size are moved to an accelerator once, not batch by batch


def train_classifier(training: ClassifierTraining = ClassifierTraining(),
                     config: ClassifierConfig = ClassifierConfig(), spec: ClipSpec = ClipSpec(),
                     device: torch.device | str | None = None) -> AttributeClassifier:
    """Fit the classifier on real clips 0..clips-1 of split `training.seed` (cross-entropy summed over attributes).

    device: where the model trains (default CPU); the clips are rendered on the CPU and moved there once if they
    fit in 8 GiB, else batch by batch. The model is returned on `device`, in eval mode.
    """
    device = torch.device(device or "cpu")
    torch.manual_seed(training.seed)
    model = AttributeClassifier(config, spec).to(device)
    video, labels, _ = make_batch(training.seed, range(training.clips), spec)
    if device.type != "cpu" and video.nbytes <= _RESIDENT_BYTES:
        video = video.to(device)
    labels = {name: value.to(device) for name, value in labels.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(training.seed)
    model.train()
    for step in range(training.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, training)
        rows = torch.randint(training.clips, (training.batch_size,), generator=generator)
        batch = {name: value[rows.to(device)] for name, value in labels.items()}
        clips, batch["direction"] = _augment(video[rows.to(video.device)].to(device, non_blocking=True),
                                             batch["direction"], generator)
        logits = model(clips)
        loss = sum(nn.functional.cross_entropy(logits[name], batch[name]) for name in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == training.steps - 1:
            logger.debug("classifier step %d loss %.4f", step, loss.item())
    logger.info("trained the DisCa-mini classifier: %d steps on %d clips, last loss %.4f",
                training.steps, training.clips, loss.item())
    return model.eval()


@torch.no_grad()
def classify(model: AttributeClassifier, video: torch.Tensor, batch_size: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """video [N, 3, F, H, W] -> (predicted labels {attribute: [N]}, features [N, feature_dim]), in eval mode.

    Chunks of `batch_size` clips run on the model's device; the results are on the video's device.
    """
    model.eval()
    device = next(model.parameters()).device
    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    features = []
    for start in range(0, len(video), batch_size):
        chunk_features = model.features(video[start:start + batch_size].to(device))
        features.append(chunk_features.to(video.device))
        for name, head in model.heads.items():
            predictions[name].append(head(chunk_features).argmax(dim=1).to(video.device))
    return {name: torch.cat(values) for name, values in predictions.items()}, torch.cat(features)


def attribute_correct(predicted: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per clip, [N] bool: each attribute right, and 'all' (every attribute of the clip right)."""
    correct = {name: predicted[name] == labels[name] for name in ATTRIBUTES}
    correct["all"] = torch.stack(list(correct.values())).all(dim=0)
    return correct


def attribute_accuracy(predicted: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-attribute accuracy plus 'all' (every attribute of a clip right) over [N] label tensors."""
    return {name: value.float().mean().item() for name, value in attribute_correct(predicted, labels).items()}


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
