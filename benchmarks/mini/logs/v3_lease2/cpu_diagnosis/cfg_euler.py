"""Held-out row of the CFG-distilled DiT sampled with Euler (what MeanFlow training starts from since the init change),
on this CPU, with run.py's own samplers, eval set and metrics (no PSNR: the teacher's videos cost 100 calls each).
From the repo root: PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/mini/logs/v3_lease2/cpu_diagnosis/cfg_euler.py STEPS SEED OUT.json
(10 steps, 512 prompts: 14 minutes on 2 cores)"""
import json, sys, time, torch
torch.set_num_threads(2)
from benchmarks.mini import run
from benchmarks.mini.metrics import attribute_accuracy, classify, frechet_distance, load_classifier, psnr
from disca.hosts.diffusers import load_host
steps, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
preset = run.PRESETS["v3"]
paths = run.Paths("runs/v3/lease2/unused")  # method_rows only names the files
classifier = load_classifier("runs/v3/classifier.safetensors")
evalset = run.eval_set(preset, classifier, seed)
row = next(r for r in run.method_rows(preset, paths) if r["name"] == f"CFG-distilled, no MeanFlow, {steps} steps")
host = load_host("runs/v3/lease2/cfg_distill.safetensors").requires_grad_(False).eval()
started = time.time()
videos, calls, _ = run.generate(row["sampler"], evalset, preset, host, torch.device("cpu"))
predicted, features = classify(classifier, videos)
result = {"row": row["name"], "noise_seed": seed, "dit_calls": calls, "accuracy": attribute_accuracy(predicted, evalset.labels),
          "frechet_distance": frechet_distance(features, evalset.real_features), "seconds": time.time() - started}
print(json.dumps(result, indent=1))
json.dump(result, open(out, "w"), indent=1)
