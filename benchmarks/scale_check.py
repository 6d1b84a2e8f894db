"""Run the shipped accelerate configs at full width on this machine's GPUs and measure them (issues 7 and 15).

    python -m benchmarks.scale_check --out runs/scale                                # predictor + 4+8-block MeanFlow
    python -m benchmarks.scale_check --out runs/scale --parts meanflow_full_depth    # 20+40-block MeanFlow, no checkpoint
    python -m benchmarks.scale_check --out runs/scale --meanflow_layers 2,4          # one 80 GB GPU
    python -m benchmarks.scale_check --out runs/scale_cpu --tiny                     # CPU smoke test of this script (CI)

Writes random-weight HunyuanVideo-1.0 DiTs in the Tencent layout (the full 20 + 40 blocks, and a full-width MeanFlow
teacher of `--meanflow_layers` double,single blocks) and random full-width prompt embeddings and latents at a
reduced resolution, then runs the stages through `accelerate launch` as a creator would. Parts (`--parts`, comma-
separated; `meanflow` names the four launches on the `--meanflow_layers` DiT, `all` every part):

- predictor: `accelerate_ddp.yaml`, the full DiT; MSE then GAN steps; step time, peak memory per GPU, replicas
  compared; held-out MSE against cache and output reuse every `--predictor_steps` / 10 steps.
- meanflow_uninterrupted / _stopped / _resumed / _repeat: `accelerate_fsdp2.yaml` (sharded student and teacher,
  finite-difference du/dt) to `--meanflow_steps`; stopped at `--meanflow_checkpoint` (the sharded checkpoint, its size
  reported); `--resume`d from it to the end; the uninterrupted run again. The resumed run's exported DiT and losses
  are compared with the uninterrupted run's, and the repeat measures how far two identical GPU runs drift apart
  anyway (non-deterministic kernels).
- meanflow_full_depth: the same stage with the full 20 + 40-block DiT as teacher and student (12.8B). Its sharded
  checkpoint would be 154 GB, so it measures the steps without one. Out of GPU memory, the exact point (allocation,
  frame, memory) is recorded and the run is repeated with the shipped config's next step, FSDP2 CPU offload
  (`--fsdp_offload_params true`: sharded parameters, gradients and AdamW state in host memory).

A part can span several calls of a time-limited machine: models and data are written once and reused (a sidecar
.json says what each file holds), each launch's result is written to OUT/launches/NAME.json as soon as it ends, and
the same command run again skips every launch with a result (exit 0, or out of memory: a result too; delete the JSON
to redo it), re-running only what a later launch needs and the disk no longer holds. `--budget_seconds` stops
starting launches the call could not finish. Random weights: the figures are for time and memory only. OUT/
scale_check.json gathers every result so far; one log per launch in OUT/logs/.

The launches that nothing resumes from (uninterrupted, resumed, repeat, full depth) run `training/train.py` through
`python benchmarks/scale_check.py train`, which drops what the measurement does not use and a full-depth run cannot
afford: checkpoints, and seven of the eight held-out samples of the before/after evaluation (two fp32 forwards each);
the full-depth run also skips the export (a 51 GB fp32 gather into rank 0's host memory, then 26 GB written, that
nothing reads). Everything up to the end of the last step is the stage's own code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
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
MEANFLOW_RUNS = ("uninterrupted", "stopped", "resumed", "repeat")
PARTS = ("predictor", *(f"meanflow_{name}" for name in MEANFLOW_RUNS), "meanflow_full_depth")
PART_GROUPS = {"meanflow": [f"meanflow_{name}" for name in MEANFLOW_RUNS], "all": list(PARTS)}
# the full-depth run's variants, tried in order while the previous one runs out of GPU memory
FULL_DEPTH_VARIANTS = (("meanflow_full_depth", []), ("meanflow_full_depth_offload", ["--fsdp_offload_params", "true"]))
RUN_KEYS = ("processes", "steps", "step_seconds_median", "peak_memory_gib_per_rank", "rank_param_max_abs_diff",
            "first_losses", "last_losses")
BYTES_CHECKPOINT, BYTES_BF16 = 12, 2  # per parameter: fp32 weights + two AdamW moments; an exported bf16 DiT


def _random_dit_state(overrides: dict, meanflow: bool, device: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.device(device):
        host = HunyuanVideoHost(_diffusers_classes()[ARCH_HV10](**overrides))
        if meanflow:
            host.add_time_r_embedder()
    return {k: v.to(torch.bfloat16).cpu() for k, v in host.tencent_state_dict().items()}


def _write_random_dit(path: str, overrides: dict, meanflow: bool, device: str, seed: int) -> int:
    state = _random_dit_state(overrides, meanflow, device, seed)
    save_safetensors(path, state, {})
    return sum(v.numel() for v in state.values())


def random_dit(path: Path, overrides: dict, meanflow: bool, cuda: bool, seed: int) -> dict:
    """A random-weight HunyuanVideo-1.0 DiT (diffusers' default init) in bf16, Tencent layout, written once: an
    existing file whose sidecar names the same model is reused.

    Made in a child process, on the GPU when there is one: the CUDA context a parent process opens would stay on
    GPU 0 for every launch after it, and the full-depth run is measured to the last GiB."""
    spec = json.loads(json.dumps({"blocks": [overrides.get("num_layers", 20), overrides.get("num_single_layers", 40)],
                                  "meanflow": meanflow, "seed": seed, "config": overrides}))
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file():
        known = json.loads(sidecar.read_text())
        if {k: known.get(k) for k in spec} == spec:
            print(f"[scale_check] reusing {path.name}", flush=True)
            return known
    check_disk(path.parent, BYTES_BF16 * parameter_count(overrides), f"writing {path.name}")
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        parameters = pool.submit(_write_random_dit, str(path), overrides, meanflow, "cuda" if cuda else "cpu",
                                 seed).result()
    record = {"path": str(path), "parameters": parameters, **spec,
              "write_seconds": round(time.perf_counter() - started, 1)}
    sidecar.write_text(json.dumps(record, indent=2))
    return record


def remove_model(path: Path) -> None:
    """Free the disk once no part needs the model; its sidecar goes with it, so a later part writes it again."""
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def parameter_count(overrides: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in _diffusers_classes()[ARCH_HV10](**overrides).parameters())


def check_disk(folder: Path, need: int, what: str) -> None:
    """Refuse up front rather than fail minutes in with a full disk."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise SystemExit(f"{what}: needs ~{need / 1e9:.0f} GB of disk under {folder}, {free / 1e9:.0f} GB are free; "
                         f"give fewer --meanflow_layers, fewer --parts, or another --out")


