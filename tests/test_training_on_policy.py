"""On-policy (roll-out) pairs of the predictor stage: what they hold, how batches mix them, and that a run with them
reports the exposure gap and resumes to the uninterrupted result."""

import json
import os
import shutil

import pytest
import torch

from disca.formats import ARCH_HV10, load_safetensors
from disca.hosts.diffusers import load_host
from disca.sampling import sample_cached
from disca.schedules import flow_sigmas
from training.config import build_config
from training.data import load_embeddings
from training.predictor import (TEACHER_FORCED_KEY, Trajectory, build_pool, build_predictor, draw_batch, draw_training_batch,
                                init_fusion_as_cache_passthrough, on_policy_pool, schedule_pairs, train)
from training.tiny import TINY_LATENT, write_tiny_run_files

STEPS = 6


def config_for(folder, paths, **overrides):
    raw = dict(stage="predictor", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / "run"),
               latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=STEPS, shift=5.0, schedules=["N2", "N3"],
               held_out_prompts=1, max_steps=6, mse_steps=6, batch_size=4, learning_rate=1e-3, warmup_steps=0,
               on_policy_fraction=0.5, on_policy_refresh=2, on_policy_rollouts=2, eval_every=2, checkpoint_every=2,
               keep_checkpoints=10, rollout_eval_prompts=1, log_every=50)
    raw.update(overrides)
    return build_config(raw)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("on_policy")
    return folder, write_tiny_run_files(str(folder), ARCH_HV10, prompts=4)


@pytest.fixture(scope="module")
def setup(files):
    folder, paths = files
    config = config_for(folder, paths)
    host = load_host(paths["model"]).requires_grad_(False).eval()
    cond = load_embeddings(paths["prompts"], host.arch)
    pool = build_pool(host, cond, [0, 1, 2], config, 0, "cpu")
    predictor = build_predictor(config, host)
    init_fusion_as_cache_passthrough(predictor, pool)
    with torch.no_grad():  # open the blocks' gates, so the predictor is not cache reuse and its roll-outs differ
        for p in predictor.blocks.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return config, host, cond, pool, predictor.eval()


def test_on_policy_pairs_are_the_predictors_roll_outs_with_the_dit_as_target(setup):
    config, host, cond, pool, predictor = setup
    sigmas = flow_sigmas(STEPS, config.shift)
    on_policy = on_policy_pool(host, predictor, pool, config, cond, sigmas, torch.Generator().manual_seed(0), "cpu")
    schedules = config.anchor_schedules()
    assert [pairs for _, pairs in on_policy] == [schedule_pairs(s, STEPS) for s in schedules]
    for schedule, (rollouts, pairs) in zip(schedules, on_policy):
        assert len(rollouts) == config.on_policy_rollouts
        anchors = schedule.anchor_steps(STEPS)
        for rollout in rollouts[:1]:  # one per schedule: each check below runs the DiT
            start = next(t for t in pool if torch.equal(t.latents[0], rollout.latents[0]))  # a training noise
            rows = {k: v[rollout.prompt:rollout.prompt + 1] for k, v in cond.items()}
            expected = sample_cached(host, start.latents[:1], sigmas, rows, anchors, mode="predictor",
                                     predictor=predictor, guidance=config.guidance)
            torch.testing.assert_close(rollout.final, expected[0], rtol=0, atol=0)  # the sampler's own roll-out
            first_after = pairs[0][1] + 1  # the first state reached through a predicted step
            assert not torch.allclose(rollout.latents[first_after], start.latents[first_after], atol=1e-6)
            for anchor, step in pairs:  # target: the frozen DiT at the roll-out's state; cache: the roll-out anchor's
                sigma, r, g = sigmas[step:step + 1], sigmas[step + 1:step + 2], torch.full((1,), config.guidance)
                with torch.no_grad():
                    target = host(rollout.latents[step:step + 1], sigma, rows, r, g)
                    _, cache = host.forward_with_cache(rollout.latents[anchor:anchor + 1], sigmas[anchor:anchor + 1],
                                                       rows, sigmas[anchor + 1:anchor + 2], g)
                torch.testing.assert_close(rollout.velocities[step], target[0])
                torch.testing.assert_close(rollout.caches[0][anchor], cache[0][0])
                torch.testing.assert_close(rollout.used[step], host.predict(
                    predictor, rollout.latents[step:step + 1], sigma, rows, (rollout.caches[0][anchor:anchor + 1],),
                    r, g)[0])


