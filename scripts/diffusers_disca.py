"""DisCa with a diffusers pipeline: HunyuanVideo-1.0 text-to-video or HunyuanVideo-1.5 image-to-video.

    # 1.0 T2V: the base pipeline folder, the CFG/MeanFlow-distilled DiT (Tencent .safetensors or diffusers folder)
    python scripts/diffusers_disca.py --pipeline HunyuanVideo-diffusers --dit distilled_dit.safetensors \
        --predictor disca_hv10_predictor.safetensors --schedule t2v_official_8of20 --steps 20 \
        --prompt "a red fox runs through snow" --size 1280x720x129 --out fox.mp4
    # 1.5 I2V: the image sets the size (the pipeline's 480p buckets)
    python scripts/diffusers_disca.py --pipeline HunyuanVideo-1.5-480p_i2v_step_distilled-diffusers \
        --predictor disca_hv15_predictor.safetensors --schedule i2v_official_4of8 --steps 8 --image first.png \
        --prompt "the fox turns its head" --frames 121 --out fox.mp4

Under torchrun with N processes (one GPU each) the transformer runs with Ulysses context parallelism of degree N
(`disca.hosts.diffusers_parallel`): `torchrun --standalone --nproc_per_node 2 scripts/diffusers_disca.py ...`.
The DiT's anchors and predicted steps, their times, the cache and the predictor's size are logged at the end of the run.
`--out` ending in .safetensors writes the final latents instead of a video.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from disca.formats import ARCH_HV10, save_safetensors  # noqa: E402
from disca.hosts.diffusers import arch_of, load_host  # noqa: E402
from disca.hosts.diffusers_hooks import DisCaHookConfig, apply_disca  # noqa: E402
from disca.runtime import MODES  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a diffusers HunyuanVideo(-1.5) pipeline folder")
    parser.add_argument("--dit", help="the distilled DiT, if not the pipeline's own transformer: a Tencent-layout "
                                      ".safetensors file or a diffusers transformer folder")
    parser.add_argument("--predictor", help="the DisCa predictor file (needed in mode 'predictor')")
    parser.add_argument("--schedule", default="N4", help="a preset (t2v_official_8of20, N2..N4, ...) or a step list")
    parser.add_argument("--mode", default="predictor", choices=MODES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--image", help="the first frame (HunyuanVideo-1.5 image-to-video)")
    parser.add_argument("--size", default="1280x720x129", help="WIDTHxHEIGHTxFRAMES (1.0)")
    parser.add_argument("--frames", type=int, default=121, help="frames (1.5)")
    parser.add_argument("--guidance", type=float, default=6.0, help="embedded guidance of a CFG-distilled 1.0 DiT")
    parser.add_argument("--shift", type=float, help="the flow schedule's shift (default: the pipeline's scheduler)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".mp4 (video) or .safetensors (latents)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffusers import DiffusionPipeline
    from diffusers.utils import export_to_video, load_image

    dtype = DTYPES[args.dtype]
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        if args.device == "cuda":
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(args.device)
    components = {}
    time_r_in = None
    if args.dit:
        host = load_host(args.dit, dtype)
        if host.guidance_in is not None:
            raise SystemExit(f"--dit {args.dit}: a HunyuanVideo-1.5 DiT with embedded guidance (guidance_in) needs a "
                             "guidance input that diffusers' 1.5 transformer does not have")
        components["transformer"], time_r_in = host.transformer, host.time_r_in
    pipe = DiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=dtype, **components).to(args.device)
    if args.shift is not None:
        pipe.scheduler.register_to_config(shift=args.shift)
    apply_disca(pipe, DisCaHookConfig(predictor=args.predictor, schedule=args.schedule, mode=args.mode,
                                      time_r_in=time_r_in))
    if world > 1:
        from diffusers import ContextParallelConfig

        from disca.hosts.diffusers_parallel import enable_context_parallel

        enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=world))
    output_type = "latent" if args.out.endswith(".safetensors") else "np"
    generator = torch.Generator(args.device).manual_seed(args.seed)
    common = dict(prompt=args.prompt, num_inference_steps=args.steps, generator=generator, output_type=output_type)
    if arch_of(pipe.transformer) == ARCH_HV10:
        width, height, frames = (int(v) for v in args.size.split("x"))
        frames_out = pipe(height=height, width=width, num_frames=frames, guidance_scale=args.guidance, **common).frames
    else:
        if not args.image:
            raise SystemExit("--image: HunyuanVideo-1.5 image-to-video needs the first frame")
        frames_out = pipe(image=load_image(args.image), num_frames=args.frames, **common).frames
    if int(os.environ.get("RANK", 0)):  # every rank computed the same video
        return
    if output_type == "latent":
        save_safetensors(args.out, {"latents": frames_out.float().cpu().contiguous()}, {"prompt": args.prompt})
    else:
        export_to_video(frames_out[0], args.out, fps=24)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
