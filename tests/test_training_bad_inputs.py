"""Bad inputs give the intended errors: config keys, empty prompts, mismatched base/predictor, R, NaN loss."""

import os

import pytest
import torch
import yaml

from disca.formats import ARCH_HV10, ARCH_HV15, DisCaFormatError, save_safetensors
from training.config import ConfigError, build_config, load_config
from training.data import DataError, load_embeddings, read_prompts, save_embeddings
from training.loop import TrainingDiverged
from training.predictor import train
from training.tiny import TINY_LATENT, tiny_conditioning, tiny_host, write_tiny_run_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    return folder, write_tiny_run_files(str(folder), ARCH_HV10, prompts=4)


def raw_predictor(folder, paths, **overrides):
    raw = dict(stage="predictor", model=paths["model"], prompts=paths["prompts"], output_dir=str(folder / "run"),
               latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=8, schedules=["N2"], max_steps=4, mse_steps=2,
               batch_size=2, checkpoint_every=2, log_every=1)
    raw.update(overrides)
    return raw


def raw_meanflow(folder, paths, **overrides):
    raw = dict(stage="meanflow", model=paths["model"], prompts=paths["prompts"], latents=paths["latents"],
               output_dir=str(folder / "mf"))
    raw.update(overrides)
    return raw


def test_missing_required_key(files):
    folder, paths = files
    raw = raw_predictor(folder, paths)
    del raw["model"]
    with pytest.raises(ConfigError, match=r"missing required config key\(s\) \['model'\] for stage predictor"):
        build_config(raw)


def test_unknown_key_lists_the_valid_ones(files):
    folder, paths = files
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learnig_rate'\].*valid keys: .*'learning_rate'"):
        build_config(raw_predictor(folder, paths, learnig_rate=1e-4))


@pytest.mark.parametrize("key, value, message", [
    ("max_steps", "ten", r"config key 'max_steps': cannot read 'ten' as int"),
    ("latent_shape", [2, 8], r"config key 'latent_shape': must be three positive ints"),
    ("schedules", ["0 1 1 3"], r"config key 'schedules': entry '0 1 1 3' is neither a preset .* strictly increasing"),
    ("schedules", ["0 1 2 3 4 5 6 7"], r"makes every one of the 8 steps an anchor"),
    ("gradient_checkpointing", "maybe", r"config key 'gradient_checkpointing': cannot read 'maybe' as bool"),
    ("stage", "distill", r"config key 'stage' must be one of"),
    ("disc_input", "x0", r"config key 'disc_input': must be one of \('clean_estimate', 'next_sample'\), got 'x0'"),
])
def test_malformed_values_name_the_key(files, key, value, message):
    folder, paths = files
    with pytest.raises(ConfigError, match=message):
        build_config(raw_predictor(folder, paths, **{key: value}))


def test_model_path_must_exist(files):
    folder, paths = files
    with pytest.raises(ConfigError, match=r"config key 'model': /nonexistent/dit.safetensors does not exist"):
        build_config(raw_predictor(folder, paths, model="/nonexistent/dit.safetensors"))


@pytest.mark.parametrize("R", [0.0, -0.1, 1.5])
def test_R_outside_zero_one(files, R):
    folder, paths = files
    with pytest.raises(ConfigError, match=r"config key 'R': must be in \(0, 1\]"):
        build_config(raw_meanflow(folder, paths, R=R))


def test_R_flag_overrides_yaml(files, tmp_path):
    folder, paths = files
    path = tmp_path / "mf.yaml"
    path.write_text(yaml.safe_dump(raw_meanflow(folder, paths, R=0.2)))
    assert load_config(str(path), ["--R", "0.35", "--derivative=jvp"]).R == 0.35
    with pytest.raises(ConfigError, match=r"config key 'R'"):
        load_config(str(path), ["--R", "0"])
    with pytest.raises(ConfigError, match=r"flag --R needs a value"):
        load_config(str(path), ["--R"])


def test_empty_prompts_text_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n# only a comment\n\n")
    with pytest.raises(DataError, match=r"prompts.txt holds no prompts; write one prompt per line"):
        read_prompts(str(path))


def test_empty_prompt_cache(tmp_path):
    cond = {k: v[:0] for k, v in tiny_conditioning(ARCH_HV10, 2, 0).items()}
    path = str(tmp_path / "empty.safetensors")
    save_embeddings(path, ARCH_HV10, cond)
    with pytest.raises(DataError, match=r"the prompt cache is empty \(0 prompts\)"):
        load_embeddings(path, ARCH_HV10)


