"""Data prep: cache prompt embeddings, I2V reference images and video latents as safetensors, and read them back.

Encoding runs the HunyuanVideo text encoders, image encoder and VAE once, through diffusers, so training never loads them:

    python -m training.data encode --dataset my_dataset.toml          # prompts (+ 1.5 I2V reference images)
    python -m training.data encode-videos --dataset my_dataset.toml   # video latents for meanflow / cfg_distill

The dataset file follows musubi-tuner's TOML layout ([general] + [[datasets]]); training/configs/dataset.toml and
training/README.md document every key. Each [[datasets]] entry takes its items from exactly one source:

    prompts_file = "prompts.txt"     # text only: one prompt per line; blank lines and '#' lines are skipped
    image_directory = "refs/"        # I2V (1.5): NAME.png|jpg|jpeg|webp + caption NAME.txt, sorted by NAME
    video_directory = "clips/"       # NAME.mp4 (needs imageio) or NAME/ (a folder of frame PNGs) + caption NAME.txt

Cache files (rows are the entry's items in order; row i of every file belongs to item i):
  cache_file        prompt conditioning stacked on dim 0 (keys as `disca.hosts.diffusers.COND_KEYS`, 1.5 without
                    image_latents), metadata `disca.arch`, `disca.count`, `disca.prompts` (JSON list);
  image_cache_file  `image_embeds` [N, 729, 1152] SigLIP tokens and `reference_latents` [N, C, 1, H, W], the VAE latent
                    of the reference frame (x VAE scaling factor), the predictor stage's `reference_images`;
  latents_file      `latents` [N, C, F, H, W] (x VAE scaling factor), the distillation stages' `latents`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tomllib

import torch

from disca.formats import ARCH_HV15, ARCHES, DisCaFormatError, load_safetensors, save_safetensors
from disca.hosts.diffusers import COND_KEYS

META_ARCH = "disca.arch"
META_COUNT = "disca.count"
META_PROMPTS = "disca.prompts"
META_ITEMS = "disca.items"
LATENTS_KEY = "latents"
REFERENCE_KEYS = ("image_embeds", "reference_latents")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SOURCES = ("prompts_file", "image_directory", "video_directory")
# LLM tokens kept per prompt when [general] max_sequence_length is not set: the diffusers pipelines' own lengths
DEFAULT_MAX_SEQUENCE_LENGTH = {ARCHES[0]: 256, ARCHES[1]: 1000}
logger = logging.getLogger(__name__)
# 1.5 text-to-video carries no image: zero image tokens (masked out by the DiT) and zero condition latents
_HV15_T2V_IMAGE_TOKENS = (729, 1152)  # SigLIP tokens x width, as HunyuanVideo15Pipeline passes them


class DataError(ValueError):
    """A prompts/latents/dataset file is missing, empty or does not fit the model; the message names it."""


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank and '#' lines skipped. An empty file is an error, not an empty dataset."""
    if not os.path.isfile(path):
        raise DataError(f"prompts file {path} not found")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"prompts file {path} holds no prompts; write one prompt per line")
    return prompts


