"""RESULTS.md's stop-27 table from this folder's records (`paired.py`'s per-prompt results and the stage reports).
From the repo root: PYTHONPATH=. python benchmarks/mini/logs/rollout/lanes_stop27/table.py"""
import glob, json, os
from benchmarks.mini.paired import NO_CACHE, summarize

here = os.path.dirname(os.path.abspath(__file__))
print("| anchors (5 DiT calls) | predictor | roll-out loss, 64 check prompts | accuracy by seed | "
      "paired difference to no cache, pooled |\n|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(here, "*_paired.json"))):
    name = os.path.basename(path)[:-len("_paired.json")]
    with open(path) as f:
        correct = json.load(f)["correct"]
    with open(os.path.join(here, f"{name}_report.json")) as f:
        held_out = json.load(f)["held_out"]
    row = summarize(correct)[1]  # the DisCa row; seeds are those both rows have
    anchors = row["name"].removeprefix("DisCa anchors ")
    start = "dense5_650 + 300 roll-out steps at 2e-4" if name.endswith("lr2e-4") else "shipped + 300 roll-out steps"
    accuracy = " / ".join(f"{seed['accuracy']:.3f}" for seed in row["seeds"].values())
    print(f"| {anchors} | {start} | {held_out['rollout_loss_initial']:.5f} → {held_out['rollout_loss_best']:.5f} | "
          f"{accuracy} | {row['pooled']['difference']:+.3f} ± {row['pooled']['difference_error']:.3f} "
          f"(seeds {', '.join(row['seeds'])}) |")

# the 2e-4 continuation against the predictor it continued, prompt by prompt, on the seeds both have
with open(os.path.join(here, "anchors_0_1_3_7_13_c300_lr2e-4_paired.json")) as f:
    continued = json.load(f)["correct"]["DisCa anchors 0 1 3 7 13"]
with open(os.path.join(here, "..", "dense5_650_paired.json")) as f:
    before = json.load(f)["correct"]["DisCa anchors 0 1 3 7 13"]
seeds = [seed for seed in continued if seed in before]
row = summarize({NO_CACHE: {s: before[s] for s in seeds}, "continued": {s: continued[s] for s in seeds}})[1]
print(f"\n2e-4 continuation - dense5_650, paired (seeds {', '.join(seeds)}): "
      f"{row['pooled']['difference']:+.3f} ± {row['pooled']['difference_error']:.3f}")
