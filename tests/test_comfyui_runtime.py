"""DisCa inside ComfyUI (in-process, CPU): loading, parity with stock sampling and with the official math, errors.

Run with the testbed python: see README "Tests". Skipped elsewhere, with the reason.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from comfyui_disca import CASES, add_probe, apply, conditioning, image_then_text, load, noise, stock_capture
from comfyui_env import requires_comfyui
from disca.formats import ARCH_HV10, ARCH_HV15, build_metadata, load_safetensors, save_safetensors
from disca.schedules import flow_sigmas
from official_reference import final_layer_and_unpatchify, predicted_output
from tiny_models import tencent_dit_state_dict
from tiny_model_files import (HV10_DIT, HV10_PLAIN_DIT, HV10_PREDICTOR, HV10_PREDICTOR_OTHER_BASE, HV10_PREDICTOR_TP,
                              HV10_PREDICTOR_WIDE, HV15_DIT, HV15_PREDICTOR)

pytestmark = [requires_comfyui, pytest.mark.comfyui]


def test_pack_loads_with_its_nodes(comfyui):
    for node_id in ("DisCaLoadDistilledModel", "DisCaLoadPredictor", "DisCaApply", "DisCaSigmas"):
        assert node_id in comfyui.nodes.NODE_CLASS_MAPPINGS, node_id
    assert HV10_PREDICTOR in comfyui.folder_paths.get_filename_list("disca")
    # the pack creates models/disca, so that a new user sees where predictors go
    assert os.path.isdir(os.path.join(comfyui.folder_paths.models_dir, "disca"))
    assert comfyui.pack.comfy_entrypoint is not None


def test_loader_reports_and_refuses_a_plain_model(comfyui):
    model, report = comfyui.run_node("DisCaLoadDistilledModel", unet_name=HV10_DIT, weight_dtype="default",
                                     allow_non_distilled=False)
    assert report == f"{HV10_DIT}: hunyuan_video hidden 128 (1 heads), 1 double + 2 single blocks, MeanFlow, guidance-distilled"
    assert model.model.diffusion_model.time_r_in is not None
    with pytest.raises(ValueError, match="no time_r_in weights, so it is not MeanFlow-distilled.*enable allow_non_distilled"):
        comfyui.run_node("DisCaLoadDistilledModel", unet_name=HV10_PLAIN_DIT, weight_dtype="default", allow_non_distilled=False)
    plain, report = comfyui.run_node("DisCaLoadDistilledModel", unet_name=HV10_PLAIN_DIT, weight_dtype="default",
                                     allow_non_distilled=True)
    assert report.endswith("1 double + 2 single blocks, guidance-distilled") and "MeanFlow" not in report
    assert plain.model.diffusion_model.time_r_in is None
    no_guidance = "tiny_hv10_meanflow_no_guidance.safetensors"
    save_safetensors(str(comfyui.models_dir / "diffusion_models" / no_guidance), tencent_dit_state_dict(guidance=False), {})
    with pytest.raises(ValueError, match="no guidance_in weights, so CFG is not distilled"):
        comfyui.run_node("DisCaLoadDistilledModel", unet_name=no_guidance, weight_dtype="default", allow_non_distilled=False)
    # HunyuanVideo-1.5 step-distilled models have no guidance embedding: accepted
    _, report15 = comfyui.run_node("DisCaLoadDistilledModel", unet_name=HV15_DIT, weight_dtype="default",
                                   allow_non_distilled=False)
    assert "hunyuan_video_1_5 hidden 128 (1 heads), 2 double + 0 single blocks, MeanFlow" in report15


def test_hv15_split_qkv_weights_are_loaded_not_dropped(comfyui):
    model, _ = load(comfyui, ARCH_HV15)
    raw, _ = load_safetensors(str(comfyui.models_dir / "diffusion_models" / HV15_DIT))
    fused = model.model.diffusion_model.double_blocks[1].img_attn.qkv.weight
    expected = torch.cat([raw[f"double_blocks.1.img_attn_{p}.weight"] for p in "qkv"])
    assert torch.equal(fused.float(), expected)


def test_predictor_loader_reads_official_layouts(comfyui):
    for name, arch in ((HV10_PREDICTOR, ARCH_HV10), (HV10_PREDICTOR_TP, ARCH_HV10), (HV15_PREDICTOR, ARCH_HV15)):
        predictor = comfyui.run_node("DisCaLoadPredictor", predictor_name=name)[0]
        assert (predictor.spec.arch, predictor.spec.hidden_size, predictor.spec.depth) == (arch, 128, 2)
    assert comfyui.node("DisCaLoadPredictor").validate_inputs(predictor_name="nope.safetensors") == \
        "predictor file 'nope.safetensors' not found in models/disca"


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_every_step_an_anchor_is_bit_identical_to_stock(comfyui, arch, cfg):
    model, predictor = load(comfyui, arch)
    sigmas = flow_sigmas(4, 5.0)
    positive, negative = conditioning(arch, 1), conditioning(arch, 2)
    stock = comfyui.sample(model, noise(arch, 0), sigmas, positive, negative, cfg=cfg)
    disca = comfyui.sample(apply(comfyui, model, predictor, interval=1), noise(arch, 0), sigmas, positive, negative, cfg=cfg)
    assert torch.equal(stock, disca)


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_predicted_steps_match_the_official_math(comfyui, arch, caplog):
    model, predictor = load(comfyui, arch)
    patched = apply(comfyui, model, predictor, interval=2)
    calls = []
    add_probe(comfyui, patched, calls)
    with caplog.at_level(logging.INFO, logger="disca"):
        comfyui.sample(patched, noise(arch, 0), flow_sigmas(4, 5.0), conditioning(arch, 1))
    module = model.model.diffusion_model
    depth = len(module.double_blocks) + len(module.single_blocks)
    assert [c["blocks"] for c in calls] == [depth, 0, depth, 0]  # no DiT block runs on a predicted step
    assert "4 steps (2 + 2 model calls)" in caplog.text and "2 full + 2 predicted" in caplog.text

    dit_weights, _ = load_safetensors(str(comfyui.models_dir / "diffusion_models" / CASES[arch]["dit"]))
    predictor_weights, _ = load_safetensors(str(comfyui.models_dir / "disca" / CASES[arch]["predictor"]))
    grid = tuple(s // p for s, p in zip(noise(arch, 0).shape[2:], CASES[arch]["patch"]))
    for anchor_call, predicted_call in ((calls[0], calls[1]), (calls[2], calls[3])):
        captured = {}
        if arch == ARCH_HV10:
            last = ("single_block", len(module.single_blocks) - 1)

            def keep_cache(args, extra):
                out = extra["original_block"](args)
                captured["cache"] = image_then_text(out["img"], args["transformer_options"])
                return out
        else:
            last = ("double_block", len(module.double_blocks) - 1)

            def keep_cache(args, extra):
                out = extra["original_block"](args)
                captured["cache"] = (out["img"].clone(), out["txt"].clone())
                return out
        stock_capture(model, anchor_call, {last: keep_cache})

        def keep_inputs(args, extra):
            captured.update(img=args["img"].clone(), txt=args["txt"].clone(), vec=args["vec"].clone())
            return extra["original_block"](args)

        stock_capture(model, predicted_call, {("double_block", 0): keep_inputs})
        reference = predicted_output(predictor_weights, dit_weights, captured["img"], captured["txt"], captured["vec"],
                                     captured["cache"], grid, CASES[arch]["patch"], CASES[arch]["channels"], heads=1)
        got = predicted_call["out"]
        relative = ((got - reference).norm() / reference.norm()).item()
        print(f"{arch}: relative error {relative:.2e}")
        assert relative <= 1e-5, relative
        # and it is not trivially the anchor's output
        assert not torch.allclose(got, anchor_call["out"], atol=1e-3)


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_diffusers_hooks_compute_what_the_comfyui_runtime_computes(comfyui, arch):
    """The same Tencent-layout files through ComfyUI's DisCa and through a diffusers transformer with DisCa's hooks:
    every model call of an N2 run, anchors and predicted steps, on ComfyUI's own inputs."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from disca.hosts.diffusers import load_host
    from disca.hosts.diffusers_hooks import DisCaHookConfig, apply_disca

    dit_name = CASES[arch]["dit"]
    if arch == ARCH_HV15:  # diffusers' 1.5 model has the ByT5 glyph mapper, which ComfyUI's file can do without
        dit_name = "tiny_hv15_with_byt5.safetensors"
        save_safetensors(str(comfyui.models_dir / "diffusion_models" / dit_name),
                         tencent_dit_state_dict(ARCH_HV15, double_blocks=2, single_blocks=0, guidance=False, byt5=True), {})
    model = comfyui.run_node("DisCaLoadDistilledModel", unet_name=dit_name, weight_dtype="default",
                             allow_non_distilled=False)[0]
    predictor = comfyui.run_node("DisCaLoadPredictor", predictor_name=CASES[arch]["predictor"])[0]
    patched = apply(comfyui, model, predictor, interval=2)
    calls = []
    add_probe(comfyui, patched, calls)
    sigmas = flow_sigmas(4, 5.0)
    comfyui.sample(patched, noise(arch, 0), sigmas, conditioning(arch, 1))

    host = load_host(str(comfyui.models_dir / "diffusion_models" / dit_name))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)  # the sigmas below are already shifted
    scheduler.set_timesteps(sigmas=sigmas[:-1].numpy())
    pipe = SimpleNamespace(transformer=host.transformer, scheduler=scheduler)
    apply_disca(pipe, DisCaHookConfig(predictor=str(comfyui.models_dir / "disca" / CASES[arch]["predictor"]),
                                      schedule="N2", time_r_in=host.time_r_in))
    for step, call in enumerate(calls):
        arguments = call["arguments"]
        context = arguments["context"]
        inputs = dict(hidden_states=arguments["x"], timestep=arguments["timestep"], encoder_hidden_states=context,
                      encoder_attention_mask=torch.ones(context.shape[:2], dtype=torch.int64), return_dict=False)
        if arch == ARCH_HV10:
            inputs.update(pooled_projections=arguments["y"], guidance=arguments["guidance"] * 1000)
        else:  # no glyph tokens in ComfyUI's call: one ByT5 token, masked out; r is the next sigma
            inputs.update(encoder_hidden_states_2=torch.zeros(1, 1, 1472), encoder_attention_mask_2=torch.zeros(1, 1),
                          image_embeds=arguments["clip_fea"], timestep_r=(sigmas[step + 1] * 1000).expand(1))
        with torch.no_grad(), host.transformer.cache_context("cond"):
            out = host.transformer(**inputs)[0]
        relative = ((out - call["out"]).norm() / call["out"].norm()).item()
        assert relative <= 1e-5, (step, relative)
        scheduler.step(out, scheduler.timesteps[step], arguments["x"][:, :out.shape[1]])  # advances the step index
    assert [c["blocks"] for c in calls][1] == 0  # step 1 was predicted in ComfyUI


