"""What a predicted step costs against a full step for candidate DisCa-mini shapes (issue 16's <= 15 % target).

    OMP_NUM_THREADS=2 python -m benchmarks.mini.cost_ratio            # prints a table; --out writes it as JSON
    OMP_NUM_THREADS=2 python -m benchmarks.mini.cost_ratio --parts    # the demo model's predicted step, part by part

DisCa-mini's DiT as `run.init_dit` builds it (diffusers HunyuanVideo-1.0, 48 latent channels, the demo's 9x16x16
latent: 576 image tokens, 32 text tokens), with H heads of width W, MLP ratio M, D double + S single blocks, and a
predictor of P single-stream blocks. A full step is `host.forward` (embedding, every block, final layer); a predicted step is
`host.predict` (embedding, fusion + P blocks, final layer), both as the demo runs them (`disca.sampling`), timed side
by side in one process, median of `--repeats`. CPU ratios say how the cost splits; absolute times mean nothing here.
`--parts` splits the embedded demo model's predicted step into the embedding, the fusion MLP, the predictor's blocks
and the final layer, each timed alternately with a full step: what no schedule can go below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from benchmarks.mini.text import TEXT_DIM
from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit, rope_axes

# A token carries 2x2 patches of 48 channels = 192 values, and the velocity target's noise has unit variance in each:
# a hidden width below 192 maps every output token into a fixed (width)-dimensional subspace, so the training loss
# cannot fall below (192 - width) / 192 (hidden 128: 1/3; the v3 attempt's teacher sat at 0.40 for 2,200 steps).
TOKEN_VALUES = 48 * 2 * 2

# (heads, head width, MLP ratio, double, single, predictor blocks): v2 as shipped; 256 wide and deep (over the demo's
# 25 MB); the 128-wide v3 attempt (loss floor); 192 wide; 256 wide, MLP ratio 2 (the GPU probe's shape); v3 (the last)
CANDIDATES = ((2, 128, 4.0, 2, 2, 2), (2, 128, 4.0, 4, 12, 2), (1, 128, 4.0, 4, 20, 2), (3, 64, 2.0, 2, 16, 2),
              (2, 128, 2.0, 1, 9, 1), (2, 128, 1.0, 1, 12, 1))


def host_of(heads: int, head_width: int, mlp_ratio: float, double: int, single: int) -> HunyuanVideoHost:
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=48, out_channels=48, num_attention_heads=heads, attention_head_dim=head_width, num_layers=double,
        num_single_layers=single, num_refiner_layers=1, mlp_ratio=mlp_ratio, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=TEXT_DIM, pooled_projection_dim=768,
        rope_axes_dim=rope_axes(head_width)).eval()
    host = HunyuanVideoHost(transformer)
    host.add_time_r_embedder()
    return host.requires_grad_(False)


def median_seconds(first, second, repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """Medians of `repeats` timed calls of each, alternating (so load changes on a shared CPU hit both alike), after
    one untimed call of each unless the caller has just made it (`warm_up=False`)."""
    if warm_up:
        first(), second()
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


@torch.no_grad()
def measure(heads: int, head_width: int, mlp_ratio: float, double: int, single: int, depth: int, repeats: int) -> dict:
    host = host_of(heads, head_width, mlp_ratio, double, single)
    predictor = predictor_from_dit(host, depth)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 48, 9, 16, 16, generator=generator)
    cond = {"prompt_embeds": torch.randn(1, 32, TEXT_DIM, generator=generator),
            "prompt_mask": torch.ones(1, 32, dtype=torch.int64),
            "pooled_embeds": torch.randn(1, 768, generator=generator)}
    sigma, r = torch.tensor([0.7]), torch.tensor([0.6])
    _, cache = host.forward_with_cache(latents, sigma, cond, r)
    full, predicted = median_seconds(lambda: host(latents, sigma, cond, r),
                                     lambda: host.predict(predictor, latents, sigma, cond, cache, r), repeats)
    parameters = sum(p.numel() for p in host.parameters())
    hidden = heads * head_width
    return dict(hidden=hidden, heads=heads, mlp_ratio=mlp_ratio, loss_floor=round(max(0, TOKEN_VALUES - hidden) / TOKEN_VALUES, 3),
                double=double, single=single, predictor_blocks=depth, dit_params_m=round(parameters / 1e6, 2),
                dit_bf16_mb=round(parameters * 2 / 1e6, 1),
                predictor_bf16_mb=round(sum(p.numel() for p in predictor.parameters()) * 2 / 1e6, 1),
                full_ms=round(1000 * full, 2), predicted_ms=round(1000 * predicted, 2),
                predicted_over_full=round(predicted / full, 3))


@torch.no_grad()
def predicted_step_parts(repeats: int) -> dict[str, float]:
    """The embedded demo model at its latent size, the demo's prompt: milliseconds of a full step, a predicted step
    and each part of the latter, each part timed alternately with a full step (medians of `repeats`)."""
    from benchmarks.mini.demo import DEFAULT_PROMPT, WEIGHTS, load_models
    from benchmarks.mini.text import encode_prompts

    host, predictor, _ = load_models(WEIGHTS)
    with open(os.path.join(WEIGHTS, "demo.json")) as f:
        settings = json.load(f)
    latents = torch.randn(1, host.transformer.config.in_channels, *settings["latent_shape"],
                          generator=torch.Generator().manual_seed(1))
    cond = encode_prompts([DEFAULT_PROMPT])
    sigma, r, guidance = torch.tensor([0.7]), torch.tensor([0.6]), torch.tensor([settings["guidance"]])
    _, cache = host.forward_with_cache(latents, sigma, cond, r, guidance)
    e = host.embed(latents, sigma, cond, r, guidance)
    tokens = predictor.fuse_tokens(torch.cat([e.img, e.txt], dim=1), cache[0])
    img, txt = tokens[:, : e.img.shape[1]], tokens[:, e.img.shape[1]:]
    parts = {"predicted step": lambda: host.predict(predictor, latents, sigma, cond, cache, r, guidance),
             "embedding (latent, text, t, r, guidance)": lambda: host.embed(latents, sigma, cond, r, guidance),
             "fusion MLP": lambda: predictor.fuse_tokens(torch.cat([e.img, e.txt], dim=1), cache[0]),
             f"predictor blocks ({len(predictor.blocks)})": lambda: [b(img, txt, e.temb, e.attention_mask, e.rotary)
                                                                      for b in predictor.blocks],
             "final layer": lambda: host.finalize(e, e.img)}
    full = lambda: host(latents, sigma, cond, r, guidance)  # noqa: E731
    timed = {name: median_seconds(part, full, repeats) for name, part in parts.items()}
    result = {"full step": 1000 * statistics.median(full_seconds for _, full_seconds in timed.values())}
    result.update({name: 1000 * seconds for name, (seconds, _) in timed.items()})
    return result


def main(argv: list[str] | None = None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--out", help="write the table as JSON")
    parser.add_argument("--parts", action="store_true", help="the demo model's predicted step, part by part")
    args = parser.parse_args(argv)
    if args.parts:
        parts = predicted_step_parts(args.repeats)
        print("| part | ms | of a full step |\n|---|---|---|")
        for name, ms in parts.items():
            print(f"| {name} | {ms:.2f} | {ms / parts['full step']:.3f} |")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(dict(command="python -m benchmarks.mini.cost_ratio --parts", threads=torch.get_num_threads(),
                               repeats=args.repeats, milliseconds=parts), f, indent=1)
        return parts
    rows = [measure(*candidate, args.repeats) for candidate in CANDIDATES]
    print("| hidden (heads) | MLP | loss floor | double + single | predictor blocks | DiT params | DiT bf16 MB | "
          "predictor bf16 MB | full ms | predicted ms | predicted / full |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['hidden']} ({row['heads']}) | {row['mlp_ratio']:g} | {row['loss_floor']} | {row['double']} + "
              f"{row['single']} | {row['predictor_blocks']} | {row['dit_params_m']}M | "
              f"{row['dit_bf16_mb']} | {row['predictor_bf16_mb']} | {row['full_ms']} | {row['predicted_ms']} | "
              f"{row['predicted_over_full']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(command="python -m benchmarks.mini.cost_ratio", threads=torch.get_num_threads(),
                           rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
