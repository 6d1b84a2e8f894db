"""ComfyUI host: predictor modules built from ComfyUI's own blocks, and the sampling wrappers.

How a run goes (DESIGN.md §3), through ComfyUI's public mechanisms only:
- OUTER_SAMPLE wrapper: builds a fresh `DisCaRun` for the sampler's step count, puts it in a per-run clone of
  the guider's model_options, hooks the sampler's end-of-step callback (the step index), logs the summary
  line and drops the run in `finally`.
- DIFFUSION_MODEL wrapper (HunyuanVideo._forward): takes the current step from the run.
  Anchor step: the stock forward runs unchanged; a `patches_replace["dit"]` patch on the last block keeps
  a clone of its output as the cache (blocks update tensors in place).
  Predicted step: the stock forward runs with every block replaced by a pass-through, except one that runs
  the predictor: it receives the step's embedded tokens, `vec` (with MeanFlow's r) and rotary embedding
  (1.0: the last single block, whose input is [img ‖ txt]; 1.5: double block 0, with img and txt).
  ComfyUI's own final layer and unpatchify then produce the output, so no DiT transformer block runs.

Imports of `comfy` happen inside functions: this module is imported by the node pack only.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from ..formats import (ARCH_HV10, ARCH_HV15, DisCaFormatError, DiTSpec, PredictorFile, PredictorSpec,
                       base_fingerprint, check_predictor_fits, infer_dit_spec, load_safetensors,
                       match_norm_parameter_names, normalize_tencent_layout, strip_wrapper_prefix,
                       tencent_to_comfy_predictor)
from ..predictor import DisCaPredictor
from ..runtime import MODE_PREDICTOR, MODE_REUSE_CACHE, DisCaConfig, DisCaRun, DisCaRuntimeError

log = logging.getLogger("disca")

WRAPPER_KEY = "disca"
SETUP_OPTION = "disca_setup"  # transformer_options key: the DisCaSetup of a patched model
RUN_OPTION = "disca_run"  # transformer_options key: the DisCaRun of the sampling run in progress


@dataclass(frozen=True)
class DisCaSetup:
    """What the apply node attaches to a model: config, predictor (None in the training-free modes) and its spec."""

    config: DisCaConfig
    predictor: DisCaPredictor | None
    spec: PredictorSpec | None


# --------------------------------------------------------------------------------------------------
# Model and predictor


def diffusion_model_of(model_patcher):
    """The HunyuanVideo nn.Module inside a ComfyUI MODEL; a clear error for any other model."""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo

    module = getattr(model_patcher.model, "diffusion_model", None)
    if not isinstance(module, HunyuanVideo):
        raise DisCaRuntimeError(
            f"DisCa runs on HunyuanVideo 1.0/1.5 models; this MODEL is {type(module).__name__}. "
            "Load a HunyuanVideo DiT (DisCa Load Distilled Model or UNETLoader)."
        )
    return module


def dit_spec_of(model_patcher) -> DiTSpec:
    """Read the DiT's architecture from the live ComfyUI module (works for any loader)."""
    module = diffusion_model_of(model_patcher)
    params = module.params
    return DiTSpec(
        arch=ARCH_HV15 if params.vision_in_dim == 1152 else ARCH_HV10,
        hidden_size=params.hidden_size,
        num_heads=params.num_heads,
        double_blocks=params.depth,
        single_blocks=params.depth_single_blocks,
        meanflow=params.meanflow,
        guidance_distilled=params.guidance_embed,
    )


WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn}


