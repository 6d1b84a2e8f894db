"""Held-out rows of DisCa on the shipped demo model with the anchors 0, 1, 4, 8, 12, 16 (N = 4 plus a full step 1,
which extra_anchor.py found the costliest predicted step), on this CPU, with run.py's samplers, eval set and metrics
(no PSNR: the teacher's videos cost 100 calls each). From the repo root:
PYTHONPATH=. python benchmarks/mini/logs/v3_lease3/cpu_analysis/first_step_anchor.py SEED OUT.json  (~10 min a seed)"""
import json, sys, time, torch
torch.set_num_threads(2)
from benchmarks.mini import run
from benchmarks.mini.metrics import attribute_accuracy, classify, frechet_distance, load_classifier
from disca.hosts.diffusers import load_host
seed, out = int(sys.argv[1]), sys.argv[2]
weights, anchors = "benchmarks/mini/weights", (0, 1, 4, 8, 12, 16)
preset = run.PRESETS["v3"]
classifier = load_classifier(f"{weights}/classifier.safetensors")
evalset = run.eval_set(preset, classifier, seed)
host = load_host(f"{weights}/dit.safetensors").requires_grad_(False).eval()
started = time.time()
sampler = run.cached_sampler(preset, None, "predictor", f"{weights}/predictor.safetensors", anchors=anchors)
videos, calls, _ = run.generate(sampler, evalset, preset, host, torch.device("cpu"))
predicted, features = classify(classifier, videos)
result = {"anchors": anchors, "noise_seed": seed, "dit_calls": calls, "accuracy": attribute_accuracy(predicted, evalset.labels),
          "frechet_distance": frechet_distance(features, evalset.real_features), "seconds": time.time() - started}
print(json.dumps(result, indent=1))
json.dump(result, open(out, "w"), indent=1)
