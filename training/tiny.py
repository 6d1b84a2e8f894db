"""Tiny random HunyuanVideo models and data, for CPU tests and a smoke run of every stage.

`python -m training.tiny --out runs/tiny` writes a tiny Tencent-layout DiT (1.0 or 1.5) and tiny cached text
embeddings, so `accelerate launch training/train.py --config training/configs/tiny_predictor.yaml` runs in seconds
and exercises the same code as a full-size run. Widths follow what ComfyUI can load (heads = hidden / 128,
rotary axes 16/56/56, pooled width 768; 1.5 needs ByT5 width 1472 and vision width 1152 to be detected).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from disca.formats import ARCH_HV10, ARCH_HV15, save_safetensors
from disca.hosts.diffusers import HunyuanVideoHost, _diffusers_classes

TINY_TEXT_DIM = 32
TINY_CONFIGS = {
    ARCH_HV10: dict(in_channels=16, out_channels=16, num_attention_heads=1, attention_head_dim=128, num_layers=1,
                    num_single_layers=2, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                    guidance_embeds=True, text_embed_dim=TINY_TEXT_DIM, pooled_projection_dim=768,
                    rope_axes_dim=(16, 56, 56)),
    ARCH_HV15: dict(in_channels=65, out_channels=32, num_attention_heads=1, attention_head_dim=128, num_layers=3,
                    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=TINY_TEXT_DIM,
                    text_embed_2_dim=1472, image_embed_dim=1152, rope_axes_dim=(16, 56, 56), use_meanflow=False),
}
# latent frames/height/width of the tiny problems: 1.0 has a 2x2 patch, 1.5 a 1x1 patch
TINY_LATENT = {ARCH_HV10: (2, 8, 8), ARCH_HV15: (1, 4, 4)}


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with N(0, std) (norm scales around 1), so zero-initialised weights cannot hide a key-map bug."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            value = torch.randn(param.shape, generator=generator) * std
            if "norm" in name and name.endswith("weight") and param.ndim == 1:
                value += 1.0
            param.copy_(value)
    return module


def tiny_host(arch: str = ARCH_HV10, seed: int = 0, guidance: bool | None = None, **overrides) -> HunyuanVideoHost:
    """A tiny random diffusers DiT; `guidance` toggles the 1.0 guidance embedder."""
    config = dict(TINY_CONFIGS[arch], **overrides)
    if guidance is not None and arch == ARCH_HV10:
        config["guidance_embeds"] = guidance
    torch.manual_seed(seed)
    return HunyuanVideoHost(randomize_(_diffusers_classes()[arch](**config), seed))


def tiny_conditioning(arch: str, count: int, seed: int, text_len: int = 8, padded: bool = True,
                      text_dim: int = TINY_TEXT_DIM) -> dict[str, torch.Tensor]:
    """Random cached prompt embeddings in our cache format (see training.data); the last prompts get padded masks.
    `text_dim`: the DiT's text width (4096 for a full-size model)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(count, text_len, dtype=torch.int64)
    if padded:
        for i in range(count):
            mask[i, text_len - (i % 3):] = 0
    cond = {"prompt_embeds": torch.randn(count, text_len, text_dim, generator=generator), "prompt_mask": mask}
    if arch == ARCH_HV10:
        cond["pooled_embeds"] = torch.randn(count, 768, generator=generator)
    else:
        cond["byt5_embeds"] = torch.randn(count, 4, 1472, generator=generator)
        cond["byt5_mask"] = torch.ones(count, 4, dtype=torch.int64)
        cond["image_embeds"] = torch.randn(count, 3, 1152, generator=generator)
        in_extra = TINY_CONFIGS[arch]["in_channels"] - TINY_CONFIGS[arch]["out_channels"]
        cond["image_latents"] = torch.randn(count, in_extra, *TINY_LATENT[arch], generator=generator)
    return cond


