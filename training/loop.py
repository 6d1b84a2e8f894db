"""Mechanics every stage shares: accelerator setup, the learning rate, checkpoints, divergence stops, reports.

Resume contract: a run's state is (weights, optimiser moments, step, RNG) in `accelerator.save_state`; batches are
drawn from a generator seeded by (seed, step, rank), so a resumed run draws exactly the batches the uninterrupted
run would have drawn, with no dataloader position to restore. Each checkpoint also records what defines the run
(`run_record`: the model, the data, the objective); `--resume` refuses a config that changes any of it
(`check_resume`), as nanoGPT enforces the model args it stores in its checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time

import torch

from training.config import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
REPORT = "report.json"
TRAIN_STATE = "train_state.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message says which step, where the checkpoint is and what to change."""


class TrainState:
    """The step counter, saved as JSON in each checkpoint beside accelerate's state (accelerate would pickle a
    registered object and load it back with weights_only=False)."""

    def __init__(self):
        self.step = 0


def build_accelerator(config):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "logs"))
    return Accelerator(log_with="tensorboard", project_config=project, fsdp_plugin=fsdp_plugin())


def fsdp_plugin():
    """Under an FSDP launch: the accelerate config's plugin, with sharded parameters kept in fp32 (else None).

    accelerate's policy for --mixed_precision bf16 all-gathers bf16 parameters and casts every forward input to bf16;
    MeanFlow's finite differences (inputs 1e-4 apart, forwards in fp32) would then see nothing but rounding. Compute
    is still bf16 where it should be: the stages run their training forwards inside `accelerator.autocast()`.
    Gradients reduce in fp32 as a side effect; the all-gathers move fp32 (2x the bytes of bf16).
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(f"accelerate config: fsdp_version {plugin.fsdp_version} is not supported; the stages use "
                         "FSDP2 (fsdp_version: 2, see training/configs/accelerate_fsdp2.yaml)")
    if plugin.activation_checkpointing:
        raise ValueError("accelerate config: set fsdp_activation_checkpointing: false; the stages checkpoint each "
                         "DiT block themselves (gradient_checkpointing: true), and both together recompute every "
                         "block twice")
    plugin.mixed_precision_policy = MixedPrecisionPolicy()
    return plugin


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def shard_blocks(host, mesh=None) -> None:
    """FSDP2 units as in accelerate_fsdp2.yaml: one per DiT block, the rest (embedders, final layer) in the root."""
    from torch.distributed.fsdp import fully_shard

    for block in host.main_blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(host, mesh=mesh)


def load_frozen_dit(accelerator, path: str, dtype: torch.dtype):
    """A frozen DiT (teacher, base) for this process: a full copy on the device, or under FSDP sharded block by block
    like the student, so a 13B bf16 teacher costs 26 GB / processes of each GPU instead of 26 GB."""
    from disca.hosts.diffusers import load_host

    host = load_host(path, dtype).requires_grad_(False).eval()
    if is_fsdp(accelerator):
        shard_blocks(host)  # fully_shard moves each unit's shard to this rank's GPU
        return host
    return host.to(accelerator.device)


def base_dtype(accelerator, config) -> torch.dtype:
    """The frozen DiT's dtype; bf16 weights only work inside bf16 autocast, so require it rather than fail mid-step."""
    if config.base_dtype == "float32":
        return torch.float32
    if accelerator.mixed_precision != "bf16":
        raise ValueError(f"config key 'base_dtype': bfloat16 needs bf16 autocast; launch with --mixed_precision bf16 "
                         f"(got mixed_precision={accelerator.mixed_precision!r}) or set base_dtype: float32")
    return torch.bfloat16


def lr_at(step: int, peak: float, warmup_steps: int, schedule: str = "constant", total_steps: int = 0) -> float:
    """Linear warm-up to `peak`, then constant or cosine to 0 at `total_steps`: a pure function of the step, so
    resume needs no scheduler state."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "cosine" and total_steps > warmup_steps:
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
    return peak


def set_lr(optimizer, lr: float) -> None:
    """Every group's rate to `lr`, times the group's `lr_scale` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The batch RNG of one (step, rank): independent of anything that happened before, so resume is exact."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + rank) * 31 + stream)


