"""Does roll-out training (the `predictor_rollout` stage) bring DisCa to the no-cache model with 5 DiT calls of 20?

    python -m benchmarks.mini.rollout_tune --out runs/rollout --schedules "0 1 3 7 13" --steps 300     # one H200, ~6 min
    python -m benchmarks.mini.rollout_tune --out runs/rollout --schedules "0 1 3 7 13" --tag _c350 --steps 350 \\
        --init runs/rollout/anchors_0_1_3_7_13/predictor.safetensors --seeds 0 1 2 3 4 5              # continue it
    python -m benchmarks.mini.rollout_tune --out /tmp/rollout --steps 2 --batch 2 --held-out 2 --prompts 4 --seeds 0  # CPU

Every predictor before it learnt one step at a time, and its one-step error did not predict the final video's
accuracy (README, "How many DiT calls"). Each anchor list gets its own predictor: the stage continues `--init` (the
shipped one) on roll-outs of that list from training-split prompts; its held-out set is `--held-out` (64) further
training-split prompts, as the evaluation's held-out prompts are the evaluation's only. Each list is then evaluated
as `paired.py` evaluates (`--seeds`, the 512 held-out prompts), beside `--init` on the same list. A list whose
predictor exists in its folder is not trained again; a stage cut short resumes from its last checkpoint (every 50
steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from benchmarks.mini import paired
from benchmarks.mini.dataset import TRAIN_SEED
from benchmarks.mini.demo import WEIGHTS
from benchmarks.mini.run import PRESETS, run_training_stage
from benchmarks.mini.text import write_prompt_caches
from disca.schedules import ScheduleError, parse_step_list, validate_anchor_steps

logger = logging.getLogger(__name__)

TRAIN_PROMPTS = 8192  # training-split prompts the roll-outs draw from (the predictor stage saw 544)


def stage_config(anchors: list[int], args, prompts: str, folder: str) -> dict:
    """The `predictor_rollout` config of one list, at the demo model's deployment schedule (weights/demo.json)."""
    with open(os.path.join(WEIGHTS, "demo.json")) as f:
        demo = json.load(f)
    return dict(stage="predictor_rollout", model=os.path.join(WEIGHTS, "dit.safetensors"), prompts=prompts,
                output_dir=folder, init_predictor=args.init, latent_shape=demo["latent_shape"], steps=demo["steps"],
                shift=demo["shift"], guidance=demo["guidance"], schedules=[" ".join(map(str, anchors))],
                held_out_prompts=args.held_out, max_steps=args.steps, batch_size=args.batch,
                learning_rate=args.lr, eval_every=100, checkpoint_every=50, keep_checkpoints=1, log_every=25, seed=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--schedules", nargs="+", default=["0 1 3 7 13"], help="anchor lists, one predictor each")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of each list's stage")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--held-out", type=int, default=64, help="further training-split prompts: the held-out loss")
    parser.add_argument("--init", default=os.path.join(WEIGHTS, "predictor.safetensors"), help="predictor to continue")
    parser.add_argument("--tag", default="", help="suffix of each list's folder name (another run on the same list)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="paired.py's noise seeds (none: skip)")
    parser.add_argument("--prompts", type=int, default=None, help="paired.py --prompts")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # before anything is written or loaded
        lists = [validate_anchor_steps(parse_step_list(text), PRESETS["v3"].steps) for text in args.schedules]
    except ScheduleError as error:
        raise SystemExit(f"--schedules: {error}") from None
    if not os.path.isfile(args.init):
        raise SystemExit(f"--init: {args.init} is not a file")
    if args.held_out < 1:
        raise SystemExit(f"--held-out must be >= 1, got {args.held_out}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")  # as run.py trains the predictors
    count = TRAIN_PROMPTS + args.held_out
    prompts = os.path.join(args.out, f"prompts_{count}", "prompts.safetensors")
    if not os.path.isfile(prompts):
        os.makedirs(os.path.dirname(prompts), exist_ok=True)
        write_prompt_caches(os.path.dirname(prompts), count, TRAIN_SEED, PRESETS["v3"].spec)
    for anchors in lists:
        name = "anchors_" + "_".join(map(str, anchors)) + args.tag
        folder = os.path.join(args.out, name)
        if not os.path.isfile(os.path.join(folder, "predictor.safetensors")):
            run_training_stage(name, stage_config(list(anchors), args, prompts, folder))
        if args.seeds:
            common = ["--seeds", *map(str, args.seeds), "--schedules", " ".join(map(str, anchors)), "--device",
                      device.type] + (["--prompts", str(args.prompts)] if args.prompts else [])
            paired.main(["--out", os.path.join(folder, "paired"), "--predictor",
                         os.path.join(folder, "predictor.safetensors"), *common])
            paired.main(["--out", os.path.join(folder, "paired_init"), "--predictor", args.init, *common])


if __name__ == "__main__":
    main()
