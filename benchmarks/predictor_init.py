"""Held-out curves of the predictor stage from the two fusion pass-through starts (training/README.md, "Predictor
initialisation"): `old` = slope 0.02 with one learning rate, `new` = the shipped slope with `fusion_param_groups`.

    OMP_NUM_THREADS=1 python -m benchmarks.predictor_init new tiny 1e-4 150    # the tiny HunyuanVideo-1.0 (CPU, ~1 min)
    OMP_NUM_THREADS=2 python -m benchmarks.predictor_init old mini 1e-4 120 \\
        --prompts runs/mini_on_policy/prompts.safetensors                      # DisCa-mini v2's shipped DiT (~10 min)

Prints the held-out predicted-step MSE over cache reuse at each evaluation (every steps/6, the start first). `mini`
needs a DisCa-mini prompt cache (`python -m benchmarks.mini.on_policy` writes one).
"""

import argparse
import os
import tempfile

import training.predictor as stage
from benchmarks.mini.demo import WEIGHTS
from disca.formats import ARCH_HV10
from training.config import build_config
from training.tiny import TINY_LATENT, write_tiny_run_files


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=("old", "new"))
    parser.add_argument("model", choices=("tiny", "mini"))
    parser.add_argument("lr", type=float)
    parser.add_argument("steps", type=int)
    parser.add_argument("--prompts", help="mini: a DisCa-mini prompt cache (.safetensors)")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "predictor_init"), help="run folders")
    args = parser.parse_args(argv)
    if args.variant == "old":
        stage.FUSION_SLOPE = stage.TRAINING_SLOPE  # the scaled rates are then all 1
    if args.model == "tiny":
        paths = write_tiny_run_files(os.path.join(args.out, "tiny"), ARCH_HV10)
        raw = dict(model=paths["model"], prompts=paths["prompts"], latent_shape=list(TINY_LATENT[ARCH_HV10]), steps=8,
                   shift=5.0, held_out_prompts=2, batch_size=4)
    else:
        if not args.prompts:
            parser.error("mini needs --prompts (a DisCa-mini prompt cache)")
        raw = dict(model=os.path.join(WEIGHTS, "dit.safetensors"), prompts=args.prompts, latent_shape=[9, 16, 16],
                   steps=20, shift=2.0, guidance=4.0, held_out_prompts=4, batch_size=8)
    raw.update(stage="predictor", output_dir=os.path.join(args.out, f"{args.variant}_{args.model}_{args.lr}"),
               schedules=["N2", "N3", "N4"], max_steps=args.steps, mse_steps=args.steps, learning_rate=args.lr,
               log_every=1000, checkpoint_every=100000, rollout_eval_prompts=0, eval_every=max(args.steps // 6, 1),
               warmup_steps=min(200, args.steps // 3))
    report = stage.train(build_config(raw))
    held_out = report["held_out"]
    ratios = [e["predictor_mse"] / held_out["cache_reuse_mse"] for e in report["held_out_evaluations"]]
    print(args.variant, args.model, "lr", args.lr, "cache reuse", round(held_out["cache_reuse_mse"], 6), "output reuse",
          round(held_out["output_reuse_mse"], 6), "held-out / cache reuse", [round(r, 4) for r in ratios], flush=True)
    return ratios


if __name__ == "__main__":
    main()
