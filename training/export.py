"""Export: predictors in the official DisCa layout, DiTs in the Tencent layout, both with our metadata.

    python -m training.export predictor --checkpoint runs/p/checkpoints/step_1500 --model <dit> --out models/disca/p.safetensors
    python -m training.export dit --model <diffusers transformer folder> --out models/diffusion_models/dit.safetensors

Both are written in the layout the official code loads (HunyuanVideo-1.5: q/k/v split, `official_tencent_layout`).
A predictor file loads unchanged through `disca.formats.load_predictor_file` (and so in the ComfyUI nodes); a DiT
file is what ComfyUI detects (MeanFlow when `time_r_in.*` is present, CFG-distilled with `guidance_in.*`): 1.0 in the
stock loader, 1.5 through DisCa Load Distilled Model, which fuses the split q/k/v as ComfyUI's blocks want them.
`disca.base_fingerprint` is computed on the Tencent-layout DiT tensors, as the runtime does.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from disca.formats import (base_fingerprint, build_metadata, check_predictor_fits, infer_dit_spec, load_predictor_file, load_safetensors,
                           official_tencent_layout, read_predictor_state_dict, save_safetensors)
from disca.hosts.diffusers import DiffusersPredictor, HunyuanVideoHost, load_host
from disca.hosts.diffusers_keys import diffusers_to_tencent_dit, diffusers_to_tencent_predictor

META_FUSION_SLOPE = "disca.fusion_slope"  # predictor files this trainer writes: the pass-through slope they started from


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in state.items()}


def export_predictor(path: str, predictor: DiffusersPredictor, host: HunyuanVideoHost, *, step_lists=None,
                     interval_range=None, resolution: str | None = None, training: dict | None = None,
                     held_out: dict | None = None, fusion_slope: float | None = None,
                     dtype: torch.dtype | None = torch.bfloat16) -> str:
    """Write the predictor in the official layout + metadata, then read it back through the pack's loader.

    `held_out`: the stage's held-out errors (both baselines, the predictor's initial, best and final), stored as
    JSON under `disca.held_out` so a file says how it compares with cache reuse without its run folder.
    `fusion_slope`: the pass-through slope its fusion started from (`disca.fusion_slope`), so a stage that continues
    from this file trains the fusion layers at the rates the first one did (`training.predictor.fusion_param_groups`)."""
    metadata = build_metadata(
        "predictor", predictor.spec.arch,
        base_fingerprint=base_fingerprint(host.tencent_state_dict()),
        step_lists=step_lists, interval_range=interval_range, resolution=resolution, training=training,
        held_out=held_out,
    )
    if fusion_slope:
        metadata[META_FUSION_SLOPE] = repr(fusion_slope)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(path, _contiguous(predictor.official_state_dict(), dtype), metadata)
    load_predictor_file(path)  # the file must load strictly, exactly as the runtime will load it
    return path


def finish_distillation(accelerator, config, model, unwrapped: HunyuanVideoHost, report: dict, filename: str,
                        R: float | None = None) -> dict:
    """End of a DiT-distillation stage: export the student (every rank joins the FSDP gather), push, write the report."""
    from training import loop

    full_state = accelerator.get_state_dict(model)  # a collective under FSDP: every rank must call it
    if accelerator.is_main_process:
        training = {k: v for k, v in config.as_dict().items() if k not in ("model", "prompts", "output_dir")}
        out = export_dit(os.path.join(config.output_dir, filename), unwrapped, R=R, host_state_dict=full_state,
                         training=training)
        report["dit_file"] = out
        if config.push_to_hub:
            report["hub"] = push_to_hub(out, config.push_to_hub)
        loop.write_report(config.output_dir, report)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def export_dit(path: str, host: HunyuanVideoHost, *, R: float | None = None, training: dict | None = None,
               dtype: torch.dtype | None = torch.bfloat16, host_state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """Write the DiT in the official Tencent layout (with time_r_in / guidance_in when present): 1.0 fused, as
    ComfyUI's stock loader takes it; 1.5 with q/k/v split, as Tencent's code defines and loads it (ComfyUI's stock
    loader drops split q/k/v; DisCa Load Distilled Model fuses them first, as it does for Tencent's own 1.5 files).

    `host_state_dict`: the full state dict of the host module when its parameters are sharded (FSDP:
    `accelerator.get_state_dict(model)`, gathered on the main process); by default the host's own weights.
    """
    if host_state_dict is None:
        tencent = host.tencent_state_dict()
    else:
        prefix = "transformer."
        diffusers = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in host_state_dict.items()}
        tencent = diffusers_to_tencent_dit(diffusers, host.arch)
    metadata = build_metadata("dit", host.arch, base_fingerprint=base_fingerprint(tencent), R=None if R is None else str(R),
                              training=training)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_safetensors(path, _contiguous(official_tencent_layout(tencent, host.arch), dtype), metadata)
    return path


def push_to_hub(path: str, repo_id: str) -> str:
    """Upload one exported file; needs `huggingface-cli login` (or HF_TOKEN) beforehand."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_file(path_or_fileobj=path, path_in_repo=os.path.basename(path), repo_id=repo_id)
    return str(info)


def predictor_from_checkpoint(checkpoint: str, host: HunyuanVideoHost) -> DiffusersPredictor:
    """Read the predictor weights accelerate saved (model.safetensors: the first prepared model) for this base."""
    path = os.path.join(checkpoint, "model.safetensors")
    state, _ = load_safetensors(path)
    spec, _ = read_predictor_state_dict(diffusers_to_tencent_predictor(state, host.arch, path), path)
    check_predictor_fits(spec, infer_dit_spec(host.tencent_state_dict()), path)
    predictor = DiffusersPredictor(spec)
    predictor.load_state_dict(state, strict=True)
    return predictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export DisCa training results to the files the pack loads")
    sub = parser.add_subparsers(dest="kind", required=True)
    pred = sub.add_parser("predictor", help="predictor weights of a training checkpoint -> official layout")
    pred.add_argument("--checkpoint", required=True, help="a checkpoints/step_N folder of a predictor run")
    pred.add_argument("--model", required=True, help="the DiT the predictor was trained for (fingerprinted)")
    pred.add_argument("--out", required=True)
    pred.add_argument("--step_lists", default="", help="JSON list of step lists to record, e.g. '[[0,1,2,5,9]]'")
    dit = sub.add_parser("dit", help="a diffusers (or Tencent) DiT -> Tencent layout for ComfyUI")
    dit.add_argument("--model", required=True)
    dit.add_argument("--out", required=True)
    for p in (pred, dit):
        p.add_argument("--push_to_hub", default="", help="Hugging Face repo id to upload the file to")
    args = parser.parse_args(argv)
    host = load_host(args.model)
    if args.kind == "predictor":
        predictor = predictor_from_checkpoint(args.checkpoint, host)
        out = export_predictor(args.out, predictor, host, step_lists=json.loads(args.step_lists) if args.step_lists else None)
    else:
        out = export_dit(args.out, host)
    print(f"wrote {out}")
    if args.push_to_hub:
        print(push_to_hub(out, args.push_to_hub))


if __name__ == "__main__":
    main()