def load_distilled_model(path: str, weight_dtype: str = "default", allow_non_distilled: bool = False):
    """Load a Tencent-layout HunyuanVideo DiT through ComfyUI's own loader; returns (MODEL, DiTSpec).

    The split q/k/v (1.5) and tensor-parallel variants are fused first: ComfyUI's renaming has no rule for
    them and would drop those weights with only a log line.
    """
    import comfy.sd

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    tensors, metadata = load_safetensors(path)
    stripped = strip_wrapper_prefix(tensors)
    state_dict = normalize_tencent_layout(stripped, path)  # refuses split q/k/v that carry their own fp8 scales
    if "_quantization_metadata" in metadata and state_dict.keys() != stripped.keys():
        # ComfyUI's newer quantized files name their quantized layers in this metadata: the split names, which
        # fusing removed, so ComfyUI would load the fused layers' fp8 weights without their quantization
        raise DisCaFormatError(
            f"{path}: a quantized file (_quantization_metadata) with q/k/v or linear1 stored split; its quantization "
            "names the split layers, which DisCa fuses for ComfyUI. Load a fused-layout file instead (e.g. the "
            "Comfy-Org repackage) or an unscaled (bf16/fp16) file, with weight_dtype fp8_e4m3fn to keep the weights "
            "in fp8."
        )
    spec = infer_dit_spec(state_dict, path)
    problems = []
    if not spec.meanflow:
        problems.append("no time_r_in weights, so it is not MeanFlow-distilled")
    if spec.arch == ARCH_HV10 and not spec.guidance_distilled:
        # 1.5 step-distilled models fold CFG in by distillation without a guidance embedding; 1.0 ones embed it
        problems.append("no guidance_in weights, so CFG is not distilled (it needs cond + uncond passes, cfg > 1)")
    if problems and not allow_non_distilled:
        raise DisCaFormatError(
            f"{path}: {'; '.join(problems)} ({spec.describe()}). DisCa's presets assume a distilled few-step model; "
            "to run this one anyway (DisCa also works on plain flow models, e.g. for comparisons) enable "
            "allow_non_distilled."
        )
    options = {} if WEIGHT_DTYPES[weight_dtype] is None else {"dtype": WEIGHT_DTYPES[weight_dtype]}
    model = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options=options, metadata=metadata or None)
    if model is None:
        raise DisCaFormatError(f"{path}: ComfyUI did not recognise this checkpoint as a diffusion model")
    loaded = dit_spec_of(model)
    if (loaded.arch, loaded.meanflow) != (spec.arch, spec.meanflow):
        raise DisCaFormatError(f"{path}: ComfyUI detected {loaded.describe()}, but the keys say {spec.describe()}")
    return model, spec


def check_base_fingerprint(model_patcher, predictor_file: PredictorFile) -> None:
    """Warn (do not fail) when a predictor of ours was trained on another base checkpoint."""
    expected = predictor_file.base_fingerprint
    if expected is None:
        return
    actual = fingerprint_of(model_patcher)
    if actual is None:
        log.info("DisCa: this model's weights are quantized (fp8, GGUF, ...), so %s's base-model check is skipped",
                 predictor_file.path)
        return
    if actual != expected:
        log.warning("DisCa: %s was trained on a base model with fingerprint %s, but this model's is %s; "
                    "predictions may be poor. Train or download the predictor for this checkpoint.",
                    predictor_file.path, expected, actual)


def fingerprint_of(model_patcher) -> str | None:
    """The base fingerprint of the loaded weights; None when they are quantized, whose values cannot match the
    full-precision weights a predictor was trained on."""
    module = diffusion_model_of(model_patcher)
    names = ("img_in.proj.weight", "final_layer.linear.weight", "time_in.in_layer.weight")
    state = {name: module.get_parameter(name) for name in names}
    if any(type(t) is not torch.nn.Parameter or t.dtype not in (torch.float32, torch.float16, torch.bfloat16)
           for t in state.values()):
        return None
    return base_fingerprint(state)


