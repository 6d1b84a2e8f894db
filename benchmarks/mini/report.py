"""RESULTS.md, a quality-vs-DiT-calls plot and a frame strip from one DisCa-mini run folder (`run.py` writes them).

    python -m benchmarks.mini.report runs/mini        # -> runs/mini/RESULTS.md, quality_vs_calls.png, strip.png

The paper's orderings are checked here, on the numbers of results.json, with the rule stated in the output: a
comparison "holds" when the first method is better on at least two of the three metrics (all-attribute accuracy,
Fréchet distance, PSNR to the teacher); the accuracy's binomial standard error is printed beside it. Every row is
evaluated once per noise seed: a verdict is HOLDS or DOES NOT HOLD when every seed agrees, NOT SEPARABLE otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys

from benchmarks.mini.dataset import ATTRIBUTES

METRICS = (("accuracy", "higher"), ("frechet_distance", "lower"), ("psnr_vs_teacher", "higher"))


def _value(row: dict, metric: str) -> float:
    return row["accuracy"]["all"] if metric == "accuracy" else row[metric]


def compare(rows: dict, better: str, worse: str) -> dict | None:
    """Does `better` beat `worse` on at least 2 of the 3 metrics? None when a row is missing."""
    if better not in rows or worse not in rows:
        return None
    wins = []
    for metric, direction in METRICS:
        a, b = _value(rows[better], metric), _value(rows[worse], metric)
        wins.append(a > b if direction == "higher" else a < b)
    return {"better": better, "worse": worse, "wins": wins, "holds": sum(wins) >= 2}


def orderings(rows: dict, steps: int) -> list[tuple[str, list[dict | None]]]:
    def best_training_free(n):
        names = [f"output reuse N={n}", f"Taylor-1 N={n}"]
        present = [k for k in names if k in rows]
        return min(present, key=lambda k: rows[k]["frechet_distance"]) if present else names[0]

    from benchmarks.mini.run import frontier_row

    calls = {2: math.ceil(steps / 2), 3: math.ceil(steps / 3), 4: math.ceil(steps / 4)}
    return [
        ("(a) DisCa > training-free cache at the same anchors (best of output reuse / Taylor-1 by FD)",
         [compare(rows, f"DisCa N={n} (MSE+GAN)", best_training_free(n)) for n in (2, 3, 4)]),
        (f"(b) R-MeanFlow > MeanFlow at 10 and {steps} steps",
         [compare(rows, f"R-MeanFlow (R=0.2) {n} steps", f"MeanFlow (R=1.0) {n} steps") for n in (10, steps)]),
        (f"(b) R-MeanFlow > its start, Euler on the CFG-distilled DiT, at 10 and {steps} steps",
         [compare(rows, f"R-MeanFlow (R=0.2) {n} steps", f"CFG-distilled, no MeanFlow, {n} steps") for n in (10, steps)]),
        ("(c) MSE+GAN >= MSE-only", [compare(rows, f"DisCa N={n} (MSE+GAN)", f"DisCa N={n} (MSE)") for n in (2, 3, 4)]),
        ("(c) MSE+GAN >= MSE-only with as many extra MSE steps as the GAN phase (control)",
         [compare(rows, f"DisCa N={n} (MSE+GAN)", f"DisCa N={n} (MSE, +GAN-phase steps as MSE)") for n in (2, 3, 4)]),
        ("(d) on-policy > teacher-forced predictor training (MSE, equal steps)",
         [compare(rows, f"DisCa N={n} (MSE, on-policy)", f"DisCa N={n} (MSE)") for n in (2, 3, 4)]),
        ("(e) DisCa > no-cache distilled model at equal DiT calls",
         [compare(rows, f"DisCa N={n} (MSE+GAN)", f"R-MeanFlow {calls[n]} steps (no cache; = DisCa N={n} calls)")
          for n in (4, 3, 2)]),
        (f"(f) the frontier: DisCa with 3 of 10 full steps vs R-MeanFlow with {steps} steps",
         [compare(rows, frontier_row(), f"R-MeanFlow (R=0.2) {steps} steps")]),
    ]


def accuracy_gap_within_noise(a: dict, b: dict, held_out: int) -> bool:
    """Is the all-attribute accuracy gap of two rows smaller than its binomial standard error (the rows' added)?"""
    p, q = a["accuracy"]["all"], b["accuracy"]["all"]
    return abs(p - q) < math.sqrt((p * (1 - p) + q * (1 - q)) / held_out)


def verdict(per_seed: list[dict | None]) -> str:
    """HOLDS / DOES NOT HOLD when every seed's comparison agrees, NOT SEPARABLE when they differ."""
    holds = [c["holds"] for c in per_seed if c is not None]
    if not holds:
        return "NOT MEASURED"
    if all(holds):
        return "HOLDS"
    return "DOES NOT HOLD" if not any(holds) else "NOT SEPARABLE"


def _table(rows: dict, held_out: int) -> list[str]:
    header = ["method", "DiT calls/video", *ATTRIBUTES, "all attributes", "FD (lower better)", "PSNR vs teacher (dB)",
              "GPU s/video"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        acc = row["accuracy"]
        se = math.sqrt(max(acc["all"] * (1 - acc["all"]), 1e-12) / held_out)
        psnr = "—" if row["group"] == "teacher" else f"{row['psnr_vs_teacher']:.2f}"
        cells = [name, f"{row['dit_calls']:g}", *(f"{acc[a]:.3f}" for a in ATTRIBUTES), f"{acc['all']:.3f} ± {se:.3f}",
                 f"{row['frechet_distance']:.2f}", psnr, f"{row['seconds_per_video'] * 1000:.1f} ms"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"teacher": ("k", "*"), "meanflow": ("tab:gray", "s"), "rmeanflow": ("tab:blue", "s"),
              "cfg_distilled": ("tab:purple", "s"),
              "equal_calls": ("tab:cyan", "D"), "training_free": ("tab:orange", "v"), "predictor_mse": ("tab:olive", "o"),
              "predictor_mse_long": ("tab:brown", "o"), "predictor_gan": ("tab:red", "o"),
              "predictor_on_policy": ("tab:green", "o"), "predictor_frontier": ("tab:pink", "P")}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, metric, label in ((axes[0], "frechet_distance", "Fréchet distance to real clips (lower is better)"),
                              (axes[1], "accuracy", "all-attribute accuracy (higher is better)")):
        for name, row in rows.items():
            colour, marker = styles.get(row["group"], ("tab:purple", "x"))
            ax.scatter(row["dit_calls"], _value(row, metric), c=colour, marker=marker, s=60)
            ax.annotate(name, (row["dit_calls"], _value(row, metric)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("DiT calls per video (log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("DisCa-mini: quality vs DiT calls (same held-out prompts and noises)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def frame_strip(strip_file: str, names: list[str], path: str) -> None:
    """One row per method, one column per frame, of held-out prompt 0 (same noise in every row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import load_file

    videos = load_file(strip_file)
    names = [n for n in names if n in videos]
    frames = videos[names[0]].shape[1]
    label_width = 3.2  # inches for the method names
    width = label_width + frames * 0.9
    fig, axes = plt.subplots(len(names), frames, figsize=(width, len(names) * 0.95), squeeze=False)
    for i, name in enumerate(names):
        video = ((videos[name] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).numpy()  # [F, H, W, 3]
        for j in range(frames):
            axes[i][j].imshow(video[j], interpolation="nearest")
            axes[i][j].axis("off")
        axes[i][0].text(-4, video.shape[1] / 2, name, fontsize=6, ha="right", va="center")
    fig.subplots_adjust(left=label_width / width, right=0.99, wspace=0.03, hspace=0.06)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_folder: str, path: str) -> str:
    with open(os.path.join(run_folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_folder, "preset.json")) as f:
        preset = json.load(f)
    seeds = results.get("seeds") or {"0": results["rows"]}  # v2's results.json: one noise seed, under "rows"
    rows, held_out = next(iter(seeds.values())), results["held_out"]
    classifier = {}
    if os.path.isfile(os.path.join(run_folder, "classifier.json")):
        with open(os.path.join(run_folder, "classifier.json")) as f:
            classifier = json.load(f)
    seconds = {}
    for stage in sorted(os.listdir(run_folder)):
        file = os.path.join(run_folder, stage, "stage_seconds.json")
        if os.path.isfile(file):
            with open(file) as f:
                seconds[stage] = json.load(f)
    plot(rows, os.path.join(os.path.dirname(path), "quality_vs_calls.png"))
    strip_names = [n for n in rows if rows[n]["group"] in ("teacher", "meanflow", "rmeanflow")] + \
                  [n for n in rows if "N=4" in n]
    frame_strip(os.path.join(run_folder, "strip.safetensors"), strip_names, os.path.join(os.path.dirname(path), "strip.png"))

    lines = ["# DisCa-mini results", "",
             f"Generated by `python -m benchmarks.mini.report {run_folder}` from the run of "
             f"`python -m benchmarks.mini.run --out {run_folder} --preset {preset['name']}` (seed {preset['seed']}) "
             f"on {results['device']}. {held_out} held-out prompts (split seed 1), one fixed noise each, the same for "
             "every row. Accuracy: the attribute classifier's agreement with the prompt's attributes; FD: Fréchet "
             "distance of the classifier's features to real held-out clips; PSNR: against the teacher's video from "
             "the same noise. ± is the binomial standard error of the all-attribute accuracy. What these numbers do and "
             "do not show, how the run was split over GPU leases and the GPU minutes it took: `README.md` "
             "(sections \"v3 results\" and \"v3\").", ""]
    if classifier:
        acc = classifier["held_out_real_accuracy"]
        lines += [f"Classifier on {classifier['clips']} real held-out clips: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), ""]
    for seed, seed_rows in seeds.items():
        lines += [f"Noise seed {seed}:", ""] + _table(seed_rows, held_out) + [""]
    lines += ["![quality vs DiT calls](quality_vs_calls.png)", "",
              f"Frame strip, held-out prompt 0 (noise seed {next(iter(seeds))}): \"{results['prompt_0']}\"", "",
              "![frame strip](strip.png)", "", "## The paper's orderings", "",
              "Rule: a comparison holds on a noise seed when the first method wins on at least 2 of (accuracy, FD, "
              f"PSNR); the verdict is HOLDS or DOES NOT HOLD when the {len(seeds)} seed(s) agree, NOT SEPARABLE "
              "otherwise. \"Accuracy gap within its standard error\" marks a verdict whose all-attribute accuracy gap is "
              "smaller than its binomial standard error on every seed; FD's and PSNR's noise is not measured, so such a "
              "verdict rests on small FD and PSNR differences.", ""]
    per_seed = [orderings(seed_rows, preset["steps"]) for seed_rows in seeds.values()]
    for index, (title, first) in enumerate(per_seed[0]):
        lines.append(f"- **{title}**")
        for j in range(len(first)):
            comparisons = [seed_orderings[index][1][j] for seed_orderings in per_seed]
            present = [(seed, c) for seed, c in zip(seeds, comparisons) if c is not None]
            if not present:
                lines.append("  - NOT MEASURED (row missing)")
                continue
            better, worse = present[0][1]["better"], present[0][1]["worse"]
            details = []
            for seed, c in present:
                wins = ", ".join(f"{m} {'✓' if w else '✗'}" for (m, _), w in zip(METRICS, c["wins"]))
                values = "; ".join(f"{_value(seeds[seed][better], m):.3f} vs {_value(seeds[seed][worse], m):.3f}"
                                   for m, _ in METRICS)
                details.append(f"seed {seed}: {wins} ({values})")
            noise = all(accuracy_gap_within_noise(seeds[seed][better], seeds[seed][worse], held_out) for seed, _ in present)
            lines.append(f"  - {verdict(comparisons)}{' (accuracy gap within its standard error)' if noise else ''}: "
                         f"{better} vs {worse}; " + "; ".join(details))
    if seconds:
        lines += ["", "## Stage wall times", "", "| stage | GPU minutes (processes x wall) | processes | wall s |",
                  "|---|---|---|---|"]
        for stage, record in seconds.items():
            processes = record.get("processes", 1)
            lines.append(f"| {stage} | {processes * record['seconds'] / 60:.1f} | {processes} | {record['seconds']:.0f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "runs/mini"
    print(write_report(folder, os.path.join(folder, "RESULTS.md")))
