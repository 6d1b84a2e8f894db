"""Why did DisCa-mini's MeanFlow stages not lower their objective? Variants of the R = 0.2 stage, same data and seed.

    python -m benchmarks.mini.ablate_meanflow --out runs/mini     # needs runs/mini/teacher; re-makes cfg_distill

Each variant is the full preset's `meanflow_R0.2` config with a few keys changed; its report gives the held-out MSE
to the MeanFlow target (with the full du/dt term) before and after training, and the first/last training losses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from benchmarks.mini.run import PRESETS, Paths, run, run_training_stage, stage_configs

VARIANTS = {
    # the committed run's setting, for reference: lr 1e-4, tangent warm-up 200, finite differences (eps 1e-3)
    "lower_lr_long_warmup": dict(learning_rate=3e-5, tangent_warmup_steps=1000),
    "exact_jvp": dict(derivative="jvp", max_steps=600),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mini")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run("full", args.out, stages=("data", "cfg_distill"))
    base = stage_configs(PRESETS["full"], Paths(args.out))["meanflow_R0.2"]
    results = {}
    for name in args.variants.split(","):
        config = dict(base, **VARIANTS[name], output_dir=os.path.join(args.out, f"ablate_meanflow_{name}"))
        report = run_training_stage(name, config)
        results[name] = {"changes": VARIANTS[name], "eval_mse_initial": report["eval_mse_initial"],
                         "eval_mse_final": report["eval_mse_final"], "first_losses": report["first_losses"][:1],
                         "last_losses": report["last_losses"][-1:]}
        print(json.dumps({name: results[name]}), flush=True)
    with open(os.path.join(args.out, "ablate_meanflow.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
