"""The compatibility matrix (README): DisCa with the weight formats and model patches users stack under it.

Each row either works, shown with numbers (every-step-anchor DisCa equal to stock sampling of the same model bit for
bit, N2 close to the same run on the unquantized weights, no DiT block on predicted steps) or is refused with a
message that says what to do. Row "cache and predictor on CPU" is test_cache_and_predictor_offload_give_the_same_result
in tests/test_comfyui_runtime.py.

Run with the testbed python (README "Tests"); the GGUF rows also need ComfyUI-GGUF (DISCA_GGUF_PACK) and `gguf`.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from comfyui_compat_runs import check_disca_on, disca_runs, gguf_skip_reason, load_gguf_pack, relative
from comfyui_disca import CASES, apply, load
from comfyui_env import requires_comfyui
from compat_model_files import (LORA_LAYERS, lora_state_dict, gguf_dequantized, save, scaled_fp8_state_dict,
                                with_equal_part_scales, write_gguf)
from disca.formats import ARCH_HV10, ARCH_HV15, load_safetensors, save_safetensors
from tiny_model_files import HV10_PREDICTOR_OTHER_BASE

pytestmark = [requires_comfyui, pytest.mark.comfyui]

# Relative difference of the DisCa N2 latent from the same run on the fp32 weights. fp8 e4m3 keeps 3 mantissa bits
# (a weight's rounding error up to 6 %; plain fp8 also flushes the tiny models' small weights toward its subnormals):
# measured 1.8e-2 (HV-1.0) / 1.6e-2 (HV-1.5) plain, 1.9e-3 to 3.6e-3 scaled (one scale per tensor). Q8_0 keeps 8 bits per weight with one
# scale per 32 values: measured 8.5e-4; F16 1.3e-4. Each bound leaves a margin of about 3x.
FP8_TOLERANCE = 0.05
SCALED_FP8_TOLERANCE = 1e-2
Q8_0_TOLERANCE = 3e-3
F16_TOLERANCE = 5e-4
# A run on weights equal to the quantized ones, stored in fp32: only the order of float operations may differ.
SAME_WEIGHTS_TOLERANCE = 1e-5


def _tencent_dit(comfyui, arch):
    return load_safetensors(str(comfyui.models_dir / "diffusion_models" / CASES[arch]["dit"]))[0]


def _load(comfyui, name, weight_dtype="default"):
    return comfyui.run_node("DisCaLoadDistilledModel", unet_name=name, weight_dtype=weight_dtype,
                            allow_non_distilled=False)[0]


def _comfy_layout_copy(comfyui, model, name):
    """The model's live weights, cast to fp32, saved in ComfyUI's layout: the same values unquantized."""
    state = {f"model.diffusion_model.{k}": v.float() for k, v in model.model.diffusion_model.state_dict().items()}
    return save(comfyui.models_dir / "diffusion_models" / name, state)


def check_against_full_precision(comfyui, label, runs, full_model, same_values_model, predictor, arch, tolerance):
    """The quantized model's DisCa N2 run is within `tolerance` (the quantization) of the same run on the
    full-precision weights, and equal to float ordering to the run on its own values stored unquantized: DisCa adds
    nothing to the weights' rounding."""
    full = disca_runs(comfyui, full_model, predictor, arch)
    same = disca_runs(comfyui, same_values_model, predictor, arch)
    vs_full, vs_same = relative(runs.n2, full.n2), relative(runs.n2, same.n2)
    print(f"{label}: N2 vs N2 on full-precision weights {vs_full:.2e} (stock {relative(runs.stock, full.stock):.2e}); "
          f"N2 vs N2 on the same values unquantized {vs_same:.2e}")
    assert vs_full <= tolerance
    assert vs_same <= SAME_WEIGHTS_TOLERANCE


