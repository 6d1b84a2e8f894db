"""The official DisCa predictor math in plain torch, on Tencent-layout weights.

Written from the paper (arXiv 2602.05449 §3.2) and the description of Tencent-Hunyuan/DisCa's inference
code (predictor.py / apply_disca.py, and HunyuanVideo's MMSingleStreamBlock / MMDoubleStreamBlock), not from
this pack's runtime: it shares no code with `disca` beyond plain torch. Shapes: tokens [B, L, D], vec [B, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(w: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)  # HunyuanVideo's pre-norms have no affine parameters


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rope_angles(grid_ids: torch.Tensor, axes_dim=(16, 56, 56), theta: float = 256.0) -> torch.Tensor:
    """Per-token rotation angles [L, head_dim/2]: each axis (t, h, w) rotates its own slice of pairs."""
    parts = []
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        parts.append(grid_ids[:, axis, None].double() * freqs[None])
    return torch.cat(parts, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x: [B, L, H, hd]; rotates interleaved pairs (x0, x1) by the token's angle, as HunyuanVideo does."""
    cos, sin = angles.cos().to(x.dtype)[None, :, None], angles.sin().to(x.dtype)[None, :, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def attention(q, k, v):
    """q, k, v: [B, L, H, hd] -> [B, L, H*hd]; full attention (no padded text in these tests)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


def image_grid(t: int, h: int, w: int) -> torch.Tensor:
    """(t, h, w) index of every image token, in the row-major order the patch embedding produces."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()], dim=-1)


def single_stream_block(w, p, x, vec, angles_img, img_len, heads):
    """Tencent MMSingleStreamBlock: x [B, L_img + L_txt, D]; rotary embedding on image tokens only."""
    d = x.shape[-1]
    shift, scale, gate = linear(w, f"{p}modulation.linear", F.silu(vec)).chunk(3, dim=-1)
    qkv, mlp = linear(w, f"{p}linear1", modulate(layer_norm(x), shift, scale)).split([3 * d, w[f"{p}linear1.weight"].shape[0] - 3 * d], -1)
    q, k, v = qkv.unflatten(-1, (3, heads, d // heads)).unbind(2)
    q, k = rms_norm(q, w[f"{p}q_norm.weight"]), rms_norm(k, w[f"{p}k_norm.weight"])
    q = torch.cat([apply_rope(q[:, :img_len], angles_img), q[:, img_len:]], dim=1)
    k = torch.cat([apply_rope(k[:, :img_len], angles_img), k[:, img_len:]], dim=1)
    out = linear(w, f"{p}linear2", torch.cat([attention(q, k, v), F.gelu(mlp, approximate="tanh")], -1))
    return x + gate.unsqueeze(1) * out


def double_stream_block(w, p, img, txt, vec, angles_img, heads):
    """Tencent MMDoubleStreamBlock: joint attention over [img ‖ txt], separate weights per stream."""
    d = img.shape[-1]
    mods, qs, ks, vs = {}, [], [], []
    for stream, tokens in (("img", img), ("txt", txt)):
        mods[stream] = linear(w, f"{p}{stream}_mod.linear", F.silu(vec)).chunk(6, dim=-1)
        shift1, scale1 = mods[stream][0], mods[stream][1]
        normed = modulate(layer_norm(tokens), shift1, scale1)
        if f"{p}{stream}_attn_qkv.weight" in w:
            q, k, v = linear(w, f"{p}{stream}_attn_qkv", normed).unflatten(-1, (3, heads, d // heads)).unbind(2)
        else:  # HunyuanVideo-1.5 stores q, k, v projections separately
            q, k, v = (linear(w, f"{p}{stream}_attn_{c}", normed).unflatten(-1, (heads, d // heads)) for c in "qkv")
        q, k = rms_norm(q, w[f"{p}{stream}_attn_q_norm.weight"]), rms_norm(k, w[f"{p}{stream}_attn_k_norm.weight"])
        if stream == "img":
            q, k = apply_rope(q, angles_img), apply_rope(k, angles_img)
        qs.append(q), ks.append(k), vs.append(v)
    attn = attention(torch.cat(qs, 1), torch.cat(ks, 1), torch.cat(vs, 1))
    outs = []
    for stream, tokens, attn_part in (("img", img, attn[:, :img.shape[1]]), ("txt", txt, attn[:, img.shape[1]:])):
        _, _, gate1, shift2, scale2, gate2 = mods[stream]
        tokens = tokens + gate1.unsqueeze(1) * linear(w, f"{p}{stream}_attn_proj", attn_part)
        hidden = F.gelu(linear(w, f"{p}{stream}_mlp.fc1", modulate(layer_norm(tokens), shift2, scale2)), approximate="tanh")
        outs.append(tokens + gate2.unsqueeze(1) * linear(w, f"{p}{stream}_mlp.fc2", hidden))
    return outs[0], outs[1]


def final_layer_and_unpatchify(dit, img, vec, grid_thw, patch, out_channels):
    """The DiT's final layer (adaLN shift, scale; Linear) and unpatchify to [B, C, T, H, W]."""
    shift, scale = linear(dit, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=-1)
    x = linear(dit, "final_layer.linear", modulate(layer_norm(img), shift, scale))
    (t, h, w), (pt, ph, pw) = grid_thw, patch
    x = x.reshape(x.shape[0], t, h, w, out_channels, pt, ph, pw)
    return torch.einsum("nthwcopq->nctohpwq", x).reshape(x.shape[0], out_channels, t * pt, h * ph, w * pw)


def predicted_output(predictor, dit, img, txt, vec, cache, grid_thw, patch, out_channels, heads):
    """Model output on a predicted step. cache: HunyuanVideo-1.0 one tensor [B, L_img+L_txt, D]; 1.5 (img, txt)."""
    angles = rope_angles(image_grid(*grid_thw))
    if "fusion_mlp.0.weight" in predictor:  # HunyuanVideo-1.0: single-stream predictor
        x = torch.cat([torch.cat([img, txt], 1), cache], -1)
        x = linear(predictor, "fusion_mlp.2", F.silu(linear(predictor, "fusion_mlp.0", x)))
        depth = 1 + max(int(k.split(".")[1]) for k in predictor if k.startswith("mm_single_blocks."))
        for i in range(depth):
            x = single_stream_block(predictor, f"mm_single_blocks.{i}.", x, vec, angles, img.shape[1], heads)
        out_img = x[:, :img.shape[1]]
    else:  # HunyuanVideo-1.5: double-stream predictor
        cache_img, cache_txt = cache
        out_img = linear(predictor, "fusion_mlp_img.2", F.silu(linear(predictor, "fusion_mlp_img.0", torch.cat([img, cache_img], -1))))
        out_txt = linear(predictor, "fusion_mlp_txt.2", F.silu(linear(predictor, "fusion_mlp_txt.0", torch.cat([txt, cache_txt], -1))))
        depth = 1 + max(int(k.split(".")[1]) for k in predictor if k.startswith("double_blocks."))
        for i in range(depth):
            out_img, out_txt = double_stream_block(predictor, f"double_blocks.{i}.", out_img, out_txt, vec, angles, heads)
    return final_layer_and_unpatchify(dit, out_img, vec, grid_thw, patch, out_channels)

