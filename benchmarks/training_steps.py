"""Time and memory of one predictor-stage step on a full-size HunyuanVideo-1.0 with random weights (one GPU).

    python -m benchmarks.training_steps --latent 33,60,104     # 480x832, 129 frames
    python -m benchmarks.training_steps --latent 33,90,160     # 720x1280, 129 frames

Measures the three costs of `training/predictor.py` at full size: a trajectory step of the frozen bf16 DiT (forward +
cache), an MSE step (predictor forward + backward) and a GAN step (predictor + discriminator trunk up to the deepest
tap, backward through the frozen trunk, plus the discriminator update). The trunk's generator pass is checkpointed as
in the stage: segments of ~sqrt(n) blocks, each block checkpointed again inside (`--trunk_segment_blocks 1`: plain
per-block checkpointing, what the 2026-11-25 logs measured). The MSE and GAN steps are the stage's own
`training.predictor.step_losses`. Random weights:
numbers are for speed and memory only. Each step's warm-up is printed too; a step that runs out of GPU memory is
reported with the peak allocated when it failed, and the next step still runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from disca.formats import ARCH_HV10
from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit
from training.batches import guidance_for
from training.config import PredictorConfig
from training.discriminator import FeatureDiscriminator, default_taps
from training.predictor import step_losses
from training.tiny import TINY_LATENT, tiny_conditioning, tiny_host


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0


def _models(tiny: bool, device: torch.device, latent: tuple[int, int, int], text_tokens: int):
    """The frozen DiT host, its conditioning and latents: full-size random bf16 on the GPU, or the tests' tiny model."""
    if tiny:
        host = tiny_host(ARCH_HV10).to(device)
        cond = tiny_conditioning(ARCH_HV10, 1, seed=1, padded=False)
        latent = TINY_LATENT[ARCH_HV10]
    else:
        from diffusers import HunyuanVideoTransformer3DModel

        with torch.device(device):
            host = HunyuanVideoHost(HunyuanVideoTransformer3DModel().to(torch.bfloat16))
        cond = {"prompt_embeds": torch.randn(1, text_tokens, 4096, dtype=torch.bfloat16),
                "prompt_mask": torch.ones(1, text_tokens, dtype=torch.int64),
                "pooled_embeds": torch.randn(1, 768, dtype=torch.bfloat16)}
    latents = torch.randn(1, host.transformer.config.out_channels, *latent)  # fp32, as the stage keeps the state
    return host, {k: v.to(device) for k, v in cond.items()}, latents.to(device), latent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", default="33,60,104", help="latent frames,height,width")
    parser.add_argument("--text_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trunk_segment_blocks", type=int, default=0,
                        help="blocks per checkpointed trunk segment in the GAN step; 0: ceil(sqrt(blocks run)), 1: per-block")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model on the CPU (checks the script)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    torch.manual_seed(0)
    host, cond, latents, shape = _models(args.tiny, device, tuple(int(v) for v in args.latent.split(",")),
                                         args.text_tokens)
    transformer = host.transformer
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
    sigma, sigma_next = torch.tensor([0.8], device=device), torch.tensor([0.75], device=device)
    guidance = guidance_for(host, 6.0, 1, device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.tiny)

    with torch.no_grad(), autocast():
        target, cache = host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)
    batch = {"latents": latents, "target": target, "cache": cache, "sigma": sigma, "sigma_next": sigma_next,
             "cond": cond}

    def trajectory_step():
        with torch.no_grad(), autocast():
            host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)

    def training_step(gan: bool):
        # the predictor stage's own step, with the stage's defaults for what D judges and the adversarial weight
        step_losses(host, predictor, discriminator, taps, batch, guidance, gan=gan,
                    disc_input=PredictorConfig.disc_input, adv_weight=PredictorConfig.adv_weight, backward=torch.Tensor.backward, autocast=autocast,
                    segment_blocks=segment_blocks)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        if gan:
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)

    tokens = shape[0] * (shape[1] // 2) * (shape[2] // 2)
    result = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny)", "latent": list(shape),
              "image_tokens": tokens,
              "trunk_segment_blocks": segment_blocks or math.ceil(math.sqrt(max(taps) + 1)),
              "dit_params_b": sum(p.numel() for p in transformer.parameters()) / 1e9,
              "predictor_params_m": sum(p.numel() for p in predictor.parameters()) / 1e6}
    steps = (("trajectory_step", trajectory_step), ("mse_step", lambda: training_step(gan=False)),
             ("gan_step", lambda: training_step(gan=True)))
    for name, fn in steps:
        try:
            seconds, peak = _timed(fn, 1, device)  # warm-up (kernel selection, allocator); printed in case a repeat is cut off
            print(name, "warm-up", {"seconds": round(seconds, 3), "peak_gib": round(peak, 1)}, flush=True)
            seconds, peak = _timed(fn, args.repeats, device)
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
