"""DisCa-mini data: procedural, attribute-labelled short videos with text prompts (issue 6).

Each clip shows one or two shapes (circle / square / triangle) in one of six colours, moving in one of four
directions at one of two speeds over one of four low-saturation textured backgrounds. The *primary* object is the
larger one; it is named first in the prompt and it is the one the labels describe:

    "a red circle moving left, fast, and a small blue square moving up, slow, over a striped background"

Everything is a pure function of (seed, index): clip `index` of split `seed` draws its attributes and layout from
`numpy.random.default_rng([seed, index])`, so a clip never depends on the batch it was rendered in. The training
split is `TRAIN_SEED`, the held-out split `HELDOUT_SEED` (same attribute space, new layouts and textures).

Tensors: video [B, 3, F, H, W] in [-1, 1] (channels first, like a latent [C, F, H, W]); labels [B] int64 per
attribute (`ATTRIBUTES`). `to_latents`/`from_latents` are the fixed, exactly invertible pixel <-> latent map the
GPU run trains the DiT on (see README.md, "Latent space").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slow", "fast")
BACKGROUNDS = ("plain", "striped", "checkered", "dotted")
COUNTS = ("one", "two")
# what the classifier predicts and a prompt names, in this order; values index into the tuples above
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "direction": DIRECTIONS, "speed": SPEEDS,
              "background": BACKGROUNDS, "count": COUNTS}

TRAIN_SEED = 0
HELDOUT_SEED = 1
VALIDATION_SEED = 2  # for choosing sampling settings without looking at the held-out split

_RGB = {"red": (0.95, 0.15, 0.1), "green": (0.1, 0.85, 0.2), "blue": (0.15, 0.3, 1.0),
        "yellow": (0.95, 0.9, 0.1), "purple": (0.65, 0.15, 0.9), "white": (1.0, 1.0, 1.0)}
_COLOUR_TABLE = torch.tensor([_RGB[c] for c in COLOURS])
_SPEED_PX = (0.75, 2.25)  # pixels per frame at 64 px; 3x apart so speed is visible over a few frames
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy), y down
_PRIMARY_SIZE = (8.0, 10.0)  # half-extent in pixels at 64 px (scaled with the frame size)
_SECONDARY_SIZE = (4.0, 5.5)


@dataclass(frozen=True)
class ClipSpec:
    """Size of the rendered clips.

    frames: clip length; 17 = 4k+1 like HunyuanVideo's causal VAE input (default 17).
    size: height = width in pixels; 64 keeps the DiT's token count small (default 64; must be a multiple of 8).
    """

    frames: int = 17
    size: int = 64

    def __post_init__(self):
        if self.frames < 2:
            raise ValueError(f"ClipSpec.frames={self.frames}: a clip needs at least 2 frames to show motion")
        if self.size < 32 or self.size % 8:
            raise ValueError(f"ClipSpec.size={self.size}: use a multiple of 8 of at least 32 (e.g. 64)")


@dataclass(frozen=True)
class Clip:
    """One clip's attributes (indices into the attribute tuples) and layout, drawn from (seed, index)."""

    labels: dict[str, int]
    secondary: dict[str, int] | None  # shape/colour/direction/speed of the small object, None for one object
    params: np.ndarray                # [2, 5] per object: x0, y0 (pixels), half-size, dx, dy (pixels/frame); row 1 unused if one
    texture: np.ndarray               # [4]: frequency, phase, angle, grey level of the background


def _object_layout(rng: np.random.Generator, direction: int, speed: int, size_range, spec: ClipSpec) -> np.ndarray:
    """x0, y0, half-size, dx, dy for an object that stays fully inside the frame for the whole clip."""
    scale = spec.size / 64.0
    half = rng.uniform(*size_range) * scale
    dx, dy = _UNIT[DIRECTIONS[direction]]
    step = _SPEED_PX[speed] * scale
    travel = step * (spec.frames - 1)
    lo, hi = half + 1.0, spec.size - half - 1.0
    start = []
    for unit in (dx, dy):
        if unit > 0:
            start.append(rng.uniform(lo, max(lo, hi - travel)))
        elif unit < 0:
            start.append(rng.uniform(min(hi, lo + travel), hi))
        else:
            start.append(rng.uniform(lo, hi))
    return np.array([start[0], start[1], half, dx * step, dy * step])


