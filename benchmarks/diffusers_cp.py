"""DisCa on a diffusers HunyuanVideo-1.0 transformer with Ulysses context parallelism: 1 GPU vs N GPUs (GPU).

    torchrun --standalone --nproc_per_node 1 benchmarks/diffusers_cp.py --out runs/cp     # first: the 1-GPU reference
    torchrun --standalone --nproc_per_node 2 benchmarks/diffusers_cp.py --out runs/cp     # then: 2 GPUs, compared
    torchrun --standalone --nproc_per_node 2 benchmarks/diffusers_cp.py --out runs/cp_cpu --tiny   # CPU check (gloo)

Full-size random HunyuanVideo-1.0 (12.8B, bf16, a MeanFlow r-embedder and embedded guidance, as the official DisCa
T2V DiT) and a random predictor of the official shape, driven through `disca.hosts.diffusers_hooks` by the denoising
loop of diffusers' HunyuanVideoPipeline (scheduler, `cache_context("cond")`, `scheduler.step`) without its text
encoders and VAE: a padded prompt of 256 tokens, 80 valid. Per world size it measures a no-cache run (every step an
anchor) and DisCa N4, each step's time from the runtime's own timer, and on more than one GPU a torch.profiler trace
of one anchor and one predicted step with the collectives counted per step. The N-GPU run compares its outputs with
the 1-GPU run's (saved in --out) and writes OUT/result_<N>gpu.json.
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

from disca.formats import ARCH_HV10, load_safetensors, save_safetensors  # noqa: E402
from disca.hosts.diffusers import HunyuanVideoHost, predictor_from_dit  # noqa: E402
from disca.hosts.diffusers_hooks import HOOK_NAME, DisCaHookConfig, apply_disca, set_disca_schedule  # noqa: E402
from disca.schedules import AnchorSchedule  # noqa: E402

TEXT_TOKENS, VALID_TEXT = 256, 80
TINY = dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64, num_layers=1,
            num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
            pooled_projection_dim=768, rope_axes_dim=(16, 24, 24), guidance_embeds=True)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)  # the same weights on every rank
    with torch.device(device):
        transformer = HunyuanVideoTransformer3DModel(**(TINY if tiny else {})).to(dtype).eval()
    host = HunyuanVideoHost(transformer)
    host.add_time_r_embedder()
    host.requires_grad_(False)
    torch.manual_seed(1)
    predictor = predictor_from_dit(host, depth=2, zero_gates=False)
    for fusion in predictor.fusion_mlp:  # a random fusion, so predicted steps read the current tokens
        if hasattr(fusion, "weight"):
            torch.nn.init.normal_(fusion.weight, std=0.02)
    return host, predictor


def inputs(host, latent_shape, device, dtype):
    generator = torch.Generator().manual_seed(2)
    text_dim = host.transformer.config.text_embed_dim
    mask = torch.zeros(1, TEXT_TOKENS, dtype=torch.int64)
    mask[:, :VALID_TEXT] = 1
    kwargs = dict(encoder_hidden_states=torch.randn(1, TEXT_TOKENS, text_dim, generator=generator).to(device, dtype),
                  encoder_attention_mask=mask.to(device),
                  pooled_projections=torch.randn(1, 768, generator=generator).to(device, dtype),
                  guidance=torch.tensor([6000.0], device=device))
    noise = torch.randn(1, 16, *latent_shape, generator=generator).to(device)
    return noise, kwargs


def denoise(pipe, noise, kwargs, steps: int, around_call=contextlib.nullcontext):
    """HunyuanVideoPipeline's loop (pipeline_hunyuan_video.py), without the encoders and the VAE."""
    pipe.scheduler.set_timesteps(steps, device=noise.device)
    latents = noise
    dtype = next(pipe.transformer.parameters()).dtype
    for i, t in enumerate(pipe.scheduler.timesteps):
        with pipe.transformer.cache_context("cond"), around_call(i):
            out = pipe.transformer(hidden_states=latents.to(dtype), timestep=t.expand(1).to(latents.dtype),
                                   return_dict=False, **kwargs)[0]
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
    parser.add_argument("--latent", default="33,88,88", help="latent frames,height,width (704x704x129)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU over gloo (checks the script)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    latent = (2, 8, 8) if args.tiny else tuple(int(v) for v in args.latent.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from diffusers import FlowMatchEulerDiscreteScheduler

    started = time.perf_counter()
    host, predictor = build(args.tiny, device, dtype)
    pipe = SimpleNamespace(transformer=host.transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    checksum = sum(float(p.float().sum()) for p in list(host.parameters())[:4])
    report = dict(world=world, gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                  if cuda else "cpu (--tiny)", torch=torch.__version__, latent=list(latent),
                  image_tokens=latent[0] * latent[1] // 2 * latent[2] // 2, build_s=time.perf_counter() - started,
                  weights_checksum=checksum, command="torchrun --nproc_per_node %d %s" % (world, " ".join(sys.argv)))
    noise, kwargs = inputs(host, latent, device, dtype)
    # DisCa is attached before parallelism (its block hooks must run inside the plan's split hooks)
    apply_disca(pipe, DisCaHookConfig(predictor=predictor, schedule="N4", time_r_in=host.time_r_in))
    if world > 1:
        from diffusers import ContextParallelConfig

        from disca.hosts.diffusers_parallel import enable_context_parallel

        enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=world))
    runs, latents = {}, {}
    for schedule, steps in ((AnchorSchedule(interval=1, name="N1"), 2), ("N4", args.steps)):
        name = getattr(schedule, "name", schedule)
        latents[name], runs[name] = timed_run(pipe, noise, kwargs, steps, schedule)
        if rank == 0:
            print(runs[name]["summary"], f"wall {runs[name]['wall_s']:.2f} s", flush=True)
    report["runs"] = runs
    if world == 1:
        if rank == 0:
            save_safetensors(str(out / "latents_1gpu.safetensors"), {k: v.float().cpu().contiguous()
                                                                    for k, v in latents.items()}, {})
    else:
        report["collectives"] = profile_steps(pipe, noise, kwargs)
        reference, _ = load_safetensors(str(out / "latents_1gpu.safetensors"))
        report["vs_1gpu_relative_l2"] = {
            k: float((latents[k].float().cpu() - reference[k]).norm() / reference[k].norm()) for k in latents}
        gathered = [None] * world
        dist.all_gather_object(gathered, checksum)
        report["ranks_same_weights"] = len(set(gathered)) == 1
    if rank == 0:
        (out / f"result_{world}gpu.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