def write_data(folder: Path, prompts: int, latent_shape: tuple[int, int, int], tiny: bool) -> dict[str, str]:
    """Random prompt embeddings at the DiT's text width and smooth random latents of `latent_shape`, written once."""
    text_dim, text_tokens = (TINY_TEXT_DIM, 8) if tiny else (FULL_TEXT_DIM, TEXT_TOKENS)
    paths = {"prompts": str(folder / "prompts.safetensors"), "latents": str(folder / "latents.safetensors")}
    spec = {"prompts": prompts, "latent_shape": list(latent_shape), "tiny": tiny}
    sidecar = folder / "data.json"
    if sidecar.is_file() and json.loads(sidecar.read_text()) == spec and all(map(os.path.isfile, paths.values())):
        return paths
    cond = tiny_conditioning(ARCH_HV10, prompts, seed=1, text_len=text_tokens, text_dim=text_dim)
    save_embeddings(paths["prompts"], ARCH_HV10, cond)
    save_latents(paths["latents"], tiny_latents(ARCH_HV10, prompts, seed=2, latent_shape=latent_shape))
    sidecar.write_text(json.dumps(spec))
    return paths


_SIZE = r"([\d.]+) ([KMG])iB"
_OOM_FIELDS = {"tried_to_allocate_gib": r"Tried to allocate " + _SIZE, "gpu_total_gib": r"total capacity of " + _SIZE,
               "gpu_free_gib": r"of which " + _SIZE + " is free", "process_in_use_gib": r"this process has " + _SIZE,
               "allocated_by_pytorch_gib": _SIZE + " is allocated by PyTorch",
               "reserved_unallocated_gib": _SIZE + " is reserved by PyTorch but unallocated"}
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)$', re.M)