def clip_spec(seed: int, index: int, spec: ClipSpec = ClipSpec()) -> Clip:
    """Attributes and layout of clip `index` of split `seed`; deterministic and independent of other clips."""
    rng = np.random.default_rng([seed, index])
    labels = {name: int(rng.integers(len(values))) for name, values in ATTRIBUTES.items()}
    params = np.zeros((2, 5))
    params[0] = _object_layout(rng, labels["direction"], labels["speed"], _PRIMARY_SIZE, spec)
    secondary = None
    if labels["count"] == 1:
        secondary = {name: int(rng.integers(len(ATTRIBUTES[name]))) for name in ("shape", "colour", "direction", "speed")}
        params[1] = _object_layout(rng, secondary["direction"], secondary["speed"], _SECONDARY_SIZE, spec)
    texture = np.array([rng.uniform(0.35, 0.7), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi), rng.uniform(0.2, 0.45)])
    return Clip(labels, secondary, params, texture)


def _object_phrase(attrs: dict[str, int], small: bool) -> str:
    size = "small " if small else ""
    return (f"a {size}{COLOURS[attrs['colour']]} {SHAPES[attrs['shape']]} moving {DIRECTIONS[attrs['direction']]}, "
            f"{SPEEDS[attrs['speed']]}")


def prompt_of(clip: Clip) -> str:
    """The prompt naming every attribute: primary object, then the small one, then the background."""
    parts = [_object_phrase(clip.labels, small=False)]
    if clip.secondary is not None:
        parts.append(_object_phrase(clip.secondary, small=True))
    return f"{', and '.join(parts)}, over a {BACKGROUNDS[clip.labels['background']]} background"


def _backgrounds(clips: list[Clip], spec: ClipSpec) -> torch.Tensor:
    """Static low-saturation textures, [B, 3, 1, H, W] in [0, 1]."""
    texture = torch.tensor(np.stack([c.texture for c in clips]), dtype=torch.float32)
    kind = torch.tensor([c.labels["background"] for c in clips])
    freq, phase, angle, grey = (texture[:, i].view(-1, 1, 1) for i in range(4))
    coords = torch.arange(spec.size, dtype=torch.float32) * (64.0 / spec.size)
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)
    along = x * torch.cos(angle) + y * torch.sin(angle)
    across = -x * torch.sin(angle) + y * torch.cos(angle)
    stripes = (torch.sin(along * freq + phase) > 0).float()
    checks = ((torch.sin(along * freq * 0.7 + phase) > 0) ^ (torch.sin(across * freq * 0.7 + phase) > 0)).float()
    dots = ((torch.sin(along * freq * 1.3 + phase) * torch.sin(across * freq * 1.3 + phase)) > 0.75).float()
    plain = torch.zeros_like(stripes)
    pattern = torch.stack([plain, stripes, checks, dots], dim=1)[torch.arange(len(clips)), kind]  # [B, H, W]
    # grey texture, slightly tinted, contrast 0.15: never confusable with the saturated object colours
    tint = torch.tensor([1.0, 0.97, 0.94]).view(1, 3, 1, 1)
    image = (grey.unsqueeze(1) + 0.15 * pattern.unsqueeze(1)) * tint
    return image.unsqueeze(2)