# Keys under which other caches put their state or wrappers on a model: ComfyUI's EasyCache and LazyCache
# ("easycache"), and the custom caches that follow the same pattern (TeaCache, First Block Cache, MagCache, ...).
# TorchCompileModel's wrapper ("torch.compile") compiles the whole DiT, which DisCa's per-step block patches
# would recompile on every predicted step.
def incompatible_with_disca(model_patcher) -> list[str]:
    """Names of what on this model DisCa cannot run beside: another cache, or TorchCompileModel."""
    found = {k for k in model_patcher.model_options.get("transformer_options", {}) if "cache" in str(k).lower()}
    for wrappers in model_patcher.wrappers.values():
        found |= {k for k in wrappers if k != WRAPPER_KEY and ("cache" in str(k).lower() or k == "torch.compile")}
    return sorted(found)


def refuse_incompatible(model_patcher, where: str) -> None:
    found = incompatible_with_disca(model_patcher)
    if found:
        raise DisCaRuntimeError(
            f"DisCa: {where} this model also has {', '.join(repr(k) for k in found)}. Another cache (EasyCache, "
            "LazyCache, TeaCache, ...) would skip or reuse the steps DisCa schedules, and TorchCompileModel would "
            "recompile the DiT on every predicted step; remove that node from this model's path."
        )


def host_blocks(model_patcher, spec: PredictorSpec, dtype: torch.dtype, operations) -> torch.nn.ModuleList:
    """`spec.depth` predictor blocks built the way this ComfyUI builds the loaded model's own blocks, on the meta device.

    The loaded model's class is instantiated from its own config with the predictor's depth, so the blocks get
    exactly the constructor arguments this ComfyUI version passes (the attention order of its double blocks, its QK
    norm module, biases): one ComfyUI builds them differently from another, and a block built any other way computes
    something else. Only the operations differ: the predictor's weights are plain tensors, whatever the DiT's are
    (fp8, GGUF).
    """
    module = diffusion_model_of(model_patcher)
    config = dict(model_patcher.model.model_config.unet_config)
    config.update(mlp_ratio=spec.mlp_hidden_dim / spec.hidden_size, dtype=dtype,
                  depth=spec.depth if spec.arch == ARCH_HV15 else 0,
                  depth_single_blocks=spec.depth if spec.arch == ARCH_HV10 else 0)
    skeleton = type(module)(**config, device="meta", operations=operations)
    return skeleton.single_blocks if spec.arch == ARCH_HV10 else skeleton.double_blocks


def build_predictor(model_patcher, spec: PredictorSpec, tencent_state_dict: dict[str, torch.Tensor],
                    dtype: torch.dtype) -> DisCaPredictor:
    """A predictor made of the host's own blocks (`host_blocks`) and the official fusion MLPs, loaded strictly."""
    import comfy.ops

    # manual_cast: weights follow the input's device/dtype when they differ (CPU offload), no copy when they match
    ops = comfy.ops.manual_cast
    predictor = DisCaPredictor(spec, host_blocks(model_patcher, spec, dtype, ops), operations=ops, dtype=dtype,
                               device="meta")
    module_keys = predictor.state_dict().keys()
    state = match_norm_parameter_names(tencent_to_comfy_predictor(tencent_state_dict), module_keys)
    predictor.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    predictor.compute_dtype = dtype
    still_meta = [name for name, t in [*predictor.named_parameters(), *predictor.named_buffers()] if t.is_meta]
    if still_meta:  # a host block with state that no predictor file holds
        raise DisCaRuntimeError(f"DisCa: this ComfyUI's blocks have tensors no predictor file sets: {still_meta[:4]}")
    return predictor.eval().requires_grad_(False)


