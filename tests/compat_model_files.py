"""Tiny files in the formats of the compatibility matrix (tests/test_comfyui_compat.py): ComfyUI's legacy
scaled-fp8 checkpoints, a LoRA in the diffusion-pipe key format, and GGUF files as ComfyUI-GGUF loads them.

Each writer starts from a tiny Tencent-layout DiT (tests/tiny_models.py) so the tests can compare against the
same weights unquantized. Nothing here imports ComfyUI; `gguf` is imported only by the GGUF writer.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from disca.formats import save_safetensors

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448

# ComfyUI's legacy scaled-fp8 files quantize the blocks' Linear weights and keep embedders, norms and the final
# layer in full precision; the same split here.
def _is_block_linear(key: str, value: torch.Tensor) -> bool:
    return value.ndim == 2 and key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight")


def scaled_fp8_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(scaled-fp8 file contents, the dequantized weights it stands for).

    The legacy format ComfyUI converts (comfy.utils.convert_old_quants): a `scaled_fp8` marker tensor, fp8 `.weight`
    and an fp32 scalar `<layer>.scale_weight` per quantized layer (weight = fp8 * scale, one scale per tensor).
    The second dict holds fp8 * scale in fp32 for those layers (the rest unchanged): a run on it is what a correct
    loader must reproduce, up to the rounding of the product.
    """
    out, dequantized = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in state_dict.items():
        if not _is_block_linear(key, value):
            out[key] = dequantized[key] = value
            continue
        scale = value.abs().max().float() / FP8_MAX  # per tensor: the largest weight lands on fp8's largest value
        quantized = (value.float() / scale).to(torch.float8_e4m3fn)
        out[key] = quantized
        out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
        dequantized[key] = quantized.float() * scale
    return out, dequantized


def with_equal_part_scales(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A scaled-fp8 state dict whose split q/k/v parts share one scale (the largest of the three), requantized:
    the one split case where fusing rows is exact."""
    out = dict(state_dict)
    split = re.compile(r"^(.*_attn)_([qkv])\.scale_weight$")
    groups: dict[str, list[str]] = {}
    for key in state_dict:
        m = split.match(key)
        if m:
            groups.setdefault(m.group(1), []).append(m.group(2))
    for stem, parts in groups.items():
        common = max(state_dict[f"{stem}_{p}.scale_weight"] for p in parts)
        for p in parts:
            weight = state_dict[f"{stem}_{p}.weight"].float() * state_dict[f"{stem}_{p}.scale_weight"]
            out[f"{stem}_{p}.weight"] = (weight / common).to(torch.float8_e4m3fn)
            out[f"{stem}_{p}.scale_weight"] = common.clone()
    return out


def save(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(str(path), tensors, {})
    return path.name


# --------------------------------------------------------------------------------------------------
# LoRA

# Tencent-named layers (the diffusion-pipe format ComfyUI maps for HunyuanVideo in comfy/lora.py
# model_lora_keys_unet: `diffusion_model.<Tencent layer>` -> the ComfyUI weight) across both block kinds and the
# final layer, which predicted steps run too.
LORA_LAYERS = ("double_blocks.0.img_attn_qkv", "double_blocks.0.txt_mlp.fc1", "single_blocks.0.linear1",
               "single_blocks.1.linear2", "final_layer.linear")


def lora_state_dict(dit: dict[str, torch.Tensor], rank: int = 4, std: float = 0.05,
                    seed: int = 3) -> dict[str, torch.Tensor]:
    """A random rank-`rank` LoRA (peft naming `lora_A`/`lora_B`) for LORA_LAYERS of a Tencent-layout DiT; no alpha
    key, so ComfyUI scales by 1 (delta = B @ A at strength 1)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for layer in LORA_LAYERS:
        out_dim, in_dim = dit[f"{layer}.weight"].shape
        out[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(rank, in_dim, generator=generator) * std
        out[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(out_dim, rank, generator=generator) * std
    return out


# --------------------------------------------------------------------------------------------------
# GGUF (city96/ComfyUI-GGUF)

# What ComfyUI-GGUF's tools leave unquantized for HunyuanVideo ('hyvid'): tools/lcpp.patch keeps these prefixes
# out of llama-quantize, tools/convert.py writes 1-D and small (<= 1024 values) tensors in F32, and the 5-D
# img_in.proj.weight goes in afterwards as F32 (tools/fix_5d_tensors.py).
GGUF_ARCH = "hyvid"
_GGUF_KEEP_PREFIXES = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")


def gguf_tensor_type(key: str, value: torch.Tensor, block_type: str) -> str:
    """The GGML type ComfyUI-GGUF's convert + quantize tools give this tensor: 'F32', 'F16' or `block_type`."""
    if value.ndim <= 1 or value.numel() <= 1024 or value.ndim > 4:
        return "F32"
    if key.startswith(_GGUF_KEEP_PREFIXES):
        return "F16"
    return block_type


def write_gguf(path: Path, dit: dict[str, torch.Tensor], block_type: str = "Q8_0") -> dict[str, int]:
    """Write a Tencent-layout DiT as ComfyUI-GGUF's HunyuanVideo files are laid out: `general.architecture` =
    'hyvid', the Tencent key names unchanged (ComfyUI renames them on load), types as `gguf_tensor_type`.
    Returns the count of tensors per type."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch=GGUF_ARCH)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if block_type == "Q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    counts: dict[str, int] = {}
    for key, value in dit.items():
        kind = gguf_tensor_type(key, value, block_type)
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        data = gguf.quants.quantize(value.float().numpy().astype(np.float32), qtype)
        writer.add_tensor(key, data, raw_dtype=qtype)
        counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


def gguf_dequantized(dit: dict[str, torch.Tensor], block_type: str = "Q8_0") -> dict[str, torch.Tensor]:
    """The weights ComfyUI-GGUF computes with for a file written by `write_gguf`, in fp32.

    gguf's reference dequantization gives Q8_0 values d * q exactly (fp16 d, int8 q); ComfyUI-GGUF's default
    (dequant_dtype "default") multiplies them in fp16 (dequant.py dequantize_blocks_Q8_0), so they are rounded
    to fp16 here as well.
    """
    import gguf

    out = {}
    for key, value in dit.items():
        kind = gguf_tensor_type(key, value, block_type)
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        data = gguf.quants.quantize(value.float().numpy(), qtype)
        weight = torch.from_numpy(gguf.quants.dequantize(data, qtype).copy()).reshape(value.shape).float()
        out[key] = weight.half().float() if kind == "Q8_0" else weight
    return out