def randn_on(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise made on `device` from a seed drawn from the step's CPU generator: large draws stay off the host
    (on a GPU, drawing and copying a batch of video noise on the CPU costs more than the training step) and remain a
    pure function of the step, so resume stays exact."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.randn(shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)


def shifted_times(generator: torch.Generator, batch: int, shift: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t = shift*s / (1 + (shift-1)*s), s ~ U(0, 1): [B] flow times, more of them at high noise for shift > 1."""
    s = torch.rand(batch, generator=generator, dtype=dtype)
    return shift * s / (1 + (shift - 1) * s)


def noised(latents: torch.Tensor, rows: torch.Tensor, t: torch.Tensor, generator: torch.Generator, device):
    """(x_0, eps, x_t = (1 - t) x_0 + t eps) for `rows` of the latent set, on `device`; t: [B] on `device`."""
    x0 = latents[rows].to(device).float()
    noise = randn_on(x0.shape, generator, device)
    t_b = t.view(-1, *([1] * (x0.ndim - 1)))
    return x0, noise, (1 - t_b) * x0 + t_b * noise


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CHECKPOINTS, f"step_{step}")


def latest_checkpoint(output_dir: str) -> str | None:
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return None
    steps = [int(name[5:]) for name in os.listdir(root) if name.startswith("step_") and name[5:].isdigit()]
    return checkpoint_dir(output_dir, max(steps)) if steps else None


# What defines a run: a --resume that changes one of these would continue a different run from the checkpoint's
# state. The model (its architecture and weights: `model_identity`) and the data files (by content, so a moved run
# still resumes) are compared too. Free to change on resume: the optimisation knobs (learning rates, warm-up,
# clipping, weight decay, max_steps to extend a run, phase lengths, evaluation and on-policy cadence) and the
# bookkeeping (output, logging, checkpoint cadence, memory and speed switches).
RUN_KEYS = (
    "stage", "seed", "batch_size", "base_dtype", "guidance",
    # predictor stage: the trajectory pool, its (anchor, step) pairs, the predictor's and discriminator's shapes
    "latent_shape", "steps", "shift", "schedules", "trajectories_per_prompt", "held_out_prompts", "depth",
    "disc_taps", "disc_width", "disc_input",
    # distillation stages: the objective
    "R", "boundary_fraction", "guidance_min", "guidance_max", "prompt_dropout",
)
RUN_FILES = ("prompts", "latents", "negative_prompt", "reference_images", "init_predictor")


def file_fingerprint(path: str) -> str:
    """sha256 of a file's size and its first and last MiB (a safetensors header, which names and shapes every
    tensor, and data at both ends): cheap on a 26 GB checkpoint. A folder: of its files' fingerprints."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if os.path.isfile(os.path.join(path, name)):
                digest.update(f"{name}:{file_fingerprint(os.path.join(path, name))}".encode())
        return digest.hexdigest()[:16]
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def model_identity(path: str) -> dict:
    """What the DiT at `path` is, without loading it: its architecture (`disca.formats.DiTSpec`, read from the tensor
    shapes in the file headers) and the pack's base fingerprint (a few small tensors)."""
    from safetensors import SafetensorError, safe_open

    from disca.formats import FINGERPRINT_KEYS, DisCaFormatError, base_fingerprint, infer_dit_spec, strip_wrapper_prefix

    def read(file: str, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
        # every tensor as its shape on the meta device, except the few the fingerprint reads
        with safe_open(file, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) if k.endswith(wanted) else torch.empty(f.get_slice(k).get_shape(), device="meta")
                    for k in f.keys()}

    try:
        if os.path.isdir(path):  # a diffusers folder: its keys under the Tencent names the spec and fingerprint read
            from disca.hosts.diffusers import arch_of_folder
            from disca.hosts.diffusers_keys import diffusers_to_tencent_dit

            state = {}
            for name in sorted(os.listdir(path)):
                if name.endswith(".safetensors"):  # the weights and disca_extra_embedders.safetensors
                    state.update(read(os.path.join(path, name), ("x_embedder.proj.weight", "proj_out.weight",
                                                                 "timestep_embedder.linear_1.weight")))
            tencent = diffusers_to_tencent_dit(state, arch_of_folder(path), path)
        else:
            tencent = strip_wrapper_prefix(read(path, FINGERPRINT_KEYS))
        spec = infer_dit_spec(tencent, path)
    except (DisCaFormatError, SafetensorError, OSError, KeyError) as error:  # e.g. a folder of .bin weights
        logger.warning("%s: architecture not readable from the headers (%s); the run records its content only", path,
                       error)
        return {"path": os.path.abspath(path), "fingerprint": file_fingerprint(path)}
    return {"path": os.path.abspath(path), **{k: getattr(spec, k) for k in spec.__dataclass_fields__},
            "fingerprint": base_fingerprint(tencent)}


@functools.lru_cache(maxsize=8)
def run_record(config) -> dict:
    """The run-defining part of a (frozen, hashable) stage config, JSON-ready; computed once per process and config."""
    values = config.as_dict()
    record = {key: values[key] for key in RUN_KEYS if key in values}
    record["model"] = model_identity(config.model)
    for key in RUN_FILES:
        if values.get(key):
            record[key] = {"path": os.path.abspath(values[key]), "fingerprint": file_fingerprint(values[key])}
    return json.loads(json.dumps(record))  # tuples as lists, as they come back from train_state.json


def run_differences(saved: dict, current: dict) -> list[str]:
    """One line per run-defining value that differs between a checkpoint's record and this config's (a file's
    path alone may differ: a moved run resumes)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"config key '{key}' ({new['path']}): {field} was {old.get(field)!r} in the run, is "
                    f"{new.get(field)!r} now" for field in sorted((set(old) | set(new)) - {"path"})
                    if old.get(field) != new.get(field)]
        elif old != new:
            out.append(f"config key '{key}' was {old!r} in the run, is {new!r} now")
    return out


def check_resume(config) -> None:
    """Before a --resume loads anything: refuse a config that changes what defines the run in `output_dir`."""
    path = latest_checkpoint(config.output_dir)
    state_file = None if path is None else os.path.join(path, TRAIN_STATE)
    if state_file is None or not os.path.isfile(state_file):
        return  # `resume` says what is missing
    with open(state_file) as f:
        saved = json.load(f).get("run")
    if saved is None:
        logger.warning("--resume: %s was written before checkpoints recorded their run; its model, data and "
                       "objective cannot be checked against this config", path)
        return
    differences = run_differences(saved, run_record(config))
    if differences:
        raise ConfigError(
            f"--resume: the checkpoint {path} belongs to another run: " + "; ".join(differences) + ". These define "
            "the run (its model, data and objective): resume with the run's values, or start a new run in another "
            "output_dir."
        )


def save_checkpoint(accelerator, output_dir: str, step: int, keep: int, extra=None, run: dict | None = None) -> str:
    """Save into a temp folder and rename, so a kill during saving never leaves a half-written step_N behind.

    `extra(folder)`: writes a stage's own files (e.g. the predictor's best held-out weights) into the checkpoint
    before the rename, on the main process, so they are in every checkpoint a resume can find.
    `run`: `run_record(config)`, kept beside the step so that `check_resume` can refuse a different run."""
    final = checkpoint_dir(output_dir, step)
    tmp = os.path.join(output_dir, CHECKPOINTS, f"tmp_step_{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, TRAIN_STATE), "w") as f:
            json.dump({"step": step, "run": run}, f)
        if extra is not None:
            extra(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        root = os.path.join(output_dir, CHECKPOINTS)
        old = sorted((int(n[5:]) for n in os.listdir(root) if n.startswith("step_") and n[5:].isdigit()))[:-keep]
        for s in old:
            shutil.rmtree(checkpoint_dir(output_dir, s), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: str, state: TrainState) -> None:
    path = latest_checkpoint(output_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {os.path.join(output_dir, CHECKPOINTS)}; "
                                "start without --resume or point output_dir at the run to continue")
    state_file = os.path.join(path, TRAIN_STATE)
    if not os.path.isfile(state_file):
        raise FileNotFoundError(f"--resume: {path} has no {TRAIN_STATE}; it was not written by this trainer version "
                                "(or the save was cut short); start the run again without --resume")
    try:
        accelerator.load_state(path)
    except ValueError as error:
        if "parameter group" not in str(error):
            raise
        raise ValueError(f"--resume: the optimizer state in {path} has other parameter groups than this trainer "
                         "builds: it was written by an earlier trainer version (the predictor stage gives its fusion "
                         "layers their own learning rates since 2026-11-30). Start the run again, or start a new one "
                         "from the exported predictor with `init_predictor:`") from error
    with open(state_file) as f:
        state.step = int(json.load(f)["step"])
    logger.info("resumed from %s at step %d", path, state.step)


def gather_losses(accelerator, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each loss over ranks. One all-gather per step; `.item()` is a device sync point."""
    names = sorted(losses)
    stacked = torch.stack([losses[n].detach().float().reshape(()) for n in names]).to(accelerator.device)
    gathered = accelerator.gather(stacked.unsqueeze(0)).reshape(-1, len(names))
    return {n: gathered[:, i].mean().item() for i, n in enumerate(names)}


