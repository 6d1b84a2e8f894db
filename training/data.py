"""Data prep: cache prompt embeddings (and video latents) as safetensors, and read them back for training.

Encoding runs the HunyuanVideo text encoders once, through diffusers, so training never loads them:

    python -m training.data encode --dataset my_dataset.toml

The dataset file follows musubi-tuner's TOML layout ([general] + [[datasets]]), so creators can reuse theirs:

    [general]
    arch = "hunyuan_video"                      # or "hunyuan_video_1_5" (text-to-video conditioning)
    pipeline = "hunyuanvideo-community/HunyuanVideo"   # diffusers pipeline folder or Hub id with the text encoders
    max_sequence_length = 256                   # LLM tokens kept per prompt (HunyuanVideo default 256)
    negative_prompt = ""                        # cached too, for cfg_distill's unconditional branch

    [[datasets]]
    prompts_file = "prompts.txt"                # one prompt per line; blank lines and '#' lines are skipped
    cache_file = "cache/prompts.safetensors"    # where the embeddings go (the 'prompts' key of a stage config)

Cache files: one safetensors per dataset with the conditioning tensors stacked on dim 0 (keys as in
`disca.hosts.diffusers.COND_KEYS`) and metadata `disca.arch`, `disca.count`, `disca.prompts` (JSON list).
Latent files hold one tensor `latents` [N, C, F, H, W] (already multiplied by the VAE scaling factor).
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib

import torch

from disca.formats import ARCHES, DisCaFormatError, load_safetensors, save_safetensors
from disca.hosts.diffusers import COND_KEYS

META_ARCH = "disca.arch"
META_COUNT = "disca.count"
META_PROMPTS = "disca.prompts"
LATENTS_KEY = "latents"
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
    """Cached conditioning for `arch`, checked: same arch as the model, every key present, at least one prompt."""
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
    return tensors


def with_image_condition(cond: dict[str, torch.Tensor], in_extra_channels: int,
                         latent_shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """1.5: add zero condition latents for text-to-video rows, or check the cached ones fit `latent_shape`."""
    count = cond["prompt_embeds"].shape[0]
    want = (count, in_extra_channels, *latent_shape)
    if "image_latents" not in cond:
        return dict(cond, image_latents=torch.zeros(want, dtype=cond["prompt_embeds"].dtype))
    if tuple(cond["image_latents"].shape) != want:
        raise DataError(f"cached image_latents have shape {tuple(cond['image_latents'].shape)}, the run needs {want} "
                        "(latent_shape in the config must match the cached I2V condition latents)")
    return cond


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


# ---------------------------------------------------------------------------------------------------- dataset files


def read_dataset_config(path: str) -> tuple[dict, list[dict]]:
    """musubi-style TOML -> ([general], [[datasets]]), with errors that name the key."""
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
    if not datasets:
        raise DataError(f"{path}: no [[datasets]] entries")
    base = os.path.dirname(os.path.abspath(path))
    for i, entry in enumerate(datasets):
        for key in ("prompts_file", "cache_file"):
            if not entry.get(key):
                raise DataError(f"{path}: [[datasets]] #{i} needs '{key}'")
            entry[key] = os.path.join(base, entry[key])
    return general, datasets


def _load_pipeline(arch: str, pipeline: str, dtype: torch.dtype, device: str):
    """The diffusers pipeline with only its text encoders loaded (no transformer, no VAE)."""
    from diffusers import HunyuanVideo15Pipeline, HunyuanVideoPipeline

    cls = HunyuanVideoPipeline if arch == ARCHES[0] else HunyuanVideo15Pipeline
    return cls.from_pretrained(pipeline, transformer=None, vae=None, torch_dtype=dtype).to(device)


@torch.no_grad()
def encode_prompts(pipe, arch: str, prompts: list[str], max_sequence_length: int, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Run the HunyuanVideo text encoders through diffusers' own `encode_prompt`; returns stacked CPU float32 tensors."""
    rows: dict[str, list[torch.Tensor]] = {}
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
    general, datasets = read_dataset_config(path)
    arch = general["arch"]
    prompt_lists = [read_prompts(entry["prompts_file"]) for entry in datasets]  # fail on an empty file before loading
    pipe = _load_pipeline(arch, general["pipeline"], dtype, device)
    written = []
    max_len = int(general.get("max_sequence_length", 256))
    for entry, prompts in zip(datasets, prompt_lists):
        save_embeddings(entry["cache_file"], arch, encode_prompts(pipe, arch, prompts, max_len), prompts)
        written.append(entry["cache_file"])
    if "negative_prompt" in general:
        negative_path = os.path.join(os.path.dirname(datasets[0]["cache_file"]), "negative.safetensors")
        save_embeddings(negative_path, arch, encode_prompts(pipe, arch, [general["negative_prompt"]], max_len),
                        [general["negative_prompt"]])
        written.append(negative_path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DisCa data prep: cache HunyuanVideo prompt embeddings as safetensors")
    sub = parser.add_subparsers(dest="command", required=True)
    encode = sub.add_parser("encode", help="encode every [[datasets]] prompts_file into its cache_file")
    encode.add_argument("--dataset", required=True, help="musubi-style dataset TOML (see this module's docstring)")
    encode.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for path in encode_dataset(args.dataset, device=args.device):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
