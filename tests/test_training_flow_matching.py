"""Flow-matching stage on tiny 1.0 / 1.5 DiTs: the velocity error falls, dropped prompts use the negative rows."""

import pytest
import torch

from disca.formats import ARCH_HV10, ARCH_HV15, infer_dit_spec, load_safetensors
from training.config import build_config
from training.flow_matching import drop_prompts, train
from training.tiny import write_tiny_run_files


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_flow_matching_lowers_the_velocity_error_and_exports_a_plain_dit(arch, tmp_path):
    paths = write_tiny_run_files(str(tmp_path), arch, prompts=6, meanflow=False, guidance=False)
    config = build_config(dict(stage="flow_matching", model=paths["model"], prompts=paths["prompts"],
                               negative_prompt=paths["negative_prompt"], latents=paths["latents"],
                               output_dir=str(tmp_path / "run"), max_steps=40, batch_size=4, learning_rate=1e-3,
                               lr_schedule="cosine", log_every=10, checkpoint_every=40))
    report = train(config)
    print(f"\n{arch} flow matching eval MSE: {report['eval_mse_initial']:.4f} -> {report['eval_mse_final']:.4f}")
    assert report["eval_mse_final"] < 0.9 * report["eval_mse_initial"]
    spec = infer_dit_spec(load_safetensors(report["dit_file"])[0])
    assert spec.arch == arch and not spec.meanflow and not spec.guidance_distilled


def test_dropped_rows_take_the_negative_prompt():
    cond = {"prompt_embeds": torch.ones(3, 4, 2), "prompt_mask": torch.ones(3, 4, dtype=torch.int64)}
    negative = {"prompt_embeds": torch.zeros(1, 4, 2), "prompt_mask": torch.tensor([[1, 0, 0, 0]])}
    out = drop_prompts(cond, negative, torch.tensor([False, True, False]))
    assert out["prompt_embeds"][1].abs().sum() == 0 and out["prompt_embeds"][[0, 2]].min() == 1
    assert out["prompt_mask"][1].tolist() == [1, 0, 0, 0] and out["prompt_mask"][0].sum() == 4


def test_distilled_models_are_refused(tmp_path):
    paths = write_tiny_run_files(str(tmp_path), ARCH_HV10, prompts=2, meanflow=True, guidance=True)
    config = build_config(dict(stage="flow_matching", model=paths["model"], prompts=paths["prompts"],
                               negative_prompt=paths["negative_prompt"], latents=paths["latents"],
                               output_dir=str(tmp_path / "run"), max_steps=2))
    with pytest.raises(ValueError, match=r"is already distilled \(it has time_r_in\)"):
        train(config)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from training.loop import lr_at
    assert lr_at(0, 1.0, 10, "cosine", 110) == pytest.approx(0.1)
    assert lr_at(10, 1.0, 10, "cosine", 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, "cosine", 110) == pytest.approx(0.5)
    assert lr_at(109, 1.0, 10, "cosine", 110) < 1e-3
    assert lr_at(60, 1.0, 10, "constant", 110) == 1.0
