"""Restricted MeanFlow: target vs a closed-form Gaussian flow, (t, r) sampling, the stage on tiny DiTs, calibration."""

import math

import pytest
import torch

from disca.formats import ARCH_HV10, ARCH_HV15, infer_dit_spec, load_safetensors
from training.config import build_config
from training.meanflow import calibrate, meanflow_target, sample_t_r, train
from training.tiny import tiny_conditioning, tiny_host, write_tiny_run_files

S2 = 0.25  # data variance s^2 of the Gaussian toy: x0 ~ N(0, s^2 I), eps ~ N(0, I)


def sigma_t(t):
    return torch.sqrt((1 - t) ** 2 * S2 + t ** 2)


def marginal_velocity(x, t):
    """v(x, t) = E[eps - x0 | x_t = x] = x (t - (1 - t) s^2) / sigma_t^2 (distillation.md §9a)."""
    return x * ((t - (1 - t) * S2) / sigma_t(t) ** 2).view(-1, 1)


def average_velocity(x, t, r):
    """u(x, t, r) = (x_t - x_r) / (t - r) along the flow map x_r = x_t sigma_r / sigma_t."""
    return x * ((1 - sigma_t(r) / sigma_t(t)) / (t - r)).view(-1, 1)


@pytest.fixture
def gaussian_batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=generator, dtype=torch.float64)
    t = torch.rand(64, generator=generator, dtype=torch.float64) * 0.8 + 0.2
    r = t - torch.rand(64, generator=generator, dtype=torch.float64) * 0.2 * t
    return x, t, r, marginal_velocity(x, t)


def test_jvp_target_equals_analytic_average_velocity(gaussian_batch):
    x, t, r, v = gaussian_batch
    target, _ = meanflow_target(average_velocity, x, t, r, v, "jvp")
    torch.testing.assert_close(target, average_velocity(x, t, r), rtol=1e-9, atol=1e-10)


def test_finite_difference_target_equals_analytic_average_velocity(gaussian_batch):
    x, t, r, v = gaussian_batch
    target, _ = meanflow_target(average_velocity, x, t, r, v, "finite_difference", epsilon=1e-3)
    error = (target - average_velocity(x, t, r)).norm() / average_velocity(x, t, r).norm()
    print(f"\nFD (fp32 forwards, eps 1e-3) relative error vs analytic u: {error:.2e}")
    assert error < 1e-3  # fp32 forwards: round-off ~6e-8 |u| / (2 eps) dominates the O(eps^2) truncation


def test_wrong_tangent_would_be_caught(gaussian_batch):
    """The analytic check has teeth: a target built without the du/dt term misses u by far more than the tolerance."""
    x, t, r, v = gaussian_batch
    assert (v - average_velocity(x, t, r)).norm() / average_velocity(x, t, r).norm() > 1e-2


@pytest.mark.parametrize("method", ["jvp", "finite_difference"])
def test_R_zero_reduces_to_flow_matching(method):
    """With R = 0 every sampled r equals t, and the target is the teacher velocity itself, bit for bit."""
    t, r = sample_t_r(torch.Generator().manual_seed(1), 256, R=0.0, boundary_fraction=0.0, shift=5.0)
    assert torch.equal(t, r)
    host = tiny_host(ARCH_HV10, seed=1)
    host.add_time_r_embedder()
    cond = tiny_conditioning(ARCH_HV10, 2, 3)
    x = torch.randn(2, 16, 2, 8, 8)
    v = torch.randn_like(x)
    guidance = torch.full((2,), 6.0)
    target, _ = meanflow_target(lambda x_, t_, r_: host(x_, t_, cond, r_, guidance), x, t[:2], r[:2], v, method)
    assert torch.equal(target, v)


def test_intervals_beyond_R_are_never_sampled():
    R = 0.2
    t, r = sample_t_r(torch.Generator().manual_seed(2), 200_000, R=R, boundary_fraction=0.25, shift=5.0)
    interval = (t - r).double()
    assert interval.min() >= 0 and (r >= 0).all() and (t <= 1).all()
    assert interval.max() <= R + 1e-6
    assert interval.max() > 0.99 * R  # the whole [0, R] is covered, not a point mass
    assert abs((interval == 0).double().mean().item() - 0.25) < 0.01
    assert (interval <= t.double() + 1e-6).all()  # r never goes below 0 for small t
    median = t.median().item()
    assert abs(median - 5 * 0.5 / (1 + 4 * 0.5)) < 0.01  # t = shift(s), s ~ U(0, 1): median shift(0.5) = 0.833


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meanflow")
    return folder, write_tiny_run_files(str(folder), ARCH_HV10, meanflow=False)