def test_batches_mix_on_policy_rows_by_fraction(setup):
    config, _, cond, pool, _ = setup
    sigmas = flow_sigmas(STEPS, config.shift)
    pairs = schedule_pairs(config.anchor_schedules()[0], STEPS)
    # stand-in roll-outs whose states are marked (+1000), so each row shows where it came from
    marked = [([Trajectory(t.prompt, t.latents + 1000, t.velocities, t.caches) for t in pool], pairs)]

    def on_policy_rows(fraction, on_policy):
        batch = draw_training_batch(pool, pairs, on_policy, fraction, cond, sigmas, torch.Generator().manual_seed(3),
                                    16, "cpu", torch.float32)
        return batch, [bool(row.mean() > 500) for row in batch["latents"]]

    teacher_forced = draw_batch(pool, pairs, cond, sigmas, torch.Generator().manual_seed(3), 16, "cpu", torch.float32)
    batch, rows = on_policy_rows(0.0, None)
    assert not any(rows) and torch.equal(batch["latents"], teacher_forced["latents"])  # the old draws, unchanged
    assert all(on_policy_rows(1.0, marked)[1])
    mixed = on_policy_rows(0.5, marked)[1]
    assert 0 < sum(mixed) < len(mixed)


def test_on_policy_run_reports_the_exposure_gap_and_resumes_to_the_uninterrupted_result(files, tmp_path):
    folder, paths = files
    config = config_for(tmp_path, paths, max_steps=4, mse_steps=4, on_policy_rollouts=1)
    report = train(config)
    rollouts = report["rollouts"]
    assert rollouts["held_out_trajectories"] == 1
    for name in ("N2", "N3"):
        assert set(rollouts["initial"][name]) == set(TEACHER_FORCED_KEY)
        assert set(rollouts["exported"][name]) == {"predictor"}
        for row in (rollouts["initial"][name]["predictor"], rollouts["exported"][name]["predictor"]):
            assert row["exposure_gap"] == pytest.approx(row["on_policy_mse"] / row["teacher_forced_mse"])
        assert all(row["final_sample_mse"] > 0 for row in rollouts["initial"][name].values())
    # step 0's predictor is the cache-reuse pass-through: its roll-out differs from cache reuse's only by that
    start = rollouts["initial"]["N2"]
    assert start["predictor"]["final_sample_mse"] == pytest.approx(start["reuse_cache"]["final_sample_mse"], rel=0.1)
    held_out = report["held_out"]
    assert [h["step"] for h in report["held_out_evaluations"]] == [0, 2, 4]
    assert held_out["predictor_mse_best"] == min(h["predictor_mse"] for h in report["held_out_evaluations"])

    run = config.output_dir
    exported, _ = load_safetensors(report["predictor_file"])
    last, _ = load_safetensors(os.path.join(run, "checkpoints", "step_4", "model.safetensors"))
    shutil.rmtree(os.path.join(run, "checkpoints", "step_4"))
    for name in ("report.json", "predictor.safetensors"):
        os.remove(os.path.join(run, name))
    resumed = train(config, resume=True)
    again, _ = load_safetensors(resumed["predictor_file"])
    last_again, _ = load_safetensors(os.path.join(run, "checkpoints", "step_4", "model.safetensors"))
    assert all(torch.equal(exported[k], again[k]) for k in exported)
    assert all(torch.equal(last[k], last_again[k]) for k in last)  # steps 3-4 drew from the same roll-outs
    assert resumed["held_out"] == held_out
    assert json.loads(json.dumps(resumed["rollouts"]["exported"])) == rollouts["exported"]
