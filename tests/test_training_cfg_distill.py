"""CFG distillation on tiny 1.0 / 1.5 DiTs: the guidance-embedded student approaches T(neg) + w (T(c) - T(neg))."""

import pytest

from disca.formats import ARCH_HV10, ARCH_HV15, infer_dit_spec, load_safetensors
from training.config import build_config
from training.cfg_distill import train
from training.tiny import write_tiny_run_files


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_cfg_distillation_lowers_the_error_and_exports_guidance_in(arch, tmp_path):
    paths = write_tiny_run_files(str(tmp_path), arch, prompts=6, meanflow=False, guidance=False)
    config = build_config(dict(stage="cfg_distill", model=paths["model"], prompts=paths["prompts"],
                               negative_prompt=paths["negative_prompt"], latents=paths["latents"],
                               output_dir=str(tmp_path / "run"), max_steps=40, batch_size=4, learning_rate=3e-4,
                               log_every=10, checkpoint_every=40))
    report = train(config)
    print(f"\n{arch} CFG distillation eval MSE to guided teacher: {report['eval_mse_initial']:.4f} -> "
          f"{report['eval_mse_final']:.4f}")
    assert report["eval_mse_final"] < 0.8 * report["eval_mse_initial"]
    spec = infer_dit_spec(load_safetensors(report["dit_file"])[0])
    assert spec.guidance_distilled and spec.arch == arch


def test_already_guidance_distilled_base_is_refused(tmp_path):
    paths = write_tiny_run_files(str(tmp_path), ARCH_HV10, prompts=2, meanflow=False, guidance=True)
    config = build_config(dict(stage="cfg_distill", model=paths["model"], prompts=paths["prompts"],
                               negative_prompt=paths["negative_prompt"], latents=paths["latents"],
                               output_dir=str(tmp_path / "run"), max_steps=2))
    with pytest.raises(ValueError, match=r"is already guidance-distilled \(it has guidance_in\)"):
        train(config)
