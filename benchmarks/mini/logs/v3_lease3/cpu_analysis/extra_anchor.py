"""Which predicted steps of DisCa N = 4 cost the most? The shipped demo model (R-MeanFlow DiT + the x6 predictor), 20
steps, anchors 0, 4, 8, 12, 16; each predicted step k in turn made a full step (anchors + {k}), and the distance of
the final videos to the same model's un-cached 20-step videos (same noises) measured; N = 3 and N = 4 alone for scale.
First PROMPTS held-out prompts, noise seed 0, this CPU, run.py's samplers and metrics. From the repo root:
PYTHONPATH=. python benchmarks/mini/logs/v3_lease3/cpu_analysis/extra_anchor.py PROMPTS OUT.json"""
import dataclasses, json, sys, time, torch
torch.set_num_threads(2)
from benchmarks.mini import run
from benchmarks.mini.metrics import attribute_accuracy, classify, load_classifier, psnr
from disca.hosts.diffusers import load_host
from disca.schedules import AnchorSchedule
prompts, out = int(sys.argv[1]), sys.argv[2]
weights = "benchmarks/mini/weights"
preset = dataclasses.replace(run.PRESETS["v3"], held_out=prompts, real_reference=64)
classifier = load_classifier(f"{weights}/classifier.safetensors")
evalset = run.eval_set(preset, classifier, 0)
host = load_host(f"{weights}/dit.safetensors").requires_grad_(False).eval()
cpu = torch.device("cpu")
reference, _, _ = run.generate(run.plain_sampler(preset, preset.steps), evalset, preset, host, cpu)


def measure(name, anchors):
    started = time.time()
    sampler = run.cached_sampler(preset, None, "predictor", f"{weights}/predictor.safetensors", anchors=tuple(anchors))
    videos, calls, _ = run.generate(sampler, evalset, preset, host, cpu)
    predicted, _ = classify(classifier, videos)
    row = {"name": name, "anchors": list(anchors), "dit_calls": calls,
           "mse_vs_no_cache": float(((videos - reference) ** 2).mean()),
           "psnr_vs_no_cache": float(psnr(videos, reference).mean()),
           "accuracy": attribute_accuracy(predicted, evalset.labels), "seconds": time.time() - started}
    print(json.dumps({k: row[k] for k in ("name", "dit_calls", "mse_vs_no_cache", "psnr_vs_no_cache")}), flush=True)
    return row


base = AnchorSchedule(interval=4).anchor_steps(preset.steps)
rows = [measure("N=4", base), measure("N=3", AnchorSchedule(interval=3).anchor_steps(preset.steps))]
for k in range(preset.steps):
    if k not in base:
        rows.append(measure(f"N=4 + step {k} full", sorted(set(base) | {k})))
predicted, _ = classify(classifier, reference)
json.dump({"prompts": prompts, "noise_seed": 0, "no_cache_accuracy": attribute_accuracy(predicted, evalset.labels),
           "rows": rows}, open(out, "w"), indent=1)
