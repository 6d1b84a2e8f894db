"""What a predicted step costs against a full step for candidate DisCa-mini shapes (issue 16's <= 15 % target).

    OMP_NUM_THREADS=2 python -m benchmarks.mini.cost_ratio            # prints a table; --out writes it as JSON

DisCa-mini's DiT as `run.init_dit` builds it (diffusers HunyuanVideo-1.0, heads of 128, 48 latent channels, the
demo's 9x16x16 latent: 576 image tokens, 32 text tokens), with H heads, D double + S single blocks, and a predictor
of P single-stream blocks. A full step is `host.forward` (embedding, every block, final layer); a predicted step is
`host.predict` (embedding, fusion + P blocks, final layer), both as the demo runs them (`disca.sampling`), timed side
by side in one process, median of `--repeats`. CPU ratios say how the cost splits; absolute times mean nothing here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.mini.text import TEXT_DIM
from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit

# (heads of 128, double, single, predictor blocks): v2 as shipped, then deeper shapes; one head (hidden 128) is what
# keeps a deep DiT and its predictor within the demo's 25 MB of bf16 weights
CANDIDATES = ((2, 2, 2, 2), (2, 4, 12, 2), (1, 4, 12, 2), (1, 2, 14, 2), (1, 4, 20, 2), (1, 4, 8, 1))


def host_of(heads: int, double: int, single: int) -> HunyuanVideoHost:
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=48, out_channels=48, num_attention_heads=heads, attention_head_dim=128, num_layers=double,
        num_single_layers=single, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=TEXT_DIM, pooled_projection_dim=768,
        rope_axes_dim=(16, 56, 56)).eval()
    host = HunyuanVideoHost(transformer)
    host.add_time_r_embedder()
    return host.requires_grad_(False)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def measure(heads: int, double: int, single: int, depth: int, repeats: int) -> dict:
    host = host_of(heads, double, single)
    predictor = predictor_from_dit(host, depth)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 48, 9, 16, 16, generator=generator)
    cond = {"prompt_embeds": torch.randn(1, 32, TEXT_DIM, generator=generator),
            "prompt_mask": torch.ones(1, 32, dtype=torch.int64),
            "pooled_embeds": torch.randn(1, 768, generator=generator)}
    sigma, r = torch.tensor([0.7]), torch.tensor([0.6])
    _, cache = host.forward_with_cache(latents, sigma, cond, r)
    full = median_seconds(lambda: host(latents, sigma, cond, r), repeats)
    predicted = median_seconds(lambda: host.predict(predictor, latents, sigma, cond, cache, r), repeats)
    parameters = sum(p.numel() for p in host.parameters())
    return dict(hidden=128 * heads, double=double, single=single, predictor_blocks=depth, dit_params_m=round(parameters / 1e6, 2),
                dit_bf16_mb=round(parameters * 2 / 1e6, 1),
                predictor_bf16_mb=round(sum(p.numel() for p in predictor.parameters()) * 2 / 1e6, 1),
                full_ms=round(1000 * full, 2), predicted_ms=round(1000 * predicted, 2),
                predicted_over_full=round(predicted / full, 3))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", help="write the table as JSON")
    args = parser.parse_args(argv)
    rows = [measure(h, d, s, p, args.repeats) for h, d, s, p in CANDIDATES]
    print("| hidden | double + single | predictor blocks | DiT params | DiT bf16 MB | predictor bf16 MB | full ms | predicted ms | "
          "predicted / full |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['hidden']} | {row['double']} + {row['single']} | {row['predictor_blocks']} | {row['dit_params_m']}M | "
              f"{row['dit_bf16_mb']} | {row['predictor_bf16_mb']} | {row['full_ms']} | {row['predicted_ms']} | "
              f"{row['predicted_over_full']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(command="python -m benchmarks.mini.cost_ratio", threads=torch.get_num_threads(),
                           rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
