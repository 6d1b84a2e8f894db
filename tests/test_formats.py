import os

import pytest
import torch

from disca.formats import (ARCH_HV10, ARCH_HV15, META_ARCH, META_BASE_FINGERPRINT, DisCaFormatError, PredictorSpec,
                           base_fingerprint, build_metadata, check_predictor_fits, comfy_to_tencent_predictor,
                           expected_predictor_keys, infer_dit_spec, load_predictor_file, load_safetensors,
                           normalize_tencent_layout, read_predictor_state_dict, save_safetensors,
                           tencent_to_comfy_predictor)
from tiny_models import official_predictor_state_dict, tencent_dit_state_dict


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_official_predictor_spec_and_keys(arch):
    state = official_predictor_state_dict(arch, hidden=256, heads=2)
    spec, normalized = read_predictor_state_dict(state, "p.safetensors")
    assert spec == PredictorSpec(arch=arch, hidden_size=256, num_heads=2, depth=2, mlp_hidden_dim=1024)
    assert set(normalized) == expected_predictor_keys(spec)


def test_hv15_split_qkv_fuses_in_q_k_v_order():
    split = official_predictor_state_dict(ARCH_HV15, layout="official")
    _, fused = read_predictor_state_dict(split, "p")
    for stream in ("img", "txt"):
        for tensor in ("weight", "bias"):
            parts = [split[f"double_blocks.1.{stream}_attn_{p}.{tensor}"] for p in "qkv"]
            assert torch.equal(fused[f"double_blocks.1.{stream}_attn_qkv.{tensor}"], torch.cat(parts))


def test_tensor_parallel_variant_equals_merged():
    merged = official_predictor_state_dict(ARCH_HV10, layout="merged")
    hidden = 128
    split = {}
    for key, value in merged.items():
        if ".linear1." in key:
            prefix, tensor = key.split(".linear1.")
            for part, chunk in zip(("q", "k", "v", "mlp"), value.split([hidden, hidden, hidden, 4 * hidden])):
                split[f"{prefix}.linear1_{part}.{tensor}"] = chunk.clone()
        elif ".linear2." in key:
            split[key.replace(".linear2.", ".linear2.fc.")] = value
        else:
            split[key] = value
    _, normalized = read_predictor_state_dict({f"module.{k}": v for k, v in split.items()}, "p")
    assert normalized.keys() == merged.keys()
    assert all(torch.equal(normalized[k], merged[k]) for k in merged)


def test_incomplete_split_group_is_an_error():
    state = official_predictor_state_dict(ARCH_HV15, layout="official")
    del state["double_blocks.0.img_attn_k.weight"]
    with pytest.raises(DisCaFormatError, match=r"img_attn_qkv.weight lack parts \['k'\]"):
        normalize_tencent_layout(state)


def test_split_qkv_with_their_own_fp8_scales_is_refused():
    """Per-layer scales (ComfyUI's scaled-fp8 `.scale_weight`) of split q/k/v cannot become one fused layer's scale."""
    state = tencent_dit_state_dict(ARCH_HV15, double_blocks=1, single_blocks=0, guidance=False)
    for i, part in enumerate("qkv"):
        state[f"double_blocks.0.img_attn_{part}.scale_weight"] = torch.tensor(0.001 * (i + 1))
    with pytest.raises(DisCaFormatError, match=r"dit.safetensors: double_blocks.0.img_attn_q, double_blocks.0.img_attn_k, "
                                               r"double_blocks.0.img_attn_v are stored split, each with its own scale"):
        normalize_tencent_layout(state, "dit.safetensors")
    # the same scale for every part: the fused layer keeps it, and the rows stack as for unscaled weights
    for part in "qkv":
        state[f"double_blocks.0.img_attn_{part}.scale_weight"] = torch.tensor(0.002)
    fused = normalize_tencent_layout(state, "dit.safetensors")
    assert torch.equal(fused["double_blocks.0.img_attn_qkv.scale_weight"], torch.tensor(0.002))
    assert not any("img_attn_q." in k for k in fused)
    assert torch.equal(fused["double_blocks.0.img_attn_qkv.weight"],
                       torch.cat([state[f"double_blocks.0.img_attn_{p}.weight"] for p in "qkv"]))


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_comfy_key_map_round_trip_is_exact(arch):
    _, state = read_predictor_state_dict(official_predictor_state_dict(arch), "p")
    comfy = tencent_to_comfy_predictor(state)
    assert "mm_single_blocks.0.norm.query_norm.scale" in comfy or "double_blocks.0.img_attn.norm.query_norm.scale" in comfy
    back = comfy_to_tencent_predictor(comfy)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


