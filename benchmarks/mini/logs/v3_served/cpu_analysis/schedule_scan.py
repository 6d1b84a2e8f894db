"""Which anchor lists with an early full step serve the shipped predictor best for their DiT calls? The shipped demo
model (R-MeanFlow DiT + the x6 predictor, trained on N = 2, 3, 4 pairs), 20 steps; for each list, the distance of
the final videos to the same model's un-cached 20-step videos (same noises) and the classifier's accuracy. extra_anchor.py
(logs/v3_lease3/cpu_analysis) found N = 4's error made in its first window; this asks how sparse the later windows may be.
First PROMPTS held-out prompts, noise seed 0, this CPU, run.py's samplers and metrics. From the repo root:
PYTHONPATH=. python benchmarks/mini/logs/v3_served/cpu_analysis/schedule_scan.py PROMPTS OUT.json"""
import dataclasses, json, sys, time, torch
torch.set_num_threads(2)
from benchmarks.mini import run
from benchmarks.mini.metrics import attribute_accuracy, classify, load_classifier, psnr
from disca.hosts.diffusers import load_host
prompts, out = int(sys.argv[1]), sys.argv[2]
weights = "benchmarks/mini/weights"
preset = dataclasses.replace(run.PRESETS["v3"], held_out=prompts, real_reference=64)
classifier = load_classifier(f"{weights}/classifier.safetensors")
evalset = run.eval_set(preset, classifier, 0)
host = load_host(f"{weights}/dit.safetensors").requires_grad_(False).eval()
cpu = torch.device("cpu")
reference, _, _ = run.generate(run.plain_sampler(preset, preset.steps), evalset, preset, host, cpu)
SCHEDULES = ["0 4 8 12 16", "0 1 4 8 12 16", "0 1 5 10 15", "0 1 4 9 14", "0 1 3 7 13", "0 1 3 8 14",
             "0 1 2 6 11 16", "0 1 3 6 10 15", "0 1 2 7 13"]


def measure(anchors):
    started = time.time()
    sampler = run.cached_sampler(preset, None, "predictor", f"{weights}/predictor.safetensors", anchors=tuple(anchors))
    videos, calls, _ = run.generate(sampler, evalset, preset, host, cpu)
    predicted, _ = classify(classifier, videos)
    row = {"anchors": list(anchors), "dit_calls": calls, "mse_vs_no_cache": float(((videos - reference) ** 2).mean()),
           "psnr_vs_no_cache": float(psnr(videos, reference).mean()),
           "accuracy": attribute_accuracy(predicted, evalset.labels), "seconds": time.time() - started}
    print(json.dumps({k: row[k] for k in ("anchors", "dit_calls", "mse_vs_no_cache", "psnr_vs_no_cache")}),
          "all", round(row["accuracy"]["all"], 3), flush=True)
    return row


rows = [measure([int(a) for a in s.split()]) for s in SCHEDULES]
predicted, _ = classify(classifier, reference)
json.dump({"prompts": prompts, "noise_seed": 0, "no_cache_accuracy": attribute_accuracy(predicted, evalset.labels),
           "rows": rows}, open(out, "w"), indent=1)
