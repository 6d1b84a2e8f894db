"""Predictor stage on tiny HunyuanVideo 1.0 / 1.5 DiTs: real MSE and GAN steps, export, held-out error vs baselines."""

import os

import pytest
import torch

from disca.formats import (ARCH_HV10, ARCH_HV15, META_BASE_FINGERPRINT, base_fingerprint, load_predictor_file,
                           load_safetensors)
from training.config import build_config
from training.predictor import train
from training.tiny import TINY_LATENT, write_tiny_run_files

MSE_STEPS, MAX_STEPS = 150, 200


def predictor_config(folder, paths, arch=ARCH_HV10, **overrides):
    raw = dict(stage="predictor", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / "run"),
               latent_shape=list(TINY_LATENT[arch]), steps=8, shift=5.0, schedules=["N2", "N3", "N4"],
               held_out_prompts=2, max_steps=MAX_STEPS, mse_steps=MSE_STEPS, batch_size=4, learning_rate=3e-5,
               disc_learning_rate=1e-3, adv_weight=0.002, log_every=50, checkpoint_every=50, keep_checkpoints=5)
    raw.update(overrides)
    return build_config(raw)


@pytest.fixture(scope="module")
def hv10_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predictor_hv10")
    paths = write_tiny_run_files(str(folder), ARCH_HV10)
    config = predictor_config(folder, paths)
    return config, paths, train(config)


def _mean(values):
    return sum(values) / len(values)


def test_mse_goes_down(hv10_run):
    _, _, report = hv10_run
    curve = report["mse_curve"]
    assert len(curve) == MAX_STEPS
    print(f"\npredictor MSE first 10 steps {_mean(curve[:10]):.5f} -> last 10 {_mean(curve[-10:]):.5f}")
    assert _mean(curve[-20:]) < 0.8 * _mean(curve[:20])


def test_gan_phase_updates_both_players_and_mse_phase_only_the_predictor(hv10_run):
    config, _, report = hv10_run
    checkpoints = {step: os.path.join(config.output_dir, "checkpoints", f"step_{step}") for step in (100, 150, 200)}

    def weights(step, name):
        return load_safetensors(os.path.join(checkpoints[step], name))[0]

    def changed(a, b):
        return any(not torch.equal(a[k], b[k]) for k in a)

    # model.safetensors = predictor, model_1.safetensors = discriminator heads (accelerate's prepare order)
    assert changed(weights(100, "model.safetensors"), weights(150, "model.safetensors"))
    assert not changed(weights(100, "model_1.safetensors"), weights(150, "model_1.safetensors"))
    assert changed(weights(150, "model.safetensors"), weights(200, "model.safetensors"))
    assert changed(weights(150, "model_1.safetensors"), weights(200, "model_1.safetensors"))
    gan_steps = [h for h in report["last_losses"] if "disc" in h]
    assert len(gan_steps) == 3 and all(0 < h["disc"] < 4 for h in gan_steps)


def test_exported_predictor_loads_and_beats_cache_reuse_on_held_out_prompts(hv10_run):
    config, paths, report = hv10_run
    file = load_predictor_file(report["predictor_file"])
    tencent, _ = load_safetensors(paths["model"])
    assert file.spec.arch == ARCH_HV10 and file.spec.depth == 2
    assert file.metadata[META_BASE_FINGERPRINT] == base_fingerprint(tencent)
    assert file.metadata["disca.interval_range"] == "[2, 4]"
    initial, final = report["held_out_initial"], report["held_out_final"]
    print(f"\nheld-out prompts, {final['pairs_evaluated']} predicted steps: predictor MSE {final['predictor_mse']:.5f} "
          f"(untrained {initial['predictor_mse']:.5f}) vs cache reuse {final['cache_reuse_mse']:.5f}, "
          f"output reuse {final['output_reuse_mse']:.5f}")
    assert final["predictor_mse"] < 0.9 * final["cache_reuse_mse"]
    assert final["predictor_mse"] < final["output_reuse_mse"]


def test_hv15_predictor_stage_trains_double_stream_predictor(tmp_path):
    paths = write_tiny_run_files(str(tmp_path), ARCH_HV15, meanflow=False)
    config = predictor_config(tmp_path, paths, ARCH_HV15, schedules=["0 2 4 7"], max_steps=80, mse_steps=60,
                              learning_rate=3e-5, checkpoint_every=80)
    report = train(config)
    file = load_predictor_file(report["predictor_file"])
    assert file.spec.arch == ARCH_HV15 and file.spec.block_type == "double"
    assert file.metadata["disca.step_lists"] == "[[0, 2, 4, 7]]"
    curve = report["mse_curve"]
    print(f"\n1.5 predictor MSE {_mean(curve[:10]):.5f} -> {_mean(curve[-10:]):.5f}; held-out "
          f"{report['held_out_initial']['predictor_mse']:.5f} -> {report['held_out_final']['predictor_mse']:.5f} "
          f"(cache reuse {report['held_out_final']['cache_reuse_mse']:.5f})")
    assert _mean(curve[-10:]) < _mean(curve[:10])
    assert report["held_out_final"]["predictor_mse"] < report["held_out_initial"]["predictor_mse"]
    assert report["held_out_final"]["predictor_mse"] < report["held_out_final"]["cache_reuse_mse"]
