"""Was the v3 predictor undertrained? Its MSE phase is 800 steps at learning rate 1e-4, batch 32 (about 30 s of one
H200), and its held-out error was still falling when it stopped. This trains the same predictor (same pool, init,
schedules and held-out pairs as `predictor_mse`) with 6x the steps, at the preset's learning rate and at 4x it, and
the frontier predictor with 6x the steps, then evaluates them as RESULTS.md's rows are evaluated (same held-out
prompts, noises, classifier and teacher), beside the rows that explain the frontier: output reuse on its anchors and
R-MeanFlow with as many steps as it has DiT calls.

    python -m benchmarks.mini.predictor_budget --out runs/mini --train x6          # one variant (device.sh: one per GPU)
    python -m benchmarks.mini.predictor_budget --out runs/mini --evaluate          # -> <out>/predictor_budget/RESULTS.md

The run folder needs `run.py`'s data stage, the R-MeanFlow student, the teacher and the classifier (`device.sh budget`).
"""

from __future__ import annotations

import os

from benchmarks.mini import variants
from benchmarks.mini.run import (FRONTIER_ANCHORS, FRONTIER_STEPS, Paths, cached_sampler, plain_sampler, stage_configs,
                                 teacher_row, teacher_sampler)

FOLDER = "predictor_budget"
STEPS_FACTOR = 6  # x the preset's predictor_mse_steps; held-out evaluations every preset budget
# variant -> (the run.py stage it extends, learning rate x the preset's)
VARIANTS = {
    "x6": ("predictor_mse", 1),
    "x6_lr4x": ("predictor_mse", 4),
    "frontier_x6": ("predictor_frontier", 1),
}


def variant_config(name: str, preset, paths: Paths) -> dict:
    stage, lr_factor = VARIANTS[name]
    base, steps = stage_configs(preset, paths)[stage], preset.predictor_mse_steps * STEPS_FACTOR
    return dict(base, output_dir=os.path.join(paths.out, FOLDER, name), max_steps=steps, mse_steps=steps,
                eval_every=preset.predictor_mse_steps, learning_rate=base["learning_rate"] * lr_factor)


def rows(preset, paths: Paths) -> list[dict]:
    rmf = paths["meanflow_R0.2"]
    frontier = len(FRONTIER_ANCHORS)
    found = [dict(name=teacher_row(preset), model=paths["teacher"], sampler=teacher_sampler(preset), group="teacher"),
             dict(name=f"R-MeanFlow (R=0.2) {preset.steps} steps", model=rmf, sampler=plain_sampler(preset, preset.steps),
                  group="rmeanflow"),
             dict(name=f"R-MeanFlow (R=0.2) {FRONTIER_STEPS} steps", model=rmf,
                  sampler=plain_sampler(preset, FRONTIER_STEPS), group="rmeanflow"),
             dict(name=f"R-MeanFlow (R=0.2) {frontier} steps (no cache; = the frontier's calls)", model=rmf,
                  sampler=plain_sampler(preset, frontier), group="equal_calls"),
             dict(name=f"output reuse, {frontier} of {FRONTIER_STEPS} full steps", model=rmf, group="training_free",
                  sampler=cached_sampler(preset, None, "reuse_output", steps=FRONTIER_STEPS, anchors=FRONTIER_ANCHORS))]
    for name, (stage, _) in VARIANTS.items():
        file = variants.predictor_file(paths, FOLDER, name)
        if stage == "predictor_frontier":
            found.append(dict(name=f"DisCa {frontier} of {FRONTIER_STEPS} full steps (MSE, {name})", model=rmf,
                              file=file, sampler=cached_sampler(preset, None, "predictor", file, FRONTIER_STEPS,
                                                                FRONTIER_ANCHORS)))
        else:
            found += [dict(name=f"DisCa N={n} (MSE, {name})", model=rmf, file=file,
                           sampler=cached_sampler(preset, n, "predictor", file)) for n in (2, 3, 4)]
    return found


def write_report(paths: Paths) -> str:
    return variants.write_report(paths, FOLDER, "DisCa-mini v3: the predictor's training budget", {
        name: f"{stage} x {STEPS_FACTOR} steps, learning rate x {lr_factor}" for name, (stage, lr_factor) in VARIANTS.items()})


def main(argv: list[str] | None = None) -> None:
    args = variants.parser(__doc__, VARIANTS).parse_args(argv)
    variants.run(args, FOLDER, VARIANTS, variant_config, rows, write_report)


if __name__ == "__main__":
    main()