def save_embeddings(path: str, arch: str, cond: dict[str, torch.Tensor], prompts: list[str] | None = None) -> None:
    keys = [k for k in COND_KEYS[arch] if k != "image_latents" or k in cond]
    missing = [k for k in keys if k not in cond]
    if missing:
        raise DataError(f"{path}: embeddings for {arch} lack {missing}")
    count = cond[keys[0]].shape[0]
    metadata = {META_ARCH: arch, META_COUNT: str(count)}
    if prompts is not None:
        metadata[META_PROMPTS] = json.dumps(prompts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(path, {k: cond[k] for k in keys}, metadata)


def load_embeddings(path: str, arch: str) -> dict[str, torch.Tensor]:
    """Cached conditioning for `arch`, checked: same arch as the model, every key present, at least one prompt.

    Floating tensors come back in fp32 whatever they were stored in (a bf16 cache is half the size): the stages'
    fp32 forwards (MeanFlow's finite differences) take them as they are."""
    try:
        tensors, metadata = load_safetensors(path)
    except DisCaFormatError as error:
        raise DataError(str(error)) from None
    declared = metadata.get(META_ARCH)
    if declared is not None and declared != arch:
        raise DataError(f"{path}: embeddings were encoded for {declared} but the model is {arch}; "
                        "encode the prompts with that model's text encoders")
    required = [k for k in COND_KEYS[arch] if k != "image_latents"]
    missing = [k for k in required if k not in tensors]
    if missing:
        raise DataError(f"{path}: not a {arch} prompt cache (missing {missing}); create it with "
                        "`python -m training.data encode`")
    counts = {k: tensors[k].shape[0] for k in tensors}
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: tensors disagree on the number of prompts: {counts}")
    if next(iter(counts.values())) == 0:
        raise DataError(f"{path}: the prompt cache is empty (0 prompts); add prompts and encode again")
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def check_negative_prompt(negative: dict[str, torch.Tensor], cond: dict[str, torch.Tensor]) -> None:
    """The negative prompt replaces or joins prompt rows in one batch, so its token shape must match theirs."""
    if negative["prompt_embeds"].shape[1:] != cond["prompt_embeds"].shape[1:]:
        raise ValueError(f"config key 'negative_prompt': its embeddings have shape "
                         f"{tuple(negative['prompt_embeds'].shape[1:])}, the prompts {tuple(cond['prompt_embeds'].shape[1:])}; "
                         "encode both with the same max_sequence_length")


def with_image_condition(cond: dict[str, torch.Tensor], in_extra_channels: int, latent_shape: tuple[int, int, int],
                         references: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """1.5: the condition channels the DiT concatenates to its input, as diffusers' pipelines build them.

    Text-to-video: zeros (HunyuanVideo15Pipeline). I2V `references` (from `load_references`): their SigLIP tokens
    replace image_embeds, and image_latents = [reference latent at frame 0, zeros after | mask, 1 at frame 0]
    (HunyuanVideo15ImageToVideoPipeline.prepare_cond_latents_and_mask). Cached image_latents are only shape-checked.
    -> cond with image_latents [N, in_extra_channels, F, H, W].
    """
    count = cond["prompt_embeds"].shape[0]
    want = (count, in_extra_channels, *latent_shape)
    if references is not None:
        reference = references["reference_latents"]
        expected = (count, in_extra_channels - 1, 1, *latent_shape[1:])
        if tuple(reference.shape) != expected:
            raise DataError(f"reference latents have shape {tuple(reference.shape)}, the run needs {expected}: encode "
                            "the reference images at the run's resolution (latent_shape height/width x the VAE's "
                            "spatial compression)")
        image_latents = torch.zeros(want, dtype=reference.dtype)
        image_latents[:, :-1, :1] = reference
        image_latents[:, -1, 0] = 1.0
        return dict(cond, image_embeds=references["image_embeds"], image_latents=image_latents)
    if "image_latents" not in cond:
        return dict(cond, image_latents=torch.zeros(want, dtype=cond["prompt_embeds"].dtype))
    if tuple(cond["image_latents"].shape) != want:
        raise DataError(f"cached image_latents have shape {tuple(cond['image_latents'].shape)}, the run needs {want} "
                        "(latent_shape in the config must match the cached I2V condition latents)")
    return cond


def save_references(path: str, arch: str, references: dict[str, torch.Tensor], items: list[str]) -> None:
    if arch != ARCHES[1]:
        raise DataError(f"{path}: I2V reference images are a HunyuanVideo-1.5 input; arch is {arch}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(path, {k: references[k] for k in REFERENCE_KEYS},
                     {META_ARCH: arch, META_COUNT: str(len(items)), META_ITEMS: json.dumps(items)})


def load_references(path: str, arch: str, count: int) -> dict[str, torch.Tensor]:
    """Cached I2V references (`image_embeds`, `reference_latents`), checked against the prompt cache's row count."""
    try:
        tensors, metadata = load_safetensors(path)
    except DisCaFormatError as error:
        raise DataError(str(error)) from None
    if metadata.get(META_ARCH) != arch or any(k not in tensors for k in REFERENCE_KEYS):
        raise DataError(f"{path}: not a {arch} reference-image cache (arch {metadata.get(META_ARCH)!r}, keys "
                        f"{sorted(tensors)}); create it with `python -m training.data encode` from an image_directory")
    rows = {k: tensors[k].shape[0] for k in REFERENCE_KEYS}
    if set(rows.values()) != {count}:
        raise DataError(f"{path}: {rows} reference rows for {count} prompts; encode the prompts and reference images "
                        "of the same [[datasets]] entry (image_directory), so row i of both is item i")
    return {k: tensors[k] for k in REFERENCE_KEYS}


def save_latents(path: str, latents: torch.Tensor) -> None:
    if latents.ndim != 5 or latents.shape[0] == 0:
        raise DataError(f"{path}: latents must be a non-empty [N, C, F, H, W] tensor, got {tuple(latents.shape)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(path, {LATENTS_KEY: latents}, {META_COUNT: str(latents.shape[0])})


def load_latents(path: str) -> torch.Tensor:
    try:
        tensors, _ = load_safetensors(path)
    except DisCaFormatError as error:
        raise DataError(str(error)) from None
    latents = tensors.get(LATENTS_KEY)
    if latents is None or latents.ndim != 5 or latents.shape[0] == 0:
        raise DataError(f"{path}: expected a non-empty '{LATENTS_KEY}' tensor [N, C, F, H, W]")
    return latents


def load_video_set(config, host, device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(prompt cache, latents) of a stage that trains on videos, row i captioning video i, with 1.5's condition
    channels added. With config.data_on_device both are moved to `device` once: on a small set that removes the
    per-step host gather and copy, which dominate the step time of a small model; the default keeps them in host
    memory, where a full-size video set belongs."""
    cond = load_embeddings(config.prompts, host.arch)
    latents = load_latents(config.latents)
    if latents.shape[0] != cond["prompt_embeds"].shape[0]:
        raise DataError(f"config keys 'latents'/'prompts': {config.latents} holds {latents.shape[0]} videos but "
                        f"{config.prompts} holds {cond['prompt_embeds'].shape[0]} prompts; row i must caption video i")
    if host.arch == ARCH_HV15:
        cond = with_image_condition(cond, host.condition_channels, tuple(latents.shape[2:]))
    if config.data_on_device:
        latents, cond = latents.to(device), {k: v.to(device) for k, v in cond.items()}
    return cond, latents


def load_negative_prompt(config, host, cond: dict[str, torch.Tensor], latents: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """The negative/empty prompt's cache (one row), shaped like the prompt rows it replaces or joins, on `device`."""
    negative = load_embeddings(config.negative_prompt, host.arch)
    check_negative_prompt(negative, cond)
    if host.arch == ARCH_HV15:
        negative = with_image_condition(negative, host.condition_channels, tuple(latents.shape[2:]))
    return {k: v.to(device) for k, v in negative.items()}


# ---------------------------------------------------------------------------------------------------- dataset files


def read_dataset_config(path: str) -> tuple[dict, list[dict]]:
    """musubi-style TOML -> ([general], [[datasets]]), paths made absolute, with errors that name the key."""
    if not os.path.isfile(path):
        raise DataError(f"dataset file {path} not found")
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as error:
            raise DataError(f"{path}: not valid TOML ({error})") from None
    general, datasets = raw.get("general", {}), raw.get("datasets", [])
    if general.get("arch") not in ARCHES:
        raise DataError(f"{path}: [general] arch must be one of {ARCHES}, got {general.get('arch')!r}")
    if not general.get("pipeline"):
        raise DataError(f"{path}: [general] pipeline (diffusers folder or Hub id holding the text encoders) is required")
    resolution = general.get("resolution")
    if resolution is not None and (not isinstance(resolution, list) or len(resolution) != 2
                                   or not all(isinstance(v, int) and v > 0 for v in resolution)):
        raise DataError(f"{path}: [general] resolution must be [width, height] in pixels, got {resolution!r}")
    frames = general.get("frames")
    if frames is not None and (not isinstance(frames, int) or frames < 1 or (frames - 1) % 4):
        raise DataError(f"{path}: [general] frames must be 4k+1 (1, 5, ..., 129: the VAE compresses time 4x after "
                        f"the first frame), got {frames!r}")
    if not datasets:
        raise DataError(f"{path}: no [[datasets]] entries")
    base = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(os.path.join(base, general["pipeline"])):  # a local folder, relative to this file; else a Hub id
        general["pipeline"] = os.path.join(base, general["pipeline"])
    for i, entry in enumerate(datasets):
        sources = [key for key in SOURCES if entry.get(key)]
        if len(sources) != 1:
            raise DataError(f"{path}: [[datasets]] #{i} needs exactly one of {list(SOURCES)}, got {sources or 'none'}")
        needed = {"prompts_file": ("cache_file",), "image_directory": ("cache_file", "image_cache_file"),
                  "video_directory": ("cache_file", "latents_file")}[sources[0]]
        for key in (sources[0], *needed):
            if not entry.get(key):
                raise DataError(f"{path}: [[datasets]] #{i} ({sources[0]}) needs '{key}'")
        if sources[0] != "prompts_file" and resolution is None:
            raise DataError(f"{path}: [[datasets]] #{i} has a {sources[0]}: set [general] resolution = [width, height]")
        if sources[0] == "image_directory" and general["arch"] != ARCHES[1]:
            raise DataError(f"{path}: [[datasets]] #{i}: image_directory holds I2V reference images, which only "
                            f"{ARCHES[1]} takes; arch is {general['arch']}")
        if sources[0] == "video_directory" and frames is None:
            raise DataError(f"{path}: [[datasets]] #{i} has a video_directory: set [general] frames (4k+1, e.g. 33)")
        for key in (*SOURCES, "cache_file", "image_cache_file", "latents_file"):
            if entry.get(key):
                entry[key] = os.path.join(base, entry[key])
    return general, datasets


def directory_items(directory: str, kind: str) -> list[tuple[str, str, str]]:
    """(name, media path, caption) for every image (kind 'image') or video (kind 'video': NAME.mp4 or a folder of
    frames NAME/) in `directory`, sorted by name; each needs a caption NAME.txt beside it."""
    if not os.path.isdir(directory):
        raise DataError(f"{kind}_directory {directory} not found")
    items = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        stem, suffix = os.path.splitext(name)
        is_media = (suffix.lower() in IMAGE_SUFFIXES if kind == "image"
                    else suffix.lower() == ".mp4" or (os.path.isdir(path) and not suffix))
        if not is_media:
            continue
        caption_path = os.path.join(directory, (name if os.path.isdir(path) else stem) + ".txt")
        if not os.path.isfile(caption_path):
            raise DataError(f"{path}: no caption file {caption_path}; write the prompt for this {kind} there")
        with open(caption_path, encoding="utf-8") as f:
            caption = f.read().strip()
        if not caption:
            raise DataError(f"{caption_path} is empty; write the prompt for {path} there")
        items.append((stem if not os.path.isdir(path) else name, path, caption))
    if not items:
        raise DataError(f"{kind}_directory {directory} holds no {kind}s "
                        f"({'|'.join(IMAGE_SUFFIXES) if kind == 'image' else '.mp4 files or folders of PNG frames'})")
    return items


def entry_prompts(entry: dict) -> list[str]:
    if entry.get("prompts_file"):
        return read_prompts(entry["prompts_file"])
    kind = "image" if entry.get("image_directory") else "video"
    return [caption for _, _, caption in directory_items(entry[f"{kind}_directory"], kind)]


def _fit_to(image, width: int, height: int):
    """Resize to cover (width, height) keeping the aspect ratio, then centre-crop: PIL RGB in, PIL RGB out."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def _to_pixels(images) -> torch.Tensor:
    """PIL RGB frames -> [3, F, H, W] in [-1, 1], the VAE's input range."""
    import numpy as np

    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])  # [F, H, W, 3]
    return torch.from_numpy(array).permute(3, 0, 1, 2) / 127.5 - 1.0


def read_video_frames(path: str, frames: int, width: int, height: int) -> torch.Tensor:
    """The first `frames` frames of NAME.mp4 (imageio) or of a folder of PNGs (sorted by name), fitted to
    width x height -> [3, frames, height, width] in [-1, 1]."""
    from PIL import Image

    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(".png"))
        images = [Image.open(os.path.join(path, n)) for n in names[:frames]]
        available = len(names)
    else:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise DataError(f"{path}: reading .mp4 needs `pip install imageio[pyav]`; or store the clip as a folder of "
                            "PNG frames (NAME/0000.png, NAME/0001.png, ...)") from None
        decoded = iio.imread(path)  # [F, H, W, 3] uint8
        images = [Image.fromarray(frame) for frame in decoded[:frames]]
        available = len(decoded)
    if available < frames:
        raise DataError(f"{path}: {available} frames, [general] frames asks for {frames}; use a longer clip or fewer frames")
    return _to_pixels([_fit_to(image, width, height) for image in images])


def _check_vae_geometry(vae, width: int, height: int, frames: int = 1) -> None:
    spatial, temporal = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    if width % spatial or height % spatial or (frames - 1) % temporal:
        raise DataError(f"[general] resolution {width}x{height} and frames {frames} must be multiples of the VAE's "
                        f"{spatial}x spatial compression and {temporal}k+1 frames; pick e.g. "
                        f"{width // spatial * spatial}x{height // spatial * spatial}")


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[3, F, H, W] in [-1, 1] -> [C, F', H', W'] latent x scaling factor: the distribution's mode, as diffusers'
    I2V pipelines take it (deterministic, so a cache is reproducible). One clip at a time: the 1.5 VAE's causal
    attention mask does not broadcast over a batch."""
    parameter = next(vae.parameters())
    latent = vae.encode(pixels.unsqueeze(0).to(parameter.device, parameter.dtype)).latent_dist.mode()
    return (latent * vae.config.scaling_factor)[0].float().cpu()


@torch.no_grad()
def encode_reference_images(image_encoder, feature_extractor, vae, paths: list[str], width: int,
                            height: int) -> dict[str, torch.Tensor]:
    """I2V references, as HunyuanVideo15ImageToVideoPipeline encodes them: each image fitted to width x height, then
    SigLIP's last hidden state (`image_embeds` [N, L, 1152]) and the VAE latent of that frame
    (`reference_latents` [N, C, 1, H / s, W / s])."""
    from PIL import Image

    _check_vae_geometry(vae, width, height)
    parameter = next(image_encoder.parameters())
    embeds, latents = [], []
    for path in paths:
        image = _fit_to(Image.open(path), width, height)
        inputs = feature_extractor.preprocess(images=image, do_resize=True, return_tensors="pt", do_convert_rgb=True)
        pixel_values = inputs["pixel_values"].to(parameter.device, parameter.dtype)
        embeds.append(image_encoder(pixel_values=pixel_values).last_hidden_state[0].float().cpu())
        latents.append(encode_pixels(vae, _to_pixels([image])))
    return {"image_embeds": torch.stack(embeds), "reference_latents": torch.stack(latents)}


def _pipeline_class(arch: str, pipeline: str):
    """The pipeline class a local folder was saved as (its model_index.json), else the arch's text-to-video class."""
    import diffusers

    classes = {ARCHES[0]: ("HunyuanVideoPipeline",),
               ARCHES[1]: ("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline")}[arch]
    index = os.path.join(pipeline, "model_index.json")
    name = classes[0]
    if os.path.isfile(index):
        with open(index) as f:
            name = json.load(f).get("_class_name", name)
        if name not in classes:
            raise DataError(f"[general] pipeline {pipeline} is a {name}; arch {arch} needs one of {list(classes)}")
    return getattr(diffusers, name)


def _load_pipeline(arch: str, pipeline: str, dtype: torch.dtype, device: str):
    """The diffusers pipeline with its text encoders loaded (no transformer or image encoder; 1.0: no VAE)."""
    cls = _pipeline_class(arch, pipeline)
    skip = {"transformer": None, "scheduler": None}
    if arch == ARCHES[0]:
        skip["vae"] = None
    else:  # the 1.5 pipelines' __init__ reads vae.config even when vae=None (diffusers 0.42.1): keep the small VAE
        skip["guider"] = None
    if cls.__name__ == "HunyuanVideo15ImageToVideoPipeline":
        skip.update(image_encoder=None, feature_extractor=None)
    return cls.from_pretrained(pipeline, torch_dtype=dtype, **skip).to(device)


def _load_vae(arch: str, pipeline: str, dtype: torch.dtype, device: str):
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLHunyuanVideo15

    cls = AutoencoderKLHunyuanVideo if arch == ARCHES[0] else AutoencoderKLHunyuanVideo15
    vae = cls.from_pretrained(pipeline, subfolder="vae", torch_dtype=dtype).to(device).eval()
    vae.enable_tiling()  # full-size clips: encode in overlapping tiles (a 720p x 129-frame clip does not fit otherwise)
    return vae


@torch.no_grad()
def encode_prompts(pipe, arch: str, prompts: list[str], max_sequence_length: int, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Run the HunyuanVideo text encoders through diffusers' own `encode_prompt`; returns stacked CPU float32 tensors."""
    rows: dict[str, list[torch.Tensor]] = {}
    if arch == ARCHES[1]:
        # 1.5's encode_prompt has no length argument: it pads to this attribute (padding is masked out by the DiT)
        pipe.tokenizer_max_length = max_sequence_length
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        if arch == ARCHES[0]:
            embeds, pooled, mask = pipe.encode_prompt(chunk, max_sequence_length=max_sequence_length)
            parts = {"prompt_embeds": embeds, "prompt_mask": mask, "pooled_embeds": pooled}
        else:
            embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(chunk, batch_size=len(chunk))
            parts = {"prompt_embeds": embeds, "prompt_mask": mask, "byt5_embeds": embeds_2, "byt5_mask": mask_2,
                     "image_embeds": torch.zeros(len(chunk), *_HV15_T2V_IMAGE_TOKENS)}
        for key, value in parts.items():
            # masks come back in the encoder dtype from the 1.5 pipeline; keep them as integer 0/1 like 1.0's
            value = value.to(torch.int64) if key.endswith("_mask") else value.float()
            rows.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in rows.items()}


def encode_dataset(path: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """`encode`: every entry's prompts -> cache_file (+ the negative prompt); image_directory entries also get their
    reference images -> image_cache_file. Returns the written paths."""
    general, datasets = read_dataset_config(path)
    arch = general["arch"]
    prompt_lists = [entry_prompts(entry) for entry in datasets]  # fail on an empty file before loading the encoders
    pipe = _load_pipeline(arch, general["pipeline"], dtype, device)
    written = []
    max_len = int(general.get("max_sequence_length", DEFAULT_MAX_SEQUENCE_LENGTH[arch]))
    for entry, prompts in zip(datasets, prompt_lists):
        save_embeddings(entry["cache_file"], arch, encode_prompts(pipe, arch, prompts, max_len), prompts)
        written.append(entry["cache_file"])
    if "negative_prompt" in general:
        negative_path = os.path.join(os.path.dirname(datasets[0]["cache_file"]), "negative.safetensors")
        save_embeddings(negative_path, arch, encode_prompts(pipe, arch, [general["negative_prompt"]], max_len),
                        [general["negative_prompt"]])
        written.append(negative_path)
    del pipe  # the text encoders (a 7-8B LLM at full size) leave before the image encoder and VAE load
    image_entries = [entry for entry in datasets if entry.get("image_directory")]
    if image_entries:
        from transformers import SiglipImageProcessor, SiglipVisionModel

        image_encoder = SiglipVisionModel.from_pretrained(general["pipeline"], subfolder="image_encoder",
                                                          torch_dtype=dtype).to(device).eval()
        feature_extractor = SiglipImageProcessor.from_pretrained(general["pipeline"], subfolder="feature_extractor")
        vae = _load_vae(arch, general["pipeline"], dtype, device)
        width, height = general["resolution"]
        for entry in image_entries:
            items = directory_items(entry["image_directory"], "image")
            references = encode_reference_images(image_encoder, feature_extractor, vae, [p for _, p, _ in items],
                                                 width, height)
            save_references(entry["image_cache_file"], arch, references, [name for name, _, _ in items])
            written.append(entry["image_cache_file"])
    return written


def encode_videos_dataset(path: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """`encode-videos`: every video_directory entry's clips -> latents_file, rows in the order of its cache_file."""
    general, datasets = read_dataset_config(path)
    entries = [entry for entry in datasets if entry.get("video_directory")]
    if not entries:
        raise DataError(f"{path}: no [[datasets]] entry has a video_directory; add one (clips + NAME.txt captions)")
    vae = _load_vae(general["arch"], general["pipeline"], dtype, device)
    width, height = general["resolution"]
    _check_vae_geometry(vae, width, height, general["frames"])
    written = []
    for entry in entries:
        items = directory_items(entry["video_directory"], "video")
        latents = torch.stack([encode_pixels(vae, read_video_frames(p, general["frames"], width, height))
                               for _, p, _ in items])
        save_latents(entry["latents_file"], latents)
        logger.info("%s: %d clips -> latents %s", entry["video_directory"], len(items), tuple(latents.shape))
        written.append(entry["latents_file"])
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DisCa data prep: cache HunyuanVideo conditioning and latents as safetensors")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"encode": ("encode every entry's prompts into its cache_file (and image_directory reference images "
                           "into its image_cache_file)", encode_dataset),
                "encode-videos": ("encode every video_directory entry's clips into its latents_file", encode_videos_dataset)}
    for name, (help_text, _) in commands.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--dataset", required=True, help="musubi-style dataset TOML (training/configs/dataset.toml)")
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                             help="encoder/VAE weights dtype (bfloat16 on GPU; float32 on CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in commands[args.command][1](args.dataset, device=args.device, dtype=getattr(torch, args.dtype)):
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
