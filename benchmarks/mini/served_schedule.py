"""Which anchor lists, and which predictor, bring DisCa to the no-cache model's accuracy, and at how many DiT calls?
DisCa N = 4's error is made in its first window (CPU analysis, logs/v3_lease3/cpu_analysis), and the shipped predictor
(`predictor_budget.py`'s x6, trained on the N = 2, 3, 4 pairs) never saw a cache taken at step 1. The 1-block variants
continue that predictor on one anchor list's pairs only (optionally drawing the list's first window more often); the
2-block one starts from the DiT's last blocks. Each is evaluated on its list as RESULTS.md's rows are (same held-out
prompts, noises, classifier, teacher), beside the shipped predictor on every list (`SHIPPED_ONLY` too), N = 4, the
no-cache model and the no-cache model with as many steps as each list has DiT calls. Findings: the mini README,
"How many DiT calls does DisCa need".

    python -m benchmarks.mini.served_schedule --out runs/mini --train dense6          # one variant (device.sh: one per lane)
    python -m benchmarks.mini.served_schedule --out runs/mini --evaluate          # -> <out>/served_schedule/RESULTS.md

The run folder needs `run.py`'s data stage, the R-MeanFlow student, the teacher and the classifier (`device.sh served`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from benchmarks.mini import variants
from benchmarks.mini.run import Paths, cached_sampler, plain_sampler, stage_configs, teacher_row, teacher_sampler

FOLDER = "served_schedule"
SHIPPED = "benchmarks/mini/weights/predictor.safetensors"  # the x6 predictor 1-block variants continue (--start)
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


def variant_config(name: str, preset, paths: Paths, start: str = SHIPPED) -> dict:
    variant = VARIANTS[name]
    base, steps = stage_configs(preset, paths)["predictor_mse"], preset.predictor_mse_steps * variant.steps_factor
    return dict(base, output_dir=os.path.join(paths.out, FOLDER, name), max_steps=steps, mse_steps=steps,
                eval_every=steps // 4, depth=variant.depth,
                init_predictor=start if variant.depth == 1 else "",
                schedules=(" ".join(map(str, variant.anchors)),), first_window_repeats=variant.first_window_repeats)


def anchors_label(anchors) -> str:
    return "anchors " + " ".join(map(str, anchors))


def rows(preset, paths: Paths, start: str = SHIPPED) -> list[dict]:
    rmf = paths["meanflow_R0.2"]
    found = [dict(name=teacher_row(preset), model=paths["teacher"], sampler=teacher_sampler(preset), group="teacher"),
             dict(name=f"R-MeanFlow (R=0.2) {preset.steps} steps (no cache)", model=rmf,
                  sampler=plain_sampler(preset, preset.steps), group="rmeanflow"),
             dict(name="DisCa N=4 (shipped x6)", model=rmf, file=start, sampler=cached_sampler(preset, 4, "predictor", start))]
    lists = sorted({v.anchors for v in VARIANTS.values()} | set(SHIPPED_ONLY), key=lambda anchors: (-len(anchors), anchors))
    found += [dict(name=f"R-MeanFlow (R=0.2) {calls} steps (no cache; equal calls)", model=rmf,
                   sampler=plain_sampler(preset, calls), group="equal_calls")
              for calls in sorted({len(anchors) for anchors in lists}, reverse=True)]
    found += [dict(name=f"DisCa {anchors_label(anchors)} (shipped x6)", model=rmf, file=start,
                   sampler=cached_sampler(preset, None, "predictor", start, anchors=anchors)) for anchors in lists]
    for name, variant in VARIANTS.items():
        file = variants.predictor_file(paths, FOLDER, name)
        found.append(dict(name=f"DisCa {anchors_label(variant.anchors)} ({name})", model=rmf, file=file,
                          sampler=cached_sampler(preset, None, "predictor", file, anchors=variant.anchors)))
    return found


def write_report(paths: Paths) -> str:
    return variants.write_report(paths, FOLDER, "DisCa-mini v3: a predictor trained on the schedule it serves", {
        name: f"{anchors_label(v.anchors)}, {v.depth} block(s), first window drawn {v.first_window_repeats}x, "
              f"{'from the DiT' if v.depth > 1 else 'from the shipped predictor'}" for name, v in VARIANTS.items()})


def main(argv: list[str] | None = None) -> None:
    parser = variants.parser(__doc__, VARIANTS)
    parser.add_argument("--start", default=SHIPPED, help="the predictor 1-block variants continue and the 'shipped' "
                        "rows use (default: the demo's)")
    args = parser.parse_args(argv)
    variants.run(args, FOLDER, VARIANTS, functools.partial(variant_config, start=args.start),
                 functools.partial(rows, start=args.start), write_report)


if __name__ == "__main__":
    main()