def stop_if_diverged(accelerator, config, state: TrainState, values: dict[str, float], extra=None) -> None:
    """A NaN/inf loss on any rank: save a checkpoint (weights are still finite: no update was applied) and stop."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if not bad:
        return
    path = save_checkpoint(accelerator, config.output_dir, state.step, config.keep_checkpoints + 1, extra,
                           run_record(config))
    raise TrainingDiverged(
        f"loss became non-finite at step {state.step} ({bad}); no update was applied and no output file was "
        f"written. Checkpoint saved to {path}. Lower learning_rate (now {config.learning_rate}), keep grad_clip > 0, "
        "or check the data and base model for NaNs; then continue with --resume."
    )


def clip_grad(accelerator, module, max_norm: float) -> float:
    if max_norm <= 0:
        return float("nan")
    return float(accelerator.clip_grad_norm_(module.parameters(), max_norm))


def max_rank_difference(accelerator, module) -> float | None:
    """Largest |difference| of any parameter between this rank and the others (0.0 = replicas identical).

    None under FSDP, where every rank holds a different shard by design.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return None
    flat = torch.cat([p.detach().float().reshape(-1) for p in module.parameters()]).to(accelerator.device)
    gathered = accelerator.gather(flat.unsqueeze(0))
    return float((gathered - gathered[0:1]).abs().max())