# --------------------------------------------------------------------------------------------------
# 1. fp8 weights (DisCa Load Distilled Model, weight_dtype fp8_e4m3fn)


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_fp8_weight_dtype_works(comfyui, arch):
    _, predictor = load(comfyui, arch)
    fp8 = _load(comfyui, CASES[arch]["dit"], "fp8_e4m3fn")
    module = fp8.model.diffusion_model
    assert module.double_blocks[0].img_attn.qkv.weight.dtype == torch.float8_e4m3fn  # stored in fp8 ...
    assert fp8.model.manual_cast_dtype == torch.float32  # ... cast to the compute dtype at run time (CPU: fp32)
    runs = disca_runs(comfyui, fp8, predictor, arch)
    check_disca_on(runs, f"{arch} fp8")

    check_against_full_precision(
        comfyui, f"{arch} fp8", runs, _load(comfyui, CASES[arch]["dit"]),
        _load(comfyui, _comfy_layout_copy(comfyui, fp8, f"{arch}_fp8_values.safetensors")), predictor, arch,
        FP8_TOLERANCE)


# --------------------------------------------------------------------------------------------------
# 2. ComfyUI's legacy scaled-fp8 checkpoints


def test_scaled_fp8_fused_layout_works(comfyui):
    """(a) HunyuanVideo-1.0's Tencent layout has fused q/k/v: one scale per fused layer, loaded as ComfyUI does."""
    arch = ARCH_HV10
    _, predictor = load(comfyui, arch)
    scaled, dequantized = scaled_fp8_state_dict(_tencent_dit(comfyui, arch))
    assert "double_blocks.0.img_attn_qkv.scale_weight" in scaled
    model = _load(comfyui, save(comfyui.models_dir / "diffusion_models" / "tiny_hv10_fp8_scaled.safetensors", scaled))
    runs = disca_runs(comfyui, model, predictor, arch)
    check_disca_on(runs, "hv10 scaled fp8")

    check_against_full_precision(  # the unquantized run has every scale applied
        comfyui, "hv10 scaled fp8", runs, _load(comfyui, CASES[arch]["dit"]),
        _load(comfyui, save(comfyui.models_dir / "diffusion_models" / "tiny_hv10_fp8_scaled_dequantized.safetensors",
                            dequantized)), predictor, arch, SCALED_FP8_TOLERANCE)


def test_scaled_fp8_with_split_qkv_is_refused(comfyui):
    """(b) HunyuanVideo-1.5's Tencent layout stores q, k and v split, each with its own scale: stacking their rows
    under one scale would be wrong, so the loader refuses and says what to load instead."""
    scaled, _ = scaled_fp8_state_dict(_tencent_dit(comfyui, ARCH_HV15))
    assert "double_blocks.0.img_attn_q.scale_weight" in scaled
    name = save(comfyui.models_dir / "diffusion_models" / "tiny_hv15_fp8_scaled_split.safetensors", scaled)
    with pytest.raises(ValueError) as refused:
        _load(comfyui, name)
    message = str(refused.value)
    print(f"refused: {message}")
    assert name in message and "double_blocks.0.img_attn_q" in message
    assert "own scale" in message and "fused-layout" in message and "unscaled" in message


def test_scaled_fp8_split_qkv_with_one_shared_scale_fuses_exactly(comfyui):
    """q, k, v sharing one scale fuse exactly (one scale for the fused layer): that split file loads and runs."""
    arch = ARCH_HV15
    _, predictor = load(comfyui, arch)
    scaled = with_equal_part_scales(scaled_fp8_state_dict(_tencent_dit(comfyui, arch))[0])
    model = _load(comfyui, save(comfyui.models_dir / "diffusion_models" / "tiny_hv15_fp8_scaled_shared.safetensors",
                                scaled))
    runs = disca_runs(comfyui, model, predictor, arch)
    check_disca_on(runs, "hv15 scaled fp8, shared q/k/v scale")
    dequantized = {k: v.float() * scaled[k.removesuffix(".weight") + ".scale_weight"]
                   if k.removesuffix(".weight") + ".scale_weight" in scaled else v
                   for k, v in scaled.items() if not k.endswith(".scale_weight") and k != "scaled_fp8"}
    same = disca_runs(comfyui, _load(comfyui, save(comfyui.models_dir / "diffusion_models" /
                                                   "tiny_hv15_fp8_scaled_shared_dequantized.safetensors", dequantized)),
                      predictor, arch)
    vs_same = relative(runs.n2, same.n2)
    print(f"hv15 scaled fp8 (shared q/k/v scale): N2 vs N2 on fp8 * scale in fp32 {vs_same:.2e}")
    assert vs_same <= SAME_WEIGHTS_TOLERANCE


