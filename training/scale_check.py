"""Run the shipped accelerate configs at full width on this machine's GPUs and measure them (issue 7).

    python -m training.scale_check --out runs/scale                          # every GPU here
    python -m training.scale_check --out runs/scale --meanflow_layers 2,4    # one 80 GB GPU
    python -m training.scale_check --out runs/scale_cpu --tiny               # CPU smoke test of this script (CI)

Writes random-weight HunyuanVideo-1.0 DiTs in the Tencent layout (all 20 + 40 blocks for the predictor stage; a
full-width MeanFlow teacher of `--meanflow_layers` double,single blocks, 4,8 by default: a full-depth MeanFlow run
writes 154 GB checkpoints) and random full-width prompt embeddings and latents at a reduced resolution, then runs
`training/train.py` through `accelerate launch` exactly as a creator would:

1. predictor stage, `accelerate_ddp.yaml`: MSE then GAN steps; step time, peak memory per GPU, replicas compared;
2. meanflow stage, `accelerate_fsdp2.yaml` (sharded student and teacher, finite-difference du/dt), four launches:
   uninterrupted to `--meanflow_steps`; stopped at `--meanflow_checkpoint`; `--resume`d to the end; the uninterrupted
   run again. The resumed run's exported DiT and losses are compared with the uninterrupted run's, and the repeat
   measures how far two identical GPU runs drift apart anyway (non-deterministic kernels).

Random weights: the figures are for time and memory only. Results: OUT/scale_check.json, one log per launch in
OUT/logs/, and the commands that ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from disca.formats import ARCH_HV10, load_safetensors, save_safetensors
from disca.hosts.diffusers import HunyuanVideoHost, _diffusers_classes
from training.data import save_embeddings, save_latents
from training.tiny import TINY_CONFIGS, TINY_LATENT, TINY_TEXT_DIM, tiny_conditioning, tiny_latents

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
FULL_TEXT_DIM = 4096  # LLaVA-Llama-3 hidden states; diffusers' HunyuanVideoTransformer3DModel defaults are HunyuanVideo-1.0
TEXT_TOKENS = 256


def write_random_dit(path: Path, overrides: dict, meanflow: bool, device: torch.device, seed: int) -> dict:
    """A random-weight HunyuanVideo-1.0 DiT (diffusers' default init, made on `device`) saved in bf16, Tencent layout."""
    torch.manual_seed(seed)
    with torch.device(device):
        host = HunyuanVideoHost(_diffusers_classes()[ARCH_HV10](**overrides))
        if meanflow:
            host.add_time_r_embedder()
    state = {k: v.to(torch.bfloat16).cpu() for k, v in host.tencent_state_dict().items()}
    parameters = sum(v.numel() for v in state.values())
    del host
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the GPU to the training processes this one launches
    save_safetensors(str(path), state, {})
    return {"path": str(path), "parameters": parameters, "blocks": [overrides.get("num_layers", 20),
                                                                    overrides.get("num_single_layers", 40)]}


def parameter_count(overrides: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in _diffusers_classes()[ARCH_HV10](**overrides).parameters())


def check_disk_for_meanflow(out: Path, parameters: int) -> None:
    """Two sharded checkpoints exist at once while the resumed run saves (12 bytes per parameter each), beside the
    bf16 teacher and three bf16 exports: refuse up front rather than fail minutes in with a full disk."""
    need = 2 * 12 * parameters + 4 * 2 * parameters
    free = shutil.disk_usage(out).free
    if need > free:
        raise SystemExit(f"--meanflow_layers: a {parameters / 1e9:.2f}B-parameter MeanFlow run needs ~{need / 1e9:.0f} GB "
                         f"of disk under {out} (two checkpoints of 12 bytes per parameter + bf16 teacher and exports), "
                         f"{free / 1e9:.0f} GB are free; give fewer blocks (e.g. --meanflow_layers 4,8) or another --out")


def write_data(folder: Path, prompts: int, latent_shape: tuple[int, int, int], tiny: bool) -> dict[str, str]:
    """Random prompt embeddings at the DiT's text width and smooth random latents of `latent_shape`."""
    text_dim, text_tokens = (TINY_TEXT_DIM, 8) if tiny else (FULL_TEXT_DIM, TEXT_TOKENS)
    cond = tiny_conditioning(ARCH_HV10, prompts, seed=1, text_len=text_tokens, text_dim=text_dim)
    paths = {"prompts": str(folder / "prompts.safetensors"), "latents": str(folder / "latents.safetensors")}
    save_embeddings(paths["prompts"], ARCH_HV10, cond)
    save_latents(paths["latents"], tiny_latents(ARCH_HV10, prompts, seed=2, latent_shape=latent_shape))
    return paths


def launch(name: str, config: str, accelerate_config: str, processes: int, args: list[str], out: Path,
           timeout: float, cpu: bool) -> dict:
    """One `accelerate launch` of training/train.py; its output goes to OUT/logs/NAME.log."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / accelerate_config), "--num_processes",
               str(processes), "--main_process_port", "0", *(["--cpu"] if cpu else []),
               str(REPO / "training" / "train.py"), "--config", str(CONFIGS / config), *args]
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    started = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        try:
            code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"command": "accelerate launch " + " ".join(command[3:]).replace(str(REPO) + "/", ""), "returncode": code,
              "wall_seconds": round(time.perf_counter() - started, 1), "log": str(log)}
    if code != 0:
        result["log_tail"] = log.read_text().splitlines()[-15:]
    print(f"[scale_check] {name}: exit {code} after {result['wall_seconds']} s ({log})", flush=True)
    return result


def report_of(run_dir: Path) -> dict | None:
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def max_difference(file_a: Path, file_b: Path) -> float | None:
    if not (file_a.is_file() and file_b.is_file()):
        return None
    a, _ = load_safetensors(str(file_a))
    b, _ = load_safetensors(str(file_b))
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def folder_listing(folder: Path) -> dict | None:
    if not folder.is_dir():
        return None
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {"files": sorted(str(p.relative_to(folder)) for p in files),
            "gib": round(sum(p.stat().st_size for p in files) / 2**30, 2)}


def summary_of(report: dict | None, keys: tuple[str, ...]) -> dict | None:
    return None if report is None else {k: report.get(k) for k in keys}


RUN_KEYS = ("processes", "steps", "step_seconds_median", "peak_memory_gib_per_rank", "rank_param_max_abs_diff",
            "first_losses", "last_losses")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for models, data, runs, logs and scale_check.json")
    parser.add_argument("--gpus", type=int, default=0, help="processes per launch; 0: every visible GPU (1 on CPU)")
    parser.add_argument("--latent", default="9,40,64", help="latent frames,height,width (9,40,64: 33 frames 320x512)")
    parser.add_argument("--meanflow_layers", default="4,8",
                        help="double,single blocks of the MeanFlow DiT (full width; full depth 20,40 needs ~410 GB of disk)")
    parser.add_argument("--predictor_steps", type=int, default=6, help="predictor optimiser steps (half MSE, half GAN)")
    parser.add_argument("--meanflow_steps", type=int, default=4)
    parser.add_argument("--meanflow_checkpoint", type=int, default=2, help="step the interrupted MeanFlow run stops at")
    parser.add_argument("--parts", default="predictor,meanflow")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script, measures nothing")
    args = parser.parse_args(argv)
    if not 1 <= args.meanflow_checkpoint < args.meanflow_steps:
        parser.error(f"--meanflow_checkpoint {args.meanflow_checkpoint}: the stopped run must stop before the end, "
                     f"in 1..{args.meanflow_steps - 1} (--meanflow_steps {args.meanflow_steps})")

    cuda = torch.cuda.is_available()
    processes = args.gpus or (torch.cuda.device_count() if cuda else 1)
    latent = tuple(int(v) for v in args.latent.split(","))
    if args.tiny:
        latent = TINY_LATENT[ARCH_HV10]
    double, single = (int(v) for v in args.meanflow_layers.split(","))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cuda else "cpu")
    base = dict(TINY_CONFIGS[ARCH_HV10]) if args.tiny else {}
    parts = set(args.parts.split(","))
    teacher_config = base | {"num_layers": double, "num_single_layers": single}
    if "meanflow" in parts:
        check_disk_for_meanflow(out, parameter_count(teacher_config))  # before any part spends time
    results: dict = {
        "machine": {"gpu": torch.cuda.get_device_name(0) if cuda else None, "gpus_visible": torch.cuda.device_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "processes": processes, "latent_shape": list(latent), "tiny": args.tiny}
    try:
        import accelerate
        import diffusers
        results["machine"] |= {"accelerate": accelerate.__version__, "diffusers": diffusers.__version__}
    except ImportError as error:
        raise SystemExit(f"scale_check needs the training extras: pip install -e '.[train]' ({error})")

    # two train prompts per process and one held out, so every rank draws distinct batches
    data = write_data(out, prompts=2 * processes + 1, latent_shape=latent, tiny=args.tiny)
    cpu = not cuda
    every_launch: dict[str, dict] = {}
    if "predictor" in parts:
        model = write_random_dit(out / "dit_meanflow_full.safetensors", base, meanflow=True, device=device, seed=0)
        run_dir = out / "predictor"
        mse_steps = args.predictor_steps // 2
        launched = launch("predictor_ddp", "predictor.yaml", "accelerate_ddp.yaml", processes, [
            "--model", model["path"], "--prompts", data["prompts"], "--output_dir", str(run_dir),
            "--latent_shape", ",".join(map(str, latent)), "--steps", "8", "--schedules", "N2;N3;N4",
            "--held_out_prompts", "1", "--max_steps", str(args.predictor_steps), "--mse_steps", str(mse_steps),
            "--checkpoint_every", str(args.predictor_steps), "--log_every", "1"], out, args.timeout, cpu)
        every_launch["predictor_ddp"] = launched
        results["predictor"] = {"model": model, "launch": launched,
                                "report": summary_of(report_of(run_dir), RUN_KEYS + ("held_out_final",))}
        os.remove(model["path"])  # 26 GB at full size; the MeanFlow DiT needs the disk
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (out / "scale_check.json").write_text(json.dumps(results, indent=2))  # kept if a later part is cut short

    if "meanflow" in parts:
        teacher = write_random_dit(out / "dit_teacher.safetensors", teacher_config, meanflow=False, device=device, seed=1)
        common = ["--model", teacher["path"], "--prompts", data["prompts"], "--latents", data["latents"],
                  "--warmup_steps", "0", "--log_every", "1", "--keep_checkpoints", "1"]
        steps, stop = str(args.meanflow_steps), str(args.meanflow_checkpoint)
        # a checkpoint holds fp32 weights + AdamW moments, 12 bytes per parameter (154 GB at 12.8B): only the
        # checkpoints the comparison needs are written, and the uninterrupted run's are dropped once it has ended
        folders = {"uninterrupted": out / "meanflow_a", "resumed": out / "meanflow_b", "repeat": out / "meanflow_c"}
        runs = {  # name: (run folder, flags)
            "uninterrupted": (folders["uninterrupted"], ["--max_steps", steps, "--checkpoint_every", steps]),
            "stopped": (folders["resumed"], ["--max_steps", stop, "--checkpoint_every", stop]),
            "resumed": (folders["resumed"], ["--max_steps", steps, "--checkpoint_every", steps, "--resume"]),
            # the same run again: GPU kernels are not bitwise deterministic, so this is the yardstick for the resume
            "repeat": (folders["repeat"], ["--max_steps", steps, "--checkpoint_every", steps]),
        }
        launches, checkpoint = {}, None
        for name, (folder, extra) in runs.items():
            launches[name] = launch(f"meanflow_fsdp2_{name}", "meanflow.yaml", "accelerate_fsdp2.yaml", processes,
                                    common + ["--output_dir", str(folder)] + extra, out, args.timeout, cpu)
            every_launch[f"meanflow_fsdp2_{name}"] = launches[name]
            if name == "stopped":
                checkpoint = folder_listing(folder / "checkpoints" / f"step_{stop}")
            if name != "stopped":
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        reports = {name: report_of(folder) for name, folder in folders.items()}
        exported = {name: folder / "meanflow_dit.safetensors" for name, folder in folders.items()}
        results["meanflow"] = {
            "teacher": teacher, "launches": launches,
            "uninterrupted": summary_of(reports["uninterrupted"], RUN_KEYS + ("eval_mse_initial", "eval_mse_final")),
            "resumed": summary_of(reports["resumed"], RUN_KEYS + ("eval_mse_final",)),
            "sharded_checkpoint": checkpoint,
            "resumed_vs_uninterrupted_max_abs_diff": max_difference(exported["uninterrupted"], exported["resumed"]),
            "repeat_vs_uninterrupted_max_abs_diff": max_difference(exported["uninterrupted"], exported["repeat"]),
            "losses_by_step": {name: [[h["step"], h["loss"]] for h in (report or {}).get("last_losses", [])]
                               for name, report in reports.items()},
        }
        os.remove(teacher["path"])

    failed = [name for name, run in every_launch.items() if run["returncode"] != 0]
    results["failed_launches"] = failed
    (out / "scale_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if failed:
        raise SystemExit(f"scale_check: {failed} failed; see the logs in {out / 'logs'}")
    return results


if __name__ == "__main__":
    main()
