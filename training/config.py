"""Stage configs: frozen dataclasses filled from a YAML file and `--key value` flags, checked on construction.

Every field carries its unit, default and trade-off in the comment beside it; `__post_init__` refuses bad values with
a message that names the key and the fix. The resolved config goes into checkpoints, tensorboard and the metadata
of exported files (`as_dict`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass

from disca.schedules import AnchorSchedule, ScheduleError

STAGES = ("predictor", "predictor_rollout", "meanflow", "cfg_distill", "flow_matching")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
DISC_INPUTS = ("clean_estimate", "next_sample")


class ConfigError(ValueError):
    """A config file or flag is missing, unknown or malformed; the message names the key."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass(frozen=True, kw_only=True)
class CommonConfig:
    """Fields every stage shares."""

    stage: str  # which stage this file configures: predictor | predictor_rollout | meanflow | cfg_distill | flow_matching
    model: str  # the frozen DiT: a diffusers transformer folder or a Tencent-layout .safetensors file
    prompts: str  # cached prompt embeddings written by `python -m training.data encode` (.safetensors)
    output_dir: str  # run folder: checkpoints/, logs/ (tensorboard), report.json and the exported file
    seed: int = 0  # seeds weights init, noise and batch sampling; each rank derives its own stream from it
    max_steps: int = 1000  # optimiser steps in total (all phases)
    batch_size: int = 1  # samples per process and step; global batch = batch_size x processes
    learning_rate: float = 1e-4  # peak AdamW learning rate of the trained network
    warmup_steps: int = 0  # linear warm-up from 0 to learning_rate; 0 = start at learning_rate
    lr_schedule: str = "constant"  # after warm-up: 'constant' (fine-tuning) or 'cosine' decay to 0 at max_steps (from scratch)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    base_dtype: str = "float32"  # dtype of the frozen DiT copy: bfloat16 halves its memory (needs --mixed_precision bf16)
    gradient_checkpointing: bool = False  # recompute DiT (and predictor) blocks in backward: less memory, ~30% more time
    checkpoint_every: int = 100  # save accelerate state every N steps (and at the end); resume continues from the last
    keep_checkpoints: int = 2  # how many step_N folders to keep; older ones are deleted
    log_every: int = 10  # tensorboard/progress-bar update period in steps
    guidance: float = 6.0  # embedded CFG scale fed to guidance-embedded DiTs (HunyuanVideo-1.0 default 6.0)
    push_to_hub: str = ""  # optional Hugging Face repo id to upload the exported file to; empty = do not upload

    def __post_init__(self):
        _require(self.stage in STAGES, "stage", f"must be one of {STAGES}, got {self.stage!r}")
        for key in ("model", "prompts", "output_dir"):
            _require(bool(getattr(self, key)), key, "is required and must be a non-empty path")
        _require(os.path.exists(self.model), "model", f"{self.model} does not exist; give a diffusers transformer "
                 "folder or a Tencent-layout .safetensors file")
        _require(os.path.isfile(self.prompts), "prompts", f"{self.prompts} is not a file; create it with "
                 "`python -m training.data encode --dataset <dataset.toml>`")
        _require(self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        # a warm-up longer than the run is allowed (the rate then never reaches its peak): short runs keep the defaults
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        _require(self.base_dtype in DTYPES, "base_dtype", f"must be one of {DTYPES}, got {self.base_dtype!r}")
        _require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _require(self.guidance >= 0, "guidance", f"must be >= 0, got {self.guidance}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class ServedScheduleConfig(CommonConfig):
    """Fields of the stages that train a predictor for a sampling schedule (predictor, predictor_rollout)."""

    latent_shape: tuple[int, int, int] = (33, 60, 104)  # latent frames, height, width of the trajectories (33x60x104 = 129f 480x832 for 1.0)
    steps: int = 20  # sampler steps of the deployment schedule the predictor serves
    shift: float = 5.0  # flow shift of that schedule (official R-MeanFlow T2V: 5.0)
    schedules: tuple[str, ...] = ("t2v_official_10of20", "t2v_official_8of20")  # presets or step lists ("0 2 4 7"); one predictor serves all
    held_out_prompts: int = 1  # the last N prompts are never trained on; the final report measures error on them
    init_predictor: str = ""  # optional predictor file (official or ours) to start from instead of the DiT's last blocks
    eval_every: int = 100  # held-out evaluation period in steps; the best evaluation's weights (the start counts) are exported
    reference_images: str = ""  # 1.5 I2V: image_cache_file written by `training.data encode` (row i = prompt i); empty = text-to-video

    def __post_init__(self):
        super().__post_init__()
        _require(len(self.latent_shape) == 3 and all(s >= 1 for s in self.latent_shape), "latent_shape",
                 f"must be three positive ints [frames, height, width], got {list(self.latent_shape)}")
        _require(self.steps >= 2, "steps", f"must be >= 2 (a predicted step needs an anchor before it), got {self.steps}")
        _require(self.shift > 0, "shift", f"must be > 0, got {self.shift}")
        _require(len(self.schedules) > 0, "schedules", "needs at least one preset name or step list")
        for schedule in self.anchor_schedules():
            try:
                anchors = schedule.anchor_steps(self.steps)
            except ScheduleError as error:
                raise ConfigError(f"config key 'schedules': {error}") from None
            _require(len(anchors) < self.steps, "schedules", f"{schedule.name} makes every one of the {self.steps} "
                     "steps an anchor, so there is nothing to predict; use a sparser list or a larger interval")
        _require(self.held_out_prompts >= 1, "held_out_prompts", f"must be >= 1 to measure the result, got {self.held_out_prompts}")
        _require(not self.init_predictor or os.path.isfile(self.init_predictor), "init_predictor",
                 f"{self.init_predictor} is not a file")
        _require(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")
        _require(not self.reference_images or os.path.isfile(self.reference_images), "reference_images",
                 f"{self.reference_images} is not a file; create it with `python -m training.data encode` from a "
                 "[[datasets]] image_directory, or leave it empty for text-to-video")

    def anchor_schedules(self) -> list[AnchorSchedule]:
        try:
            return [AnchorSchedule.parse(entry) for entry in self.schedules]
        except ScheduleError as error:
            raise ConfigError(f"config key 'schedules': entry {error}") from None


@dataclass(frozen=True, kw_only=True)
class PredictorConfig(ServedScheduleConfig):
    """DisCa predictor: MSE phase, then GAN phase, on trajectories of the frozen distilled DiT."""

    trajectories_per_prompt: int = 1  # noise seeds per training prompt; the pool holds steps x caches per trajectory in memory
    trajectory_batch: int = 1  # trajectories sampled together when building the pool (more: faster, more memory)
    pool_on_device: bool = False  # keep the pool in GPU memory (small models: no per-step host copies); default CPU RAM
    depth: int = 2  # predictor blocks (official: 2)
    mse_steps: int = 500  # phase 1 length (paper: 500); the GAN phase runs for max_steps - mse_steps
    # Adam's first steps move every weight by ~lr whatever its gradient (m / sqrt(v) = +-1 until v averages over
    # ~1 / (1 - beta2) = 100 steps): on full-size HunyuanVideo one such step at 1e-4 took the held-out MSE from
    # cache reuse's 0.005 to 12 (issue 14). Linear warm-up over 2 / (1 - beta2) steps (Ma & Yarats 2021).
    warmup_steps: int = 200
    # each schedule's first window (the steps predicted from its first anchor that has any) is drawn this many times as
    # often as the other pairs, where errors weigh most on the video; on DisCa-mini 4 changed nothing measurable
    # (benchmarks/mini/README.md, "How many DiT calls")
    first_window_repeats: int = 1
    on_policy_fraction: float = 0.0  # share of each batch drawn from DisCa roll-outs of the current predictor (0 = teacher forcing only)
    on_policy_refresh: int = 100  # roll the current predictor out again every N steps (checkpoint_every must be a multiple)
    on_policy_rollouts: int = 8  # training trajectories rolled out per refresh, on each schedule (each costs ~one trajectory of DiT calls)
    rollout_eval_prompts: int = 4  # held-out trajectories rolled out at the start and end (exposure gap, final-sample error); 0 = skip
    disc_learning_rate: float = 1e-2  # discriminator-head AdamW learning rate (paper: 1e-2; lower it if D wins)
    adv_weight: float = 1.0  # weight of the adversarial term in the predictor loss (paper: 1.0)
    disc_taps: tuple[int, ...] = ()  # DiT block indices whose image tokens feed a head; empty = 3 spread over the depth
    disc_width: int = 256  # hidden width of each spectral-norm head
    disc_input: str = "clean_estimate"  # what D judges: 'clean_estimate' (x_t - t u, at sigma 0) or 'next_sample' (x_r at r)

    def __post_init__(self):
        super().__post_init__()
        _require(self.stage == "predictor", "stage", f"a predictor config needs stage: predictor, got {self.stage!r}")
        _require(self.trajectory_batch >= 1, "trajectory_batch", f"must be >= 1, got {self.trajectory_batch}")
        _require(self.trajectories_per_prompt >= 1, "trajectories_per_prompt", f"must be >= 1, got {self.trajectories_per_prompt}")
        _require(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        _require(self.first_window_repeats >= 1, "first_window_repeats", f"must be >= 1, got {self.first_window_repeats}")
        _require(0 <= self.on_policy_fraction <= 1, "on_policy_fraction", f"must be in [0, 1], got {self.on_policy_fraction}")
        _require(self.on_policy_refresh >= 1 and self.on_policy_rollouts >= 1, "on_policy_refresh",
                 f"on_policy_refresh and on_policy_rollouts must be >= 1, got {self.on_policy_refresh}, {self.on_policy_rollouts}")
        # a resumed run rebuilds its roll-outs from the checkpoint's weights: exact only at a refresh step
        _require(not self.on_policy_fraction or self.checkpoint_every % self.on_policy_refresh == 0, "checkpoint_every",
                 f"with on_policy_fraction > 0 it must be a multiple of on_policy_refresh ({self.on_policy_refresh}), so a "
                 f"resumed run rolls out from the same weights as the uninterrupted one; got {self.checkpoint_every}")
        _require(self.rollout_eval_prompts >= 0, "rollout_eval_prompts", f"must be >= 0, got {self.rollout_eval_prompts}")
        _require(0 <= self.mse_steps <= self.max_steps, "mse_steps", f"must be in 0..max_steps ({self.max_steps}), got {self.mse_steps}")
        _require(self.disc_learning_rate > 0, "disc_learning_rate", f"must be > 0, got {self.disc_learning_rate}")
        _require(self.adv_weight >= 0, "adv_weight", f"must be >= 0, got {self.adv_weight}")
        _require(self.disc_width >= 1, "disc_width", f"must be >= 1, got {self.disc_width}")
        _require(self.disc_input in DISC_INPUTS, "disc_input", f"must be one of {DISC_INPUTS}, got {self.disc_input!r}")


@dataclass(frozen=True, kw_only=True)
class PredictorRolloutConfig(ServedScheduleConfig):
    """Continue a trained predictor on whole DisCa roll-outs: the loss is the sampler's states against the no-cache
    sampler's from the same noise (training/predictor_rollout.py). The gradient reaches every earlier step through
    the DiT's anchor calls, so memory grows with the anchors of a roll-out x the DiT's activations
    (`gradient_checkpointing` keeps only each block's input)."""

    learning_rate: float = 5e-5  # DisCa-mini: 650 steps at 5e-5 took the 5-call list's held-out loss 0.0016 -> 0.0012
    warmup_steps: int = 20  # from a trained predictor: a short warm-up (the predictor stage's 200 is for a fresh one)
    lr_schedule: str = "cosine"

    def __post_init__(self):
        super().__post_init__()
        _require(self.stage == "predictor_rollout", "stage",
                 f"a predictor_rollout config needs stage: predictor_rollout, got {self.stage!r}")
        _require(bool(self.init_predictor), "init_predictor", "is required: this stage continues a trained predictor "
                 "(the predictor stage's predictor.safetensors, or an official file)")


@dataclass(frozen=True, kw_only=True)
class VideoSetConfig(CommonConfig):
    """Fields of the stages that train on cached videos (meanflow, cfg_distill, flow_matching)."""

    latents: str  # cached video latents (training.data latents file), [N, C, F, H, W]; row i is captioned by prompt i
    data_on_device: bool = False  # hold latents and prompts in GPU memory: small sets only (no per-step host copies)

    def __post_init__(self):
        super().__post_init__()
        _require(os.path.isfile(self.latents), "latents", f"{self.latents} is not a file; cache latents with "
                 "`python -m training.data latents`")


@dataclass(frozen=True, kw_only=True)
class MeanFlowConfig(VideoSetConfig):
    """Restricted MeanFlow distillation of a (CFG-distilled) flow teacher into a MeanFlow student."""

    R: float = 0.2  # largest interval t - r sampled (paper: 0.2 best); must be in (0, 1]
    boundary_fraction: float = 0.25  # share of samples with r = t (plain flow matching, anchors v)
    shift: float = 5.0  # t = shift*s / (1 + (shift-1)*s), s ~ U(0, 1): matches the deployment schedule
    derivative: str = "finite_difference"  # du/dt: 'jvp' (exact, torch.func, math attention: small models) or 'finite_difference' (fp32, any attention/FSDP)
    fd_epsilon: float = 1e-4  # central-difference step on the sigma scale (1e-3 was 6% off on DisCa-mini); calibrate with --calibrate
    tangent_warmup_steps: int = 0  # ramp the du/dt term from 0 to 1 over N steps (sCM/FastGen stabiliser); 0 = full from the start
    adaptive_p: float = 1.0  # adaptive loss weight power p in L / sg((L + c)^p) (MeanFlow: 1.0)
    adaptive_c: float = 0.01  # adaptive loss weight constant c (MeanFlow ImageNet: 0.01)

    def __post_init__(self):
        super().__post_init__()
        _require(self.stage == "meanflow", "stage", f"a meanflow config needs stage: meanflow, got {self.stage!r}")
        _require(0 < self.R <= 1, "R", f"must be in (0, 1] (the largest t - r on the sigma scale; paper: 0.2), got {self.R}")
        _require(0 <= self.boundary_fraction < 1, "boundary_fraction", f"must be in [0, 1), got {self.boundary_fraction}")
        _require(self.shift > 0, "shift", f"must be > 0, got {self.shift}")
        _require(self.derivative in ("jvp", "finite_difference"), "derivative",
                 f"must be 'jvp' or 'finite_difference', got {self.derivative!r}")
        _require(0 < self.fd_epsilon < 0.5, "fd_epsilon", f"must be in (0, 0.5), got {self.fd_epsilon}")
        _require(self.tangent_warmup_steps >= 0, "tangent_warmup_steps", f"must be >= 0, got {self.tangent_warmup_steps}")
        _require(self.adaptive_p >= 0 and self.adaptive_c > 0, "adaptive_p",
                 f"need adaptive_p >= 0 and adaptive_c > 0, got {self.adaptive_p}, {self.adaptive_c}")


@dataclass(frozen=True, kw_only=True)
class CFGDistillConfig(VideoSetConfig):
    """Fold classifier-free guidance into a guidance-embedded student (for bases that are not guidance-distilled)."""

    negative_prompt: str  # cached embedding of the negative/empty prompt (one row), the unconditional branch
    guidance_min: float = 1.0  # smallest CFG scale the student learns
    guidance_max: float = 8.0  # largest CFG scale the student learns
    shift: float = 7.0  # t sampling shift (HunyuanVideo base training/sampling default 7.0)

    def __post_init__(self):
        super().__post_init__()
        _require(self.stage == "cfg_distill", "stage", f"a cfg_distill config needs stage: cfg_distill, got {self.stage!r}")
        _require(os.path.isfile(self.negative_prompt), "negative_prompt", f"{self.negative_prompt} is not a file")
        _require(0 <= self.guidance_min <= self.guidance_max, "guidance_min",
                 f"need 0 <= guidance_min <= guidance_max, got {self.guidance_min}, {self.guidance_max}")
        _require(self.shift > 0, "shift", f"must be > 0, got {self.shift}")


@dataclass(frozen=True, kw_only=True)
class FlowMatchingConfig(VideoSetConfig):
    """Plain flow-matching training of a DiT with prompt dropout: a from-scratch teacher or a fine-tune of a base."""

    negative_prompt: str  # cached embedding of the empty/negative prompt (one row): dropped prompts use it, so CFG works
    prompt_dropout: float = 0.1  # share of samples trained on the negative prompt (the unconditional branch of CFG)
    shift: float = 1.0  # t = shift*s / (1 + (shift-1)*s), s ~ U(0, 1); > 1 spends more steps at high noise

    def __post_init__(self):
        super().__post_init__()
        _require(self.stage == "flow_matching", "stage", f"a flow_matching config needs stage: flow_matching, got {self.stage!r}")
        _require(os.path.isfile(self.negative_prompt), "negative_prompt", f"{self.negative_prompt} is not a file")
        _require(0 <= self.prompt_dropout < 1, "prompt_dropout", f"must be in [0, 1), got {self.prompt_dropout}")
        _require(self.shift > 0, "shift", f"must be > 0, got {self.shift}")


CONFIG_CLASSES = {"predictor": PredictorConfig, "predictor_rollout": PredictorRolloutConfig, "meanflow": MeanFlowConfig,
                  "cfg_distill": CFGDistillConfig, "flow_matching": FlowMatchingConfig}


# ---------------------------------------------------------------------------------------------------- parsing


def _convert(key: str, annotation, value):
    """Cast a YAML value or a flag string to the field's type; errors name the key."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if annotation in (int, float, str):
            if annotation is str and not isinstance(value, str):
                raise ValueError(value)
            if annotation is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
                raise ValueError(value)
            return annotation(value)
        if origin is tuple:
            item_type = typing.get_args(annotation)[0]
            if isinstance(value, str):
                # flags: ints separated by commas ("33,60,104"), strings by semicolons ("0 1 2 5;N3")
                separator = ";" if item_type is str else ","
                value = [v.strip() for v in value.split(separator) if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return tuple(_convert(key, item_type, v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}': cannot read {value!r} as {_type_name(annotation)}") from None
    raise TypeError(f"unsupported config annotation for {key}: {annotation}")


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is tuple:
        return f"a list of {typing.get_args(annotation)[0].__name__}"
    return getattr(annotation, "__name__", str(annotation))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--max_steps', '10', '--seed=3'] -> {'max_steps': '10', 'seed': '3'}."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides are written --key value or --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"flag {arg} needs a value (--key value)")
            key, value = arg[2:], args[i + 1]
            i += 2
        out[key] = value
    return out


def build_config(raw: dict, overrides: dict[str, str] | None = None, source: str = "config"):
    """A stage config from a YAML mapping plus flag overrides (flags win)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, got {type(raw).__name__}")
    merged = dict(raw)
    merged.update(overrides or {})
    stage = merged.get("stage")
    if stage not in CONFIG_CLASSES:
        raise ConfigError(f"{source}: config key 'stage' must be one of {STAGES}, got {stage!r}")
    cls = CONFIG_CLASSES[stage]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {unknown} for stage {stage}; valid keys: {sorted(fields)}")
    missing = sorted(name for name, f in fields.items() if f.default is dataclasses.MISSING and
                     f.default_factory is dataclasses.MISSING and name not in merged)
    if missing:
        raise ConfigError(f"{source}: missing required config key(s) {missing} for stage {stage}")
    values = {key: _convert(key, hints[key], value) for key, value in merged.items()}
    return cls(**values)


def load_config(path: str, overrides: list[str] | None = None):
    """Read a stage YAML and apply `--key value` overrides."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
    return build_config(raw if raw is not None else {}, parse_overrides(overrides or []), path)
