"""Per-attribute accuracy of DisCa with a given predictor file and anchor list on the 512 held-out prompts, on this
CPU (fp32), with run.py's samplers, eval set and classifier. From the repo root:
PYTHONPATH=. python benchmarks/mini/logs/rollout/cpu_analysis/attributes.py PREDICTOR "0 1 3 7 13" SEED OUT.json"""
import json, sys, time, torch
torch.set_num_threads(2)
from benchmarks.mini import run
from benchmarks.mini.metrics import attribute_accuracy, classify, frechet_distance, load_classifier
from disca.hosts.diffusers import load_host
predictor, anchors, seed, out = sys.argv[1], tuple(map(int, sys.argv[2].split())), int(sys.argv[3]), sys.argv[4]
weights, preset = "benchmarks/mini/weights", run.PRESETS["v3"]
classifier = load_classifier(f"{weights}/classifier.safetensors")
evalset = run.eval_set(preset, classifier, seed)
host = load_host(f"{weights}/dit.safetensors").requires_grad_(False).eval()
started = time.time()
videos, calls, _ = run.generate(run.cached_sampler(preset, None, "predictor", predictor, anchors=anchors), evalset,
                                preset, host, torch.device("cpu"))
predicted, features = classify(classifier, videos)
result = {"predictor": predictor, "anchors": anchors, "noise_seed": seed, "dit_calls": calls,
          "accuracy": attribute_accuracy(predicted, evalset.labels),
          "frechet_distance": frechet_distance(features, evalset.real_features), "seconds": time.time() - started}
print(json.dumps(result, indent=1))
json.dump(result, open(out, "w"), indent=1)