def test_official_10_of_20_schedule_counts(comfyui, caplog):
    model, predictor = load(comfyui, ARCH_HV10)
    patched = apply(comfyui, model, predictor, schedule="t2v_official_10of20")
    calls = []
    add_probe(comfyui, patched, calls)
    sigmas = comfyui.run_node("DisCaSigmas", preset={"preset": "t2v_official_10of20"})[0]
    assert torch.equal(sigmas, flow_sigmas(20, 5.0))
    with caplog.at_level(logging.INFO, logger="disca"):
        comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, conditioning(ARCH_HV10, 1))
    full = [i for i, c in enumerate(calls) if c["blocks"] > 0]
    assert full == [0, 1, 2, 5, 9, 11, 13, 15, 17, 19]
    assert "10 full + 10 predicted of 20 steps" in caplog.text


def test_wrong_predictor_for_the_model(comfyui):
    model10, _ = load(comfyui, ARCH_HV10)
    predictor15 = comfyui.run_node("DisCaLoadPredictor", predictor_name=HV15_PREDICTOR)[0]
    with pytest.raises(ValueError, match="double-stream predictor for hunyuan_video_1_5 cannot run on a hunyuan_video model"):
        apply(comfyui, model10, predictor15)
    wide = comfyui.run_node("DisCaLoadPredictor", predictor_name=HV10_PREDICTOR_WIDE)[0]
    with pytest.raises(ValueError, match="predictor hidden size 256 / 2 heads != model's 128 / 1"):
        apply(comfyui, model10, wide)
    with pytest.raises(RuntimeError, match="needs a PREDICTOR input"):
        apply(comfyui, model10, None)