def test_predictor_with_extra_or_missing_keys_is_refused():
    state = official_predictor_state_dict(ARCH_HV10)
    state["mm_single_blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(DisCaFormatError, match="unexpected .*extra.weight"):
        read_predictor_state_dict(state, "bad.safetensors")
    state = official_predictor_state_dict(ARCH_HV10)
    del state["mm_single_blocks.1.modulation.linear.bias"]
    with pytest.raises(DisCaFormatError, match="missing .*modulation.linear.bias"):
        read_predictor_state_dict(state, "bad.safetensors")


def test_not_a_predictor():
    with pytest.raises(DisCaFormatError, match="not a DisCa predictor"):
        read_predictor_state_dict(tencent_dit_state_dict(), "dit.safetensors")


def test_file_errors_name_the_file(tmp_path):
    pickle_like = tmp_path / "predictor.safetensors"
    pickle_like.write_bytes(b"\x80\x04\x95" + os.urandom(64))  # what a torch.save pickle starts with
    with pytest.raises(DisCaFormatError, match=f"{pickle_like}: not a safetensors file \\(starts like a pickle\\)"):
        load_safetensors(str(pickle_like))
    zipped = tmp_path / "predictor.pt"
    zipped.write_bytes(b"PK\x03\x04" + os.urandom(64))  # torch.save's zip format
    with pytest.raises(DisCaFormatError, match="starts like a zip .*never pickles"):
        load_safetensors(str(zipped))
    good = tmp_path / "good.safetensors"
    save_safetensors(str(good), official_predictor_state_dict(ARCH_HV10), {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DisCaFormatError, match=f"{truncated}: .*truncated"):
        load_predictor_file(str(truncated))
    with pytest.raises(DisCaFormatError, match="file not found"):
        load_safetensors(str(tmp_path / "missing.safetensors"))


def test_metadata_round_trip_and_arch_check(tmp_path):
    path = tmp_path / "ours.safetensors"
    meta = build_metadata("predictor", ARCH_HV10, base_fingerprint="abc", step_lists=[[0, 2, 4]], R="0.2")
    assert meta["disca.step_lists"] == "[[0, 2, 4]]" and meta["disca.R"] == "0.2"
    save_safetensors(str(path), official_predictor_state_dict(ARCH_HV10), meta)
    loaded = load_predictor_file(str(path))
    assert loaded.base_fingerprint == "abc" and loaded.metadata[META_ARCH] == ARCH_HV10
    save_safetensors(str(path), official_predictor_state_dict(ARCH_HV10), {**meta, META_ARCH: ARCH_HV15})
    with pytest.raises(DisCaFormatError, match="metadata says disca.arch=hunyuan_video_1_5"):
        load_predictor_file(str(path))


def test_list_specific_predictors_are_told_from_interval_trained_ones(tmp_path):
    """The runtime warns when a predictor trained only for some anchor lists serves another (test_runtime); which
    files count as such comes from the metadata."""
    path, weights = str(tmp_path / "p.safetensors"), official_predictor_state_dict(ARCH_HV10)
    cases = ((dict(step_lists=[[0, 4, 1, 2]]), ((0, 1, 2, 4),)),  # a roll-out-trained predictor (sorted)
             (dict(step_lists=[[0, 2, 4]], interval_range=[2, 4]), None),  # saw interval schedules too
             (dict(interval_range=[2, 4]), None), ({}, None))  # interval-trained; no metadata (official files)
    for fields, expected in cases:
        save_safetensors(path, weights, build_metadata("predictor", ARCH_HV10, **fields) if fields else {})
        assert load_predictor_file(path).trained_only_on_lists == expected, fields
    save_safetensors(path, weights, build_metadata("predictor", ARCH_HV10, step_lists="0 1 2"))
    with pytest.raises(DisCaFormatError, match=f"{path}: metadata disca.step_lists is not a JSON list of step lists"):
        load_predictor_file(path)


def test_save_is_atomic_and_checks_metadata_types(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="must be strings"):
        save_safetensors(str(path), {"a": torch.zeros(1)}, {"n": 3})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_dit_spec_detection():
    hv10 = infer_dit_spec(tencent_dit_state_dict(ARCH_HV10, double_blocks=2, single_blocks=3))
    assert (hv10.arch, hv10.hidden_size, hv10.num_heads, hv10.double_blocks, hv10.single_blocks) == (ARCH_HV10, 128, 1, 2, 3)
    assert hv10.meanflow and hv10.guidance_distilled
    hv15 = infer_dit_spec(normalize_tencent_layout(tencent_dit_state_dict(ARCH_HV15, single_blocks=0, guidance=False)))
    assert (hv15.arch, hv15.single_blocks, hv15.meanflow, hv15.guidance_distilled) == (ARCH_HV15, 0, True, False)
    plain = infer_dit_spec(tencent_dit_state_dict(meanflow=False))
    assert "plain flow" not in plain.describe() and not plain.meanflow
    with pytest.raises(DisCaFormatError, match="not a HunyuanVideo DiT"):
        infer_dit_spec(official_predictor_state_dict())


def test_predictor_fit_errors():
    dit10 = infer_dit_spec(tencent_dit_state_dict(ARCH_HV10))
    dit15 = infer_dit_spec(tencent_dit_state_dict(ARCH_HV15))
    spec15 = read_predictor_state_dict(official_predictor_state_dict(ARCH_HV15), "p15")[0]
    with pytest.raises(DisCaFormatError, match="p15: a double-stream predictor for hunyuan_video_1_5 cannot run on a hunyuan_video model"):
        check_predictor_fits(spec15, dit10, "p15")
    check_predictor_fits(spec15, dit15, "p15")
    wide = read_predictor_state_dict(official_predictor_state_dict(ARCH_HV10, hidden=256, heads=2), "wide")[0]
    with pytest.raises(DisCaFormatError, match="wide: predictor hidden size 256 / 2 heads != model's 128 / 1"):
        check_predictor_fits(wide, dit10, "wide")


def test_fingerprint_survives_bf16_and_comfy_names():
    state = tencent_dit_state_dict()
    comfy_names = {"img_in.proj.weight": state["img_in.proj.weight"].to(torch.bfloat16),
                   "final_layer.linear.weight": state["final_layer.linear.weight"].to(torch.bfloat16),
                   "time_in.in_layer.weight": state["time_in.mlp.0.weight"].to(torch.bfloat16)}
    assert base_fingerprint(state) == base_fingerprint(comfy_names)
    assert base_fingerprint(state) != base_fingerprint(tencent_dit_state_dict(seed=5))
    assert META_BASE_FINGERPRINT == "disca.base_fingerprint"