def out_of_memory(log: str) -> dict | None:
    """Where a launch ran out of GPU memory, from its log: PyTorch's message (sizes in GiB), the chain of this
    repository's frames (the phase: which part of which step) and the innermost frame (the allocating call)."""
    at = log.find("CUDA out of memory")
    if at < 0:
        return None
    # torchrun prefixes each line of a failing rank with "[rankN]:"; keep the first failing rank's lines only
    prefix = re.match(r"\[rank\d+\]:", log[log.rfind("\n", 0, at) + 1:at])
    if prefix:
        log = "\n".join(line[prefix.end():] for line in log.splitlines() if line.startswith(prefix.group()))
        at = log.find("CUDA out of memory")
    line_end = log.find("\n", at)
    message = log[at:line_end if line_end >= 0 else None]
    gpu = re.search(r"GPU (\d+) has", message)
    result: dict = {"message": message[:600], "gpu": int(gpu.group(1)) if gpu else None}
    for key, pattern in _OOM_FIELDS.items():
        match = re.search(pattern, message)
        if match:
            result[key] = round(float(match.group(1)) / {"K": 2**20, "M": 2**10, "G": 1}[match.group(2)], 3)
    traceback = log[log.rfind("Traceback (most recent call last):", 0, at):at]
    frames = [f"{path.replace(str(REPO) + '/', '')}:{line} in {function}: {code.strip()}"
              for path, line, function, code in _FRAME.findall(traceback)]
    result["repo_frames"] = [f for f in frames if f.startswith(("training/", "disca/"))]
    result["innermost_frame"] = frames[-1] if frames else None
    return result


def launch(name: str, config: str, accelerate_config: str, processes: int, args: list[str], out: Path,
           timeout: float, cpu: bool, lean: bool = False, accelerate_flags: tuple[str, ...] = ()) -> dict:
    """One `accelerate launch`; its output goes to OUT/logs/NAME.log. `lean`: through `scale_check.py train` (see the
    module docstring). The whole process group is killed at `timeout`, so no rank keeps a GPU busy afterwards."""
    script = [str(REPO / "benchmarks" / "scale_check.py"), "train"] if lean else [str(REPO / "training" / "train.py")]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / accelerate_config),
               "--num_processes", str(processes), "--main_process_port", "0", *(["--cpu"] if cpu else []),
               *accelerate_flags, *script, "--config", str(CONFIGS / config), *args]
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    started_at, started = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "timeout"
    result = {"command": "accelerate launch " + " ".join(command[3:]).replace(str(REPO) + "/", ""), "returncode": code,
              "started_at": started_at, "wall_seconds": round(time.perf_counter() - started, 1), "log": str(log)}
    if code != 0:
        text = log.read_text(errors="replace")
        result["log_tail"] = text.splitlines()[-15:]
        oom = out_of_memory(text)
        if oom:
            result["out_of_memory"] = oom
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