def test_list_specific_predictor_warns_on_another_list(comfyui, caplog):
    """A predictor trained only for some anchor lists (roll-out training) says so when a run serves another."""
    model, _ = load(comfyui, ARCH_HV10)
    tensors, _ = load_safetensors(str(comfyui.models_dir / "disca" / HV10_PREDICTOR))
    name = "tiny_hv10_predictor_rollout_0_2.safetensors"
    save_safetensors(str(comfyui.models_dir / "disca" / name), tensors,
                     build_metadata("predictor", ARCH_HV10, step_lists=[[0, 2]]))
    predictor = comfyui.run_node("DisCaLoadPredictor", predictor_name=name)[0]
    sigmas = flow_sigmas(4, 5.0)
    for step_list, warns in (("0 2", False), ("0 1", True)):
        caplog.clear()
        patched = apply(comfyui, model, predictor, schedule="step_list", step_list=step_list)
        with caplog.at_level(logging.WARNING, logger="disca"):
            out = comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, conditioning(ARCH_HV10, 1))
        assert torch.isfinite(out).all()
        assert ("trained only for the anchor lists [[0, 2]], and this run's anchors [0, 1] are none of them"
                in caplog.text) == warns, step_list


def test_predictor_for_another_base_warns_but_runs(comfyui, caplog):
    model, _ = load(comfyui, ARCH_HV10)
    other = comfyui.run_node("DisCaLoadPredictor", predictor_name=HV10_PREDICTOR_OTHER_BASE)[0]
    with caplog.at_level(logging.WARNING, logger="disca"):
        patched = apply(comfyui, model, other)
    assert "trained on a base model with fingerprint 0123456789abcdef" in caplog.text
    out = comfyui.sample(patched, noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1))
    assert torch.isfinite(out).all()


