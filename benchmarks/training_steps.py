"""Time and memory of one predictor-stage step on a full-size HunyuanVideo-1.0 with random weights (one GPU).

    python -m benchmarks.training_steps --latent 33,60,104     # 480x832, 129 frames
    python -m benchmarks.training_steps --latent 33,90,160     # 720x1280, 129 frames

Measures the three costs of `training/predictor.py` at full size: a trajectory step of the frozen bf16 DiT (forward +
cache), an MSE step (predictor forward + backward) and a GAN step (predictor + discriminator trunk up to the deepest
tap, backward through the frozen trunk, plus the discriminator update). The trunk's generator pass is checkpointed as
in the stage: segments of ~sqrt(n) blocks, each block checkpointed again inside (`--trunk_segment_blocks 1`: plain
per-block checkpointing, what the 2026-11-25 logs measured). Random weights:
numbers are for speed and memory only. Each step's warm-up is printed too; a step that runs out of GPU memory is
reported with the peak allocated when it failed, and the next step still runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit
from disca.sampling import euler_step
from training.discriminator import (FeatureDiscriminator, default_taps, hinge_discriminator_loss, hinge_generator_loss,
                                    trunk_features)


def _timed(fn, repeats: int) -> tuple[float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> dict:
    from diffusers import HunyuanVideoTransformer3DModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", default="33,60,104", help="latent frames,height,width")
    parser.add_argument("--text_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trunk_segment_blocks", type=int, default=0,
                        help="blocks per checkpointed trunk segment in the GAN step; 0: ceil(sqrt(blocks run)), 1: per-block")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.latent.split(","))
    device = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        transformer = HunyuanVideoTransformer3DModel().to(torch.bfloat16)
    host = HunyuanVideoHost(transformer)
    host.add_time_r_embedder()
    host.requires_grad_(False).eval()
    transformer.enable_gradient_checkpointing()
    predictor = predictor_from_dit(host).float().to(device)
    predictor.checkpoint_blocks = True  # what `gradient_checkpointing: true` does in the predictor stage
    taps = default_taps(len(host.main_blocks()))
    segment_blocks = args.trunk_segment_blocks or None  # None: block_features picks ceil(sqrt(max(taps) + 1))
    discriminator = FeatureDiscriminator(host.hidden_size, taps).to(device)
    opt_p = torch.optim.AdamW(predictor.parameters(), lr=1e-4)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=1e-2)
    cond = {"prompt_embeds": torch.randn(1, args.text_tokens, 4096, device=device, dtype=torch.bfloat16),
            "prompt_mask": torch.ones(1, args.text_tokens, dtype=torch.int64, device=device),
            "pooled_embeds": torch.randn(1, 768, device=device, dtype=torch.bfloat16)}
    latents = torch.randn(1, 16, *shape, device=device, dtype=torch.bfloat16)
    sigma, sigma_next, guidance = (torch.tensor([v], device=device) for v in (0.8, 0.75, 6.0))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)

    with torch.no_grad(), autocast:
        target, cache = host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)

    def trajectory_step():
        with torch.no_grad(), autocast:
            host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)

    def mse_step():
        with autocast:
            loss = (host.predict(predictor, latents, sigma, cond, cache, sigma_next, guidance).float() - target.float()).pow(2).mean()
        loss.backward()
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)

    def gan_step():
        with autocast:
            predicted = host.predict(predictor, latents, sigma, cond, cache, sigma_next, guidance)
            fake = euler_step(latents, predicted, sigma, sigma_next)
            loss = (predicted.float() - target.float()).pow(2).mean() + hinge_generator_loss(
                discriminator(trunk_features(host, taps, fake, sigma_next, cond, guidance, segment_blocks)))
        loss.backward()
        opt_d.zero_grad(set_to_none=True)
        with autocast:
            with torch.no_grad():
                real_features = trunk_features(host, taps, euler_step(latents, target, sigma, sigma_next), sigma_next, cond, guidance)
                fake_features = trunk_features(host, taps, fake.detach(), sigma_next, cond, guidance)
            d_loss = hinge_discriminator_loss(discriminator(real_features), discriminator(fake_features))
        d_loss.backward()
        opt_p.step()
        opt_d.step()
        opt_p.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)

    tokens = shape[0] * (shape[1] // 2) * (shape[2] // 2)
    result = {"gpu": torch.cuda.get_device_name(), "latent": list(shape), "image_tokens": tokens,
              "trunk_segment_blocks": segment_blocks or math.ceil(math.sqrt(max(taps) + 1)),
              "dit_params_b": sum(p.numel() for p in transformer.parameters()) / 1e9,
              "predictor_params_m": sum(p.numel() for p in predictor.parameters()) / 1e6}
    for name, fn in (("trajectory_step", trajectory_step), ("mse_step", mse_step), ("gan_step", gan_step)):
        try:
            seconds, peak = _timed(fn, 1)  # warm-up (kernel selection, allocator); printed in case a repeat is cut off
            print(name, "warm-up", {"seconds": round(seconds, 3), "peak_gib": round(peak, 1)}, flush=True)
            seconds, peak = _timed(fn, args.repeats)
            result[name] = {"seconds": round(seconds, 3), "peak_gib": round(peak, 1)}
        except torch.OutOfMemoryError as error:
            # report it and go on: the peak is what was allocated when the failing allocation was asked for
            result[name] = {"out_of_memory": str(error).split(". ")[0],
                            "peak_gib_at_failure": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
            opt_p.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        print(name, result[name], flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