def test_scaled_fp8_split_qkv_with_quantization_metadata_is_refused(comfyui):
    """ComfyUI's newer quantized files name their quantized layers in `_quantization_metadata`: split names, which
    fusing removes; refused even when the parts share a scale."""
    scaled = with_equal_part_scales(scaled_fp8_state_dict(_tencent_dit(comfyui, ARCH_HV15))[0])
    tensors = {k.replace(".scale_weight", ".weight_scale"): v for k, v in scaled.items() if k != "scaled_fp8"}
    layers = {k.removesuffix(".weight_scale"): {"format": "float8_e4m3fn"} for k in tensors if k.endswith(".weight_scale")}
    path = comfyui.models_dir / "diffusion_models" / "tiny_hv15_fp8_quant_metadata_split.safetensors"
    save_safetensors(str(path), tensors, {"_quantization_metadata": json.dumps({"format_version": "1.0",
                                                                                "layers": layers})})
    with pytest.raises(ValueError, match="tiny_hv15_fp8_quant_metadata_split.safetensors: a quantized file "
                                         r"\(_quantization_metadata\) with q/k/v or linear1 stored split"):
        _load(comfyui, path.name)


def test_scaled_fp8_hv15_in_comfyui_layout_works(comfyui):
    """What the refusal points to: HunyuanVideo-1.5 in ComfyUI's fused layout (as the Comfy-Org repackages), one
    scale per fused q/k/v layer, loads and runs."""
    arch = ARCH_HV15
    model, predictor = load(comfyui, arch)
    comfy_layout = {k: v.float() for k, v in model.model.diffusion_model.state_dict().items()}
    scaled, dequantized = scaled_fp8_state_dict(comfy_layout)
    assert "double_blocks.0.img_attn.qkv.scale_weight" in scaled
    quantized = _load(comfyui, save(comfyui.models_dir / "diffusion_models" / "tiny_hv15_fp8_scaled_comfy.safetensors",
                                    scaled))
    runs = disca_runs(comfyui, quantized, predictor, arch)
    check_disca_on(runs, "hv15 scaled fp8, ComfyUI layout")
    check_against_full_precision(
        comfyui, "hv15 scaled fp8 (ComfyUI layout)", runs, model,
        _load(comfyui, save(comfyui.models_dir / "diffusion_models" /
                            "tiny_hv15_fp8_scaled_comfy_dequantized.safetensors", dequantized)),
        predictor, arch, SCALED_FP8_TOLERANCE)


# --------------------------------------------------------------------------------------------------
# 3. LoRA (LoraLoaderModelOnly before DisCa Apply)