def _signed_distance(shape: str, dx: torch.Tensor, dy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Signed distance to a shape of half-extent `half` centred at dx = dy = 0 (negative inside), broadcast."""
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - half * 0.85
    # triangle: base y = +h, apex (0, -h); its sides have outward normals (+-2, -1) / sqrt(5)
    return torch.maximum(dy - half, (2 * dx.abs() - dy - half) / 5 ** 0.5)


def _object_masks(params: torch.Tensor, shapes: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Soft (1-pixel anti-aliased) masks of one object per clip: params [B, 5], shapes [B] -> [B, 1, F, H, W]."""
    frames = torch.arange(spec.frames, dtype=torch.float32).view(1, -1, 1, 1)
    pixel = torch.arange(spec.size, dtype=torch.float32) + 0.5
    masks = torch.empty(len(shapes), 1, spec.frames, spec.size, spec.size)
    for value, shape in enumerate(SHAPES):  # one shape per group: a third of the work of computing all three
        rows = (shapes == value).nonzero().flatten()
        if len(rows) == 0:
            continue
        p = params[rows].view(-1, 5, 1, 1, 1).unbind(1)  # x0, y0, half, dx, dy: each [b, 1, 1, 1]
        dx = pixel.view(1, 1, 1, -1) - (p[0] + p[3] * frames)  # [b, F, 1, W]
        dy = pixel.view(1, 1, -1, 1) - (p[1] + p[4] * frames)  # [b, F, H, 1]
        masks[rows, 0] = (0.5 - _signed_distance(shape, dx, dy, p[2])).clamp_(0, 1)
    return masks


_RENDER_CHUNK = 32  # clips rendered together: keeps the [chunk, F, H, W] temporaries in cache (4x faster than 1000)


def render(clips: list[Clip], spec: ClipSpec = ClipSpec()) -> torch.Tensor:
    """Clips -> video [B, 3, F, H, W] in [-1, 1]; the small object is drawn first, the primary on top."""
    return torch.cat([_render_chunk(clips[i:i + _RENDER_CHUNK], spec) for i in range(0, len(clips), _RENDER_CHUNK)])


def _render_chunk(clips: list[Clip], spec: ClipSpec) -> torch.Tensor:
    video = _backgrounds(clips, spec).expand(-1, -1, spec.frames, -1, -1)
    params = torch.tensor(np.stack([c.params for c in clips]), dtype=torch.float32)
    for objects, row in (([c.secondary for c in clips], 1), ([c.labels for c in clips], 0)):
        rows = [i for i, attrs in enumerate(objects) if attrs is not None]
        if not rows:
            continue
        index = torch.tensor(rows)
        mask = _object_masks(params[index, row], torch.tensor([objects[i]["shape"] for i in rows]), spec)
        colour = _COLOUR_TABLE[torch.tensor([objects[i]["colour"] for i in rows])].view(-1, 3, 1, 1, 1)
        video = video.clone() if video.stride()[2] == 0 else video
        video[index] = video[index] * (1 - mask) + colour * mask
    return video * 2 - 1


def make_batch(seed: int, indices, spec: ClipSpec = ClipSpec()) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Clips `indices` of split `seed`: (video [B, 3, F, H, W], labels {attribute: [B]}, prompts)."""
    clips = [clip_spec(seed, int(i), spec) for i in indices]
    labels = {name: torch.tensor([c.labels[name] for c in clips]) for name in ATTRIBUTES}
    return render(clips, spec), labels, [prompt_of(c) for c in clips]


# -------------------------------------------------------------------------------------------- latent space

LATENT_FACTOR = 4  # spatial space-to-depth factor: 3 x 64 x 64 pixels -> 48 x 16 x 16 latent per frame


def to_latents(video: torch.Tensor, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """Fixed lossless 'VAE': video [B, 3, F, H, W] -> latents [B, 3*factor^2, F, H/factor, W/factor] (space-to-depth)."""
    b, c, f, h, w = video.shape
    if h % factor or w % factor:
        raise ValueError(f"video {h}x{w} is not divisible by the latent factor {factor}")
    x = video.reshape(b, c, f, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * factor * factor, f, h // factor, w // factor)


def from_latents(latents: torch.Tensor, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """Inverse of `to_latents`: latents [B, 3*factor^2, F, h, w] -> video [B, 3, F, h*factor, w*factor]."""
    b, channels, f, h, w = latents.shape
    c = channels // (factor * factor)
    x = latents.reshape(b, c, factor, factor, f, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c, f, h * factor, w * factor)