def test_bad_schedules_fail_with_clear_messages(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    for step_list, message in (("1 2 3", "must start with step 0"), ("0 3 3", "strictly increasing"),
                               (" ", "step_list is empty"), ("0 2 x", "must hold integers")):
        with pytest.raises(ValueError, match=message):
            apply(comfyui, model, predictor, schedule="step_list", step_list=step_list)
    with pytest.raises(ValueError, match="interval N must be >= 1"):
        apply(comfyui, model, predictor, interval=0)
    too_long = apply(comfyui, model, predictor, schedule="step_list", step_list="0 2 7")
    with pytest.raises(ValueError, match="has step 7 but the sampler runs only 4 steps"):
        comfyui.sample(too_long, noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1))
    preset = apply(comfyui, model, predictor, schedule="i2v_official_4of8")
    with pytest.raises(ValueError, match="is for 8 steps, but the sampler runs 4"):
        comfyui.sample(preset, noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1))


def test_multi_evaluation_sampler_is_refused(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    patched = apply(comfyui, model, predictor)
    sampler = comfyui.comfy.samplers.sampler_object("heun")
    with pytest.raises(RuntimeError, match="a second time in step 0 .*Use 'euler'"):
        comfyui.comfy.sample.sample_custom(patched, noise(ARCH_HV10, 0), 1.0, sampler, flow_sigmas(4, 5.0),
                                           conditioning(ARCH_HV10, 1), conditioning(ARCH_HV10, 1),
                                           torch.zeros_like(noise(ARCH_HV10, 0)), disable_pbar=True, seed=0)


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_cfg_conds_batched_split_or_mixed_give_the_same_result(comfyui, arch, monkeypatch):
    model, predictor = load(comfyui, arch)
    sigmas, positive, negative = flow_sigmas(4, 5.0), conditioning(arch, 1), conditioning(arch, 2)

    real_free_memory = comfyui.comfy.model_management.get_free_memory

    def run(free_memory):
        calls = []
        patched = apply(comfyui, model, predictor, interval=2)
        add_probe(comfyui, patched, calls)
        if free_memory is not None:
            # only the sampler's batching decision asks without torch_free_too; attention keeps the real reading
            def reported(dev=None, torch_free_too=False):
                return real_free_memory(dev, torch_free_too) if torch_free_too else free_memory(calls)
            monkeypatch.setattr(comfyui.comfy.model_management, "get_free_memory", reported)
        out = comfyui.sample(patched, noise(arch, 0), sigmas, positive, negative, cfg=3.0)
        monkeypatch.undo()
        return out, [len(c["uuids"]) for c in calls]

    batched, sizes = run(None)
    assert sizes == [2, 2, 2, 2]
    split, sizes = run(lambda calls: 0)  # a GPU too full to batch cond and uncond
    assert sizes == [1] * 8

    def alternating(calls):  # room to batch on anchor steps (0, 2), not on predicted ones (1, 3)
        steps_started = len({c["sigma"].item() for c in calls})
        return 0 if steps_started % 2 else 10**15

    mixed, sizes = run(alternating)
    assert sizes == [2, 1, 1, 2, 1, 1]
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, batched, rtol=1e-5, atol=1e-5)


