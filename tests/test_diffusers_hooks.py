"""DisCa on real diffusers pipelines (tiny random components, CPU, fp32): `disca.hosts.diffusers_hooks`."""

import logging

import pytest
import torch

from diffusers_pipelines import STEPS, Case
from disca.formats import ARCH_HV10, ARCH_HV15, save_safetensors
from disca.hosts.diffusers import predictor_from_dit
from disca.hosts.diffusers_hooks import DisCaHookConfig, apply_disca, remove_disca
from disca.schedules import AnchorSchedule, ScheduleError
from official_reference import predicted_output
from training.tiny import TINY_CONFIGS

@pytest.fixture(scope="module", params=[ARCH_HV10, ARCH_HV15])
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


def record_calls(transformer) -> list:
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(dict(kwargs=dict(kwargs), out=output[0].clone()))

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    return calls, handle


def host_inputs(case, kwargs):
    """The host's (latents, sigma, cond, r, guidance) for a recorded transformer call of the pipeline."""
    sigma = kwargs["timestep"].float() / 1000
    if case.arch == ARCH_HV10:
        cond = dict(prompt_embeds=kwargs["encoder_hidden_states"], prompt_mask=kwargs["encoder_attention_mask"],
                    pooled_embeds=kwargs["pooled_projections"])
        latents, guidance = kwargs["hidden_states"], kwargs["guidance"] / 1000
    else:
        channels = TINY_CONFIGS[ARCH_HV15]["out_channels"]
        latents = kwargs["hidden_states"][:, :channels]
        cond = dict(prompt_embeds=kwargs["encoder_hidden_states"], prompt_mask=kwargs["encoder_attention_mask"],
                    byt5_embeds=kwargs["encoder_hidden_states_2"], byt5_mask=kwargs["encoder_attention_mask_2"],
                    image_embeds=kwargs["image_embeds"], image_latents=kwargs["hidden_states"][:, channels:])
        guidance = None
    return latents, sigma, cond, guidance


def test_every_step_an_anchor_is_the_stock_pipeline_exactly(tmp_path):
    for arch in (ARCH_HV10, ARCH_HV15):
        case = Case(arch, tmp_path / arch, meanflow=arch == ARCH_HV15)  # stock diffusers 1.0 has no r-embedder
        stock = case.sample()
        apply_disca(case.pipe, case.config(AnchorSchedule(interval=1, name="N1")))
        assert torch.equal(case.sample(), stock), arch


def test_predicted_steps_equal_the_official_math(case, caplog):
    apply_disca(case.pipe, case.config("N2"))
    calls, handle = record_calls(case.host.transformer)
    try:
        with caplog.at_level(logging.INFO, logger="disca"):
            case.sample()
    finally:
        handle.remove()
        remove_disca(case.pipe)
    assert len(calls) == STEPS
    assert f"2 full + 2 predicted of {STEPS} steps" in caplog.text  # the run summary, logged at the pipeline's end
    host, sigmas = case.host, case.pipe.scheduler.sigmas
    predictor = predictor_from_dit(host, depth=2)
    predictor.load_official_state_dict(case.predictor_weights)
    tencent = host.tencent_state_dict()
    config = host.transformer.config
    for anchor, step in ((0, 1), (2, 3)):
        latents, sigma, cond, guidance = host_inputs(case, calls[anchor]["kwargs"])
        with torch.no_grad():
            anchor_out, cache = host.forward_with_cache(latents, sigma, cond, sigmas[anchor + 1].expand(1), guidance)
            torch.testing.assert_close(calls[anchor]["out"], anchor_out, rtol=1e-5, atol=1e-6)
            latents, sigma, cond, guidance = host_inputs(case, calls[step]["kwargs"])
            r = sigmas[step + 1].expand(1)
            e = host.embed(latents, sigma, cond, r, guidance)
            # the official math attends over valid text tokens only: drop the padded ones (the host puts them last)
            valid = int(e.attention_mask.sum()) - (e.img.shape[1] if case.arch == ARCH_HV10 else 0)
            txt = e.txt[:, :valid]
            if case.arch == ARCH_HV10:
                official_cache = cache[0][:, : e.img.shape[1] + valid]
            else:
                official_cache = (cache[0], cache[1][:, :valid])
            grid = tuple(s // p for s, p in zip(latents.shape[2:], (config.patch_size_t, config.patch_size,
                                                                      config.patch_size)))
            reference = predicted_output(case.predictor_weights, tencent, e.img, txt, e.temb, official_cache, grid,
                                         (config.patch_size_t, config.patch_size, config.patch_size),
                                         config.out_channels, heads=config.num_attention_heads)
            trainer_view = host.predict(predictor, latents, sigma, cond, cache, r, guidance)
        got = calls[step]["out"]
        relative = ((got - reference).norm() / reference.norm()).item()
        assert relative <= 1e-5, (case.arch, step, relative)
        torch.testing.assert_close(got, trainer_view, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, calls[anchor]["out"], atol=1e-3)


