"""`python -m training.scale_check --tiny`: the script issue 7's GPU runs use, end to end on the CPU with tiny models.

It launches training/train.py through `accelerate launch` with the shipped DDP and FSDP2 configs (on the CPU,
accelerate runs them as plain single processes; the sharding itself is tests/test_training_fsdp2.py's), and a
MeanFlow run stopped at a checkpoint and resumed must end where the uninterrupted run ends.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import json

    out = tmp_path_factory.mktemp("scale_check")
    subprocess.run([sys.executable, "-m", "training.scale_check", "--out", str(out), "--tiny", "--predictor_steps", "4",
                    "--meanflow_steps", "3", "--meanflow_checkpoint", "2"], check=True, cwd=str(REPO), timeout=600,
                   stdout=subprocess.DEVNULL)
    return out, json.loads((out / "scale_check.json").read_text())


def test_predictor_stage_runs_through_the_ddp_config(results):
    _, summary = results
    report = summary["predictor"]["report"]
    assert summary["failed_launches"] == []
    assert "accelerate_ddp.yaml" in summary["predictor"]["launch"]["command"]
    assert report["steps"] == 4 and report["rank_param_max_abs_diff"] == 0.0
    assert "adv" in report["last_losses"][-1]  # the last steps are GAN steps
    assert report["step_seconds_median"] > 0


def test_stopped_and_resumed_meanflow_run_ends_where_the_uninterrupted_one_ends(results):
    out, summary = results
    meanflow = summary["meanflow"]
    assert all("accelerate_fsdp2.yaml" in run["command"] for run in meanflow["launches"].values())
    assert "--resume" in meanflow["launches"]["resumed"]["command"]
    assert meanflow["resumed_vs_uninterrupted_max_abs_diff"] == 0.0
    resumed_steps = [h["step"] for h in meanflow["resumed"]["first_losses"]]
    assert resumed_steps == [3]  # continued after the step-2 checkpoint, no step lost or repeated
    by_step = {h["step"]: h["loss"] for h in meanflow["uninterrupted"]["last_losses"]}
    assert meanflow["resumed"]["last_losses"][-1]["loss"] == by_step[3]
    # the step counter is JSON, not a pickle loaded with weights_only=False
    files = meanflow["sharded_checkpoint"]["files"]
    assert "train_state.json" in files and not any(name.startswith("custom_checkpoint") for name in files)
    assert (out / "meanflow_b" / "meanflow_dit.safetensors").is_file()


def test_meanflow_part_refuses_a_run_the_disk_cannot_hold(tmp_path):
    import shutil

    from training.scale_check import check_disk_for_meanflow, parameter_count

    assert parameter_count({}) == 12_821_012_544  # diffusers' defaults are HunyuanVideo-1.0: 20 + 40 blocks
    too_many = shutil.disk_usage(tmp_path).free // 32 + 1
    with pytest.raises(SystemExit, match="--meanflow_layers: .* GB are free"):
        check_disk_for_meanflow(tmp_path, too_many)
    check_disk_for_meanflow(tmp_path, 1000)
