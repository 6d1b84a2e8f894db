"""CPU probe of lease 2's students: per-interval average-velocity error vs one Euler step for R = 1.0, R = 0.2 and
their untrained init (the CFG-distilled DiT with an r-embedder from `add_time_r_embedder`), and the objective by
interval for both students (128 training clips, p = 1, c = 1e-3: c is negligible next to L here).

Ran at commit 87643f1, where `add_time_r_embedder` still copied time_in (the "init" rows); from 63346b6 on, the init
equals the flow model for every r, so its rows equal the Euler column by construction. From the repo root, with
lease 2's files in runs/v3/lease2 (sha256 in ../SHA256SUMS) and the classifier in runs/v3:
    OMP_NUM_THREADS=2 python benchmarks/mini/logs/v3_lease2/cpu_diagnosis/probe.py 16 out.json   # ~15 min, 2 cores
"""
import json, sys, time, torch
sys.path.insert(0, ".")
torch.set_num_threads(2)
from benchmarks.mini import meanflow_diagnosis as md
from benchmarks.mini.run import PRESETS, eval_set
from benchmarks.mini.metrics import load_classifier
from disca.hosts.diffusers import load_host
from training.meanflow import exact_fp32
L = "runs/v3/lease2"
preset = PRESETS["v3"]
prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 16
classifier = load_classifier("runs/v3/classifier.safetensors")
t0 = time.time(); ev = eval_set(preset, classifier); print("eval_set", time.time() - t0, flush=True)
rows = range(prompts)
cond = {k: v[rows] for k, v in ev.cond.items()}; noise = ev.noise[rows]
out = {}
def hosts():
    init = load_host(f"{L}/cfg_distill.safetensors").requires_grad_(False).eval()
    init.add_time_r_embedder()
    yield "init", init.float()
    for R in ("1.0", "0.2"):
        yield f"R{R}", load_host(f"{L}/meanflow_R{R}.safetensors").requires_grad_(False).eval()
teacher = load_host(f"{L}/cfg_distill.safetensors").requires_grad_(False).eval()
with exact_fp32():
    for name, host in hosts():
        t0 = time.time()
        found = md.diagnose(host, noise, cond, 10, preset.shift, 6, preset.cfg_scale)
        found.pop("sample")
        out[name] = {"intervals": found["intervals"]}
        print(name, "diagnosis", round(time.time() - t0), "s", flush=True)
        for i in found["intervals"]:
            print(f"  [{i['r']:.3f},{i['t']:.3f}] average {i['average']:.4f} euler {i['euler']:.4f}", flush=True)
        if name != "init":
            R = float(name[1:])
            out[name]["objective"] = md.objective_by_interval(host, teacher, preset, 128, R, 1.0, 1e-3, preset.cfg_scale)
            for b in out[name]["objective"]:
                print("  ", b, flush=True)
        json.dump(out, open(sys.argv[2] if len(sys.argv) > 2 else "probe.json", "w"), indent=1)