def reset_peak_memory(accelerator) -> None:
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)


def loop_resources(accelerator, history: list[dict]) -> dict:
    """Median step time (the first step, with its one-off warm-up, left out when there are others) and each rank's
    peak allocated GPU memory since the loop began (None off the GPU); every rank must call it (a gather)."""
    seconds = [h["step_seconds"] for h in history[1:]] or [h["step_seconds"] for h in history]
    peak = None
    if accelerator.device.type == "cuda":
        local = torch.tensor([torch.cuda.max_memory_allocated(accelerator.device) / 2**30], device=accelerator.device)
        peak = [round(v, 2) for v in accelerator.gather(local).tolist()]
    return {"step_seconds_median": statistics.median(seconds) if seconds else None, "peak_memory_gib_per_rank": peak}


def write_report(output_dir: str, report: dict) -> str:
    path = os.path.join(output_dir, REPORT)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def progress(accelerator, total: int, initial: int, description: str):
    from tqdm.auto import tqdm

    # in a log file (no terminal) a bar line every 30 s, not one per step
    return tqdm(total=total, initial=initial, desc=description, disable=not accelerator.is_main_process, dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 30.0)


def flatten_config(config) -> dict:
    """Tracker-friendly config: tensorboard hparams accept scalars and strings only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.as_dict().items()}


def run_single_model_stage(accelerator, config, state: TrainState, model, optimizer, compute_losses, name: str,
                           evaluate) -> dict:
    """The nanoGPT-style loop the distillation stages share: lr(step), losses, divergence stop, clip, step, log, save.

    `compute_losses(step, generator)` returns a dict of scalar tensors; its "loss" entry is back-propagated, the
    others are logged. `evaluate()` returns the stage's held-out error, measured before (fresh runs only) and after.
    Returns the stage report (losses: this process's run; after a resume, from the resumed step).
    """
    initial = evaluate() if state.step == 0 else None
    history: list[dict] = []
    bar = progress(accelerator, config.max_steps, state.step, name)
    reset_peak_memory(accelerator)
    while state.step < config.max_steps:
        started = time.perf_counter()
        step = state.step
        set_lr(optimizer, lr_at(step, config.learning_rate, config.warmup_steps, config.lr_schedule, config.max_steps))
        with accelerator.autocast():
            losses = compute_losses(step, step_generator(config.seed, step, accelerator.process_index))
        accelerator.backward(losses["loss"])
        values = gather_losses(accelerator, losses)
        stop_if_diverged(accelerator, config, state, values)
        values["grad_norm"] = clip_grad(accelerator, model, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        finish_step(accelerator, config, state, values, history, bar, started)
    bar.close()
    resources = loop_resources(accelerator, history)
    return {"stage": name, "steps": state.step, "processes": accelerator.num_processes, "eval_mse_initial": initial,
            "eval_mse_final": evaluate(), "first_losses": history[:3], "last_losses": history[-3:],
            "rank_param_max_abs_diff": max_rank_difference(accelerator, model), **resources}


def finish_step(accelerator, config, state: TrainState, values: dict[str, float], history: list[dict], bar,
                started: float, extra=None) -> None:
    """After the optimizer steps: count the step, log it, and checkpoint on schedule (every stage's loop tail).

    `step_seconds` is the wall time since `started` (the step's top); the step's loss gather already waited for the
    device, so this is the step's time to within the optimizer update's queueing."""
    values["step_seconds"] = time.perf_counter() - started
    state.step += 1
    history.append({"step": state.step, **values})
    if state.step % config.log_every == 0 or state.step == config.max_steps:
        accelerator.log(values, step=state.step)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
    bar.update(1)
    if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
        save_checkpoint(accelerator, config.output_dir, state.step, config.keep_checkpoints, extra, run_record(config))


def prepare_single_model_stage(accelerator, config, student, resuming: bool, project: str):
    """The student on the device in train mode (block checkpointing per config), AdamW, `accelerator.prepare`, a
    TrainState, optional resume, trackers.

    Returns (model, optimizer, state, unwrapped student), in accelerate's canonical order. The unwrapped student has
    no autocast of its own (keep_fp32_wrapper=False): prepare() wraps forward in bf16 autocast, which overrides an
    outer `autocast(enabled=False)`, so MeanFlow's fp32 finite differences ran in bf16 (du/dt ~20x off on
    DisCa-mini). Every training and evaluation forward here runs inside `accelerator.autocast()` instead.
    """
    # under FSDP the student stays on the host until prepare(), whose fully_shard moves one shard per unit to the GPU
    student = (student if is_fsdp(accelerator) else student.to(accelerator.device)).train()
    if config.gradient_checkpointing:
        student.transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(student, optimizer)
    state = TrainState()
    if resuming:
        resume(accelerator, config.output_dir, state)
    accelerator.init_trackers(project, config=flatten_config(config))
    return model, optimizer, state, accelerator.unwrap_model(model, keep_fp32_wrapper=False)
