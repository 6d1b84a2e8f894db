"""DisCa for diffusers pipelines: hooks on the transformer, in the idiom of `diffusers.hooks` (FirstBlockCache).

    from disca.hosts.diffusers_hooks import DisCaHookConfig, apply_disca
    apply_disca(pipe, DisCaHookConfig(predictor="disca_predictor.safetensors", schedule="t2v_official_8of20"))
    video = pipe(prompt, num_inference_steps=20).frames[0]

Works on `HunyuanVideoPipeline` (1.0 T2V) and the HunyuanVideo-1.5 pipelines (`HunyuanVideo15ImageToVideoPipeline`).
A hook on the transformer asks the one runtime every host uses (`disca.runtime.DisCaRun`) whether a call is an anchor;
hooks on the DiT blocks then either run them and keep the last block's output (the cache), or pass every block
through and let the predictor stand in for the stack; the transformer's own embedding and final layer run as stock,
so a step that runs the full model is the stock forward. The step index comes from the pipeline's scheduler, each
`cache_context` (cond, uncond) gets its own run and cache, and the pipeline's `maybe_free_model_hooks()` at the end
of a call logs each run's summary and frees its cache. `remove_disca(pipe)` restores the stock model.

HunyuanVideo-1.0 MeanFlow DiTs embed r with a `time_r_in` module that diffusers' model lacks: pass the one
`disca.hosts.diffusers.load_host` returns (`host.time_r_in`) as `DisCaHookConfig.time_r_in`; r is the scheduler's
next timestep, as the 1.5 pipelines compute it.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from disca.formats import ARCH_HV10, load_predictor_file
from disca.hosts.diffusers import DiffusersPredictor, arch_of
from disca.runtime import (CACHE_ON_COMPUTE_DEVICE, HIDDEN_STATE_MODES, MODE_PREDICTOR, MODE_REUSE_CACHE, DisCaConfig,
                           DisCaRun)
from disca.schedules import AnchorSchedule

log = logging.getLogger("disca")

HOOK_NAME = "disca"  # every hook DisCa registers (transformer, blocks, time embedder) goes by this name


@dataclass
class DisCaHookConfig:
    """How DisCa runs a diffusers pipeline.

    predictor: a predictor file (official or ours) or a loaded `DiffusersPredictor`; needed in "predictor" mode.
    schedule: a preset (`t2v_official_8of20`, `N4`, ...), a step list ("0 1 2 5 9 13 17 19") or an AnchorSchedule.
    mode: "predictor" (DisCa) or a training-free cache for A/B ("reuse_output", "reuse_cache", "taylor").
    cache_device: "compute_device" or "cpu" (parks the cache in host memory between steps).
    time_r_in: the r-embedder of a HunyuanVideo-1.0 MeanFlow DiT (`load_host(...).time_r_in`); None otherwise.
    """

    predictor: str | nn.Module | None = None
    schedule: str | AnchorSchedule = "N4"
    mode: str = MODE_PREDICTOR
    cache_device: str = CACHE_ON_COMPUTE_DEVICE
    time_r_in: nn.Module | None = None

    def anchor_schedule(self) -> AnchorSchedule:
        return self.schedule if isinstance(self.schedule, AnchorSchedule) else AnchorSchedule.parse(self.schedule)


class _BlockControl:
    """What the transformer hook tells the block hooks for the call in progress (one call at a time)."""

    def __init__(self):
        self.capture = False  # keep the last block's output as the cache
        self.cached: tuple[torch.Tensor, ...] | None = None  # set on a cached step: the blocks pass through
        self.captured: tuple[torch.Tensor, ...] | None = None
        self.timestep_r: torch.Tensor | None = None


class _RunState(BaseState):
    """The DisCa run of one cache context (cond, uncond, ...) of a pipeline call."""

    def __init__(self):
        self.run: DisCaRun | None = None
        self.timesteps_r: torch.Tensor | None = None  # 1.0 MeanFlow: r of every step, on the model's device

    def reset(self):
        if self.run is not None and self.run.stats.full_calls:
            log.info(self.run.summary())
        self.run, self.timesteps_r = None, None


class DisCaTransformerHook(ModelHook):
    """On the transformer: the runtime decides each call; the block hooks carry it out."""

    _is_stateful = True

    def __init__(self, config: DisCaConfig, predictor: nn.Module | None, scheduler, control: _BlockControl):
        super().__init__()
        self.config, self.predictor, self.scheduler, self.control = config, predictor, scheduler, control
        self.state_manager = StateManager(_RunState)
        self.meanflow_r = False  # 1.0 with `time_r_in`: this hook hands r to the time embedder's hook
        self._signature = None  # of the wrapped forward, read at the first call (fn_ref is set after registering)

    def reset_state(self, module):
        self.state_manager.reset()
        return module

    def _run(self) -> tuple[_RunState, int]:
        """This context's run and the scheduler's step: a new run when a new sampling loop starts."""
        if self.scheduler.timesteps is None:
            raise RuntimeError("DisCa: the pipeline's scheduler has no timesteps; call the pipeline, or "
                               "scheduler.set_timesteps(...) before calling the transformer yourself")
        step, total = self.scheduler.step_index or 0, len(self.scheduler.timesteps)
        state = self.state_manager.get_state()
        if state.run is None or state.run.total_steps != total or step < state.run.current_step:
            state.reset()
            state.run = DisCaRun(self.config, total, self.predictor)
            log.info("DisCa [%s]: %s", self.state_manager.context.name, self.config.schedule.describe(total))
        if step:
            state.run.step_finished(step - 1)
        return state, step

    def new_forward(self, module, *args, **kwargs):
        if self._signature is None:
            self._signature = inspect.signature(self.fn_ref.original_forward)
        call = self._signature.bind(*args, **kwargs)
        state, step = self._run()
        timestep = call.arguments["timestep"]
        if self.meanflow_r:
            if state.timesteps_r is None:  # once a run: no host-to-device copy per step
                # r = the next sigma, in timestep units: the 1.5 pipelines' timesteps[i + 1]
                r = self.scheduler.sigmas[1:] * self.scheduler.config.num_train_timesteps
                state.timesteps_r = r.to(timestep.device, timestep.dtype)
            self.control.timestep_r = state.timesteps_r[step].expand(timestep.shape[0])
        return_dict = call.arguments.get("return_dict", True)
        call.arguments["return_dict"] = False
        control = self.control

        def full_step(capture: bool):
            control.capture, control.cached, control.captured = capture, None, None
            try:
                return self.fn_ref.original_forward(*call.args, **call.kwargs)[0], control.captured
            finally:
                control.capture, control.captured = False, None

        def cached_step(hidden: tuple):
            control.cached = hidden
            try:
                return self.fn_ref.original_forward(*call.args, **call.kwargs)[0]
            finally:
                control.cached = None

        out = state.run.call((self.state_manager.context.name,), call.arguments["hidden_states"], timestep,
                             full_step, cached_step)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


class DisCaBlockHook(ModelHook):
    """On each DiT block: stock on full steps (the last one keeps its output when asked); on cached steps every block
    passes its inputs through, and the last one returns the predictor's image tokens (or the cache's, for cache
    reuse): the blocks' inputs there are the step's embedded tokens, which is what the predictor reads."""

    def __init__(self, control: _BlockControl, is_last: bool, arch: str, mode: str, predictor: nn.Module | None):
        super().__init__()
        self.control, self.is_last, self.arch, self.mode, self.predictor = control, is_last, arch, mode, predictor

    def new_forward(self, module, hidden_states, encoder_hidden_states, temb, attention_mask=None,
                    image_rotary_emb=None, *args, **kwargs):
        control = self.control
        if control.cached is None:
            out = self.fn_ref.original_forward(hidden_states, encoder_hidden_states, temb, attention_mask,
                                               image_rotary_emb, *args, **kwargs)
            if self.is_last and control.capture:
                img, txt = out
                control.captured = ((torch.cat([img, txt], dim=1).detach(),) if self.arch == ARCH_HV10
                                    else (img.detach(), txt.detach()))
            return out
        if not self.is_last:
            return hidden_states, encoder_hidden_states
        cached = control.cached
        (batch, image_len, width), text_len = hidden_states.shape, encoder_hidden_states.shape[1]
        current = ([(batch, image_len + text_len, width)] if self.arch == ARCH_HV10
                   else [tuple(hidden_states.shape), tuple(encoder_hidden_states.shape)])
        if [tuple(t.shape) for t in cached] != current:
            raise RuntimeError(f"DisCa: cached tokens {[tuple(t.shape) for t in cached]} do not match this step's "
                               f"{current}; the prompt or the video size changed within one run")
        if self.mode == MODE_REUSE_CACHE:
            return cached[0][:, : hidden_states.shape[1]], encoder_hidden_states
        img = self.predictor(hidden_states, encoder_hidden_states, cached, temb, attention_mask, image_rotary_emb)
        return img, encoder_hidden_states


class TimeREmbedderHook(ModelHook):
    """On 1.0's `time_text_embed.timestep_embedder`: (time_in(t) + time_r_in(r)) / 2, r from the transformer hook."""

    def __init__(self, control: _BlockControl, time_proj: nn.Module, time_r_in: nn.Module):
        super().__init__()
        self.control, self.time_proj, self.time_r_in = control, time_proj, time_r_in

    def new_forward(self, module, sample):
        time_emb = self.fn_ref.original_forward(sample)
        r = self.time_r_in(self.time_proj(self.control.timestep_r).to(sample.dtype))
        return (time_emb + r) / 2


