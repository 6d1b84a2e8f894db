"""The predictor_rollout stage: its roll-out is the sampler's, its gradient crosses the anchors' DiT calls, a run lowers
the held-out roll-out loss and exports a predictor file the runtime loads, a killed run resumes to the uninterrupted
result, two DDP processes end identical, and bad configs are refused before anything loads."""

import json
import subprocess

import pytest
import torch
import yaml

from disca.formats import ARCH_HV10, META_STEP_LISTS, load_predictor_file, load_safetensors
from disca.hosts.diffusers import load_host, predictor_from_dit
from disca.sampling import distilled, sample_cached, sample_euler
from disca.schedules import flow_sigmas
from training.config import ConfigError, build_config
from training.data import load_embeddings
from training.export import export_predictor
from training.predictor_rollout import roll_out_states, train
from training.tiny import TINY_LATENT, write_tiny_run_files
from tests.test_training_distributed import REPO, environment, launch_command

STEPS = 6
ANCHORS = (0, 3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny DiT files and a predictor with open gates (not cache reuse), written as the predictor stage writes one."""
    folder = tmp_path_factory.mktemp("rollout")
    paths = write_tiny_run_files(str(folder), ARCH_HV10, prompts=5)
    host = load_host(paths["model"]).requires_grad_(False).eval()
    predictor = predictor_from_dit(host, depth=1)
    with torch.no_grad():
        for p in predictor.blocks.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    paths["predictor"] = export_predictor(str(folder / "start" / "predictor.safetensors"), predictor, host,
                                          dtype=torch.float32)
    return folder, paths


def raw_config(folder, paths, name, **overrides):
    raw = dict(stage="predictor_rollout", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / name),
               init_predictor=paths["predictor"], latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=STEPS, shift=5.0,
               schedules=[" ".join(map(str, ANCHORS))], held_out_prompts=1, max_steps=8, batch_size=2,
               learning_rate=1e-3, warmup_steps=0, eval_every=4, checkpoint_every=4, keep_checkpoints=10, log_every=50)
    raw.update(overrides)
    return raw


@pytest.fixture(scope="module")
def models(files):
    _, paths = files
    host = load_host(paths["model"]).requires_grad_(False).eval()
    predictor = load_predictor(paths["predictor"])
    cond = {k: v[:2] for k, v in load_embeddings(paths["prompts"], host.arch).items()}
    noise = torch.randn(2, host.transformer.config.in_channels, *TINY_LATENT[ARCH_HV10],
                        generator=torch.Generator().manual_seed(3))
    return host, predictor, cond, noise


def load_predictor(path):
    from disca.hosts.diffusers import DiffusersPredictor

    return DiffusersPredictor.from_file(load_predictor_file(path), path).eval()


def test_roll_out_is_the_samplers(models):
    host, predictor, cond, noise = models
    sigmas, g = flow_sigmas(STEPS, 5.0), torch.full((2,), 6.0)
    with torch.no_grad():
        cached = roll_out_states(host, predictor, noise, cond, sigmas, frozenset(ANCHORS), g)
        full = roll_out_states(host, predictor, noise, cond, sigmas, range(STEPS), g)
    expected = sample_cached(host, noise, sigmas, cond, ANCHORS, predictor=predictor, guidance=6.0)
    torch.testing.assert_close(cached[-1], expected, rtol=0, atol=0)
    torch.testing.assert_close(full[-1], sample_euler(distilled(host, cond, 6.0), noise, sigmas), rtol=0, atol=0)
    assert not torch.allclose(cached[-1], full[-1], atol=1e-5)  # the predicted steps change the sample


def test_gradient_reaches_predicted_steps_through_later_anchor_calls(models):
    """Steps 1 and 2 are predicted and every later step runs the DiT: the last state depends on the predictor only
    through the DiT calls at steps 3-5, so a gradient there means the stage differentiates through them."""
    host, predictor, cond, noise = models
    sigmas, g = flow_sigmas(STEPS, 5.0), torch.full((2,), 6.0)
    predictor.zero_grad()
    states = roll_out_states(host, predictor, noise, cond, sigmas, frozenset((0, 3, 4, 5)), g)
    states[-1].pow(2).mean().backward()
    assert all(p.grad is not None for p in predictor.parameters())
    assert sum(p.grad.abs().sum() for p in predictor.parameters()) > 0
    assert all(p.grad is None for p in host.parameters())  # the DiT stays frozen


def test_stage_lowers_the_held_out_loss_and_exports_a_loadable_predictor(files):
    folder, paths = files
    report = train(build_config(raw_config(folder, paths, "run")))
    held_out = report["held_out"]
    print(f"\nheld-out roll-out loss {held_out['rollout_loss_initial']:.6f} -> best {held_out['rollout_loss_best']:.6f} "
          f"(step {held_out['best_step']}), final {held_out['rollout_loss_final']:.6f}")
    assert held_out["rollout_loss_best"] < held_out["rollout_loss_initial"]
    assert held_out["rollout_loss_best"] == min(h["rollout_loss"] for h in report["held_out_evaluations"])
    assert [h["step"] for h in report["held_out_evaluations"]] == [0, 4, 8]
    assert len(report["loss_curve"]) == 8
    file = load_predictor_file(report["predictor_file"])
    assert json.loads(file.metadata[META_STEP_LISTS]) == [list(ANCHORS)] and file.trained_only_on_lists == (ANCHORS,)
    exported = load_predictor(report["predictor_file"])
    assert exported.trained_only_on_lists == (ANCHORS,)  # each run serving another list warns (test_runtime)
    start = load_predictor(paths["predictor"])
    assert any(not torch.equal(a, b) for a, b in zip(exported.state_dict().values(), start.state_dict().values()))


def test_killed_run_resumes_to_the_uninterrupted_result(files):
    folder, paths = files
    # a constant rate: the cut run's 4 steps are then the first 4 of the full run's (cosine depends on max_steps)
    same = dict(learning_rate=3e-4, lr_schedule="constant")
    full = train(build_config(raw_config(folder, paths, "full", **same)))
    train(build_config(raw_config(folder, paths, "cut", max_steps=4, **same)))
    resumed = train(build_config(raw_config(folder, paths, "cut", **same)), resume=True)
    assert resumed["held_out_evaluations"] == full["held_out_evaluations"]
    a, _ = load_safetensors(full["predictor_file"])
    b, _ = load_safetensors(resumed["predictor_file"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ddp_processes_end_identical(files):
    folder, paths = files
    raw = raw_config(folder, paths, "ddp", max_steps=4, eval_every=2)
    config_path = folder / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    subprocess.run(launch_command(config_path), check=True, env=environment(), cwd=str(REPO), timeout=300)
    report = json.loads((folder / "ddp" / "report.json").read_text())
    assert report["processes"] == 2
    assert report["rank_param_max_abs_diff"] == 0.0


@pytest.mark.parametrize("overrides, key", [
    (dict(init_predictor=""), "init_predictor"),
    (dict(init_predictor="missing.safetensors"), "init_predictor"),
    (dict(schedules=["0 1 2 3 4 5"]), "schedules"),
    (dict(stage="predictor_rollout", mse_steps=3), "mse_steps"),
])
def test_bad_configs_name_the_key(files, overrides, key):
    folder, paths = files
    with pytest.raises(ConfigError, match=key):
        build_config(raw_config(folder, paths, "bad", **overrides))
