"""Context parallelism for HunyuanVideo 1.0 / 1.5 diffusers transformers and their DisCa predictor (Ulysses).

diffusers 0.42 splits a model's sequence across ranks from a `cp_plan` (`ModelMixin.enable_parallelism`) and ships
plans for Wan, LTX, Flux and others, none for HunyuanVideo. The plans here split the image tokens (and their rotary
angles) and the text tokens after the embedders, and gather after `proj_out`; attention runs Ulysses all-to-alls.
Each rank's blocks, and so DisCa's cache (the last block's output), hold only that rank's sequence shard: the cache
is captured, stored and consumed where it was made, and nothing is communicated for it. The predictor's blocks are
diffusers blocks too and get the same parallel attention.

Two places where HunyuanVideo's text padding needs more than a plan:
- 1.0 builds the blocks' key mask from the *local* token counts and the *full* prompt mask (valid iff index <
  L_img_local + valid text tokens), which is right only on one rank. The prompt mask is valid-first, so each rank's
  shard of it is valid-first too: a hook hands the model a mask with this rank's count of valid text tokens, and the
  token refiner (which sees the whole prompt) the full one.
- 1.5's attention processor turns the text mask into a query x key mask, which Ulysses cannot gather along the query
  dimension; under context parallelism its processor uses the key mask alone, which changes only the rows of padded
  text queries (masked as keys everywhere, so no valid token and no output sees them).

Ring attention is refused: diffusers 0.42's ring applies each rank's key mask to every rotated key chunk, which
HunyuanVideo's text padding (always present: prompts are padded to a fixed length) would make wrong.

    from diffusers import ContextParallelConfig
    apply_disca(pipe, DisCaHookConfig(...))                                   # first: DisCa's block hooks must
    enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=2))   # run inside the plan's split hooks
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video15 import (HunyuanVideo15AttnProcessor2_0,
                                                                       dispatch_attention_fn)
from torch import nn

from disca.formats import ARCH_HV10
from disca.hosts.diffusers import arch_of
from disca.hosts.diffusers_hooks import HOOK_NAME as DISCA_HOOK

HOOK_NAME = "disca_context_parallel"

# rotary angles are per image token, [L_img, head_dim]: split like the image tokens
_ROPE = {0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
         1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)}
HV10_CP_PLAN = {
    "rope": _ROPE,
    "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
    # the token refiner attends over the whole prompt with its mask: split its output, not its input
    "context_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}
HV15_CP_PLAN = {
    "rope": _ROPE,
    # after forward() has built and reordered the text sequence (valid image, ByT5 and LLM tokens first)
    "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3),
                             "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
    "transformer_blocks.*": {"attention_mask": ContextParallelInput(split_dim=1, expected_dims=2)},
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


class KeyMaskAttnProcessor(HunyuanVideo15AttnProcessor2_0):
    """HunyuanVideo-1.5 attention with a key-only text mask under context parallelism (stock otherwise, unless
    `always`: the key-only mask also spares a single GPU the stock [B, 1, S, S] mask, for measurements)."""

    def __init__(self, always: bool = False):
        super().__init__()
        self.always = always

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if (self._parallel_config is None and not self.always) or attention_mask is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        def heads(x):
            return x.unflatten(2, (attn.heads, -1))

        query, key = attn.norm_q(heads(attn.to_q(hidden_states))), attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        text_q, text_k = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        query, key, value = torch.cat([query, text_q], 1), torch.cat([key, text_k], 1), torch.cat([value, text_v], 1)
        keys_valid = F.pad(attention_mask, (query.shape[1] - attention_mask.shape[1], 0), value=True).bool()
        out = dispatch_attention_fn(query, key, value, attn_mask=keys_valid[:, None, None, :],
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        text_len = encoder_hidden_states.shape[1]
        return attn.to_out[1](attn.to_out[0](out[:, :-text_len])), attn.to_add_out(out[:, -text_len:])


class _PromptMasks:
    """The prompt mask of the call in progress, and this rank's count of valid text tokens."""

    def __init__(self, ranks: int, rank: int):
        self.ranks, self.rank, self.full = ranks, rank, None


