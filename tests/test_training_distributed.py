"""accelerate with 2 CPU processes (gloo): DDP predictor stage, identical replicas, kill-and-resume == uninterrupted.

accelerate 1.15's `--cpu --num_processes 2` starts a single process unless mpirun is installed, so the test launches
through torchrun (`--multi_gpu`) with ACCELERATE_USE_CPU=1, which gives accelerate's MULTI_CPU mode over gloo; the
test checks that two processes really ran.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from disca.formats import ARCH_HV10, load_safetensors
from training.tiny import TINY_LATENT, write_tiny_run_files

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 12


def launch_command(config_path, *extra):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "--main_process_port", "0", str(REPO / "training" / "train.py"),
            "--config", str(config_path), *extra]


def environment():
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    paths = write_tiny_run_files(str(folder), ARCH_HV10, prompts=6)

    def write_config(name):
        raw = dict(stage="predictor", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / name),
                   latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=8, schedules=["N2", "N4"], held_out_prompts=1,
                   max_steps=MAX_STEPS, mse_steps=8, batch_size=2, learning_rate=3e-5, disc_learning_rate=1e-2,
                   adv_weight=0.1, checkpoint_every=2, keep_checkpoints=20, log_every=1)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path, Path(raw["output_dir"])

    full_config, full_dir = write_config("uninterrupted")
    subprocess.run(launch_command(full_config), check=True, env=environment(), cwd=str(REPO), timeout=300)
    return folder, write_config, full_dir


def test_two_processes_end_with_identical_weights(setup):
    _, _, full_dir = setup
    report = json.loads((full_dir / "report.json").read_text())
    assert report["processes"] == 2
    assert report["steps"] == MAX_STEPS
    assert report["rank_param_max_abs_diff"] == 0.0


def test_killed_run_resumes_to_the_uninterrupted_parameters(setup):
    _, write_config, full_dir = setup
    config, run_dir = write_config("killed")
    process = subprocess.Popen(launch_command(config), env=environment(), cwd=str(REPO), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run_dir / "checkpoints" / "step_4"
    deadline = time.time() + 240
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    process.wait()
    assert target.exists(), "the run ended before a checkpoint appeared"
    assert not (run_dir / "report.json").exists(), "the run finished before it was killed; nothing was tested"
    subprocess.run(launch_command(config, "--resume"), check=True, env=environment(), cwd=str(REPO), timeout=300)
    resumed = json.loads((run_dir / "report.json").read_text())
    assert resumed["processes"] == 2 and resumed["steps"] == MAX_STEPS
    for name in ("model.safetensors", "model_1.safetensors"):  # predictor, discriminator heads
        a, _ = load_safetensors(str(full_dir / "checkpoints" / f"step_{MAX_STEPS}" / name))
        b, _ = load_safetensors(str(run_dir / "checkpoints" / f"step_{MAX_STEPS}" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, _ = load_safetensors(str(full_dir / "predictor.safetensors"))
    b, _ = load_safetensors(str(run_dir / "predictor.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