def test_prompt_cache_of_the_other_version(tmp_path):
    path = str(tmp_path / "hv15.safetensors")
    save_embeddings(path, ARCH_HV15, tiny_conditioning(ARCH_HV15, 2, 0))
    with pytest.raises(DataError, match=r"encoded for hunyuan_video_1_5 but the model is hunyuan_video"):
        load_embeddings(path, ARCH_HV10)


def _export_predictor_of(host, path):
    from disca.hosts.diffusers import predictor_from_dit
    from training.export import export_predictor

    return export_predictor(path, predictor_from_dit(host), host)


def test_predictor_for_another_base_is_refused(files, tmp_path):
    folder, paths = files
    other = _export_predictor_of(tiny_host(ARCH_HV10, seed=99), str(tmp_path / "other_base.safetensors"))
    with pytest.raises(ValueError, match=r"config key 'init_predictor': .*trained for another base model \(fingerprint"):
        train(build_config(raw_predictor(folder, paths, init_predictor=other, output_dir=str(tmp_path / "r1"))))


def test_predictor_of_the_other_version_is_refused(files, tmp_path):
    folder, paths = files
    other = _export_predictor_of(tiny_host(ARCH_HV15, seed=1), str(tmp_path / "hv15.safetensors"))
    with pytest.raises(DisCaFormatError, match=r"a double-stream predictor for hunyuan_video_1_5 cannot run on a hunyuan_video model"):
        train(build_config(raw_predictor(folder, paths, init_predictor=other, output_dir=str(tmp_path / "r2"))))


def test_nan_loss_stops_with_checkpoint_and_no_output_file(files, tmp_path):
    folder, paths = files
    config = build_config(raw_predictor(folder, paths, learning_rate=1e30, grad_clip=0.0, max_steps=6,
                                        output_dir=str(tmp_path / "nan")))
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite at step \d+ .*Checkpoint saved to .*step_\d+.*"
                                               r"Lower learning_rate"):
        train(config)
    checkpoints = os.listdir(os.path.join(config.output_dir, "checkpoints"))
    assert any(name.startswith("step_") for name in checkpoints)
    assert not os.path.exists(os.path.join(config.output_dir, "predictor.safetensors"))
    assert not os.path.exists(os.path.join(config.output_dir, "report.json"))


def test_resume_without_checkpoint_says_so(files, tmp_path):
    folder, paths = files
    config = build_config(raw_predictor(folder, paths, output_dir=str(tmp_path / "fresh")))
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint under"):
        train(config, resume=True)


def test_diffusers_folder_with_wrong_class(tmp_path):
    from disca.hosts.diffusers import load_host

    (tmp_path / "config.json").write_text('{"_class_name": "FluxTransformer2DModel"}')
    with pytest.raises(DisCaFormatError, match=r"config.json is for 'FluxTransformer2DModel'"):
        load_host(str(tmp_path))


def test_pickle_checkpoint_is_refused(tmp_path):
    from disca.hosts.diffusers import load_host

    path = tmp_path / "dit.pt"
    torch.save({"a": torch.ones(1)}, path)
    with pytest.raises(DisCaFormatError, match=r"give a diffusers model folder or a Tencent-layout .safetensors file"):
        load_host(str(path))
    bad = tmp_path / "dit.safetensors"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(DisCaFormatError, match=r"not a safetensors file"):
        load_host(str(bad))
    save_safetensors(str(tmp_path / "x.safetensors"), {"foo.weight": torch.ones(1)}, {})
    with pytest.raises(DisCaFormatError, match=r"not a HunyuanVideo DiT"):
        load_host(str(tmp_path / "x.safetensors"))


@pytest.mark.parametrize("name", ["predictor", "meanflow", "cfg_distill", "tiny_predictor"])
def test_shipped_stage_configs_are_valid(files, name):
    """Every shipped YAML builds its stage config once its paths point at real files (every other key is checked)."""
    from pathlib import Path

    folder, paths = files
    raw = yaml.safe_load((Path(__file__).parents[1] / "training" / "configs" / f"{name}.yaml").read_text())
    raw.update({k: v for k, v in paths.items() if k in raw}, output_dir=str(folder / name))
    config = build_config(raw)
    assert config.stage == raw["stage"]
