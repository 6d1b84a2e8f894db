"""DisCa-mini: teacher-forced vs on-policy predictor training vs cache reuse vs output reuse at N = 2, 3, 4 (issue 14).

    OMP_NUM_THREADS=1 python -m benchmarks.mini.on_policy --out runs/mini_on_policy   # CPU: 8-9 minutes, one thread

Both arms start from the shipped predictor (`weights/predictor.safetensors`: trained teacher-forced, MSE then GAN,
1600 steps of 32 on an H100, see README) and run the same short MSE fine-tune of the predictor stage
(`training/predictor.py`) on 20-step shift-2 trajectories of the shipped DiT for prompts of the held-out split, which
neither model was trained on: `on_policy_fraction` 0 (teacher forcing) or 0.5 (half of each batch from DisCa
roll-outs of the current predictor on N2/N3/N4, refreshed every `refresh` steps). The last `held_out` prompts are the
stage's own held-out set; each arm's report.json holds, per schedule, the one-step error on teacher-forced states,
on the predictor's own roll-out states (on-policy) and the roll-out's final-sample error against the all-full
trajectory from the same noise, for the start, the exported (best held-out) weights and, when they differ, the
last ones. `table.md` collects them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass

from benchmarks.mini.dataset import HELDOUT_SEED, ClipSpec
from benchmarks.mini.text import write_prompt_caches
from training.config import build_config

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
SCHEDULES = ("N2", "N3", "N4")
ARMS = {"teacher_forced": 0.0, "on_policy": 0.5}  # on_policy_fraction of each arm


@dataclass(frozen=True)
class Preset:
    train_prompts: int  # prompts whose trajectories (one noise each) the arms train on
    held_out: int  # further prompts: held-out pairs and roll-outs
    steps: int  # optimiser steps of each arm
    batch_size: int
    refresh: int  # on-policy arm: roll-outs rebuilt every `refresh` steps
    rollouts: int  # on-policy arm: training noises rolled out per refresh, on each schedule
    eval_every: int


PRESETS = {
    # sized for ~10 minutes of 2 CPU cores: one mini-DiT call is ~0.15 s there, a training sample ~0.2 s
    "cpu": Preset(train_prompts=12, held_out=4, steps=40, batch_size=8, refresh=20, rollouts=4, eval_every=10),
}


def arm_config(preset: Preset, arm: str, prompts: str, out: str, warmup: int | None) -> dict:
    """The predictor-stage config of one arm: the shipped DiT's deployment schedule (weights/demo.json), the
    shipped predictor's learning rate with the stage's warm-up (or `warmup` steps), MSE only."""
    with open(os.path.join(WEIGHTS, "demo.json")) as f:
        demo = json.load(f)
    return dict(stage="predictor", model=os.path.join(WEIGHTS, "dit.safetensors"), prompts=prompts,
                init_predictor=os.path.join(WEIGHTS, "predictor.safetensors"), output_dir=os.path.join(out, arm),
                latent_shape=demo["latent_shape"], steps=demo["steps"], shift=demo["shift"], guidance=demo["guidance"],
                schedules=SCHEDULES, held_out_prompts=preset.held_out, rollout_eval_prompts=preset.held_out,
                max_steps=preset.steps, mse_steps=preset.steps, batch_size=preset.batch_size, learning_rate=1e-4,
                eval_every=preset.eval_every, checkpoint_every=preset.steps,
                on_policy_fraction=ARMS[arm], on_policy_refresh=preset.refresh, on_policy_rollouts=preset.rollouts,
                trajectory_batch=4, log_every=10, seed=0, **({} if warmup is None else {"warmup_steps": warmup}))


def run(preset_name: str, out: str, warmup: int | None = None) -> dict:
    from training.predictor import train

    preset = PRESETS[preset_name]
    os.makedirs(out, exist_ok=True)
    write_prompt_caches(out, preset.train_prompts + preset.held_out, HELDOUT_SEED, ClipSpec(frames=9))
    reports, seconds = {}, {}
    for arm in ARMS:
        report_path = os.path.join(out, arm, "report.json")
        config = build_config(arm_config(preset, arm, os.path.join(out, "prompts.safetensors"), out, warmup),
                              source=f"DisCa-mini on-policy arm {arm}")
        if not os.path.isfile(report_path):  # a finished arm is kept, so an interrupted run continues
            started = time.perf_counter()
            train(config)
            seconds[arm] = time.perf_counter() - started
        with open(report_path) as f:
            reports[arm] = json.load(f)
    results = {"preset": dataclasses.asdict(preset), "warmup_steps": config.warmup_steps, "arm_seconds": seconds,
               "reports": {arm: {k: r[k] for k in ("held_out", "held_out_evaluations", "rollouts")}
                           for arm, r in reports.items()}}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table(reports))
    return results


def table(reports: dict) -> str:
    """One row per method and N: the three errors of `training.predictor.rollout_report` on the held-out roll-outs."""
    start = reports["teacher_forced"]["rollouts"]["initial"]
    # both arms start from the same weights and measure the same held-out trajectories
    assert start == reports["on_policy"]["rollouts"]["initial"], "the arms did not start from the same point"
    rows = [("cache reuse", lambda n: start[n]["reuse_cache"]), ("output reuse", lambda n: start[n]["reuse_output"]),
            ("shipped predictor (start of both arms)", lambda n: start[n]["predictor"])]
    for arm, label in (("teacher_forced", "teacher-forced"), ("on_policy", "on-policy (0.5)")):
        rollouts, held_out = reports[arm]["rollouts"], reports[arm]["held_out"]
        rows.append((f"{label} fine-tune, exported (step {held_out['best_step']})",
                     lambda n, r=rollouts: r["exported"][n]["predictor"]))
        if "final" in rollouts:
            rows.append((f"{label} fine-tune, last weights (step {held_out['final_step']})",
                         lambda n, r=rollouts: r["final"][n]["predictor"]))
    lines = ["| method | N | one-step MSE, teacher-forced states | one-step MSE, own roll-out states | exposure gap "
             "| final-sample MSE vs all-full |", "|---|---|---|---|---|---|"]
    for name, row_of in rows:
        for n in SCHEDULES:
            row = row_of(n)
            on_policy = f"{row['on_policy_mse']:.5f}" if "on_policy_mse" in row else "—"
            gap = f"{row['exposure_gap']:.3f}" if "exposure_gap" in row else "—"
            lines.append(f"| {name} | {n[1:]} | {row['teacher_forced_mse']:.5f} | {on_policy} | {gap} "
                         f"| {row['final_sample_mse']:.5f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mini_on_policy")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    # the stage's default (200 steps) is longer than these runs, so their rate stays below its peak; a 10-step warm-up
    # (--warmup 10) took the held-out error up 8% by step 10 in both arms (training/README.md)
    parser.add_argument("--warmup", type=int, default=None, help="lr warm-up steps of both arms (default: the stage's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    results = run(args.preset, args.out, args.warmup)
    print(open(os.path.join(args.out, "table.md")).read())
    print(f"arms {results['arm_seconds']}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