def test_cond_and_uncond_keep_their_own_runs_and_runs_share_nothing(tmp_path, caplog):
    case = Case(ARCH_HV10, tmp_path)
    apply_disca(case.pipe, case.config("N2"))
    with caplog.at_level(logging.INFO, logger="disca"):
        first = case.sample(negative_prompt="blurry", true_cfg_scale=4.0)
        second = case.sample(negative_prompt="blurry", true_cfg_scale=4.0)
        case.sample(prompt="the cat sleeps on the sofa")  # another prompt in between must not leak into a run
        third = case.sample(negative_prompt="blurry", true_cfg_scale=4.0)
    assert torch.equal(first, second) and torch.equal(first, third)
    summaries = [r.getMessage() for r in caplog.records if "full +" in r.getMessage()]
    assert len(summaries) == 7 and all(f"2 full + 2 predicted of {STEPS} steps" in s for s in summaries)
    assert "DisCa [uncond]" in caplog.text and "DisCa [cond]" in caplog.text


def test_removing_disca_restores_a_model_equal_to_a_fresh_one(tmp_path):
    case = Case(ARCH_HV10, tmp_path, meanflow=False)
    fresh = {k: v.clone() for k, v in case.host.transformer.state_dict().items()}
    stock = case.sample()
    apply_disca(case.pipe, case.config("N2"))
    with_disca = case.sample()
    remove_disca(case.pipe)
    assert not torch.equal(with_disca, stock)
    assert torch.equal(case.sample(), stock)
    state = case.host.transformer.state_dict()
    assert state.keys() == fresh.keys() and all(torch.equal(state[k], fresh[k]) for k in fresh)
    assert all(not module._diffusers_hook.hooks for module in case.host.transformer.modules()
               if hasattr(module, "_diffusers_hook"))


def test_training_free_modes_run_without_a_predictor(tmp_path):
    case = Case(ARCH_HV10, tmp_path)
    outputs = {}
    for mode in ("reuse_output", "reuse_cache", "taylor"):
        apply_disca(case.pipe, DisCaHookConfig(schedule="N2", mode=mode, time_r_in=case.host.time_r_in))
        calls, handle = record_calls(case.host.transformer)
        outputs[mode] = case.sample()
        handle.remove()
        assert torch.isfinite(outputs[mode]).all()
    assert not torch.equal(outputs["reuse_output"], outputs["reuse_cache"])
    assert not torch.equal(outputs["reuse_output"], outputs["taylor"])


def test_bad_configurations_fail_with_clear_messages(tmp_path):
    case = Case(ARCH_HV10, tmp_path)
    with pytest.raises(ValueError, match="mode 'predictor' needs a predictor"):
        apply_disca(case.pipe, DisCaHookConfig(schedule="N2"))
    other = Case(ARCH_HV15, tmp_path / "hv15")
    with pytest.raises(ValueError, match=r"predictor\.safetensors: a predictor for hunyuan_video_1_5"):
        apply_disca(case.pipe, DisCaHookConfig(predictor=other.predictor_file, schedule="N2"))
    with pytest.raises(ScheduleError, match="step_list"):
        apply_disca(case.pipe, DisCaHookConfig(predictor=case.predictor_file, schedule="1 2 3"))
    apply_disca(case.pipe, case.config("t2v_official_8of20"))
    with pytest.raises(ScheduleError, match="is for 20 steps, but the sampler runs 4"):
        case.sample()


def test_the_example_script_runs_a_pipeline_from_files(tmp_path):
    """scripts/diffusers_disca.py as a user runs it: a pipeline folder, a Tencent-layout distilled DiT, a predictor."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from diffusers import FlowMatchEulerDiscreteScheduler

    from disca.formats import load_safetensors

    case = Case(ARCH_HV10, tmp_path)
    folder = tmp_path / "pipeline"
    FlowMatchEulerDiscreteScheduler(shift=5.0).save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    save_safetensors(str(tmp_path / "dit.safetensors"), case.host.tencent_state_dict(), {})
    out = tmp_path / "latents.safetensors"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "scripts" / "diffusers_disca.py"), "--pipeline", str(folder), "--dit",
         str(tmp_path / "dit.safetensors"), "--predictor", case.predictor_file, "--schedule", "N2", "--steps", "4",
         "--prompt", "a red fox runs through snow", "--size", "32x32x5", "--dtype", "fp32", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 full + 2 predicted of 4 steps" in result.stderr + result.stdout
    latents, _ = load_safetensors(str(out))
    assert latents["latents"].shape == (1, 16, 2, 8, 8) and torch.isfinite(latents["latents"]).all()