def test_batch_of_two_equals_two_runs(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    sigmas, patched = flow_sigmas(4, 5.0), apply(comfyui, model, predictor)
    both = comfyui.sample(patched, noise(ARCH_HV10, 0, batch=2), sigmas, conditioning(ARCH_HV10, 1, batch=2))
    for i in range(2):
        one = comfyui.sample(patched, noise(ARCH_HV10, 0, batch=2)[i:i + 1], sigmas,
                             [[c[i:i + 1] if torch.is_tensor(c) else c for c in conditioning(ARCH_HV10, 1, batch=2)[0][:1]]
                              + [{k: (v[i:i + 1] if torch.is_tensor(v) else v)
                                  for k, v in conditioning(ARCH_HV10, 1, batch=2)[0][1].items()}]])
        torch.testing.assert_close(both[i:i + 1], one, rtol=1e-5, atol=1e-5)


def test_runs_never_share_state(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    patched = apply(comfyui, model, predictor)
    sigmas, cond = flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1)
    first = comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, cond)
    bigger = comfyui.sample(patched, noise(ARCH_HV10, 0, size=16), sigmas, cond)  # another resolution
    assert bigger.shape[-1] == 16 and torch.isfinite(bigger).all()
    other_prompt = comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, conditioning(ARCH_HV10, 7, length=9))
    assert not torch.allclose(other_prompt, first)
    again = comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, cond)
    assert torch.equal(first, again)

    def interrupt(step, *args):
        if step == 1:
            raise comfyui.comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfyui.comfy.model_management.InterruptProcessingException):
        comfyui.sample(patched, noise(ARCH_HV10, 5), sigmas, conditioning(ARCH_HV10, 9), callback=interrupt)
    after_interrupt = comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, cond)
    assert torch.equal(first, after_interrupt)
    assert "disca_run" not in patched.model_options["transformer_options"]


