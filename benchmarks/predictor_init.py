"""Held-out curves of the predictor stage from the two fusion pass-through starts (training/README.md, "Predictor
initialisation"): `old` = slope 0.02 with one learning rate, `new` = the shipped slope with `fusion_param_groups`.

    OMP_NUM_THREADS=1 python -m benchmarks.predictor_init new tiny 1e-4 150    # the tiny HunyuanVideo-1.0 (CPU, ~1 min)
    OMP_NUM_THREADS=2 python -m benchmarks.predictor_init old mini 1e-4 120    # DisCa-mini v2's shipped DiT (~10 min)

Prints the held-out predicted-step MSE over cache reuse at each evaluation (every steps/6, the start first). `mini`
needs a DisCa-mini prompt cache at runs/mini_on_policy/prompts.safetensors (`python -m benchmarks.mini.on_policy`).
"""

import sys

import training.predictor as stage
from disca.formats import ARCH_HV10
from training.config import build_config
from training.tiny import TINY_LATENT, write_tiny_run_files


def main(variant: str, model: str, lr: float, steps: int) -> list[float]:
    if variant == "old":
        stage.FUSION_SLOPE = stage.TRAINING_SLOPE
        stage.fusion_param_groups = lambda predictor, slope: predictor.parameters()
    elif variant != "new":
        raise SystemExit(f"variant: old or new, got {variant!r}")
    if model == "tiny":
        paths = write_tiny_run_files("/tmp/predictor_init/tiny", ARCH_HV10)
        raw = dict(model=paths["model"], prompts=paths["prompts"], latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=8,
                   shift=5.0, held_out_prompts=2, batch_size=4)
    else:
        raw = dict(model="benchmarks/mini/weights/dit.safetensors", prompts="runs/mini_on_policy/prompts.safetensors",
                   latent_shape=[9, 16, 16], steps=20, shift=2.0, guidance=4.0, held_out_prompts=4, batch_size=8)
    raw.update(stage="predictor", output_dir=f"/tmp/predictor_init/{variant}_{model}_{lr}", schedules=["N2", "N3", "N4"],
               max_steps=steps, mse_steps=steps, learning_rate=lr, log_every=1000, checkpoint_every=100000,
               rollout_eval_prompts=0, eval_every=max(steps // 6, 1), warmup_steps=min(200, steps // 3))
    report = stage.train(build_config(raw))
    held_out = report["held_out"]
    ratios = [e["predictor_mse"] / held_out["cache_reuse_mse"] for e in report["held_out_evaluations"]]
    print(variant, model, "lr", lr, "cache reuse", round(held_out["cache_reuse_mse"], 6), "output reuse",
          round(held_out["output_reuse_mse"], 6), "held-out / cache reuse", [round(r, 4) for r in ratios], flush=True)
    return ratios


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