PREDICTOR_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def predictor_dtype(model_patcher, choice: str = "auto") -> torch.dtype:
    """The predictor's compute dtype. 'auto': the DiT's compute dtype, except fp16, where it is bf16 (fp32 on a
    device without bf16): the official predictors are trained in bf16, and bf16 keeps fp32's exponent range for the
    fused cache (the last block's residual stream), whose range with trained weights cannot be measured here; on a
    random full-size HunyuanVideo-1.5 fp16 stayed far below its limit (benchmarks/predictor_dtype.py). Casts happen at
    the predictor's edges."""
    if choice not in PREDICTOR_DTYPES:
        raise ValueError(f"predictor_dtype must be one of {sorted(PREDICTOR_DTYPES)}, got {choice!r}")
    if PREDICTOR_DTYPES[choice] is not None:
        return PREDICTOR_DTYPES[choice]
    import comfy.model_management

    dtype = model_patcher.model.manual_cast_dtype or model_patcher.model_dtype()
    if dtype != torch.float16:
        return dtype
    device = model_patcher.load_device
    return torch.bfloat16 if comfy.model_management.should_use_bf16(device) else torch.float32


def apply_disca(model_patcher, config: DisCaConfig, spec: PredictorSpec | None = None,
                tencent_state_dict: dict[str, torch.Tensor] | None = None, offload_predictor: bool = False,
                dtype: str = "auto", trained_only_on_lists: tuple[tuple[int, ...], ...] | None = None):
    """Clone `model_patcher` and attach DisCa. Returns the clone; the caller's model is never changed.
    `trained_only_on_lists`: the predictor file's (`PredictorFile.trained_only_on_lists`); each run warns when it
    serves none of them."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension

    dit = dit_spec_of(model_patcher)
    refuse_incompatible(model_patcher, "DisCa Apply:")
    predictor = None
    if config.mode == MODE_PREDICTOR:
        if spec is None or tencent_state_dict is None:
            raise DisCaRuntimeError("DisCa mode 'predictor' needs a PREDICTOR input (DisCa Load Predictor)")
        check_predictor_fits(spec, dit, "predictor")
        if spec.arch == ARCH_HV10 and dit.single_blocks == 0:
            raise DisCaRuntimeError("a single-stream predictor needs a model with single-stream blocks")
        predictor = build_predictor(model_patcher, spec, tencent_state_dict, predictor_dtype(model_patcher, dtype))
        predictor.trained_only_on_lists = trained_only_on_lists

    patched = model_patcher.clone()
    patched.model_options["transformer_options"][SETUP_OPTION] = DisCaSetup(config, predictor, spec)
    for kind, wrapper in ((comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, _outer_sample_wrapper),
                          (comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, _diffusion_model_wrapper)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)  # applying DisCa again replaces the earlier setup
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    if predictor is not None and not offload_predictor:
        # ComfyUI loads and offloads it together with the DiT, and counts its memory. CoreModelPatcher is the class
        # ComfyUI uses for its own models: ModelPatcherDynamic under DynamicVRAM (0.1x+ on NVIDIA), else ModelPatcher
        patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
        predictor_patcher = patcher_class(
            predictor, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())
        patched.set_additional_models(WRAPPER_KEY, [predictor_patcher])
    return patched


# --------------------------------------------------------------------------------------------------
# Wrappers


def _bind(executor, args, kwargs) -> inspect.BoundArguments:
    """Name a wrapper's arguments by the wrapped function's own signature (no guessing by position)."""
    return inspect.signature(executor.original).bind(*args, **kwargs)


def _outer_sample_wrapper(executor, *args, **kwargs):
    import comfy.model_patcher

    guider = executor.class_obj
    original_options = guider.model_options
    refuse_incompatible(guider.model_patcher, "sampling a DisCa model:")
    call = _bind(executor, args, kwargs)
    guider.model_options = comfy.model_patcher.create_model_options_clone(original_options)
    options = guider.model_options["transformer_options"]
    setup: DisCaSetup = options[SETUP_OPTION]
    run = DisCaRun(setup.config, len(call.arguments["sigmas"]) - 1, setup.predictor)
    options[RUN_OPTION] = run
    call.arguments["callback"] = _reporting_step_ends(run, call.arguments["callback"])
    log.info("DisCa: %s", setup.config.schedule.describe(run.total_steps))
    try:
        return executor(*call.args, **call.kwargs)
    finally:
        try:
            log.info(run.summary())
        except Exception:  # a failed summary must not hide the sampling error or result
            log.exception("DisCa: could not build the run summary")
        guider.model_options = original_options


def _reporting_step_ends(run: DisCaRun, callback):
    """The sampler calls this after each step with its own step index: the step index of the next model call
    comes from it, with no device->host read of the current sigma (that would sync the GPU on every call)."""

    def step_done(step, denoised, x, total_steps):
        run.step_finished(step)
        if callback is not None:
            callback(step, denoised, x, total_steps)

    return step_done


def _diffusion_model_wrapper(executor, *args, **kwargs):
    call = _bind(executor, args, kwargs)
    options = call.arguments["transformer_options"]
    run: DisCaRun | None = options.get(RUN_OPTION)
    if run is None:  # called outside a sampling run (no OUTER_SAMPLE), e.g. by another node: stay stock
        return executor(*args, **kwargs)
    setup: DisCaSetup = options[SETUP_OPTION]
    return run.call(tuple(options["uuids"]), call.arguments["x"], call.arguments["timestep"],
                    full_step=lambda capture: _full_forward(executor, call, capture),
                    cached_step=lambda hidden: _forward_from_cache(executor, call, setup, hidden))


def _last_block_key(module) -> tuple[str, int]:
    """The block whose output is the cache: the last single-stream block (1.0), the last double-stream one (1.5)."""
    if len(module.single_blocks):
        return "single_block", len(module.single_blocks) - 1
    return "double_block", len(module.double_blocks) - 1


def _full_forward(executor, call, capture: bool):
    """The stock forward; with `capture`, the last block's output tokens are kept as the cache."""
    if not capture:
        return executor(*call.args, **call.kwargs), None
    options = call.arguments["transformer_options"]
    key = _last_block_key(executor.class_obj)
    previous = options.get("patches_replace", {}).get("dit", {}).get(key)
    captured = {}

    def capture_last_block(args, extra):
        out = previous(args, extra) if previous is not None else extra["original_block"](args)
        # clones: the stock loop and ControlNet update these tensors in place afterwards
        captured["tensors"] = tuple(out[name].detach().clone() for name in
                                    (("img",) if key[0] == "single_block" else ("img", "txt")))
        return out

    call.arguments["transformer_options"] = _with_block_patches(options, {key: capture_last_block})
    out = executor(*call.args, **call.kwargs)
    return out, captured["tensors"]


