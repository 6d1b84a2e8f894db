"""--resume refuses a config that changes what defines the run (issue 14, fix 5); an unchanged one still resumes."""

import json
import shutil

import pytest
import yaml

from disca.formats import ARCH_HV10
from training.config import ConfigError
from training.tiny import TINY_LATENT, write_tiny_run_files
from training.train import main


def predictor_run(folder, steps):
    """A tiny predictor run's files and config (checkpoint at its last step) in `folder` -> (config path, files)."""
    paths = write_tiny_run_files(str(folder / "files"), ARCH_HV10, prompts=3)
    raw = dict(stage="predictor", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / "run"),
               latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=8, schedules=["N2"], max_steps=steps, mse_steps=steps,
               batch_size=2, checkpoint_every=steps, log_every=1, held_out_prompts=1)
    config = folder / "predictor.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny predictor run stopped at its step-2 checkpoint; returns (config path, run folder, the files)."""
    folder = tmp_path_factory.mktemp("resume_check")
    config, paths = predictor_run(folder, steps=2)
    main(["--config", str(config)])
    return config, folder / "run", paths


def test_checkpoint_records_the_run(run):
    _, run_dir, paths = run
    state = json.loads((run_dir / "checkpoints" / "step_2" / "train_state.json").read_text())
    assert state["step"] == 2
    record = state["run"]
    assert record["latent_shape"] == list(TINY_LATENT[ARCH_HV10]) and record["schedules"] == ["N2"]
    assert record["model"]["arch"] == ARCH_HV10 and record["model"]["hidden_size"] == 128
    assert len(record["model"]["fingerprint"]) == 16 and len(record["prompts"]["fingerprint"]) == 16


@pytest.mark.parametrize("flags, message", [
    (["--latent_shape", "2,4,4"], r"config key 'latent_shape' was \[2, 8, 8\] in the run, is \[2, 4, 4\] now"),
    (["--depth", "1"], r"config key 'depth' was 2 in the run, is 1 now"),
    (["--schedules", "N2;N3"], r"config key 'schedules' was \['N2'\] in the run, is \['N2', 'N3'\] now"),
    (["--base_dtype", "bfloat16"], r"config key 'base_dtype' was 'float32' in the run, is 'bfloat16' now"),
])
def test_resume_with_a_changed_key_is_refused(run, flags, message):
    config, run_dir, _ = run
    with pytest.raises(ConfigError, match=r"--resume: the checkpoint .*step_2 belongs to another run: " + message):
        main(["--config", str(config), "--resume", "--max_steps", "3", *flags])
    assert not (run_dir / "checkpoints" / "step_3").exists()


def test_resume_on_another_model_is_refused(run, tmp_path):
    """Same path, other weights: the base fingerprint differs; a model of another width names its hidden size."""
    config, _, paths = run
    original = tmp_path / "original.safetensors"
    shutil.copy(paths["model"], original)
    try:
        write_tiny_run_files(str(tmp_path / "other"), ARCH_HV10, prompts=3, seed=5)
        shutil.copy(tmp_path / "other" / "tiny_dit.safetensors", paths["model"])
        with pytest.raises(ConfigError, match=r"config key 'model' \(.*tiny_dit.safetensors\): fingerprint was '\w+' in "
                                              r"the run, is '\w+' now"):
            main(["--config", str(config), "--resume", "--max_steps", "3"])
    finally:
        shutil.copy(original, paths["model"])


def test_unchanged_run_resumes_from_a_moved_prompt_file_with_more_steps(run, tmp_path):
    """max_steps may grow and files may move (compared by content): the run continues from step 2 to step 3."""
    config, run_dir, paths = run
    moved = tmp_path / "moved_prompts.safetensors"
    shutil.copy(paths["prompts"], moved)
    report = main(["--config", str(config), "--resume", "--max_steps", "3", "--prompts", str(moved)])
    assert report["steps"] == 3 and report["last_losses"][-1]["step"] == 3
    assert (run_dir / "checkpoints" / "step_3").is_dir()


def test_a_checkpoint_with_other_optimizer_groups_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """A predictor checkpoint of the trainer before the fusion layers got their own learning rates (one group)."""
    import training.predictor as stage

    config, _ = predictor_run(tmp_path, steps=1)
    with monkeypatch.context() as patch:
        patch.setattr(stage, "fusion_param_groups", lambda predictor, slope: predictor.parameters())
        main(["--config", str(config)])
    with pytest.raises(ValueError, match=r"other parameter groups than this trainer builds.*init_predictor"):
        main(["--config", str(config), "--resume", "--max_steps", "2"])
