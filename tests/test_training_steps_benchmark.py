"""`python -m benchmarks.training_steps --tiny`: the GPU step benchmark runs the predictor stage's own training step."""

import torch

from benchmarks import training_steps
from training import predictor as predictor_stage


def test_the_benchmark_times_the_stages_own_mse_and_gan_steps(monkeypatch):
    calls = []
    step_losses = predictor_stage.step_losses

    def recording(*args, **kwargs):
        losses = step_losses(*args, **kwargs)
        calls.append((kwargs["gan"], {k: float(v) for k, v in losses.items()}))
        return losses

    monkeypatch.setattr(training_steps, "step_losses", recording)
    result = training_steps.main(["--tiny", "--repeats", "1"])
    assert [gan for gan, _ in calls] == [False, False, True, True]  # warm-up + 1 repeat of each
    assert set(calls[0][1]) == {"mse"} and set(calls[-1][1]) == {"mse", "adv", "disc"}
    assert all(torch.isfinite(torch.tensor(list(losses.values()))).all() for _, losses in calls)
    for name in ("trajectory_step", "mse_step", "gan_step"):
        assert result[name]["seconds"] > 0