def tiny_latents(arch: str, count: int, seed: int, latent_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Structured 'video' latents (smooth blobs, not white noise), so a tiny flow has something to learn; of the
    tiny problem's size unless `latent_shape` (frames, height, width) is given."""
    generator = torch.Generator().manual_seed(seed)
    channels = TINY_CONFIGS[arch]["out_channels"]
    frames, height, width = latent_shape or TINY_LATENT[arch]
    grid_y = torch.linspace(-1, 1, height).view(1, 1, 1, height, 1)
    grid_x = torch.linspace(-1, 1, width).view(1, 1, 1, 1, width)
    centre = torch.rand(count, 2, generator=generator) * 1.2 - 0.6
    blob = torch.exp(-((grid_y - centre[:, 0].view(-1, 1, 1, 1, 1)) ** 2 + (grid_x - centre[:, 1].view(-1, 1, 1, 1, 1)) ** 2) * 4)
    colour = torch.randn(count, channels, 1, 1, 1, generator=generator)
    return (colour * blob).expand(count, channels, frames, height, width).contiguous()


def write_tiny_run_files(folder: str, arch: str = ARCH_HV10, prompts: int = 8, meanflow: bool = True,
                         guidance: bool | None = None, seed: int = 0) -> dict[str, str]:
    """A tiny Tencent-layout DiT + prompt/negative embeddings + latents in `folder`; returns their paths by config key."""
    from training.data import save_embeddings, save_latents

    os.makedirs(folder, exist_ok=True)
    host = tiny_host(arch, seed=seed, guidance=guidance)
    if meanflow:
        host.add_time_r_embedder()
    paths = {key: os.path.join(folder, name) for key, name in (
        ("model", "tiny_dit.safetensors"), ("prompts", "prompts.safetensors"),
        ("negative_prompt", "negative.safetensors"), ("latents", "latents.safetensors"))}
    save_safetensors(paths["model"], host.tencent_state_dict(), {})
    save_embeddings(paths["prompts"], arch, tiny_conditioning(arch, prompts, seed + 1))
    save_embeddings(paths["negative_prompt"], arch, tiny_conditioning(arch, 1, seed + 2, padded=False))
    save_latents(paths["latents"], tiny_latents(arch, prompts, seed + 3))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write tiny_dit.safetensors and data into")
    parser.add_argument("--arch", default=ARCH_HV10, choices=(ARCH_HV10, ARCH_HV15))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--no_meanflow", action="store_true", help="write a plain flow DiT (a meanflow/cfg teacher)")
    args = parser.parse_args(argv)
    paths = write_tiny_run_files(args.out, args.arch, args.prompts, meanflow=not args.no_meanflow)
    print(json.dumps(paths, indent=1))


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------------------------- data-prep models

TINY_IMAGE_SIZE = 28  # SigLIP input side of the tiny vision encoder: (28 / 14)^2 = 4 image tokens
TINY_VAE_COMPRESSION = 4  # spatial and temporal compression of the tiny VAEs (full size: 8 or 16, and 4)
_TINY_WORDS = ("a red fox runs through snow the cat sleeps on sofa city at night sign says hello world "
               "describe video style light camera system user assistant").split()


def _tiny_tokenizer(max_length: int, chat_template: str | None = None):
    """A WordLevel tokenizer built in memory (no download) in the fast-tokenizer class transformers saves."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<pad>", "<unk>", "<eos>", *_TINY_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<eos>", model_max_length=max_length)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_vae(arch: str, seed: int = 0):
    """A tiny random diffusers VAE of the class the HunyuanVideo pipelines use; latent channels = the tiny DiT's."""
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLHunyuanVideo15

    torch.manual_seed(seed)
    if arch == ARCH_HV10:
        return AutoencoderKLHunyuanVideo(latent_channels=TINY_CONFIGS[arch]["out_channels"], block_out_channels=(8, 8, 8),
                                         layers_per_block=1, norm_num_groups=4, down_block_types=("HunyuanVideoDownBlock3D",) * 3,
                                         up_block_types=("HunyuanVideoUpBlock3D",) * 3,
                                         spatial_compression_ratio=TINY_VAE_COMPRESSION,
                                         temporal_compression_ratio=TINY_VAE_COMPRESSION)
    # the 1.5 encoder's shortcut averages groups of block_out_channels[-1] / (2 * latent_channels) channels
    return AutoencoderKLHunyuanVideo15(latent_channels=TINY_CONFIGS[arch]["out_channels"], block_out_channels=(16, 32, 64),
                                       layers_per_block=1, spatial_compression_ratio=TINY_VAE_COMPRESSION,
                                       temporal_compression_ratio=TINY_VAE_COMPRESSION)


def write_tiny_pipeline(folder: str, arch: str = ARCH_HV10, seed: int = 0) -> str:
    """A diffusers pipeline folder with tiny random text encoders, tokenizers, VAE (and, for 1.5, the SigLIP image
    encoder of the I2V pipeline), in the classes diffusers' HunyuanVideo pipelines load, built offline.

    Widths fit the tiny DiTs: LLM 32 (text_embed_dim), CLIP 768 (pooled), ByT5 1472, SigLIP 1152. No transformer.
    """
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideoPipeline
    from transformers import (ByT5Tokenizer, CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, Qwen2_5_VLTextConfig,
                              Qwen2_5_VLTextModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel,
                              T5Config, T5EncoderModel)

    vocab_size = len(_TINY_WORDS) + 3
    torch.manual_seed(seed)
    vae = tiny_vae(arch, seed)
    if arch == ARCH_HV10:
        llama = LlamaModel(LlamaConfig(vocab_size=vocab_size, hidden_size=TINY_TEXT_DIM, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=768, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                                            pad_token_id=0))
        pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=_tiny_tokenizer(512), transformer=None, vae=vae,
                                    scheduler=None, text_encoder_2=clip, tokenizer_2=_tiny_tokenizer(77))
    else:
        qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
            vocab_size=vocab_size, hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3]}))
        byt5 = T5EncoderModel(T5Config(vocab_size=384, d_model=1472, d_ff=32, d_kv=8, num_layers=1, num_heads=2))
        siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=14))
        chat = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
        pipe = HunyuanVideo15ImageToVideoPipeline(
            text_encoder=qwen, tokenizer=_tiny_tokenizer(2048, chat), transformer=None, vae=vae, scheduler=None,
            text_encoder_2=byt5, tokenizer_2=ByT5Tokenizer(), guider=None, image_encoder=siglip,
            feature_extractor=SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}))
    pipe.save_pretrained(folder)
    return folder