def _main_blocks(transformer: nn.Module, arch: str) -> list[nn.Module]:
    blocks = list(transformer.transformer_blocks)
    return blocks + list(transformer.single_transformer_blocks) if arch == ARCH_HV10 else blocks


def _load_predictor(config: DisCaHookConfig, transformer: nn.Module, arch: str) -> nn.Module | None:
    if config.mode not in HIDDEN_STATE_MODES or config.mode == MODE_REUSE_CACHE:
        return None
    if config.predictor is None:
        raise ValueError("DisCaHookConfig.predictor: mode 'predictor' needs a predictor file (or module)")
    if isinstance(config.predictor, nn.Module):
        predictor, source = config.predictor, "DisCaHookConfig.predictor"
    else:
        source = str(config.predictor)
        predictor = DiffusersPredictor.from_file(load_predictor_file(source), source)
    spec = predictor.spec
    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    if spec.arch != arch or spec.hidden_size != hidden:
        raise ValueError(f"{source}: a predictor for {spec.arch} with width {spec.hidden_size}, but the pipeline's "
                         f"transformer is {arch} with width {hidden}; use the predictor trained for this model")
    parameter = next(transformer.parameters())
    return predictor.to(parameter.device, parameter.dtype).eval().requires_grad_(False)


def apply_disca(pipe, config: DisCaHookConfig) -> None:
    """Attach DisCa to `pipe.transformer` (a HunyuanVideo 1.0 or 1.5 diffusers transformer); `pipe.scheduler` gives
    the step. Applying again replaces the earlier setup."""
    transformer, scheduler = pipe.transformer, pipe.scheduler
    arch = arch_of(transformer)
    if getattr(transformer, "_parallel_config", None) is not None:
        # the plan's split hooks on the blocks must wrap DisCa's, which skip the blocks on predicted steps
        raise ValueError("DisCa: apply_disca before enable_context_parallel (this transformer is already parallel)")
    runtime_config = DisCaConfig(config.anchor_schedule(), mode=config.mode, cache_device=config.cache_device)
    if arch == ARCH_HV10 and getattr(transformer.time_text_embed, "image_condition_type", None) == "token_replace":
        raise ValueError("DisCa: HunyuanVideo-1.0 image-to-video (token_replace) is not supported; DisCa's 1.0 "
                         "predictors are text-to-video")
    if config.time_r_in is not None and arch != ARCH_HV10:
        raise ValueError("DisCaHookConfig.time_r_in is for HunyuanVideo-1.0; 1.5 embeds r in its own transformer "
                         "(use_meanflow), and its pipelines pass it")
    predictor = _load_predictor(config, transformer, arch)
    remove_disca(pipe)
    control = _BlockControl()
    blocks = _main_blocks(transformer, arch)
    for index, block in enumerate(blocks):
        hook = DisCaBlockHook(control, index == len(blocks) - 1, arch, config.mode, predictor)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, HOOK_NAME)
    transformer_hook = DisCaTransformerHook(runtime_config, predictor, scheduler, control)
    if config.time_r_in is not None:
        parameter = next(transformer.parameters())
        time_r_in = config.time_r_in.to(parameter.device, parameter.dtype)
        embedder = transformer.time_text_embed
        hook = TimeREmbedderHook(control, embedder.time_proj, time_r_in)
        HookRegistry.check_if_exists_or_initialize(embedder.timestep_embedder).register_hook(hook, HOOK_NAME)
        transformer_hook.meanflow_r = True
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(transformer_hook, HOOK_NAME)


def set_disca_schedule(pipe, schedule: str | AnchorSchedule) -> None:
    """Change the anchor schedule of a pipeline DisCa is applied to (the next run uses it); no re-applying, so it
    also works once context parallelism is enabled."""
    transformer = getattr(pipe, "transformer", pipe)
    hook = HookRegistry.check_if_exists_or_initialize(transformer).get_hook(HOOK_NAME)
    if hook is None:
        raise ValueError("DisCa is not applied to this pipeline: call apply_disca first")
    hook.config = DisCaConfig(DisCaHookConfig(schedule=schedule).anchor_schedule(), mode=hook.config.mode,
                              cache_device=hook.config.cache_device)
    hook.reset_state(transformer)


def remove_disca(pipe) -> None:
    """Remove every DisCa hook: the transformer computes as stock again."""
    transformer = getattr(pipe, "transformer", pipe)
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(HOOK_NAME, recurse=True)