class LocalPromptMaskHook(ModelHook):
    """On a 1.0 transformer: the model builds its blocks' key mask from a mask with this rank's valid text tokens."""

    def __init__(self, masks: _PromptMasks):
        super().__init__()
        self.masks = masks

    def pre_forward(self, module, *args, **kwargs):
        call = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
        full = call.arguments["encoder_attention_mask"]
        _, _, frames, height, width = call.arguments["hidden_states"].shape
        config = module.config
        image_tokens = (frames // config.patch_size_t) * (height // config.patch_size) * (width // config.patch_size)
        if full.shape[1] % self.masks.ranks or image_tokens % self.masks.ranks:
            raise ValueError(f"context parallelism over {self.masks.ranks} ranks splits the {image_tokens} image and "
                             f"{full.shape[1]} text tokens evenly; choose a video size and prompt length they divide")
        shard = full.shape[1] // self.masks.ranks
        valid = (full.sum(dim=1, dtype=torch.int) - self.masks.rank * shard).clamp(0, shard)
        self.masks.full = full
        call.arguments["encoder_attention_mask"] = (torch.arange(full.shape[1], device=full.device)
                                                    < valid[:, None]).to(full.dtype)
        return call.args[1:], call.kwargs

    def post_forward(self, module, output):
        self.masks.full = None
        return output


class FullPromptMaskHook(ModelHook):
    """On a 1.0 token refiner: it sees the whole prompt, so it gets the full mask back."""

    def __init__(self, masks: _PromptMasks):
        super().__init__()
        self.masks = masks

    def pre_forward(self, module, hidden_states, timestep, attention_mask=None, *args, **kwargs):
        full = self.masks.full if self.masks.full is not None else attention_mask
        return (hidden_states, timestep, full, *args), kwargs


def enable_context_parallel(pipe, config) -> None:
    """Split `pipe.transformer`'s sequence across the ranks of `config` (a diffusers ContextParallelConfig with
    `ulysses_degree`); call under torchrun, every rank with the same inputs, after `apply_disca` if DisCa is used:
    its predictor then gets the same parallel attention."""
    transformer = getattr(pipe, "transformer", pipe)
    arch = arch_of(transformer)
    if (config.ring_degree or 1) > 1:
        raise ValueError("ring_degree: diffusers' ring attention applies each rank's key mask to every rotated key "
                         "chunk, so HunyuanVideo's padded text would be attended wrongly; use ulysses_degree")
    degree = config.ulysses_degree or 1
    if arch == ARCH_HV10 and config.ulysses_anything:
        raise ValueError("ulysses_anything: HunyuanVideo-1.0's sequence splits evenly (its prompt is padded to a fixed "
                         "length) and its prompt-mask fix assumes equal shards; leave ulysses_anything off")
    if arch != ARCH_HV10 and not config.ulysses_anything:
        raise ValueError("ulysses_anything: HunyuanVideo-1.5's text sequence (image, ByT5 and LLM tokens: 1985 in the "
                         "I2V pipeline) rarely divides by the degree; pass ContextParallelConfig(ulysses_degree=N, "
                         "ulysses_anything=True)")
    if transformer.config.num_attention_heads % degree:
        raise ValueError(f"ulysses_degree {degree} must divide the model's {transformer.config.num_attention_heads} "
                         "attention heads")
    if arch != ARCH_HV10:
        use_key_mask_processors(transformer)
    with _one_device_without_accelerator():
        transformer.enable_parallelism(config=config, cp_plan=HV10_CP_PLAN if arch == ARCH_HV10 else HV15_CP_PLAN)
    if arch == ARCH_HV10:
        mesh = config._flattened_mesh
        masks = _PromptMasks(mesh.size(), mesh.get_local_rank())
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(LocalPromptMaskHook(masks), HOOK_NAME)
        HookRegistry.check_if_exists_or_initialize(transformer.context_embedder).register_hook(
            FullPromptMaskHook(masks), HOOK_NAME)
    disca = HookRegistry.check_if_exists_or_initialize(transformer).get_hook(DISCA_HOOK)
    if disca is not None and disca.predictor is not None:
        parallelize_predictor(disca.predictor, transformer)


@contextlib.contextmanager
def _one_device_without_accelerator():
    """diffusers 0.42 puts rank r on device r % torch.accelerator.device_count(), a division by zero on a CPU-only
    torch; there every rank's device is the CPU (gloo), so count it as one device while parallelism is set up."""
    if torch.accelerator.device_count():
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def use_key_mask_processors(module: nn.Module, always: bool = False) -> None:
    """1.5's attention processors in `module` as KeyMaskAttnProcessor (`always`: also without context parallelism)."""
    for child in module.modules():
        if isinstance(getattr(child, "processor", None), HunyuanVideo15AttnProcessor2_0) and not isinstance(
                child.processor, KeyMaskAttnProcessor):
            child.set_processor(KeyMaskAttnProcessor(always))


def parallelize_predictor(predictor: nn.Module, transformer: nn.Module) -> None:
    """Give the predictor's attention the transformer's parallel config (no-op without context parallelism)."""
    parallel = getattr(transformer, "_parallel_config", None)
    if parallel is None or parallel.context_parallel_config is None:
        return
    if arch_of(transformer) != ARCH_HV10:
        use_key_mask_processors(predictor)
    for child in predictor.modules():
        processor = getattr(child, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = parallel