def test_reuse_output_mode_repeats_the_anchor_output(comfyui):
    model, _ = load(comfyui, ARCH_HV10)
    patched = apply(comfyui, model, None, mode="reuse_output")
    calls = []
    add_probe(comfyui, patched, calls)
    comfyui.sample(patched, noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1))
    assert len(calls) == 2  # predicted steps do not call the model at all


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_reuse_cache_mode_is_the_final_layer_on_the_anchors_hidden_state(comfyui, arch):
    """The training-free baseline an untrained predictor starts from, against the official final layer by hand."""
    model, _ = load(comfyui, arch)
    patched = apply(comfyui, model, None, mode="reuse_cache", interval=2)
    calls = []
    add_probe(comfyui, patched, calls)
    comfyui.sample(patched, noise(arch, 0), flow_sigmas(4, 5.0), conditioning(arch, 1))
    module = model.model.diffusion_model
    assert [c["blocks"] for c in calls] == [len(module.double_blocks) + len(module.single_blocks), 0] * 2
    dit_weights, _ = load_safetensors(str(comfyui.models_dir / "diffusion_models" / CASES[arch]["dit"]))
    grid = tuple(s // p for s, p in zip(noise(arch, 0).shape[2:], CASES[arch]["patch"]))
    captured = {}

    def keep_last(args, extra):
        out = extra["original_block"](args)
        captured["img"] = (image_then_text(out["img"], args["transformer_options"]) if arch == ARCH_HV10
                           else out["img"].clone())
        return out

    def keep_vec(args, extra):
        captured["vec"] = args["vec"].clone()
        return extra["original_block"](args)

    last = ("single_block", len(module.single_blocks) - 1) if arch == ARCH_HV10 else ("double_block", len(module.double_blocks) - 1)
    stock_capture(model, calls[0], {last: keep_last})
    stock_capture(model, calls[1], {("double_block", 0): keep_vec})
    image_tokens = captured["img"][:, :grid[0] * grid[1] * grid[2]]
    reference = final_layer_and_unpatchify(dit_weights, image_tokens, captured["vec"], grid, CASES[arch]["patch"],
                                           CASES[arch]["channels"])
    torch.testing.assert_close(calls[1]["out"], reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(calls[1]["out"], calls[0]["out"], atol=1e-3)  # the current step's modulation counts


def test_taylor_mode_extrapolates_the_anchor_outputs_in_time(comfyui):
    model, _ = load(comfyui, ARCH_HV10)
    patched = apply(comfyui, model, None, mode="taylor", interval=2)
    sigmas, velocities = flow_sigmas(6, 5.0), []

    def keep_velocity(step, denoised, x, total_steps):  # flow models: denoised = x - sigma * v
        velocities.append((x - denoised) / sigmas[step])

    comfyui.sample(patched, noise(ARCH_HV10, 0), sigmas, conditioning(ARCH_HV10, 1), callback=keep_velocity)
    v = velocities
    torch.testing.assert_close(v[1], v[0], rtol=1e-4, atol=1e-5)  # one anchor so far: its output
    for step, (b, a) in ((3, (0, 2)), (5, (2, 4))):
        expected = v[a] + (sigmas[step] - sigmas[a]) * (v[a] - v[b]) / (sigmas[a] - sigmas[b])
        torch.testing.assert_close(v[step], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(v[3], v[2], atol=1e-3)


def test_cache_and_predictor_offload_give_the_same_result(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    sigmas, cond = flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1)
    reference = comfyui.sample(apply(comfyui, model, predictor), noise(ARCH_HV10, 0), sigmas, cond)
    offloaded = comfyui.sample(apply(comfyui, model, predictor, cache_device="cpu", predictor_device="cpu_offload"),
                               noise(ARCH_HV10, 0), sigmas, cond)
    assert torch.equal(reference, offloaded)


def test_comfyui_layout_checkpoint_loads_too(comfyui):
    """Comfy-Org repackages ship ComfyUI's own key names with a model.diffusion_model. prefix: same loader."""
    model, _ = load(comfyui, ARCH_HV15)
    state = {f"model.diffusion_model.{k}": v for k, v in model.model.diffusion_model.state_dict().items()}
    assert "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in state
    name = "tiny_hv15_comfy_layout.safetensors"
    save_safetensors(str(comfyui.models_dir / "diffusion_models" / name), state, {})
    again, report = comfyui.run_node("DisCaLoadDistilledModel", unet_name=name, weight_dtype="default",
                                     allow_non_distilled=False)
    assert "hunyuan_video_1_5" in report and "MeanFlow" in report
    sigmas, cond = flow_sigmas(4, 5.0), conditioning(ARCH_HV15, 1)
    assert torch.equal(comfyui.sample(model, noise(ARCH_HV15, 0), sigmas, cond),
                       comfyui.sample(again, noise(ARCH_HV15, 0), sigmas, cond))


def test_applying_disca_twice_replaces_the_first_setup(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    sigmas, cond = flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1)
    twice = apply(comfyui, apply(comfyui, model, predictor, interval=4), predictor, interval=2)
    calls = []
    add_probe(comfyui, twice, calls)
    out = comfyui.sample(twice, noise(ARCH_HV10, 0), sigmas, cond)
    assert [c["blocks"] > 0 for c in calls] == [True, False, True, False]
    assert torch.equal(out, comfyui.sample(apply(comfyui, model, predictor, interval=2), noise(ARCH_HV10, 0), sigmas, cond))


def test_progress_callback_sees_every_step(comfyui):
    model, predictor = load(comfyui, ARCH_HV10)
    seen = []
    comfyui.sample(apply(comfyui, model, predictor), noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1),
                   callback=lambda step, x0, x, total: seen.append((step, total, tuple(x0.shape))))
    assert [(s, t) for s, t, _ in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]  # what the progress bar and previews get
    assert all(shape == (1, 16, 2, 8, 8) for _, _, shape in seen)


def test_damaged_predictor_file_fails_in_the_loader_node(comfyui):
    good = comfyui.models_dir / "disca" / HV10_PREDICTOR
    damaged = comfyui.models_dir / "disca" / "damaged_predictor.safetensors"
    damaged.write_bytes(good.read_bytes()[:1000])
    # the pack's copy of disca is its own module inside ComfyUI, so match the ValueError base class
    with pytest.raises(ValueError, match="damaged_predictor.safetensors: truncated"):
        comfyui.run_node("DisCaLoadPredictor", predictor_name="damaged_predictor.safetensors")
    pickle = comfyui.models_dir / "disca" / "pickled_predictor.safetensors"
    pickle.write_bytes(b"\x80\x02}q\x00" + bytes(64))
    with pytest.raises(ValueError, match="pickled_predictor.safetensors: not a safetensors file"):
        comfyui.run_node("DisCaLoadPredictor", predictor_name="pickled_predictor.safetensors")


@pytest.mark.parametrize("order", ["before", "after"])
def test_other_caches_and_torch_compile_are_refused(comfyui, order):
    """EasyCache/LazyCache would skip or reuse DisCa's steps, TorchCompileModel would recompile every predicted step:
    refused with a message naming the node, whichever comes first on the model's path."""
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    model, predictor = load(comfyui, ARCH_HV10)
    others = {
        "easycache": lambda m: EasyCacheNode.execute(m, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95,
                                                     verbose=False).result[0],
        "lazycache": lambda m: LazyCacheNode.execute(m, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95,
                                                     verbose=False).result[0],
        "torch.compile": lambda m: comfyui.node("TorchCompileModel").execute(m, backend="inductor").result[0],
    }
    for name, add in others.items():
        if order == "before":
            with pytest.raises(RuntimeError, match="also has .*remove that node"):
                apply(comfyui, add(model), predictor)
        else:
            patched = add(apply(comfyui, model, predictor))
            with pytest.raises(RuntimeError, match="sampling a DisCa model: this model also has .*remove that node"):
                comfyui.sample(patched, noise(ARCH_HV10, 0), flow_sigmas(4, 5.0), conditioning(ARCH_HV10, 1))