def meanflow_config(folder, paths, **overrides):
    raw = dict(stage="meanflow", model=paths["model"], prompts=paths["prompts"], latents=paths["latents"],
               output_dir=str(folder / "run"), max_steps=60, batch_size=4, learning_rate=1e-3, log_every=10,
               checkpoint_every=30, derivative="finite_difference", fd_epsilon=1e-3)
    raw.update(overrides)
    return build_config(raw)


def test_meanflow_stage_lowers_the_objective_and_exports_a_meanflow_dit(teacher_files):
    folder, paths = teacher_files
    report = train(meanflow_config(folder, paths))
    print(f"\nR-MeanFlow (FD) eval MSE to target: {report['eval_mse_initial']:.4f} -> {report['eval_mse_final']:.4f}")
    assert report["eval_mse_final"] < 0.95 * report["eval_mse_initial"]
    assert all(math.isfinite(h["loss"]) for h in report["last_losses"])
    exported, metadata = load_safetensors(report["dit_file"])
    spec = infer_dit_spec(exported)
    assert spec.meanflow and spec.guidance_distilled and metadata["disca.R"] == "0.2"


def test_meanflow_stage_with_exact_jvp_on_hv15(tmp_path):
    paths = write_tiny_run_files(str(tmp_path), ARCH_HV15, prompts=4, meanflow=False)
    report = train(meanflow_config(tmp_path, paths, derivative="jvp", max_steps=40, learning_rate=3e-4))
    print(f"\nR-MeanFlow 1.5 (JVP) eval MSE: {report['eval_mse_initial']:.4f} -> {report['eval_mse_final']:.4f}")
    assert report["eval_mse_final"] < report["eval_mse_initial"]
    assert infer_dit_spec(load_safetensors(report["dit_file"])[0]).meanflow


def test_calibration_compares_fd_with_jvp(teacher_files):
    folder, paths = teacher_files
    result = calibrate(meanflow_config(folder, paths, batch_size=2, output_dir=str(folder / "calibration")))
    errors = result["relative_error_by_epsilon"]
    print(f"\nFD vs JVP relative error by epsilon: {errors}; |du/dt|/|u| = {result['dudt_over_u']:.1f}")
    assert errors["0.0001"] < 1e-2 < errors["0.01"]
    assert result["best_epsilon"] <= 3e-4


def _initial_objective(folder, paths, mixed_precision: str) -> float:
    """The stage's step-0 held-out objective, in a fresh process (accelerate's state is per process)."""
    import json
    import os
    import subprocess
    import sys

    raw = dict(stage="meanflow", model=paths["model"], prompts=paths["prompts"], latents=paths["latents"],
               output_dir=str(folder / f"run_{mixed_precision}"), max_steps=1, batch_size=2, fd_epsilon=1e-4)
    code = ("import json, sys; from training.config import build_config; from training.meanflow import train; "
            "r = train(build_config(json.loads(sys.argv[1]))); print('OBJECTIVE', r['eval_mse_initial'])")
    env = dict(os.environ, ACCELERATE_MIXED_PRECISION=mixed_precision)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(raw)], env=env, check=True, capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    return float(out.split("OBJECTIVE")[-1])


def test_finite_differences_stay_fp32_under_bf16_training(teacher_files):
    """accelerate's prepare() wraps the student's forward in bf16 autocast; the FD forwards must not inherit it.
    They did once: bf16 rounding / (2 eps) made du/dt ~20x too large on DisCa-mini and the objective rose."""
    folder, paths = teacher_files
    fp32, bf16 = _initial_objective(folder, paths, "no"), _initial_objective(folder, paths, "bf16")
    print(f"\nstep-0 MeanFlow objective (fd_epsilon 1e-4): fp32 {fp32:.4g}, bf16 training {bf16:.4g}")
    assert abs(bf16 - fp32) < 0.25 * fp32  # bf16 only in the student's own forward, not in its du/dt
