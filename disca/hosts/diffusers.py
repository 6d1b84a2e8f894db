"""diffusers host: run HunyuanVideo 1.0 / 1.5 diffusers transformers with DisCa's view of their insides.

The training code needs what the official DisCa inference code (Tencent-Hunyuan/DisCa `apply_disca.py`) reads
from the DiT: the embedded image/text tokens, the modulation vector `vec` (diffusers' `temb`), the rotary
embedding, the attention mask, the last-layer cache, and the DiT's own final layer + unpatchify applied to a
predictor's output. `HunyuanVideoHost` exposes these as three steps (`embed`, `run_blocks`, `finalize`) built from
the diffusers model's own submodules; `forward` chains them and equals the diffusers forward exactly.

Time conventions (DESIGN.md §2): callers pass sigma in [0, 1] (fp32: the sampler's dtype); the DiT embeds 1000*sigma.
MeanFlow models embed r = the next sigma the same way and combine `vec = (time_in(t) + time_r_in(r)) / 2` (1.0, our
`time_r_in` module, which diffusers lacks) or `time_in(t) + time_r_in(r)` (1.5, diffusers' `timestep_embedder_r`),
as ComfyUI does. Embedded guidance is `1000 * scale`. The numbers fed are the deployment's
(`disca.timesteps.dit_time_inputs`: t and r in fp32, guidance rounded through the model dtype), each embedding is
cast to the model dtype, and so are the latent and the conditioning: a caller keeps its sampler state in fp32, as
ComfyUI does.

Conditioning is a dict of tensors (batch first):
  1.0: prompt_embeds [B, L, D_text], prompt_mask [B, L] (1 = valid, valid tokens first), pooled_embeds [B, 768]
  1.5: prompt_embeds, prompt_mask, byt5_embeds [B, L2, 1472], byt5_mask [B, L2], image_embeds [B, L3, 1152]
       (all zeros = text-to-video), image_latents [B, C_in - C_out, F, H, W] (I2V condition latents + mask channel)
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from disca.formats import (ARCH_HV10, ARCH_HV15, DisCaFormatError, PredictorFile, PredictorSpec, infer_dit_spec,
                           load_safetensors, official_tencent_layout, read_predictor_state_dict, strip_wrapper_prefix)
from disca.hosts.diffusers_keys import (diffusers_to_tencent_dit, diffusers_to_tencent_predictor,
                                        tencent_to_diffusers_dit, tencent_to_diffusers_predictor)
from disca.predictor import DisCaPredictor
from disca.timesteps import dit_time_inputs

COND_KEYS = {
    ARCH_HV10: ("prompt_embeds", "prompt_mask", "pooled_embeds"),
    ARCH_HV15: ("prompt_embeds", "prompt_mask", "byt5_embeds", "byt5_mask", "image_embeds", "image_latents"),
}


def _diffusers_classes():
    from diffusers import HunyuanVideo15Transformer3DModel, HunyuanVideoTransformer3DModel

    return {ARCH_HV10: HunyuanVideoTransformer3DModel, ARCH_HV15: HunyuanVideo15Transformer3DModel}


def arch_of(transformer: nn.Module) -> str:
    for arch, cls in _diffusers_classes().items():
        if isinstance(transformer, cls):
            return arch
    raise TypeError(f"expected a diffusers HunyuanVideo transformer, got {type(transformer).__name__}")


@dataclass
class Embedded:
    """A DiT call after embedding: what the blocks, a predictor and the final layer consume.

    img: [B, L_img, D] patch tokens; txt: [B, L_txt, D] refined text tokens (1.5: image, ByT5 and LLM tokens,
    valid first); temb: [B, D] modulation vector; rotary: (cos, sin) each [L_img, head_dim]; attention_mask:
    1.0 [B, 1, 1, L_img + L_txt] key mask, 1.5 [B, L_txt] text mask; latent_shape: (B, C, F, H, W) of the input.
    """

    img: torch.Tensor
    txt: torch.Tensor
    temb: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor
    latent_shape: tuple[int, ...]


class HunyuanVideoHost(nn.Module):
    """A diffusers HunyuanVideo transformer plus the embedders diffusers lacks, with DisCa's entry points.

    `time_r_in` (1.0 MeanFlow) and `guidance_in` (1.5 embedded guidance) are TimestepEmbedding(256 -> D) modules
    kept here, outside the diffusers model, and exported under their Tencent names.
    """

    def __init__(self, transformer: nn.Module, time_r_in: nn.Module | None = None, guidance_in: nn.Module | None = None):
        super().__init__()
        self.arch = arch_of(transformer)
        self.transformer = transformer
        if self.arch == ARCH_HV15 and time_r_in is not None:
            raise ValueError("HunyuanVideo-1.5 keeps its r-embedder in the transformer (use_meanflow=True)")
        if self.arch == ARCH_HV10 and guidance_in is not None:
            raise ValueError("HunyuanVideo-1.0 keeps its guidance embedder in the transformer (guidance_embeds=True)")
        self.time_r_in = time_r_in
        self.guidance_in = guidance_in

    # ------------------------------------------------------------------ properties

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim

    @property
    def dtype(self) -> torch.dtype:
        # diffusers' ModelMixin.dtype walks the module tree (1.3 ms a call on DisCa-mini, several calls a step); the
        # HunyuanVideo transformers keep no module in another dtype, so the first parameter's is the model's
        return next(self.transformer.parameters()).dtype

    @property
    def condition_channels(self) -> int:
        """Input channels beyond the latent's: 1.5's image condition + mask (0 for 1.0)."""
        return self.transformer.config.in_channels - self.transformer.config.out_channels

    @property
    def is_meanflow(self) -> bool:
        if self.arch == ARCH_HV10:
            return self.time_r_in is not None
        return self.transformer.time_embed.timestep_embedder_r is not None

    @property
    def is_guidance_embedded(self) -> bool:
        if self.arch == ARCH_HV10:
            return self.transformer.time_text_embed.guidance_embedder is not None
        return self.guidance_in is not None

    def main_blocks(self) -> list[nn.Module]:
        """All DiT blocks in execution order (1.0: double then single; 1.5: double)."""
        blocks = list(self.transformer.transformer_blocks)
        if self.arch == ARCH_HV10:
            blocks += list(self.transformer.single_transformer_blocks)
        return blocks

    # ------------------------------------------------------------------ adding embedders

    def add_time_r_embedder(self) -> None:
        """Make this a MeanFlow model: add the r-embedder so that, at init, u(x, t, r) equals the flow model's v(x, t)
        exactly for every r (the average velocity starts as one Euler step, the best guess without training).

        The r-embedder starts as a silent copy of the t-embedder (`_silent_timestep_embedder`). 1.5 sums the two
        embeddings; 1.0 averages them, (time_in(t) + time_r_in(r)) / 2, so its time_in's last linear is doubled. A
        plain copy of time_in would match the flow model only at r = t, and start the average velocity far from any
        step of it (measured: training/README.md, "The r-embedder's init").
        """
        if self.is_meanflow:
            raise ValueError("the model already has an r-embedder (time_r_in)")
        r_embedder = self._silent_timestep_embedder()
        if self.arch == ARCH_HV10:
            last = self._timestep_embedder().linear_2
            with torch.no_grad():  # x2 is exact in floating point: (2 time_in(t) + 0) / 2 == time_in(t) bit for bit
                last.weight.mul_(2)
                last.bias.mul_(2)
            self.time_r_in = r_embedder
            return
        from diffusers.models.embeddings import Timesteps

        time_embed = self.transformer.time_embed
        time_embed.time_proj_r = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
        time_embed.timestep_embedder_r = r_embedder
        time_embed.use_meanflow = True
        self.transformer.register_to_config(use_meanflow=True)

    def add_guidance_embedder(self) -> None:
        """Make this a guidance-embedded (CFG-distilled) model; the last linear starts at zero so nothing changes at init."""
        if self.is_guidance_embedded:
            raise ValueError("the model already has a guidance embedder (guidance_in)")
        embedder = self._silent_timestep_embedder()
        if self.arch == ARCH_HV10:
            self.transformer.time_text_embed.guidance_embedder = embedder
            self.transformer.register_to_config(guidance_embeds=True)
        else:
            self.guidance_in = embedder

    def _silent_timestep_embedder(self) -> nn.Module:
        """A copy of the t-embedder whose output is 0 at init: its last linear zeroed, its first kept so it still
        gets gradients (a zero first linear would pass none through SiLU(0) = 0)."""
        embedder = copy.deepcopy(self._timestep_embedder())
        nn.init.zeros_(embedder.linear_2.weight)
        nn.init.zeros_(embedder.linear_2.bias)
        return embedder

    def _timestep_embedder(self) -> nn.Module:
        if self.arch == ARCH_HV10:
            return self.transformer.time_text_embed.timestep_embedder
        return self.transformer.time_embed.timestep_embedder

    def _time_proj(self) -> nn.Module:
        if self.arch == ARCH_HV10:
            return self.transformer.time_text_embed.time_proj
        return self.transformer.time_embed.time_proj

    # ------------------------------------------------------------------ the three steps

    def embed(self, latents: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
              sigma_next: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> Embedded:
        """latents: [B, C, F, H, W]; sigma, sigma_next (r, MeanFlow only), guidance (scale, e.g. 6.0): [B]."""
        missing = [k for k in COND_KEYS[self.arch] if k not in cond]
        if missing:
            raise KeyError(f"conditioning for {self.arch} lacks {missing}; it needs {list(COND_KEYS[self.arch])}")
        if self.is_meanflow and sigma_next is None:
            raise ValueError("this is a MeanFlow model: pass sigma_next (r, the next sigma of the schedule)")
        if self.is_guidance_embedded and guidance is None:
            raise ValueError("this model is guidance-embedded: pass guidance (the CFG scale it should imitate)")
        timestep, timestep_r, guidance = dit_time_inputs(sigma, sigma_next if self.is_meanflow else None,
                                                         guidance if self.is_guidance_embedded else None, self.dtype)
        # ComfyUI casts the latent and every conditioning tensor to the model dtype where the DiT takes them
        # (BaseModel._apply_model), whatever dtype the caller keeps them in
        cond = {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in cond.items()}
        if self.arch == ARCH_HV10:
            return self._embed_hv10(latents.to(self.dtype), timestep, cond, timestep_r, guidance)
        return self._embed_hv15(latents, timestep, cond, timestep_r, guidance)

    def _embed_hv10(self, latents, timestep, cond, timestep_r, guidance) -> Embedded:
        tr = self.transformer
        tt = tr.time_text_embed
        pooled = cond["pooled_embeds"]
        # the operations and order of HunyuanVideoConditionEmbedding.forward, plus the r term; each fp32 sinusoid is
        # cast to the model dtype, as ComfyUI's `.to(img.dtype)` does
        time_emb = tt.timestep_embedder(tt.time_proj(timestep).to(self.dtype))
        if self.time_r_in is not None:
            time_emb = (time_emb + self.time_r_in(tt.time_proj(timestep_r).to(self.dtype))) / 2
        pooled_emb = tt.text_embedder(pooled)
        if tt.guidance_embedder is not None:
            guidance_emb = tt.guidance_embedder(tt.time_proj(guidance).to(self.dtype))
            temb = time_emb + guidance_emb + pooled_emb
        else:
            temb = time_emb + pooled_emb
        rotary = tr.rope(latents)
        img = tr.x_embedder(latents)
        txt = tr.context_embedder(cond["prompt_embeds"], timestep, cond["prompt_mask"])
        # key mask over [img ‖ txt]: padded text tokens (at the end) are masked, as diffusers builds it
        batch, img_len, txt_len = img.shape[0], img.shape[1], txt.shape[1]
        valid = img_len + cond["prompt_mask"].sum(dim=1, dtype=torch.int)
        mask = torch.arange(img_len + txt_len, device=img.device).unsqueeze(0) < valid.unsqueeze(1)
        return Embedded(img, txt, temb, rotary, mask.view(batch, 1, 1, -1), tuple(latents.shape))

    def _embed_hv15(self, latents, timestep, cond, timestep_r, guidance) -> Embedded:
        tr = self.transformer
        te = tr.time_embed
        # HunyuanVideo15TimeEmbedding.forward, except that the fp32 sinusoids are cast to the model dtype (diffusers
        # casts them to the timestep's, which is fp32 here) as ComfyUI's `.to(img.dtype)` does
        temb = te.timestep_embedder(te.time_proj(timestep).to(self.dtype))
        if timestep_r is not None:
            temb = temb + te.timestep_embedder_r(te.time_proj_r(timestep_r).to(self.dtype))
        if self.guidance_in is not None:
            temb = temb + self.guidance_in(self._time_proj()(guidance).to(self.dtype))
        model_input = torch.cat([latents, cond["image_latents"]], dim=1).to(self.dtype)
        rotary = tr.rope(model_input)
        img = tr.x_embedder(model_input)
        txt, mask = self._hv15_text_tokens(timestep, cond)
        return Embedded(img, txt, temb, rotary, mask, tuple(latents.shape))

    def _hv15_text_tokens(self, timestep, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The token sequence HunyuanVideo15Transformer3DModel.forward builds: valid image, ByT5, LLM tokens first."""
        tr = self.transformer
        prompt_mask = cond["prompt_mask"]
        txt = tr.context_embedder(cond["prompt_embeds"], timestep, prompt_mask)
        txt = txt + tr.cond_type_embed(torch.zeros_like(txt[:, :, 0], dtype=torch.long))
        byt5 = tr.context_embedder_2(cond["byt5_embeds"])
        byt5 = byt5 + tr.cond_type_embed(torch.ones_like(byt5[:, :, 0], dtype=torch.long))
        image_embeds = cond["image_embeds"]
        image = tr.image_embedder(image_embeds)
        batch = image.shape[0]
        if torch.all(image_embeds == 0):  # text-to-video: the image tokens exist but are masked out
            image = image * 0.0
            image_mask = torch.zeros(batch, image.shape[1], dtype=prompt_mask.dtype, device=prompt_mask.device)
        else:
            image_mask = torch.ones(batch, image.shape[1], dtype=prompt_mask.dtype, device=prompt_mask.device)
        image = image + tr.cond_type_embed(2 * torch.ones_like(image[:, :, 0], dtype=torch.long))
        prompt_mask, byt5_mask, image_mask = prompt_mask.bool(), cond["byt5_mask"].bool(), image_mask.bool()
        tokens, masks = [], []
        for t, tm, b, bm, i, im in zip(txt, prompt_mask, byt5, byt5_mask, image, image_mask):
            tokens.append(torch.cat([i[im], b[bm], t[tm], i[~im], torch.zeros_like(b[~bm]), torch.zeros_like(t[~tm])]))
            masks.append(torch.cat([im[im], bm[bm], tm[tm], im[~im], bm[~bm], tm[~tm]]))
        return torch.stack(tokens), torch.stack(masks)

    def _call_block(self, block: nn.Module, img, txt, e: Embedded):
        return self._call_block_args(block, img, txt, e.temb, e.attention_mask, e.rotary)

    def _call_block_args(self, block: nn.Module, img, txt, temb, attention_mask, rotary):
        if torch.is_grad_enabled() and self.transformer.gradient_checkpointing:
            return self.transformer._gradient_checkpointing_func(block, img, txt, temb, attention_mask, rotary)
        return block(img, txt, temb, attention_mask, rotary)

    def run_blocks(self, e: Embedded) -> tuple[torch.Tensor, ...]:
        """Run every DiT block; returns the cache DisCa stores on an anchor step.

        1.0: (x,) with x = [img ‖ txt] after the last single-stream block, [B, L_img + L_txt, D];
        1.5: (img, txt) after the last double-stream block.
        """
        img, txt = e.img, e.txt
        for block in self.main_blocks():
            img, txt = self._call_block(block, img, txt, e)
        if self.arch == ARCH_HV10:
            return (torch.cat([img, txt], dim=1),)
        return img, txt

    def block_features(self, e: Embedded, taps: tuple[int, ...], segment_blocks: int | None = None) -> list[torch.Tensor]:
        """Image tokens [B, L_img, D] after each tapped block (indices into `main_blocks()`); stops at the deepest tap.

        Features come in block order. Without grad, or with the transformer's gradient checkpointing off, the blocks
        simply run one after another. With grad and gradient checkpointing on (the GAN generator pass, which
        back-propagates through the frozen trunk), the n blocks that run are checkpointed on two levels: segments of
        k = `segment_blocks` consecutive blocks (default ceil(sqrt(n))) are checkpointed as a whole, and inside a
        segment's recompute each block is checkpointed again. Backward then holds about n / k segment inputs plus the
        k block inputs of the segment being recomputed, instead of all n block inputs, at the cost of one more
        forward of (most of) the trunk. A segment returns the tapped block outputs inside it along with its output,
        so the features carry gradients exactly as without checkpointing. `segment_blocks=1` is plain per-block
        checkpointing.
        """
        blocks = self.main_blocks()
        if not taps or max(taps) >= len(blocks) or min(taps) < 0:
            raise ValueError(f"discriminator taps {list(taps)} must be block indices in 0..{len(blocks) - 1}")
        blocks = blocks[: max(taps) + 1]
        features, img, txt = [], e.img, e.txt
        if not (torch.is_grad_enabled() and self.transformer.gradient_checkpointing):
            for index, block in enumerate(blocks):
                img, txt = self._call_block(block, img, txt, e)
                if index in taps:
                    features.append(img)
            return features
        size = math.ceil(math.sqrt(len(blocks))) if segment_blocks is None else int(segment_blocks)
        if size < 1:
            raise ValueError(f"segment_blocks must be a positive number of blocks, got {segment_blocks}")
        for start in range(0, len(blocks), size):
            segment = blocks[start: start + size]
            tapped = tuple(i for i in range(len(segment)) if start + i in taps)
            if len(segment) == 1:
                img, txt = self._call_block(segment[0], img, txt, e)
                features.extend(img for _ in tapped)
                continue
            run = functools.partial(self._run_segment, segment, tapped)
            img, txt, *outputs = torch.utils.checkpoint.checkpoint(
                run, img, txt, e.temb, e.attention_mask, e.rotary, use_reentrant=False)
            features.extend(outputs)
        return features

    def _run_segment(self, segment: list[nn.Module], tapped: tuple[int, ...], img, txt, temb, attention_mask, rotary):
        """Blocks of one trunk segment, each checkpointed on its own: (img, txt, *image tokens after the tapped ones)."""
        outputs = []
        for index, block in enumerate(segment):
            img, txt = self._call_block_args(block, img, txt, temb, attention_mask, rotary)
            if index in tapped:
                outputs.append(img)
        return (img, txt, *outputs)

    def image_tokens(self, cache: tuple[torch.Tensor, ...], e: Embedded) -> torch.Tensor:
        """The image part of a cache or block output, [B, L_img, D]."""
        return cache[0][:, : e.img.shape[1]]

    def finalize(self, e: Embedded, img: torch.Tensor) -> torch.Tensor:
        """The DiT's own final layer + unpatchify. img: [B, L_img, D] -> velocity [B, C_out, F, H, W]."""
        tr = self.transformer
        batch, _, frames, height, width = e.latent_shape
        p, p_t = tr.config.patch_size, tr.config.patch_size_t
        out = tr.proj_out(tr.norm_out(img, e.temb))
        out = out.reshape(batch, frames // p_t, height // p, width // p, -1, p_t, p, p)
        out = out.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, latents: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
                sigma_next: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The full DiT: latents [B, C, F, H, W] -> velocity (MeanFlow: average velocity over [r, t]) [B, C_out, F, H, W]."""
        e = self.embed(latents, sigma, cond, sigma_next, guidance)
        return self.finalize(e, self.image_tokens(self.run_blocks(e), e))

    def forward_with_cache(self, latents, sigma, cond, sigma_next=None, guidance=None):
        """An anchor step: (velocity, cache). The cache is detached, as DisCa stores it."""
        e = self.embed(latents, sigma, cond, sigma_next, guidance)
        cache = self.run_blocks(e)
        return self.finalize(e, self.image_tokens(cache, e)), tuple(c.detach() for c in cache)

    def predict(self, predictor: nn.Module, latents, sigma, cond, cache, sigma_next=None, guidance=None) -> torch.Tensor:
        """A predicted step: no DiT block runs; the predictor maps (current tokens, cache) to the last hidden state."""
        e = self.embed(latents, sigma, cond, sigma_next, guidance)
        return self.finalize(e, predictor(e.img, e.txt, cache, e.temb, e.attention_mask, e.rotary))

    def reuse_cache(self, latents, sigma, cond, cache, sigma_next=None, guidance=None) -> torch.Tensor:
        """The training-free baseline: the anchor's last hidden state through the current step's final layer."""
        e = self.embed(latents, sigma, cond, sigma_next, guidance)
        return self.finalize(e, self.image_tokens(cache, e))

    # ------------------------------------------------------------------ weights

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers keys of the transformer, plus `time_r_in.*` / `guidance_in.*` for the modules kept here."""
        state = dict(self.transformer.state_dict())
        for name in ("time_r_in", "guidance_in"):
            module = getattr(self, name)
            if module is not None:
                state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        return state

    def tencent_state_dict(self) -> dict[str, torch.Tensor]:
        """The merged Tencent layout (fused q/k/v, as ComfyUI's renaming expects). Files are written in the official
        layout (`disca.formats.official_tencent_layout`: 1.5's q/k/v split), which every loader here accepts."""
        return diffusers_to_tencent_dit(self.diffusers_state_dict(), self.arch)


# ---------------------------------------------------------------------------------------------------- loading


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """The (t, h, w) split of a head's rotary dimensions: HunyuanVideo's (16, 56, 56) for 128, scaled for other
    widths (small DiTs such as DisCa-mini's); a Tencent-layout file does not record it."""
    if head_dim % 16:
        raise DisCaFormatError(f"attention head width {head_dim}: the rotary split needs a multiple of 16")
    return head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16


def dit_config_from_tencent(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """Read a diffusers config from a (normalized) Tencent-layout DiT, as ComfyUI's model detection does; the head
    width from the q-norm weights (128 for HunyuanVideo)."""
    spec = infer_dit_spec(state_dict)
    img_in = state_dict["img_in.proj.weight"]
    hidden, in_channels, patch = img_in.shape[0], img_in.shape[1], tuple(img_in.shape[2:])
    q_norm = "double_blocks.0.img_attn_q_norm.weight" if spec.double_blocks else "single_blocks.0.q_norm.weight"
    attention_head_dim = state_dict[q_norm].shape[0]
    if hidden % attention_head_dim:
        raise DisCaFormatError(f"hidden size {hidden} is not a multiple of the head width {attention_head_dim} ({q_norm})")
    refiners = len({k.split(".")[3] for k in state_dict if k.startswith("txt_in.individual_token_refiner.blocks.")})
    common = dict(
        in_channels=in_channels,
        out_channels=state_dict["final_layer.linear.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        num_attention_heads=hidden // attention_head_dim,
        attention_head_dim=attention_head_dim,
        num_layers=spec.double_blocks,
        num_refiner_layers=refiners,
        mlp_ratio=state_dict["double_blocks.0.img_mlp.fc1.weight"].shape[0] / hidden,
        patch_size=patch[1],
        patch_size_t=patch[0],
        text_embed_dim=state_dict["txt_in.input_embedder.weight"].shape[1],
        rope_axes_dim=rope_axes(attention_head_dim),
    )
    if spec.arch == ARCH_HV10:
        return spec.arch, dict(common, num_single_layers=spec.single_blocks, guidance_embeds=spec.guidance_distilled,
                               pooled_projection_dim=state_dict["vector_in.in_layer.weight"].shape[1])
    return spec.arch, dict(common, text_embed_2_dim=state_dict["byt5_in.fc1.weight"].shape[1],
                           image_embed_dim=state_dict["vision_in.proj.1.weight"].shape[1], use_meanflow=spec.meanflow)


def _extra_embedder(state_dict: dict, name: str, hidden: int) -> nn.Module | None:
    from diffusers.models.embeddings import TimestepEmbedding

    sub = {k[len(name) + 1:]: v for k, v in state_dict.items() if k.startswith(f"{name}.")}
    if not sub:
        return None
    module = TimestepEmbedding(in_channels=256, time_embed_dim=hidden)
    module.load_state_dict(sub, strict=True)
    return module


def host_from_diffusers_state_dict(arch: str, config: dict, state_dict: dict[str, torch.Tensor],
                                   source: str = "model") -> HunyuanVideoHost:
    """Build a host from diffusers-keyed weights (+ `time_r_in.*` / `guidance_in.*`), strictly."""
    # built on the meta device and given the loaded tensors: a 13B DiT would otherwise spend minutes and 52 GB on a
    # random fp32 init that the weights overwrite
    with torch.device("meta"):
        transformer = _diffusers_classes()[arch](**config)
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    extras = {k: v for k, v in state_dict.items() if k.split(".")[0] in ("time_r_in", "guidance_in")}
    main = {k: v for k, v in state_dict.items() if k not in extras}
    missing, unexpected = transformer.load_state_dict(main, strict=False, assign=True)
    if missing or unexpected:
        raise DisCaFormatError(f"{source}: weights do not fit the {arch} diffusers model (missing {missing[:6]}, "
                               f"unexpected {unexpected[:6]}); is it the right HunyuanVideo version?")
    left_on_meta = [name for name, t in (*transformer.named_parameters(), *transformer.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise DisCaFormatError(f"{source}: no weights for {left_on_meta[:6]} of the {arch} diffusers model")
    return HunyuanVideoHost(transformer, _extra_embedder(extras, "time_r_in", hidden),
                            _extra_embedder(extras, "guidance_in", hidden))


def arch_of_folder(path: str) -> str:
    """The HunyuanVideo version of a diffusers model folder, from its config.json's class name."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise DisCaFormatError(f"{path}: a diffusers model folder needs config.json; point to the 'transformer' folder")
    with open(config_path) as f:
        class_name = json.load(f).get("_class_name", "")
    arches = {cls.__name__: arch for arch, cls in _diffusers_classes().items()}
    if class_name not in arches:
        raise DisCaFormatError(f"{path}: config.json is for {class_name!r}, expected one of {sorted(arches)}")
    return arches[class_name]


def load_host(path: str, dtype: torch.dtype = torch.float32) -> HunyuanVideoHost:
    """Load a DiT from a diffusers folder (config.json + weights) or a Tencent-layout .safetensors file."""
    if os.path.isdir(path):
        cls = _diffusers_classes()[arch_of_folder(path)]
        host = HunyuanVideoHost(cls.from_pretrained(path, torch_dtype=dtype))
        extras_path = os.path.join(path, "disca_extra_embedders.safetensors")
        if os.path.isfile(extras_path):
            extras, _ = load_safetensors(extras_path)
            hidden = host.hidden_size
            host.time_r_in = _extra_embedder(extras, "time_r_in", hidden)
            host.guidance_in = _extra_embedder(extras, "guidance_in", hidden)
        return host.to(dtype)
    if not path.endswith(".safetensors"):
        raise DisCaFormatError(f"{path}: give a diffusers model folder or a Tencent-layout .safetensors file")
    tensors, _ = load_safetensors(path)
    tensors = strip_wrapper_prefix(tensors)
    arch, config = dit_config_from_tencent(tensors)
    host = host_from_diffusers_state_dict(arch, config, tencent_to_diffusers_dit(tensors, arch, path), path)
    return host.to(dtype)


# ---------------------------------------------------------------------------------------------------- predictor


class DiffusersPredictor(DisCaPredictor):
    """DisCaPredictor with diffusers blocks: HunyuanVideoSingleTransformerBlock (1.0) or the double-stream block (1.5).

    Keys are the official top-level names with diffusers block internals; `official_state_dict` maps them to the
    official layout that `disca.formats.load_predictor_file` reads.
    """

    def __init__(self, spec: PredictorSpec, head_dim: int = 128):
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoSingleTransformerBlock
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock

        mlp_ratio = spec.mlp_hidden_dim / spec.hidden_size
        block = HunyuanVideoSingleTransformerBlock if spec.arch == ARCH_HV10 else HunyuanVideo15TransformerBlock
        super().__init__(spec, [block(spec.num_heads, spec.head_dim, mlp_ratio=mlp_ratio) for _ in range(spec.depth)])
        # recompute each block in backward instead of keeping its activations (the MSE step at 720p and the GAN
        # step at 480p do not fit an 80 GB GPU without it; see training/results/)
        self.checkpoint_blocks = False

    def forward(self, img: torch.Tensor, txt: torch.Tensor, cache: tuple[torch.Tensor, ...], temb: torch.Tensor,
                attention_mask: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """img [B, L_img, D], txt [B, L_txt, D], cache from `run_blocks` -> predicted last image tokens [B, L_img, D]."""
        if self.spec.arch == ARCH_HV10:
            x = self.fuse_tokens(torch.cat([img, txt], dim=1), cache[0])
            img, txt = x[:, : img.shape[1]], x[:, img.shape[1]:]
        else:
            img, txt = self.fuse_streams(img, txt, cache[0], cache[1])
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                img, txt = torch.utils.checkpoint.checkpoint(block, img, txt, temb, attention_mask, rotary,
                                                             use_reentrant=False)
            else:
                img, txt = block(img, txt, temb, attention_mask, rotary)
        return img

    @classmethod
    def from_file(cls, file: PredictorFile, source: str = "predictor") -> "DiffusersPredictor":
        """A loaded predictor file (`disca.formats.load_predictor_file`: official or ours) as this module."""
        predictor = cls(file.spec)
        predictor.load_official_state_dict(file.state_dict, source)
        predictor.trained_only_on_lists = file.trained_only_on_lists
        return predictor

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The layout the official DisCa code loads (1.5: q/k/v split, `disca.formats.official_tencent_layout`)."""
        merged = diffusers_to_tencent_predictor({k: v.detach() for k, v in self.state_dict().items()}, self.spec.arch)
        return official_tencent_layout(merged, self.spec.arch)

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "predictor") -> None:
        """Load official-layout weights (any variant `disca.formats` accepts), strictly."""
        spec, normalized = read_predictor_state_dict(state_dict, source)
        if spec != self.spec:
            raise DisCaFormatError(f"{source}: predictor is {spec}, this module is {self.spec}")
        self.load_state_dict(tencent_to_diffusers_predictor(normalized, spec.arch, spec.hidden_size, source), strict=True)


_GATE_CHUNKS = {ARCH_HV10: {"norm.linear": (3, (2,))},
                ARCH_HV15: {"norm1.linear": (6, (2, 5)), "norm1_context.linear": (6, (2, 5))}}


def predictor_from_dit(host: HunyuanVideoHost, depth: int = 2, zero_gates: bool = True) -> DiffusersPredictor:
    """A predictor whose blocks start as copies of the DiT's last `depth` blocks, residual gates zeroed.

    With zero gates each block starts as the identity, so the predictor first outputs fusion_mlp([tokens ‖ cache])
    and the blocks learn a correction from weights that already read the DiT's last-layer features.
    """
    blocks = host.main_blocks()
    if not 1 <= depth <= len(blocks):
        raise ValueError(f"predictor depth {depth} must be in 1..{len(blocks)} (the DiT's block count)")
    config = host.transformer.config
    source_blocks = (list(host.transformer.single_transformer_blocks) if host.arch == ARCH_HV10
                     else list(host.transformer.transformer_blocks))[-depth:]
    if len(source_blocks) < depth:
        raise ValueError(f"predictor depth {depth} exceeds the DiT's {len(source_blocks)} blocks of the predictor's type")
    spec = PredictorSpec(arch=host.arch, hidden_size=host.hidden_size, num_heads=config.num_attention_heads,
                         depth=depth, mlp_hidden_dim=int(host.hidden_size * config.mlp_ratio))
    predictor = DiffusersPredictor(spec)
    for target, source in zip(predictor.blocks, source_blocks):
        target.load_state_dict(source.state_dict(), strict=True)
        if zero_gates:
            with torch.no_grad():
                for name, (chunks, gates) in _GATE_CHUNKS[host.arch].items():
                    linear = target.get_submodule(name)
                    rows = linear.weight.shape[0] // chunks
                    for g in gates:
                        linear.weight[g * rows:(g + 1) * rows].zero_()
                        linear.bias[g * rows:(g + 1) * rows].zero_()
    return predictor.to(dtype=next(host.parameters()).dtype)
