"""The frame strip strip_seed0_prompts0-2.png: frames 0, 4 and 8 of held-out prompts 0-2 (noise seed 0), rows no cache,
N = 4 shipped, N = 4 roll-out, 0 1 3 7 13 shipped, 0 1 3 7 13 roll-out; this CPU, fp32. It needs the N = 4 roll-out
predictor, which is not committed (sha256 99e08a78..., RESULTS.md). From the repo root:
PYTHONPATH=. python benchmarks/mini/logs/rollout/cpu_analysis/strip.py N4_ROLLOUT_PREDICTOR OUT.png"""
import sys
import numpy as np, torch
from PIL import Image
from benchmarks.mini import run
from benchmarks.mini.dataset import HELDOUT_SEED, from_latents, make_batch
from benchmarks.mini.text import encode_prompts
from disca.hosts.diffusers import load_host
n4_rollout, out = sys.argv[1], sys.argv[2]
shipped, dense5_rollout = "benchmarks/mini/weights/predictor.safetensors", "benchmarks/mini/logs/rollout/dense5_650_predictor.safetensors"
preset = run.PRESETS["v3"]
host = load_host("benchmarks/mini/weights/dit.safetensors").requires_grad_(False).eval()
_, _, prompts = make_batch(HELDOUT_SEED, range(3), preset.spec)
noise = torch.randn(512, 48, *run.latent_shape(preset), generator=torch.Generator().manual_seed(run.SEED + 12345))[:3]
cond = encode_prompts(prompts)
samplers = [run.plain_sampler(preset, 20), run.cached_sampler(preset, 4, "predictor", shipped),
            run.cached_sampler(preset, 4, "predictor", n4_rollout),
            run.cached_sampler(preset, None, "predictor", shipped, anchors=(0, 1, 3, 7, 13)),
            run.cached_sampler(preset, None, "predictor", dense5_rollout, anchors=(0, 1, 3, 7, 13))]
with torch.no_grad():
    videos = [from_latents(s(host, noise, cond).float()).clamp(-1, 1) for s in samplers]
grid = torch.cat([torch.cat([v[p, :, f] for f in (0, 4, 8)], dim=2) for p in range(3) for v in videos], dim=1)
Image.fromarray(((grid.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(out, optimize=True)