def _forward_from_cache(executor, call, setup: DisCaSetup, cached: tuple):
    """The stock forward with every block passed through: the predictor (or, for cache reuse, the cache itself)
    stands in for the stack, and the model's own final layer finishes the step."""
    module = executor.class_obj
    patches = {("double_block", i): _pass_double for i in range(len(module.double_blocks))}
    patches.update({("single_block", i): _pass_single for i in range(len(module.single_blocks))})
    if setup.config.mode == MODE_REUSE_CACHE:
        patches[_last_block_key(module)] = _cached_tokens(cached)
    elif setup.spec.arch == ARCH_HV10:
        # after the double blocks the stock forward concatenates [img ‖ txt]: the last single block's input
        patches[("single_block", len(module.single_blocks) - 1)] = _single_stream_predictor(setup.predictor, cached)
    else:
        patches[("double_block", 0)] = _double_stream_predictor(setup.predictor, cached)
    call.arguments["transformer_options"] = _with_block_patches(call.arguments["transformer_options"], patches)
    return executor(*call.args, **call.kwargs)


def _with_block_patches(options: dict, patches: dict) -> dict:
    """A copy of transformer_options with extra `dit` block patches; the shared dicts stay untouched."""
    replace = dict(options.get("patches_replace", {}))
    replace["dit"] = {**replace.get("dit", {}), **patches}
    return {**options, "patches_replace": replace}


