"""A predictor trained on the schedule it serves. DisCa N = 4's error is made in its first window (CPU analysis,
logs/v3_lease3/cpu_analysis): a full step 1 closes most of the demo's gap to no-cache, but the shipped predictor
(`predictor_budget.py`'s x6, trained on the N = 2, 3, 4 pairs) never saw a cache taken at step 1. Each variant
continues that predictor on one anchor list's pairs only (optionally drawing the list's first window more often) and
is evaluated on that list as RESULTS.md's rows are (same held-out prompts, noises, classifier, teacher), beside the
shipped predictor on the same lists, N = 4 and the no-cache model.

    python -m benchmarks.mini.served_schedule --out runs/mini --train dense6          # one variant (device.sh: one per lane)
    python -m benchmarks.mini.served_schedule --out runs/mini --evaluate          # -> <out>/served_schedule/RESULTS.md

The run folder needs `run.py`'s data stage, the R-MeanFlow student, the teacher and the classifier (`device.sh served`).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

import torch

from benchmarks.mini import report
from benchmarks.mini.run import (PRESETS, Paths, _read_json, cached_sampler, evaluate, plain_sampler,
                                 run_training_stage, stage_configs, teacher_row, teacher_sampler)

logger = logging.getLogger(__name__)

FOLDER = "served_schedule"
SHIPPED = "benchmarks/mini/weights/predictor.safetensors"  # the x6 predictor every variant starts from
# anchor lists with a full step 1 (logs/v3_served/cpu_analysis/schedule_scan.py: the densest early ones came closest
# to no-cache for their calls with the shipped predictor)
N4_PLUS_1, DENSE6, DENSE5 = (0, 1, 4, 8, 12, 16), (0, 1, 3, 6, 10, 15), (0, 1, 3, 7, 13)
# steps 0, 1 and 2 full, as the official schedules run them (lease 6: with 7 and 8 calls DisCa reached no-cache)
EARLY6, EARLY5 = (0, 1, 2, 6, 11, 16), (0, 1, 2, 7, 13)
# lists served by the shipped predictor only: how many DiT calls, and which, DisCa needs to reach the no-cache model
SHIPPED_ONLY = ((0, 1, 2, 4, 7, 11, 15), (0, 1, 2, 4, 6, 9, 12, 16), (0, 1, 2, 5, 10, 15), (0, 1, 2, 4, 9, 15),
                (0, 1, 2, 5, 9, 14), (0, 1, 2, 6, 12))


@dataclass(frozen=True)
class Variant:
    anchors: tuple[int, ...]  # the list it is trained on and serves
    first_window_repeats: int = 1
    depth: int = 1  # predictor blocks; 2: is the 1-block predictor short of capacity? (starts from the DiT's last blocks)
    steps_factor: int = 2  # x the preset's predictor_mse_steps


VARIANTS = {
    "n4_plus1_first4": Variant(N4_PLUS_1, first_window_repeats=4),
    "dense6": Variant(DENSE6),
    "dense6_first4": Variant(DENSE6, first_window_repeats=4),
    "dense5": Variant(DENSE5),
    "dense5_first4": Variant(DENSE5, first_window_repeats=4),
    "dense6_depth2": Variant(DENSE6, depth=2, steps_factor=6),  # the shipped predictor's 4,800 steps
    "early6": Variant(EARLY6),
    "early5": Variant(EARLY5),
}


def variant_config(name: str, preset, paths: Paths) -> dict:
    variant = VARIANTS[name]
    base, steps = stage_configs(preset, paths)["predictor_mse"], preset.predictor_mse_steps * variant.steps_factor
    return dict(base, output_dir=os.path.join(paths.out, FOLDER, name), max_steps=steps, mse_steps=steps,
                eval_every=steps // 4, depth=variant.depth,
                init_predictor=SHIPPED if variant.depth == 1 else "",
                schedules=(" ".join(map(str, variant.anchors)),), first_window_repeats=variant.first_window_repeats)


def predictor_file(name: str, paths: Paths) -> str:
    return os.path.join(paths.out, FOLDER, name, "predictor.safetensors")


def anchors_label(anchors) -> str:
    return "anchors " + " ".join(map(str, anchors))


def rows(preset, paths: Paths) -> list[dict]:
    rmf = paths["meanflow_R0.2"]
    found = [dict(name=teacher_row(preset), model=paths["teacher"], sampler=teacher_sampler(preset), group="teacher"),
             dict(name=f"R-MeanFlow (R=0.2) {preset.steps} steps (no cache)", model=rmf,
                  sampler=plain_sampler(preset, preset.steps), group="rmeanflow"),
             dict(name="DisCa N=4 (shipped x6)", model=rmf, file=SHIPPED, sampler=cached_sampler(preset, 4, "predictor", SHIPPED))]
    lists = sorted({v.anchors for v in VARIANTS.values()} | set(SHIPPED_ONLY), key=lambda anchors: (-len(anchors), anchors))
    found += [dict(name=f"R-MeanFlow (R=0.2) {calls} steps (no cache; equal calls)", model=rmf,
                   sampler=plain_sampler(preset, calls), group="equal_calls")
              for calls in sorted({len(anchors) for anchors in lists}, reverse=True)]
    found += [dict(name=f"DisCa {anchors_label(anchors)} (shipped x6)", model=rmf, file=SHIPPED,
                   sampler=cached_sampler(preset, None, "predictor", SHIPPED, anchors=anchors)) for anchors in lists]
    for name, variant in VARIANTS.items():
        file = predictor_file(name, paths)
        found.append(dict(name=f"DisCa {anchors_label(variant.anchors)} ({name})", model=rmf, file=file,
                          sampler=cached_sampler(preset, None, "predictor", file, anchors=variant.anchors)))
    for row in found:
        row.setdefault("group", FOLDER)
        row["needs"] = [row["model"], paths["teacher"]] + ([row["file"]] if "file" in row else [])
    return found


def write_report(preset, paths: Paths) -> str:
    results = _read_json(os.path.join(paths.out, FOLDER, "results.json"))
    lines = ["# DisCa-mini v3: a predictor trained on the schedule it serves", "",
             "Generated by `python -m benchmarks.mini.served_schedule --evaluate` (see its docstring) on "
             f"{results.get('device', '?')}; the rows of `benchmarks/mini/RESULTS.md`'s evaluation (same prompts, noises, "
             "classifier, teacher). Held-out MSE of each predictor on its schedule's held-out pairs, by step (step 0: "
             "its start, the shipped predictor for 1-block variants):", ""]
    for name, variant in VARIANTS.items():
        saved = _read_json(os.path.join(paths.out, FOLDER, name, "report.json")).get("held_out_evaluations", [])
        curve = ", ".join(f"{e['step']}: {e['predictor_mse']:.5f}" for e in saved)
        lines.append(f"- {name} ({anchors_label(variant.anchors)}, {variant.depth} block(s), first window drawn "
                     f"{variant.first_window_repeats}x): {curve}")
    for seed, found in results.get("seeds", {}).items():
        lines += ["", f"Noise seed {seed}:", "", *report._table(found, results["held_out"])]
    path = os.path.join(paths.out, FOLDER, "RESULTS.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mini", help="the run folder (run.py --out)")
    parser.add_argument("--preset", default="v3", choices=sorted(PRESETS))
    parser.add_argument("--train", default="", help=f"comma-separated variants to train, of {list(VARIANTS)}")
    parser.add_argument("--evaluate", action="store_true", help="evaluate every trained variant and write RESULTS.md")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preset, paths = PRESETS[args.preset], Paths(args.out)
    if torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")  # as run.py trains the predictors
    for name in filter(None, args.train.split(",")):
        if name not in VARIANTS:
            parser.error(f"--train: unknown variant {name!r}; choose from {list(VARIANTS)}")
        if not os.path.isfile(predictor_file(name, paths)):
            run_training_stage(f"{FOLDER}/{name}", variant_config(name, preset, paths))
    if args.evaluate:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        evaluate(preset, paths, device, rows(preset, paths), os.path.join(paths.out, FOLDER, "results.json"))
        logger.info("wrote %s", write_report(preset, paths))


if __name__ == "__main__":
    main()
