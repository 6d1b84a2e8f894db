"""Exact key maps between the Tencent HunyuanVideo layout and diffusers' HunyuanVideo transformers.

diffusers 0.42.1 names (`HunyuanVideoTransformer3DModel`, `HunyuanVideo15Transformer3DModel`) differ from the
Tencent names (DESIGN.md §2) in three ways beyond renaming: fused q/k/v (`img_attn_qkv`, `self_attn_qkv`) are split
into `to_q/to_k/to_v`, the single-stream `linear1` is split into `to_q/to_k/to_v/proj_mlp`, and the final layer's
modulation stores (shift, scale) where diffusers' `norm_out` stores (scale, shift). The rules below are the table of
reference/hunyuanvideo_training.md §2.2 and diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py, written once
and read in both directions, so Tencent -> diffusers -> Tencent is the identity on every tensor.

Modules diffusers lacks are kept in our host next to the transformer, under the names used here:
`time_r_in.linear_1/2` (HunyuanVideo-1.0 MeanFlow r-embedder) and `guidance_in.linear_1/2` (HunyuanVideo-1.5
embedded guidance). The output Tencent layout is the merged one (fused q/k/v), which ComfyUI loads for both versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from disca.formats import (ARCH_HV10, ARCH_HV15, DOUBLE_STREAM_BLOCKS, SINGLE_STREAM_BLOCKS, DisCaFormatError,
                           normalize_tencent_layout)

RENAME, SPLIT, SPLIT_LINEAR1, SWAP = "rename", "split", "split_linear1", "swap"


@dataclass(frozen=True)
class _Rule:
    """One Tencent module <-> one or more diffusers modules. `{i}` stands for a block index."""

    tencent: str
    diffusers: tuple[str, ...]
    kind: str = RENAME


def _block_rules(tencent_prefix: str, diffusers_prefix: str, stream: str) -> list[_Rule]:
    t, d = tencent_prefix, diffusers_prefix
    if stream == "single":
        return [
            _Rule(f"{t}linear1", (f"{d}attn.to_q", f"{d}attn.to_k", f"{d}attn.to_v", f"{d}proj_mlp"), SPLIT_LINEAR1),
            _Rule(f"{t}linear2", (f"{d}proj_out",)),
            _Rule(f"{t}q_norm", (f"{d}attn.norm_q",)),
            _Rule(f"{t}k_norm", (f"{d}attn.norm_k",)),
            _Rule(f"{t}modulation.linear", (f"{d}norm.linear",)),
        ]
    return [
        _Rule(f"{t}img_mod.linear", (f"{d}norm1.linear",)),
        _Rule(f"{t}txt_mod.linear", (f"{d}norm1_context.linear",)),
        _Rule(f"{t}img_attn_qkv", (f"{d}attn.to_q", f"{d}attn.to_k", f"{d}attn.to_v"), SPLIT),
        _Rule(f"{t}txt_attn_qkv", (f"{d}attn.add_q_proj", f"{d}attn.add_k_proj", f"{d}attn.add_v_proj"), SPLIT),
        _Rule(f"{t}img_attn_q_norm", (f"{d}attn.norm_q",)),
        _Rule(f"{t}img_attn_k_norm", (f"{d}attn.norm_k",)),
        _Rule(f"{t}txt_attn_q_norm", (f"{d}attn.norm_added_q",)),
        _Rule(f"{t}txt_attn_k_norm", (f"{d}attn.norm_added_k",)),
        _Rule(f"{t}img_attn_proj", (f"{d}attn.to_out.0",)),
        _Rule(f"{t}txt_attn_proj", (f"{d}attn.to_add_out",)),
        _Rule(f"{t}img_mlp.fc1", (f"{d}ff.net.0.proj",)),
        _Rule(f"{t}img_mlp.fc2", (f"{d}ff.net.2",)),
        _Rule(f"{t}txt_mlp.fc1", (f"{d}ff_context.net.0.proj",)),
        _Rule(f"{t}txt_mlp.fc2", (f"{d}ff_context.net.2",)),
    ]


def _embedder(tencent: str, diffusers: str) -> list[_Rule]:
    """Tencent TimestepEmbedder `mlp.0/.2` <-> diffusers TimestepEmbedding `linear_1/_2`."""
    return [_Rule(f"{tencent}.mlp.0", (f"{diffusers}.linear_1",)), _Rule(f"{tencent}.mlp.2", (f"{diffusers}.linear_2",))]


_TOKEN_REFINER = [
    _Rule("txt_in.input_embedder", ("context_embedder.proj_in",)),
    *_embedder("txt_in.t_embedder", "context_embedder.time_text_embed.timestep_embedder"),
    _Rule("txt_in.c_embedder.linear_1", ("context_embedder.time_text_embed.text_embedder.linear_1",)),
    _Rule("txt_in.c_embedder.linear_2", ("context_embedder.time_text_embed.text_embedder.linear_2",)),
    *[_Rule(f"txt_in.individual_token_refiner.blocks.{{i}}.{t}", (f"context_embedder.token_refiner.refiner_blocks.{{i}}.{d}",))
      for t, d in (("norm1", "norm1"), ("norm2", "norm2"), ("self_attn_proj", "attn.to_out.0"),
                   ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2"), ("adaLN_modulation.1", "norm_out.linear"))],
    _Rule("txt_in.individual_token_refiner.blocks.{i}.self_attn_qkv",
          tuple(f"context_embedder.token_refiner.refiner_blocks.{{i}}.attn.to_{p}" for p in "qkv"), SPLIT),
]

_FINAL_LAYER = [
    _Rule("final_layer.linear", ("proj_out",)),
    _Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), SWAP),
]

DIT_RULES: dict[str, list[_Rule]] = {
    ARCH_HV10: [
        _Rule("img_in.proj", ("x_embedder.proj",)),
        *_embedder("time_in", "time_text_embed.timestep_embedder"),
        *_embedder("guidance_in", "time_text_embed.guidance_embedder"),
        *_embedder("time_r_in", "time_r_in"),
        _Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
        _Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
        *_TOKEN_REFINER,
        *_block_rules("double_blocks.{i}.", "transformer_blocks.{i}.", "double"),
        *_block_rules("single_blocks.{i}.", "single_transformer_blocks.{i}.", "single"),
        *_FINAL_LAYER,
    ],
    ARCH_HV15: [
        _Rule("img_in.proj", ("x_embedder.proj",)),
        *_embedder("time_in", "time_embed.timestep_embedder"),
        *_embedder("time_r_in", "time_embed.timestep_embedder_r"),
        *_embedder("guidance_in", "guidance_in"),
        _Rule("cond_type_embedding", ("cond_type_embed",)),
        *[_Rule(f"byt5_in.{t}", (f"context_embedder_2.{d}",))
          for t, d in (("layernorm", "norm"), ("fc1", "linear_1"), ("fc2", "linear_2"), ("fc3", "linear_3"))],
        *[_Rule(f"vision_in.proj.{t}", (f"image_embedder.{d}",))
          for t, d in (("0", "norm_in"), ("1", "linear_1"), ("3", "linear_2"), ("4", "norm_out"))],
        *_TOKEN_REFINER,
        *_block_rules("double_blocks.{i}.", "transformer_blocks.{i}.", "double"),
        *_FINAL_LAYER,
    ],
}

# Predictor blocks keep the official top-level names and take the host's block internals.
PREDICTOR_RULES: dict[str, list[_Rule]] = {
    ARCH_HV10: _block_rules(f"{SINGLE_STREAM_BLOCKS}.{{i}}.", f"{SINGLE_STREAM_BLOCKS}.{{i}}.", "single"),
    ARCH_HV15: _block_rules(f"{DOUBLE_STREAM_BLOCKS}.{{i}}.", f"{DOUBLE_STREAM_BLOCKS}.{{i}}.", "double"),
}
_PASS_THROUGH = re.compile(r"^fusion_mlp(_img|_txt)?\.[02]\.(weight|bias)$")


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"\.([A-Za-z_]+)$")


def _fill(template: str, index: str | None) -> str:
    return template.replace("{i}", index) if index is not None else template


def _split_sizes(rule: _Rule, rows: int, hidden_size: int) -> list[int]:
    if rule.kind == SPLIT:
        return [rows // len(rule.diffusers)] * len(rule.diffusers)
    return [hidden_size, hidden_size, hidden_size, rows - 3 * hidden_size]


def _unmatched_error(keys: list[str], direction: str, source: str) -> DisCaFormatError:
    return DisCaFormatError(
        f"{source}: {len(keys)} keys have no {direction} rule (first: {sorted(keys)[:6]}); the file is not a "
        "HunyuanVideo DiT/predictor of this version, or it carries extra modules (LoRA, EMA copies): remove them first"
    )


def _to_diffusers(state_dict: dict[str, torch.Tensor], rules: list[_Rule], hidden_size: int, source: str,
                  pass_through: re.Pattern | None = None) -> dict[str, torch.Tensor]:
    compiled = [(_pattern(rule.tencent), rule) for rule in rules]
    out, unmatched = {}, []
    for key, value in state_dict.items():
        if pass_through is not None and pass_through.match(key):
            out[key] = value
            continue
        for pattern, rule in compiled:
            m = pattern.match(key)
            if m is None:
                continue
            index, param = (m.group(1), m.group(2)) if "{i}" in rule.tencent else (None, m.group(1))
            targets = [f"{_fill(t, index)}.{param}" for t in rule.diffusers]
            if rule.kind == RENAME:
                out[targets[0]] = value
            elif rule.kind == SWAP:
                shift, scale = value.chunk(2, dim=0)
                out[targets[0]] = torch.cat([scale, shift], dim=0)
            else:
                for target, part in zip(targets, value.split(_split_sizes(rule, value.shape[0], hidden_size), dim=0)):
                    out[target] = part.clone()
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise _unmatched_error(unmatched, "Tencent -> diffusers", source)
    return out


def _to_tencent(state_dict: dict[str, torch.Tensor], rules: list[_Rule], source: str,
                pass_through: re.Pattern | None = None) -> dict[str, torch.Tensor]:
    compiled = [(part, _pattern(template), rule) for rule in rules for part, template in enumerate(rule.diffusers)]
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, torch.Tensor]] = {}
    group_rule: dict[str, _Rule] = {}
    unmatched = []
    for key, value in state_dict.items():
        if pass_through is not None and pass_through.match(key):
            out[key] = value
            continue
        for part, pattern, rule in compiled:
            m = pattern.match(key)
            if m is None:
                continue
            index, param = (m.group(1), m.group(2)) if "{i}" in rule.diffusers[part] else (None, m.group(1))
            target = f"{_fill(rule.tencent, index)}.{param}"
            if rule.kind == RENAME:
                out[target] = value
            elif rule.kind == SWAP:
                scale, shift = value.chunk(2, dim=0)
                out[target] = torch.cat([shift, scale], dim=0)
            else:
                groups.setdefault(target, {})[part] = value
                group_rule[target] = rule
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise _unmatched_error(unmatched, "diffusers -> Tencent", source)
    for target, parts in groups.items():
        wanted = len(group_rule[target].diffusers)
        if len(parts) != wanted:
            missing = [group_rule[target].diffusers[p] for p in range(wanted) if p not in parts]
            raise DisCaFormatError(f"{source}: cannot rebuild {target}: parts {missing} are missing")
        out[target] = torch.cat([parts[p] for p in range(wanted)], dim=0)
    return out


def _check_arch(arch: str) -> None:
    if arch not in DIT_RULES:
        raise ValueError(f"arch must be one of {sorted(DIT_RULES)}, got {arch!r}")


def tencent_to_diffusers_dit(state_dict: dict[str, torch.Tensor], arch: str, source: str = "model") -> dict[str, torch.Tensor]:
    """Tencent-layout DiT (merged or split q/k/v) -> diffusers transformer keys (+ `time_r_in.*`/`guidance_in.*`)."""
    _check_arch(arch)
    state_dict = normalize_tencent_layout(state_dict)
    hidden_size = state_dict["img_in.proj.weight"].shape[0]
    return _to_diffusers(state_dict, DIT_RULES[arch], hidden_size, source)


def diffusers_to_tencent_dit(state_dict: dict[str, torch.Tensor], arch: str, source: str = "model") -> dict[str, torch.Tensor]:
    """diffusers transformer keys (+ `time_r_in.*`/`guidance_in.*`) -> merged Tencent layout, as ComfyUI loads it."""
    _check_arch(arch)
    return _to_tencent(state_dict, DIT_RULES[arch], source)


def tencent_to_diffusers_predictor(state_dict: dict[str, torch.Tensor], arch: str, hidden_size: int,
                                   source: str = "predictor") -> dict[str, torch.Tensor]:
    """Official predictor keys (normalized) -> keys of a DisCaPredictor built from diffusers blocks."""
    _check_arch(arch)
    return _to_diffusers(state_dict, PREDICTOR_RULES[arch], hidden_size, source, _PASS_THROUGH)


def diffusers_to_tencent_predictor(state_dict: dict[str, torch.Tensor], arch: str,
                                   source: str = "predictor") -> dict[str, torch.Tensor]:
    """Keys of a DisCaPredictor built from diffusers blocks -> the official (merged) predictor layout."""
    _check_arch(arch)
    return _to_tencent(state_dict, PREDICTOR_RULES[arch], source, _PASS_THROUGH)