def _pass_double(args, extra):
    return {"img": args["img"], "txt": args["txt"]}


def _pass_single(args, extra):
    return {"img": args["img"]}


def _cached_tokens(cached: tuple):
    """The last block's patch for cache reuse: its output is the anchor's, in the same token order. Copies: the stock
    loop adds ControlNet outputs in place to what a block returns, which must not reach the stored cache."""
    def reuse(args, extra):
        for stored, current in zip(cached, (args["img"], args.get("txt"))):
            _check_cache(stored, current)
        return {name: stored.clone() for name, stored in zip(("img", "txt"), cached)}

    return reuse


# The predictor patches write the fused tokens into the tensors the stock forward passed in (and still holds),
# then run the blocks in place on them, as ComfyUI's blocks do: a predicted step then needs no more activation
# memory than a full step, and DisCa's extra VRAM stays the predictor plus the cache. A predictor in another dtype
# than the DiT works on its own copies and writes its output back into the stock tensors.


def _single_stream_predictor(predictor: DisCaPredictor, cached: tuple):
    """The last single block's patch on a predicted step (HunyuanVideo-1.0): the predictor replaces the stack."""
    (cache,) = cached
    dtype = predictor.compute_dtype

    def run_predictor(args, extra):
        tokens = args["img"]  # the step's embedded image and text tokens, in the host's order
        _check_cache(cache, tokens)
        x = predictor.fuse_tokens(_to(tokens, dtype), _to(cache, dtype))
        if x.dtype == tokens.dtype:
            x = tokens.copy_(x)
        for block in predictor.blocks:
            x = block(x, vec=_to(args["vec"], dtype), pe=args["pe"], attn_mask=_to(args["attention_mask"], dtype),
                      modulation_dims=args["modulation_dims"], transformer_options=args["transformer_options"])
        return {"img": x if x.dtype == tokens.dtype else tokens.copy_(x)}

    return run_predictor


def _double_stream_predictor(predictor: DisCaPredictor, cached: tuple):
    """Double block 0's patch on a predicted step (HunyuanVideo-1.5): the predictor replaces the stack."""
    cache_img, cache_txt = cached
    dtype = predictor.compute_dtype

    def run_predictor(args, extra):
        img, txt = args["img"], args["txt"]
        _check_cache(cache_img, img)
        _check_cache(cache_txt, txt)
        x_img, x_txt = predictor.fuse_streams(_to(img, dtype), _to(txt, dtype), _to(cache_img, dtype),
                                              _to(cache_txt, dtype))
        if x_img.dtype == img.dtype:
            x_img, x_txt = img.copy_(x_img), txt.copy_(x_txt)
        for block in predictor.blocks:
            x_img, x_txt = block(img=x_img, txt=x_txt, vec=_to(args["vec"], dtype), pe=args["pe"],
                                 attn_mask=_to(args["attention_mask"], dtype),
                                 modulation_dims_img=args["modulation_dims_img"],
                                 modulation_dims_txt=args["modulation_dims_txt"],
                                 transformer_options=args["transformer_options"])
        if x_img.dtype != img.dtype:
            x_img, x_txt = img.copy_(x_img), txt.copy_(x_txt)
        return {"img": x_img, "txt": x_txt}

    return run_predictor


def _to(tensor, dtype: torch.dtype):
    """A floating tensor in the predictor's dtype: a no-op when the DiT computes in it too (the usual case); a cast
    at the predictor's edge when not (a bf16 predictor beside an fp16 DiT)."""
    if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


def _check_cache(cache: torch.Tensor, current: torch.Tensor) -> None:
    if cache.shape != current.shape:
        raise DisCaRuntimeError(
            f"DisCa: cached tokens {tuple(cache.shape)} do not match this step's {tuple(current.shape)}; the "
            "conditioning changed length within one run (e.g. a prompt schedule). Use an interval of 1 there."
        )
