"""DisCa on a diffusers HunyuanVideo-1.0 transformer with Ulysses context parallelism: 1 GPU vs N GPUs (GPU).

    torchrun --standalone --nproc_per_node 1 benchmarks/diffusers_cp.py --out runs/cp     # first: the 1-GPU reference
    torchrun --standalone --nproc_per_node 2 benchmarks/diffusers_cp.py --out runs/cp     # then: 2 GPUs, compared
    torchrun --standalone --nproc_per_node 2 benchmarks/diffusers_cp.py --out runs/cp_cpu --tiny   # CPU check (gloo)

Full-size random HunyuanVideo-1.0 (12.8B, bf16, a MeanFlow r-embedder and embedded guidance, as the official DisCa
T2V DiT; or, with --arch hunyuan_video_1_5, the 8.3B 1.5 I2V MeanFlow model) and a random predictor of the official
shape, driven through `disca.hosts.diffusers_hooks` by the denoising loop of diffusers' pipelines (scheduler,
`cache_context("cond")`, `scheduler.step`) without their text encoders and VAE: padded prompts (1.0: 256 tokens, 80
valid; 1.5: 1000 LLM tokens, 256 ByT5 tokens and 729 image tokens). Per world size it measures a no-cache run
(every step an anchor) and DisCa N4, each step's time from the runtime's own timer, and on more than one GPU a
torch.profiler trace of one anchor and one predicted step with the collectives counted per step. The N-GPU run
compares its outputs with the 1-GPU run's (saved in --out) and writes OUT/result_<arch>_<N>gpu.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from disca.formats import ARCH_HV10, ARCH_HV15, load_safetensors, save_safetensors  # noqa: E402
from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit  # noqa: E402
from disca.hosts.diffusers_hooks import HOOK_NAME, DisCaHookConfig, apply_disca, set_disca_schedule  # noqa: E402
from disca.schedules import AnchorSchedule  # noqa: E402

TEXT_TOKENS, VALID_TEXT = 256, 80  # 1.0's prompt: 256 tokens, 80 valid; 1.5: 1000 LLM tokens (80 valid), 256 ByT5
GLYPH_TOKENS, VALID_GLYPH, IMAGE_TOKENS, LLM_TOKENS = 256, 12, 729, 1000  # (12 valid), 729 SigLIP tokens: 1985 in all
TINY = {ARCH_HV10: dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64, num_layers=1,
                        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
                        pooled_projection_dim=768, rope_axes_dim=(16, 24, 24), guidance_embeds=True),
        ARCH_HV15: dict(in_channels=65, out_channels=32, num_attention_heads=2, attention_head_dim=64, num_layers=3,
                        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=32, text_embed_2_dim=1472,
                        image_embed_dim=1152, rope_axes_dim=(16, 24, 24))}
LATENT = {ARCH_HV10: "33,88,88", ARCH_HV15: "31,30,53"}  # 704x704x129; 848x480x121


def build(arch: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import HunyuanVideo15Transformer3DModel, HunyuanVideoTransformer3DModel

    torch.manual_seed(0)  # the same weights on every rank
    with torch.device(device):
        if arch == ARCH_HV10:
            transformer = HunyuanVideoTransformer3DModel(**(TINY[arch] if tiny else {}))
        else:  # the 480p I2V step-distilled model: MeanFlow r-embedder, image conditioning
            transformer = HunyuanVideo15Transformer3DModel(**(TINY[arch] if tiny else {}), use_meanflow=True)
    host = HunyuanVideoHost(transformer.to(dtype).eval())
    if arch == ARCH_HV10:
        host.add_time_r_embedder()
    host.requires_grad_(False)
    torch.manual_seed(1)
    predictor = predictor_from_dit(host, depth=2, zero_gates=False)
    for name, module in predictor.named_modules():  # a random fusion, so predicted steps read the current tokens
        if name.startswith("fusion_mlp") and isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    return host, predictor


def inputs(host, latent_shape, device, dtype):
    generator = torch.Generator().manual_seed(2)
    config = host.transformer.config

    def random(*shape):
        return torch.randn(*shape, generator=generator).to(device, dtype)

    def mask(length, valid):
        return (torch.arange(length) < valid).to(torch.int64)[None].to(device)

    noise = torch.randn(1, config.out_channels, *latent_shape, generator=generator).to(device)
    if host.arch == ARCH_HV10:
        kwargs = dict(encoder_hidden_states=random(1, TEXT_TOKENS, config.text_embed_dim),
                      encoder_attention_mask=mask(TEXT_TOKENS, VALID_TEXT), pooled_projections=random(1, 768),
                      guidance=torch.tensor([6000.0], device=device))
        return noise, kwargs, None
    kwargs = dict(encoder_hidden_states=random(1, LLM_TOKENS, config.text_embed_dim),
                  encoder_attention_mask=mask(LLM_TOKENS, VALID_TEXT),
                  encoder_hidden_states_2=random(1, GLYPH_TOKENS, config.text_embed_2_dim),
                  encoder_attention_mask_2=mask(GLYPH_TOKENS, VALID_GLYPH),
                  image_embeds=random(1, IMAGE_TOKENS, config.image_embed_dim))
    condition = random(1, config.in_channels - config.out_channels, *latent_shape)  # first-frame latents + mask
    return noise, kwargs, condition


def denoise(pipe, noise, kwargs, steps: int, around_call=contextlib.nullcontext):
    """The HunyuanVideo pipelines' loop (1.0: pipeline_hunyuan_video.py; 1.5 I2V: the image condition concatenated
    to the latents and r = the next timestep), without the encoders and the VAE."""
    pipe.scheduler.set_timesteps(steps, device=noise.device)
    timesteps = pipe.scheduler.timesteps
    dtype = next(pipe.transformer.parameters()).dtype
    latents = noise if pipe.condition is None else noise.to(dtype)  # the 1.5 pipeline keeps latents in model dtype
    for i, t in enumerate(timesteps):
        model_input, extra = latents, {}
        if pipe.condition is not None:
            model_input = torch.cat([latents, pipe.condition], dim=1)
            r = timesteps[i + 1] if i + 1 < len(timesteps) else torch.zeros_like(t)
            extra["timestep_r"] = r.expand(1).to(latents.dtype)
        with pipe.transformer.cache_context("cond"), around_call(i):
            out = pipe.transformer(hidden_states=model_input.to(dtype), timestep=t.expand(1).to(model_input.dtype),
                                   return_dict=False, **kwargs, **extra)[0]
        latents = pipe.scheduler.step(out, t, latents, return_dict=False)[0]
    return latents


def timed_run(pipe, noise, kwargs, steps: int, schedule) -> tuple[torch.Tensor, dict]:
    set_disca_schedule(pipe, schedule)
    hook = pipe.transformer._diffusers_hook.get_hook(HOOK_NAME)
    sync()
    started = time.perf_counter()
    latents = denoise(pipe, noise, kwargs, steps)
    sync()
    wall = time.perf_counter() - started
    run = hook.state_manager._state_cache["cond"].run
    stats = run.stats
    n_full, n_pred = len(stats.full_steps), len(stats.predicted_steps)
    result = dict(schedule=run.config.schedule.name, steps=steps, wall_s=wall, full_steps=n_full,
                  predicted_steps=n_pred, full_step_s=stats.timer.seconds("full") / max(n_full, 1),
                  predicted_step_s=stats.timer.seconds("predicted") / n_pred if n_pred else None,
                  cache_bytes_this_rank=run.cache.peak_bytes, summary=run.summary())
    pipe.transformer._reset_stateful_cache()  # what the pipeline's maybe_free_model_hooks() does at its end
    return latents, result


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


COLLECTIVE_WORDS = ("all_to_all", "alltoall", "all_gather", "allgather", "all_reduce", "allreduce", "reduce_scatter",
                    "broadcast")


def profile_steps(pipe, noise, kwargs) -> dict:
    """The collectives of each model call of a 2-step N2 run: step 0 an anchor, step 1 predicted from the cache."""
    from torch.profiler import ProfilerActivity, profile

    set_disca_schedule(pipe, "N2")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    profilers = {0: profile(activities=activities), 1: profile(activities=activities)}

    @contextlib.contextmanager
    def around_call(step):
        with profilers[step]:
            yield
            sync()

    denoise(pipe, noise, kwargs, 2, around_call)
    pipe.transformer._reset_stateful_cache()
    counts = {}
    for step, name in ((0, "anchor_step"), (1, "predicted_step")):
        ops = {}
        for event in profilers[step].events():
            if event.device_type.name == "CPU" and any(word in event.name.lower() for word in COLLECTIVE_WORDS):
                ops[event.name] = ops.get(event.name, 0) + 1
        counts[name] = ops
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default=ARCH_HV10, choices=(ARCH_HV10, ARCH_HV15))
    parser.add_argument("--latent", help="latent frames,height,width (default: 1.0 704x704x129, 1.5 848x480x121)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU over gloo (checks the script)")
    parser.add_argument("--bf16", action="store_true", help="with --tiny: bf16 weights, as on the GPU")
    parser.add_argument("--key_mask", action="store_true",
                        help="1.5 on one GPU: attention with the key-only text mask context parallelism uses, instead "
                             "of diffusers' [B, 1, S, S] mask (separates the mask's cost from the split's)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda or args.bf16 else torch.float32
    latent = (2, 8, 8) if args.tiny else tuple(int(v) for v in (args.latent or LATENT[args.arch]).split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from diffusers import FlowMatchEulerDiscreteScheduler

    started = time.perf_counter()
    host, predictor = build(args.arch, args.tiny, device, dtype)
    noise, kwargs, condition = inputs(host, latent, device, dtype)
    shift = 5.0 if args.arch == ARCH_HV10 else 7.0
    pipe = SimpleNamespace(transformer=host.transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                           condition=condition)
    checksum = sum(float(p.float().sum()) for p in list(host.parameters())[:4])
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else "cpu (--tiny)"
    report = dict(arch=args.arch, key_mask=args.key_mask, world=world, gpus=gpus, torch=torch.__version__,
                  latent=list(latent), image_tokens=noise[0, 0].numel() // (4 if args.arch == ARCH_HV10 else 1),
                  build_s=time.perf_counter() - started, weights_checksum=checksum,
                  command="torchrun --nproc_per_node %d %s" % (world, " ".join(sys.argv)))
    # DisCa is attached before parallelism (its block hooks must run inside the plan's split hooks)
    apply_disca(pipe, DisCaHookConfig(predictor=predictor, schedule="N4", time_r_in=host.time_r_in))
    if args.key_mask:
        from disca.hosts.diffusers_parallel import use_key_mask_processors

        use_key_mask_processors(host.transformer, always=True)
        use_key_mask_processors(predictor, always=True)
    if world > 1:
        from diffusers import ContextParallelConfig

        from disca.hosts.diffusers_parallel import enable_context_parallel

        enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=world,
                                                            ulysses_anything=args.arch == ARCH_HV15))
    runs, latents = {}, {}
    for schedule, steps in ((AnchorSchedule(interval=1, name="N1"), 2), ("N4", args.steps)):
        name = getattr(schedule, "name", schedule)
        latents[name], runs[name] = timed_run(pipe, noise, kwargs, steps, schedule)
        if rank == 0:
            print(runs[name]["summary"], f"wall {runs[name]['wall_s']:.2f} s", flush=True)
    report["runs"] = runs
    if world == 1:
        if rank == 0 and not args.key_mask:
            save_safetensors(str(out / f"latents_{args.arch}_1gpu.safetensors"), {k: v.float().cpu().contiguous()
                                                                    for k, v in latents.items()}, {})
    else:
        report["collectives"] = profile_steps(pipe, noise, kwargs)
        reference, _ = load_safetensors(str(out / f"latents_{args.arch}_1gpu.safetensors"))
        report["vs_1gpu_relative_l2"] = {
            k: float((latents[k].float().cpu() - reference[k]).norm() / reference[k].norm()) for k in latents}
        gathered = [None] * world
        dist.all_gather_object(gathered, checksum)
        report["ranks_same_weights"] = len(set(gathered)) == 1
    if rank == 0:
        name = f"result_{args.arch}_{world}gpu{'_key_mask' if args.key_mask else ''}.json"
        (out / name).write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
