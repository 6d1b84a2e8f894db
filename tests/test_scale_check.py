"""`python -m benchmarks.scale_check --tiny`: the script the GPU runs of issues 7 and 15 use, end to end on the CPU with
tiny models.

It launches training/train.py through `accelerate launch` with the shipped DDP and FSDP2 configs (on the CPU,
accelerate runs them as plain single processes; the sharding itself is tests/test_training_fsdp2.py's), a MeanFlow
run stopped at a checkpoint and resumed must end where the uninterrupted run ends, and the same command run again
(a new call of a time-limited machine) must skip every launch that has its result.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three calls on one folder: everything; the same command again; again after the resumed run's record is lost."""
    out = tmp_path_factory.mktemp("scale_check")

    def call() -> dict[str, dict]:
        subprocess.run([sys.executable, "-m", "benchmarks.scale_check", "--out", str(out), "--tiny", "--parts", "all",
                        "--predictor_steps", "4", "--meanflow_steps", "3", "--meanflow_checkpoint", "2"], check=True,
                       cwd=str(REPO), timeout=600, stdout=subprocess.DEVNULL)
        return {p.stem: json.loads(p.read_text()) for p in (out / "launches").glob("*.json")}

    first = call()
    summary = json.loads((out / "scale_check.json").read_text())
    second = call()
    (out / "launches" / "meanflow_resumed.json").unlink()
    third = call()
    return out, summary, first, second, third


def test_predictor_stage_runs_through_the_ddp_config(runs):
    _, summary, *_ = runs
    report = summary["predictor"]["report"]
    assert summary["failed_launches"] == []
    assert "accelerate_ddp.yaml" in summary["predictor"]["launch"]["command"]
    assert report["steps"] == 4 and report["rank_param_max_abs_diff"] == 0.0
    assert "adv" in report["last_losses"][-1]  # the last steps are GAN steps
    assert report["step_seconds_median"] > 0
    # held-out evaluations every predictor_steps // 10 steps (here every step), the exported weights the best of them
    evaluations, held_out = report["held_out_evaluations"], report["held_out"]
    assert [e["step"] for e in evaluations] == [0, 1, 2, 3, 4]
    assert held_out["predictor_mse_best"] == min(e["predictor_mse"] for e in evaluations)
    assert held_out["cache_reuse_mse"] > 0 and report["rollouts"]["exported"]


def test_stopped_and_resumed_meanflow_run_ends_where_the_uninterrupted_one_ends(runs):
    _, summary, *_ = runs
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


def test_only_the_stopped_run_writes_a_checkpoint_and_the_full_depth_run_writes_none(runs):
    out, summary, first, *_ = runs
    assert "training/train.py" in first["meanflow_stopped"]["command"]
    for name in ("meanflow_uninterrupted", "meanflow_resumed", "meanflow_repeat", "meanflow_full_depth"):
        assert "benchmarks/scale_check.py train" in first[name]["command"]
    assert not (out / "meanflow_a" / "checkpoints").exists() and not (out / "meanflow_full" / "checkpoints").exists()
    full = summary["meanflow_full_depth"]
    assert full["ran"] == "meanflow_full_depth" and full["attempts"]["meanflow_full_depth"]["report"]["steps"] == 3
    assert full["attempts"]["meanflow_full_depth"]["command"].endswith("--no_export")
    assert full["attempts"]["meanflow_full_depth"]["model"]["blocks"] == [1, 2]  # the tiny "full" DiT
    # the models, the checkpoint and the full-depth export are removed once no part needs them
    assert not any(out.glob("dit_*.safetensors")) and not (out / "meanflow_b" / "checkpoints").exists()
    assert not (out / "meanflow_full" / "meanflow_dit.safetensors").exists()


def test_the_same_command_again_skips_every_finished_launch(runs):
    _, _, first, second, third = runs
    assert second == first  # no launch ran again: every record, start time included, is unchanged
    # the resumed run's record lost: it runs again, and so does the stopped run whose checkpoint it starts from
    # (removed once the comparison was done); nothing else
    assert set(third) == set(first)
    rerun = {name for name, record in first.items() if record.get("started_at") != third[name].get("started_at")}
    assert rerun == {"meanflow_stopped", "meanflow_resumed"}
    assert third["meanflow_resumed"]["returncode"] == 0
    def losses(record):
        return [(h["step"], h["loss"]) for h in record["report"]["last_losses"]]

    assert losses(third["meanflow_resumed"]) == losses(first["meanflow_resumed"])


def test_an_out_of_memory_point_is_read_from_the_log():
    from benchmarks.scale_check import out_of_memory

    log = "\n".join([
        "meanflow:  25%|##5       | 1/4",
        "[rank1]: Traceback (most recent call last):",
        f'[rank1]:   File "{REPO}/training/loop.py", line 292, in run_single_model_stage',
        "[rank1]:     optimizer.step()",
        '[rank1]:   File "/opt/venv/lib/python3.12/site-packages/torch/optim/adam.py", line 612, in _multi_tensor_adam',
        "[rank1]:     exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)",
        "[rank0]: Traceback (most recent call last):",
        "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 576.00 MiB. GPU 1 has a total capacity "
        "of 139.81 GiB of which 301.06 MiB is free. Including non-PyTorch memory, this process has 139.50 GiB memory in "
        "use. Of the allocated memory 136.10 GiB is allocated by PyTorch, and 1.25 GiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF",
    ])
    oom = out_of_memory(log)
    assert oom["gpu"] == 1 and oom["tried_to_allocate_gib"] == 0.562 and oom["gpu_total_gib"] == 139.81
    assert oom["gpu_free_gib"] == 0.294 and oom["process_in_use_gib"] == 139.5
    assert oom["allocated_by_pytorch_gib"] == 136.1 and oom["reserved_unallocated_gib"] == 1.25
    assert oom["repo_frames"] == ["training/loop.py:292 in run_single_model_stage: optimizer.step()"]
    assert oom["innermost_frame"].endswith("_multi_tensor_adam: exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)")
    assert out_of_memory("RuntimeError: something else") is None


def test_a_run_the_disk_cannot_hold_is_refused_up_front(tmp_path):
    import shutil

    from benchmarks.scale_check import check_disk, parameter_count

    assert parameter_count({}) == 12_821_012_544  # diffusers' defaults are HunyuanVideo-1.0: 20 + 40 blocks
    with pytest.raises(SystemExit, match="meanflow_stopped: needs .* GB are free"):
        check_disk(tmp_path, shutil.disk_usage(tmp_path).free + 10**9, "meanflow_stopped")
    check_disk(tmp_path, 1000, "meanflow_stopped")