class Launches:
    """The launch records in OUT/launches/: a launch with a final record (exit 0, or out of GPU memory) is not run
    again. Records are written the moment a launch ends, so a call cut short keeps everything that finished."""

    def __init__(self, out: Path, deadline: float | None, timeout: float):
        self.folder = out / "launches"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.deadline, self.timeout = deadline, timeout
        self.out_of_time: list[str] = []

    def get(self, name: str) -> dict | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def final(self, name: str) -> bool:
        record = self.get(name)
        return record is not None and (record["returncode"] == 0 or "out_of_memory" in record)

    def succeeded(self, name: str) -> bool:
        record = self.get(name)
        return record is not None and record["returncode"] == 0

    def put(self, name: str, record: dict) -> dict:
        tmp = self.folder / f"{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.folder / f"{name}.json")
        return record

    def time_left(self, name: str) -> float | None:
        """Seconds this launch may run; None when the call's budget leaves too little to be worth starting it."""
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left < 60:
            self.out_of_time.append(name)
            print(f"[scale_check] {name}: not started, {left:.0f} s of --budget_seconds left", flush=True)
            return None
        return min(self.timeout, left)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for models, data, runs, logs and scale_check.json")
    parser.add_argument("--gpus", type=int, default=0, help="processes per launch; 0: every visible GPU (1 on CPU)")
    parser.add_argument("--latent", default="9,40,64", help="latent frames,height,width (9,40,64: 33 frames 320x512)")
    parser.add_argument("--meanflow_layers", default="4,8",
                        help="double,single blocks of the stop/resume MeanFlow DiT (full width; full depth 20,40 writes "
                             "154 GB checkpoints)")
    parser.add_argument("--predictor_steps", type=int, default=6, help="predictor optimiser steps (half MSE, half GAN)")
    parser.add_argument("--meanflow_steps", type=int, default=4, help="steps of every MeanFlow run, full depth included")
    parser.add_argument("--meanflow_checkpoint", type=int, default=2, help="step the interrupted MeanFlow run stops at")
    parser.add_argument("--parts", default="predictor,meanflow", help=f"any of {', '.join(PARTS)}; or meanflow, all")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launch")
    parser.add_argument("--budget_seconds", type=float, default=0,
                        help="this call's wall-time budget: no launch starts with under a minute of it left, and "
                             "each is stopped at its end (0: none)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks this script, measures nothing")
    args = parser.parse_args(argv)
    if not 1 <= args.meanflow_checkpoint < args.meanflow_steps:
        parser.error(f"--meanflow_checkpoint {args.meanflow_checkpoint}: the stopped run must stop before the end, "
                     f"in 1..{args.meanflow_steps - 1} (--meanflow_steps {args.meanflow_steps})")
    parts: set[str] = set()
    for part in args.parts.split(","):
        if part not in PARTS and part not in PART_GROUPS:
            parser.error(f"--parts: unknown part {part!r}; choose from {', '.join(PARTS)}, meanflow, all")
        parts.update(PART_GROUPS.get(part, [part]))

    cuda = torch.cuda.is_available()
    processes = args.gpus or (torch.cuda.device_count() if cuda else 1)
    latent = TINY_LATENT[ARCH_HV10] if args.tiny else tuple(int(v) for v in args.latent.split(","))
    double, single = (int(v) for v in args.meanflow_layers.split(","))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = dict(TINY_CONFIGS[ARCH_HV10]) if args.tiny else {}
    teacher_config = base | {"num_layers": double, "num_single_layers": single}
    deadline = time.monotonic() + args.budget_seconds if args.budget_seconds else None
    launches = Launches(out, deadline, args.timeout)
    results: dict = {
        "machine": {"gpus": gpu_names() if cuda else None, "torch": torch.__version__,
                    "python": platform.python_version()},
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

    def save_summary() -> None:
        (out / "scale_check.json").write_text(json.dumps(summarize(out, launches, results), indent=2))

    # the full-size DiT serves the predictor stage and, as teacher and student, the full-depth MeanFlow run
    full_path = out / "dit_full.safetensors"

    def full_model_needed() -> bool:
        return (("predictor" in parts and not launches.final("predictor_ddp"))
                or ("meanflow_full_depth" in parts and not full_depth_done(launches)))

    full_model = random_dit(full_path, base, meanflow=True, cuda=cuda, seed=0) if full_model_needed() else None
    # first: the part that may need a second variant, the one a call's budget should not cut
    if "meanflow_full_depth" in parts:
        run_full_depth(args, out, launches, full_model, data, processes, cpu)
        save_summary()

    if "predictor" in parts:
        run_dir = out / "predictor"
        if launches.final("predictor_ddp"):
            print("[scale_check] predictor_ddp: done before, skipped", flush=True)
        elif (left := launches.time_left("predictor_ddp")) is not None:
            mse_steps = args.predictor_steps // 2
            (run_dir / "report.json").unlink(missing_ok=True)
            record = launch("predictor_ddp", "predictor.yaml", "accelerate_ddp.yaml", processes, [
                "--model", full_model["path"], "--prompts", data["prompts"], "--output_dir", str(run_dir),
                "--latent_shape", ",".join(map(str, latent)), "--steps", "8", "--schedules", "N2;N3;N4",
                "--held_out_prompts", "1", "--max_steps", str(args.predictor_steps), "--mse_steps", str(mse_steps),
                "--eval_every", str(max(1, args.predictor_steps // 10)), "--checkpoint_every", str(args.predictor_steps),
                "--log_every", "1"], out, left, cpu)
            record |= {"model": full_model, "report": summary_of(report_of(run_dir), RUN_KEYS + (
                "held_out", "held_out_evaluations", "rollouts"))}
            launches.put("predictor_ddp", record)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            save_summary()

    if full_model and not full_model_needed():
        remove_model(full_path)  # 26 GB; every part of this call that reads it has its result

    meanflow_parts = [p for p in PART_GROUPS["meanflow"] if p in parts]
    if meanflow_parts:
        run_meanflow_comparison(args, out, launches, teacher_config, meanflow_parts, data, processes, cpu, save_summary)

    summary = summarize(out, launches, results)
    (out / "scale_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    problems = summary["failed_launches"] + launches.out_of_time
    if problems:
        raise SystemExit(f"scale_check: {problems} failed or did not start; see {out / 'launches'} and {out / 'logs'}")
    return summary


def gpu_names() -> list[str]:
    """From nvidia-smi: asking torch would open a CUDA context that stays on GPU 0 while the launches run."""
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
        return query.stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as error:
        return [f"nvidia-smi failed: {error}"]


def full_depth_done(launches: Launches) -> bool:
    """Finished: a variant exited 0, or the last one ran out of memory too."""
    return any(launches.succeeded(n) for n, _ in FULL_DEPTH_VARIANTS) or launches.final(FULL_DEPTH_VARIANTS[-1][0])


def run_full_depth(args, out: Path, launches: Launches, model: dict | None, data: dict, processes: int,
                   cpu: bool) -> None:
    """The full-size DiT distilled into itself (a random DiT, so time and memory only), writing nothing but its report;
    while a variant runs out of GPU memory, the next one."""
    for name, flags in FULL_DEPTH_VARIANTS:
        if launches.succeeded(name):
            print(f"[scale_check] {name}: done before, skipped", flush=True)
            return
        if launches.final(name):
            print(f"[scale_check] {name}: ran out of GPU memory before; trying the next variant", flush=True)
            continue
        run_dir = out / "meanflow_full"
        if (left := launches.time_left(name)) is None:
            return
        record = launch(name, "meanflow.yaml", "accelerate_fsdp2.yaml", processes, [
            "--model", model["path"], "--prompts", data["prompts"], "--latents", data["latents"],
            "--output_dir", str(run_dir), "--max_steps", str(args.meanflow_steps), "--warmup_steps", "0",
            "--log_every", "1", "--no_export"], out, left, cpu, lean=True, accelerate_flags=tuple(flags))
        record |= {"model": model, "report": summary_of(report_of(run_dir), RUN_KEYS)}
        (run_dir / "report.json").unlink(missing_ok=True)  # the next variant must not read this one's
        launches.put(name, record)
        if "out_of_memory" not in record:
            return


def run_meanflow_comparison(args, out: Path, launches: Launches, teacher_config: dict, parts: list[str], data: dict,
                            processes: int, cpu: bool, save_summary) -> None:
    """The four launches on the `--meanflow_layers` DiT, each skipped once it has a result unless a later launch or
    the comparison still needs a file it wrote and the disk no longer has (a fresh machine)."""
    steps, stop = str(args.meanflow_steps), str(args.meanflow_checkpoint)
    folders = {"uninterrupted": out / "meanflow_a", "stopped": out / "meanflow_b", "resumed": out / "meanflow_b",
               "repeat": out / "meanflow_c"}
    flags = {"uninterrupted": ["--max_steps", steps], "stopped": ["--max_steps", stop, "--checkpoint_every", stop],
             "resumed": ["--max_steps", steps, "--resume"], "repeat": ["--max_steps", steps]}
    checkpoint = folders["stopped"] / "checkpoints" / f"step_{stop}"
    compared = (out / "launches" / "meanflow_comparison.json").is_file()

    def needs_run(name: str) -> bool:
        if not launches.final(f"meanflow_{name}"):
            return True
        if name == "stopped":  # the resumed run starts from its checkpoint
            return needs_run("resumed") and not checkpoint.is_dir()
        return not compared and not (folders[name] / "meanflow_dit.safetensors").is_file()

    todo = [name for name in MEANFLOW_RUNS if f"meanflow_{name}" in parts and needs_run(name)]
    if "resumed" in todo and "stopped" not in todo and not checkpoint.is_dir():
        todo.insert(todo.index("resumed"), "stopped")
    teacher = None
    if todo:
        teacher = random_dit(out / "dit_teacher.safetensors", teacher_config, meanflow=False, cuda=not cpu, seed=1)
        common = ["--model", teacher["path"], "--prompts", data["prompts"], "--latents", data["latents"],
                  "--warmup_steps", "0", "--log_every", "1", "--keep_checkpoints", "1"]
    for name in MEANFLOW_RUNS:
        if name not in todo:
            print(f"[scale_check] meanflow_{name}: done before, skipped", flush=True)
            continue
        # a checkpoint holds fp32 weights + AdamW moments, 12 bytes per parameter: only the stopped run writes one
        writes = (BYTES_CHECKPOINT if name == "stopped" else 0) + BYTES_BF16
        check_disk(out, writes * teacher["parameters"], f"meanflow_{name}")
        if (left := launches.time_left(f"meanflow_{name}")) is None:
            break
        if name == "resumed":
            (folders[name] / "report.json").unlink(missing_ok=True)  # the stopped run's
        else:
            shutil.rmtree(folders[name], ignore_errors=True)  # a run starts afresh, not from an older checkpoint
        record = launch(f"meanflow_{name}", "meanflow.yaml", "accelerate_fsdp2.yaml", processes,
                        common + ["--output_dir", str(folders[name])] + flags[name], out, left, cpu,
                        lean=name != "stopped")
        record |= {"model": teacher,
                   "report": summary_of(report_of(folders[name]), RUN_KEYS + ("eval_mse_initial", "eval_mse_final"))}
        if name == "stopped":
            record["sharded_checkpoint"] = folder_listing(checkpoint)
        launches.put(f"meanflow_{name}", record)
        save_summary()

    exported = {name: folders[name] / "meanflow_dit.safetensors" for name in ("uninterrupted", "resumed", "repeat")}
    if not compared and all(launches.succeeded(f"meanflow_{n}") and exported[n].is_file() for n in exported):
        launches.put("meanflow_comparison", {
            "resumed_vs_uninterrupted_max_abs_diff": max_difference(exported["uninterrupted"], exported["resumed"]),
            "repeat_vs_uninterrupted_max_abs_diff": max_difference(exported["uninterrupted"], exported["repeat"])})
        compared = True
    if compared and all(launches.final(f"meanflow_{n}") for n in MEANFLOW_RUNS):
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
        remove_model(out / "dit_teacher.safetensors")


def summarize(out: Path, launches: Launches, results: dict) -> dict:
    """Every result so far, from the launch records (this call's and earlier calls')."""
    summary = dict(results)
    predictor = launches.get("predictor_ddp")
    if predictor:
        summary["predictor"] = {"model": predictor["model"],
                                "launch": {k: v for k, v in predictor.items() if k not in ("model", "report")},
                                "report": predictor.get("report")}
    records = {name: launches.get(f"meanflow_{name}") for name in MEANFLOW_RUNS}
    if any(records.values()):
        comparison = launches.get("meanflow_comparison") or {}
        summary["meanflow"] = {
            "teacher": next(r.get("model") for r in records.values() if r),
            "launches": {name: {k: v for k, v in r.items() if k not in ("model", "report", "sharded_checkpoint")}
                         for name, r in records.items() if r},
            **{name: (records[name] or {}).get("report") for name in ("uninterrupted", "resumed", "repeat")},
            "sharded_checkpoint": (records["stopped"] or {}).get("sharded_checkpoint"),
            "resumed_vs_uninterrupted_max_abs_diff": comparison.get("resumed_vs_uninterrupted_max_abs_diff"),
            "repeat_vs_uninterrupted_max_abs_diff": comparison.get("repeat_vs_uninterrupted_max_abs_diff"),
            "losses_by_step": {name: [[h["step"], h["loss"]] for h in ((r or {}).get("report") or {}).get("last_losses") or []]
                               for name, r in records.items() if name != "stopped"},
        }
    attempts = {name: launches.get(name) for name, _ in FULL_DEPTH_VARIANTS if launches.get(name)}
    if attempts:
        fits = [name for name, r in attempts.items() if r["returncode"] == 0]
        summary["meanflow_full_depth"] = {"attempts": attempts, "ran": fits[0] if fits else None}
    every = {name: r for name, r in [("predictor_ddp", predictor), *((f"meanflow_{n}", r) for n, r in records.items()),
                                     *attempts.items()] if r}
    # an out-of-memory attempt that a later variant replaced is a result, not a failure
    replaced = [n for n, _ in FULL_DEPTH_VARIANTS[:-1] if "out_of_memory" in (attempts.get(n) or {})
                and any(r["returncode"] == 0 for r in attempts.values())]
    summary["failed_launches"] = [name for name, r in every.items() if r["returncode"] != 0 and name not in replaced]
    return summary


def lean_train(argv: list[str]) -> dict:
    """training/train.py without checkpoints and with a one-sample held-out evaluation; `--no_export`: without the
    export either (see the module docstring)."""
    from training import loop, meanflow
    from training.train import main as train_main

    loop.save_checkpoint = lambda *args, **kwargs: None
    meanflow.EVAL_BATCH = 1
    if "--no_export" in argv:
        argv = [a for a in argv if a != "--no_export"]

        def report_only(accelerator, config, model, unwrapped, report, filename, R=None):
            if accelerator.is_main_process:
                loop.write_report(config.output_dir, report)
            accelerator.wait_for_everyone()
            accelerator.end_training()
            return report

        meanflow.finish_distillation = report_only
    return train_main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        lean_train(sys.argv[2:])
    else:
        main()