def test_lora_before_disca_apply_works(comfyui):
    arch = ARCH_HV10
    model, predictor = load(comfyui, arch)
    dit = _tencent_dit(comfyui, arch)
    lora = lora_state_dict(dit)
    loras_dir = comfyui.models_dir / "loras"
    save(loras_dir / "tiny_hv10_lora.safetensors", lora)
    comfyui.folder_paths.add_model_folder_path("loras", str(loras_dir), is_default=True)
    loader = comfyui.node("LoraLoaderModelOnly")()
    lora_model = loader.load_lora_model_only(model, "tiny_hv10_lora.safetensors", 1.0)[0]
    assert len(lora_model.patches) == len(LORA_LAYERS)  # every LoRA layer mapped onto the DiT, none dropped

    runs = disca_runs(comfyui, lora_model, predictor, arch)
    check_disca_on(runs, "hv10 + LoRA")
    plain = disca_runs(comfyui, model, predictor, arch)
    # the same weights merged into a file: W + B @ A
    merged = dict(dit)
    for layer in LORA_LAYERS:
        merged[f"{layer}.weight"] = dit[f"{layer}.weight"] + \
            lora[f"diffusion_model.{layer}.lora_B.weight"] @ lora[f"diffusion_model.{layer}.lora_A.weight"]
    same = disca_runs(comfyui, _load(comfyui, save(comfyui.models_dir / "diffusion_models" /
                                                   "tiny_hv10_lora_merged.safetensors", merged)), predictor, arch)
    every_vs_plain = relative(runs.every_step, plain.stock)
    predicted_vs_plain = [relative(runs.outputs[i], plain.outputs[i]) for i in (1, 3)]
    n2_vs_plain, n2_vs_merged = relative(runs.n2, plain.n2), relative(runs.n2, same.n2)
    print(f"hv10 + LoRA: every-step vs un-LoRA'd stock {every_vs_plain:.2e}; predicted steps 1, 3 vs un-LoRA'd "
          f"{predicted_vs_plain[0]:.2e}, {predicted_vs_plain[1]:.2e}; N2 vs un-LoRA'd N2 {n2_vs_plain:.2e}; "
          f"N2 vs N2 on the merged weights {n2_vs_merged:.2e}")
    # the LoRA changes anchors and predicted steps (their cache and final layer come from the LoRA'd DiT)
    assert every_vs_plain > 1e-2 and min(predicted_vs_plain) > 1e-2 and n2_vs_plain > 1e-2
    assert n2_vs_merged <= SAME_WEIGHTS_TOLERANCE  # anchors and the final layer run the LoRA'd weights

    # LoRA after DisCa Apply patches the same DiT: the same result
    after = loader.load_lora_model_only(apply(comfyui, model, predictor, interval=2), "tiny_hv10_lora.safetensors", 1.0)[0]
    assert relative(disca_runs(comfyui, after, predictor, arch).n2, runs.n2) <= SAME_WEIGHTS_TOLERANCE


# --------------------------------------------------------------------------------------------------
# 4. GGUF (city96/ComfyUI-GGUF's UnetLoaderGGUF before DisCa Apply)


@pytest.fixture(scope="module")
def gguf_loader(comfyui):
    reason = gguf_skip_reason()
    if reason:
        pytest.skip(reason)
    return load_gguf_pack(comfyui)


@pytest.mark.parametrize("block_type, tolerance", [("Q8_0", Q8_0_TOLERANCE), ("F16", F16_TOLERANCE)])
def test_gguf_works(comfyui, gguf_loader, block_type, tolerance, caplog):
    arch = ARCH_HV10
    _, predictor = load(comfyui, arch)
    dit = _tencent_dit(comfyui, arch)
    name = f"tiny_hv10_{block_type.lower()}.gguf"
    counts = write_gguf(comfyui.models_dir / "diffusion_models" / name, dit, block_type)
    print(f"{name}: tensor types {counts}")
    assert name in comfyui.folder_paths.get_filename_list("unet_gguf")
    model = gguf_loader().load_unet(name)[0]
    weight = model.model.diffusion_model.double_blocks[0].img_attn.qkv.weight
    assert weight.tensor_type.name == block_type  # a GGML tensor, dequantized by ComfyUI-GGUF's ops at run time
    runs = disca_runs(comfyui, model, predictor, arch)
    check_disca_on(runs, f"hv10 GGUF {block_type}")
    # a predictor of ours carries its base model's fingerprint: GGML tensors cannot be compared with it, so the
    # check is skipped (said in the log), not failed or guessed
    other = comfyui.run_node("DisCaLoadPredictor", predictor_name=HV10_PREDICTOR_OTHER_BASE)[0]
    with caplog.at_level(logging.INFO, logger="disca"):
        apply(comfyui, model, other)
    assert "weights are quantized (fp8, GGUF, ...)" in caplog.text and "trained on a base model" not in caplog.text

    check_against_full_precision(
        comfyui, f"hv10 GGUF {block_type}", runs, _load(comfyui, CASES[arch]["dit"]),
        _load(comfyui, save(comfyui.models_dir / "diffusion_models" / f"tiny_hv10_{block_type.lower()}_dequantized"
                            ".safetensors", gguf_dequantized(dit, block_type))), predictor, arch, tolerance)
