"""Tiny random HunyuanVideo DiTs and DisCa predictors in the real Tencent key layouts.

The key lists follow Tencent's HunyuanVideo 1.0 / 1.5 module definitions (and so what ComfyUI's loader
detects): ComfyUI derives heads as hidden/128 and rotary axes [16, 56, 56], so tiny models use hidden 128.
Every tensor is random (norm scales around 1), so a wrong key map or a swapped chunk cannot hide.
"""

from __future__ import annotations

import torch

from disca.formats import ARCH_HV10, ARCH_HV15

HIDDEN = 128
TEXT_DIM = 32  # LLM hidden states width (4096 / 3584 at full size)
POOLED_DIM = 768  # ComfyUI fixes vector_in's input width at 768
VISION_DIM = 1152  # ComfyUI selects HunyuanVideo-1.5 by a 1152-wide vision_in


def _linear(shapes: dict, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (out_dim, in_dim)
    if bias:
        shapes[f"{name}.bias"] = (out_dim,)


def _double_block_shapes(shapes: dict, prefix: str, hidden: int, head_dim: int, split_qkv: bool, mlp: int) -> None:
    for stream in ("img", "txt"):
        _linear(shapes, f"{prefix}{stream}_mod.linear", 6 * hidden, hidden)
        if split_qkv:
            for part in "qkv":
                _linear(shapes, f"{prefix}{stream}_attn_{part}", hidden, hidden)
        else:
            _linear(shapes, f"{prefix}{stream}_attn_qkv", 3 * hidden, hidden)
        shapes[f"{prefix}{stream}_attn_q_norm.weight"] = (head_dim,)
        shapes[f"{prefix}{stream}_attn_k_norm.weight"] = (head_dim,)
        _linear(shapes, f"{prefix}{stream}_attn_proj", hidden, hidden)
        _linear(shapes, f"{prefix}{stream}_mlp.fc1", mlp, hidden)
        _linear(shapes, f"{prefix}{stream}_mlp.fc2", hidden, mlp)


def _single_block_shapes(shapes: dict, prefix: str, hidden: int, head_dim: int, mlp: int, tensor_parallel: bool) -> None:
    if tensor_parallel:
        for part, width in (("q", hidden), ("k", hidden), ("v", hidden), ("mlp", mlp)):
            _linear(shapes, f"{prefix}linear1_{part}", width, hidden)
        _linear(shapes, f"{prefix}linear2.fc", hidden, hidden + mlp)
    else:
        _linear(shapes, f"{prefix}linear1", 3 * hidden + mlp, hidden)
        _linear(shapes, f"{prefix}linear2", hidden, hidden + mlp)
    shapes[f"{prefix}q_norm.weight"] = (head_dim,)
    shapes[f"{prefix}k_norm.weight"] = (head_dim,)
    _linear(shapes, f"{prefix}modulation.linear", 3 * hidden, hidden)


def _random(shapes: dict, seed: int, std: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        value = torch.randn(shape, generator=generator) * std
        if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight") \
                or name.endswith("layernorm.weight") or (name.startswith("vision_in.proj.") and name.endswith((".0.weight", ".4.weight"))):
            value = value + 1.0
        out[name] = value
    return out


def tencent_dit_state_dict(arch: str = ARCH_HV10, double_blocks: int = 1, single_blocks: int = 2,
                           meanflow: bool = True, guidance: bool = True, seed: int = 0,
                           byt5: bool = False) -> dict[str, torch.Tensor]:
    """A tiny HunyuanVideo DiT in the Tencent layout (1.5: q/k/v stored split, as Tencent ships them).

    `byt5` (1.5): add the ByT5 glyph mapper `byt5_in` (Tencent's ByT5Mapper: 1472 -> 2048 -> 2048 -> hidden), which
    ComfyUI does without but a diffusers 1.5 model needs; the file then holds every key of Tencent's 1.5 DiT."""
    hidden, head_dim, mlp = HIDDEN, 128, 4 * HIDDEN
    shapes: dict[str, tuple] = {}
    if arch == ARCH_HV10:
        in_ch, out_ch, patch = 16, 16, (1, 2, 2)
    else:
        in_ch, out_ch, patch = 65, 32, (1, 1, 1)  # 32 noisy + 32 image-condition + 1 mask -> 32
    shapes["img_in.proj.weight"] = (hidden, in_ch, *patch)
    shapes["img_in.proj.bias"] = (hidden,)
    # token refiner (2 blocks, as ComfyUI builds it)
    _linear(shapes, "txt_in.input_embedder", hidden, TEXT_DIM)
    _linear(shapes, "txt_in.t_embedder.mlp.0", hidden, 256)
    _linear(shapes, "txt_in.t_embedder.mlp.2", hidden, hidden)
    _linear(shapes, "txt_in.c_embedder.linear_1", hidden, TEXT_DIM)
    _linear(shapes, "txt_in.c_embedder.linear_2", hidden, hidden)
    for i in range(2):
        prefix = f"txt_in.individual_token_refiner.blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[f"{prefix}{norm}.weight"] = (hidden,)
            shapes[f"{prefix}{norm}.bias"] = (hidden,)
        _linear(shapes, f"{prefix}self_attn_qkv", 3 * hidden, hidden)
        _linear(shapes, f"{prefix}self_attn_proj", hidden, hidden)
        _linear(shapes, f"{prefix}mlp.fc1", 4 * hidden, hidden)
        _linear(shapes, f"{prefix}mlp.fc2", hidden, 4 * hidden)
        _linear(shapes, f"{prefix}adaLN_modulation.1", 2 * hidden, hidden)
    embedders = ["time_in"] + (["guidance_in"] if guidance else []) + (["time_r_in"] if meanflow else [])
    for name in embedders:
        _linear(shapes, f"{name}.mlp.0", hidden, 256)
        _linear(shapes, f"{name}.mlp.2", hidden, hidden)
    if arch == ARCH_HV10:
        _linear(shapes, "vector_in.in_layer", hidden, POOLED_DIM)
        _linear(shapes, "vector_in.out_layer", hidden, hidden)
    else:
        shapes["cond_type_embedding.weight"] = (3, hidden)
        shapes["vision_in.proj.0.weight"] = (VISION_DIM,)
        shapes["vision_in.proj.0.bias"] = (VISION_DIM,)
        _linear(shapes, "vision_in.proj.1", VISION_DIM, VISION_DIM)
        _linear(shapes, "vision_in.proj.3", hidden, VISION_DIM)
        shapes["vision_in.proj.4.weight"] = (hidden,)
        shapes["vision_in.proj.4.bias"] = (hidden,)
        if byt5:
            shapes["byt5_in.layernorm.weight"] = shapes["byt5_in.layernorm.bias"] = (1472,)
            _linear(shapes, "byt5_in.fc1", 2048, 1472)
            _linear(shapes, "byt5_in.fc2", 2048, 2048)
            _linear(shapes, "byt5_in.fc3", hidden, 2048)
    for i in range(double_blocks):
        _double_block_shapes(shapes, f"double_blocks.{i}.", hidden, head_dim, split_qkv=arch == ARCH_HV15, mlp=mlp)
    for i in range(single_blocks):
        _single_block_shapes(shapes, f"single_blocks.{i}.", hidden, head_dim, mlp, tensor_parallel=False)
    _linear(shapes, "final_layer.linear", out_ch * patch[0] * patch[1] * patch[2], hidden)
    _linear(shapes, "final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return _random(shapes, seed)


def official_predictor_state_dict(arch: str = ARCH_HV10, hidden: int = HIDDEN, heads: int = 1, depth: int = 2,
                                  layout: str = "official", seed: int = 1) -> dict[str, torch.Tensor]:
    """A random predictor in an official DisCa layout.

    layout "official": what Tencent ships (1.0: merged linear1/qkv; 1.5: q/k/v split as in HunyuanVideo-1.5's
    blocks); "merged": everything fused; "tensor_parallel": 1.0 with linear1_q/k/v/mlp and linear2.fc.
    """
    if layout not in ("official", "merged", "tensor_parallel"):
        raise ValueError(layout)
    tensor_parallel = layout == "tensor_parallel"
    split_qkv = arch == ARCH_HV15 and layout == "official"
    head_dim, mlp = hidden // heads, 4 * hidden
    shapes: dict[str, tuple] = {}
    fusions = ("fusion_mlp",) if arch == ARCH_HV10 else ("fusion_mlp_img", "fusion_mlp_txt")
    for fusion in fusions:
        _linear(shapes, f"{fusion}.0", hidden, 2 * hidden)
        _linear(shapes, f"{fusion}.2", hidden, hidden)
    for i in range(depth):
        if arch == ARCH_HV10:
            _single_block_shapes(shapes, f"mm_single_blocks.{i}.", hidden, head_dim, mlp, tensor_parallel)
        else:
            _double_block_shapes(shapes, f"double_blocks.{i}.", hidden, head_dim, split_qkv=split_qkv, mlp=mlp)
    return _random(shapes, seed)
