"""DisCa-mini, end to end from one seed: data -> classifier -> teacher -> CFG distillation -> MeanFlow (R = 0.2 and
R = 1.0) -> predictor (MSE, then GAN) -> evaluation -> RESULTS.md, plots and the embedded demo model.

    python -m benchmarks.mini.run --out runs/mini                  # the v3 run (GPU; stage minutes in RESULTS.md)
    python -m benchmarks.mini.run --out runs/mini --preset smoke   # the same code on a toy budget (CPU, ~1 minute)
    python -m benchmarks.mini.run --out runs/mini --stages teacher,cfg_distill   # some stages (the rest must exist)

Every stage writes its result under --out and is skipped when that result exists, so the run can be split over
several machine leases; every stage is a pure function of the preset and the seed (batches, noises and held-out
prompts are drawn from fixed generators), so a split run computes what one uninterrupted run computes. The model
stages are our own `training/` stages, called in process with the configs built here (`stage_configs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from benchmarks.mini.dataset import HELDOUT_SEED, TRAIN_SEED, ClipSpec, from_latents, make_batch, to_latents
from benchmarks.mini.metrics import (ClassifierTraining, attribute_accuracy, classify, count_dit_calls,
                                     frechet_distance, load_classifier, psnr, save_classifier, train_classifier)
from benchmarks.mini.text import TEXT_DIM, encode_prompts, write_prompt_caches
from disca.formats import load_predictor_file
from disca.hosts.diffusers import DiffusersPredictor, HunyuanVideoHost, load_host, rope_axes
from disca.sampling import distilled, guided, sample_cached, sample_euler
from disca.schedules import AnchorSchedule, flow_sigmas
from training.config import build_config
from training.data import save_latents
from training.export import export_dit

logger = logging.getLogger(__name__)

STAGES = ("data", "classifier", "teacher", "cfg_distill", "calibrate", "meanflow_R0.2", "meanflow_R1.0", "predictor_mse",
          "predictor_gan", "predictor_mse_long", "predictor_on_policy", "predictor_frontier", "evaluate", "report", "embed")
FRONTIER_STEPS, FRONTIER_ANCHORS = 10, (0, 4, 7)  # the frontier row: DisCa with 3 of 10 full steps


TEACHER_STEPS = 10000  # see Preset.teacher


@dataclass(frozen=True)
class Preset:
    """Everything a run depends on besides the code. `v3` is the current model, `v2` the one the committed v2 logs
    came from; `smoke` exercises the same path."""

    spec: ClipSpec = ClipSpec(frames=9, size=64)  # 9 frames: motion is plain over 8 steps, half the tokens of 17
    train_clips: int = 32768  # ~28 clips per primary-object attribute combination (1152)
    held_out: int = 512  # evaluation prompts (split HELDOUT_SEED) and their fixed noises
    real_reference: int = 1024  # real held-out clips for the Fréchet distance's reference statistics
    # hidden 256 (> the 192 values a token carries: no bottleneck); 2+2 blocks keep the three DiTs a run passes
    # between leases under the device's 64 MiB transfer limit and the demo's DiT + predictor under 25 MB
    dit: dict = field(default_factory=lambda: dict(num_attention_heads=2, num_layers=2, num_single_layers=2))
    classifier: ClassifierTraining = ClassifierTraining()
    classifier_min_accuracy: float = 0.9  # refuse to evaluate with a classifier below this on any attribute
    shift: float = 2.0  # sampling shift; with it the 10-step schedule's largest interval is 0.18 <= R = 0.2
    cfg_scale: float = 4.0  # the teacher's guidance; the distilled students are sampled with it embedded
    # the first run's 4000 x 128 teacher learnt colour but not shape, motion or count (README, "Results"): this one
    # sees ~5x the samples; max_steps was set from the teacher's measured throughput to fit one device lease
    # batch_size is global: a teacher launched on several processes (DDP) draws batch_size / processes per process
    teacher: dict = field(default_factory=lambda: dict(max_steps=TEACHER_STEPS, batch_size=256, learning_rate=6e-4,
                                                       warmup_steps=500, lr_schedule="cosine", prompt_dropout=0.1,
                                                       data_on_device=True))
    cfg_distill: dict = field(default_factory=lambda: dict(max_steps=1000, batch_size=64, learning_rate=1e-4,
                                                           warmup_steps=100, lr_schedule="cosine", guidance_min=1.0,
                                                           guidance_max=7.0, data_on_device=True))
    # lr 3e-5, tangent warm-up 1000 and fd_epsilon 1e-4: the first run's 1e-4 / 200 / 1e-3 did not lower the MeanFlow
    # objective; these did (logs/ablate_meanflow.*, logs/calibrate.log)
    meanflow: dict = field(default_factory=lambda: dict(max_steps=2000, batch_size=64, learning_rate=3e-5,
                                                        warmup_steps=200, lr_schedule="cosine", boundary_fraction=0.25,
                                                        derivative="finite_difference", fd_epsilon=1e-4,
                                                        tangent_warmup_steps=1000, data_on_device=True))
    predictor_prompts: int = 544  # trajectories for the predictor stage (the last 32 are its own held-out set)
    # the discriminator judges clean estimates (disc_input); adversarial weight 0.01 raised the predictor's held-out
    # MSE 2.5x within 40 steps in a CPU probe on the first run's models, 0.001 kept it (README, "Results")
    predictor: dict = field(default_factory=lambda: dict(batch_size=32, learning_rate=1e-4, disc_learning_rate=1e-3,
                                                         adv_weight=0.002, held_out_prompts=32, trajectory_batch=32,
                                                         pool_on_device=True))
    predictor_mse_steps: int = 800  # also the on-policy and frontier predictors' (MSE-only) steps
    predictor_gan_steps: int = 800  # GAN phase; `predictor_mse_long` runs as many MSE steps (the control)
    # predictor_on_policy: half of each batch from DisCa roll-outs of the current predictor (training/README.md)
    on_policy: dict = field(default_factory=lambda: dict(on_policy_fraction=0.5, on_policy_refresh=100,
                                                         on_policy_rollouts=8))
    steps: int = 20  # the deployment schedule DisCa and the training-free caches run on (R-MeanFlow 20 steps)
    teacher_steps: int = 50
    eval_batch: int = 64
    eval_seeds: tuple[int, ...] = (0, 1)  # every row is evaluated on the held-out prompts once per noise seed
    demo_schedule: str = "N4"  # the demo's DisCa anchors (demo.json), an AnchorSchedule.parse string


# v3 (issue 16): v2's width (256 = 2 heads of 128: wider than the 192 values a token carries, see
# cost_ratio.TOKEN_VALUES), 1 double + 12 single blocks with MLP ratio 1, and a 1-block predictor: a predicted step
# costs ~13% of a DiT call on this CPU (benchmarks/mini/README.md, "v3") instead of v2's 60%, and the demo's DiT
# (with its r and guidance embedders) + predictor + classifier stay under 25 MB
V3_DIT = dict(num_attention_heads=2, num_layers=1, num_single_layers=12, mlp_ratio=1.0)
PRESETS = {
    "v2": Preset(),  # the v2 run: 31 H100 minutes of stages over two leases (logs/, the v2 README section)
    # teacher: 5500 steps are what fitted one H200's lease (21 minutes); guidance 3: the best all-attribute accuracy of
    # that teacher on the validation split (guidance_sweep: 0.54 at 3 vs 0.41 at v2's 4, logs/v3_lease1/)
    "v3": Preset(dit=V3_DIT, teacher=dict(Preset().teacher, max_steps=5500, checkpoint_every=1000), cfg_scale=3.0,
                 predictor=dict(Preset().predictor, depth=1),
                 # steps 0-2 full, then spread: the fewest DiT calls at which DisCa matches the no-cache model
                 # (README, "How many DiT calls"; logs/paired: -0.009 +- 0.009 accuracy over four noise seeds)
                 demo_schedule="0 1 2 4 7 11 15"),
    "smoke": Preset(spec=ClipSpec(frames=3, size=32), train_clips=48, held_out=6, real_reference=12,
                    dit=dict(num_attention_heads=1, num_layers=1, num_single_layers=2, mlp_ratio=1.0),  # v3's MLP
                    classifier=ClassifierTraining(clips=32, steps=3, batch_size=8), classifier_min_accuracy=0.0,
                    teacher=dict(max_steps=4, batch_size=4, learning_rate=1e-3, lr_schedule="cosine", prompt_dropout=0.25),
                    cfg_distill=dict(max_steps=3, batch_size=4, learning_rate=1e-4),
                    meanflow=dict(max_steps=3, batch_size=4, learning_rate=1e-4, derivative="finite_difference"),
                    predictor_prompts=6, predictor=dict(batch_size=4, learning_rate=1e-4, adv_weight=0.002,
                                                        held_out_prompts=2, depth=1),  # v3's 1-block predictor
                    predictor_mse_steps=3, predictor_gan_steps=2, steps=8, teacher_steps=6, eval_batch=4,
                    on_policy=dict(on_policy_fraction=0.5, on_policy_refresh=2, on_policy_rollouts=1)),
}
# full sizes, a few steps of everything: times each stage on the GPU and runs the whole path once (budgeting `v3`)
PRESETS["probe"] = dataclasses.replace(
    PRESETS["v3"], train_clips=2048, held_out=64, real_reference=256,
    classifier=ClassifierTraining(clips=1024, steps=100, batch_size=64), classifier_min_accuracy=0.0,
    teacher=dict(PRESETS["v3"].teacher, max_steps=300, warmup_steps=50),
    cfg_distill=dict(PRESETS["v3"].cfg_distill, max_steps=100, warmup_steps=20),
    meanflow=dict(PRESETS["v3"].meanflow, max_steps=100, warmup_steps=20, tangent_warmup_steps=50),
    predictor_prompts=48, predictor=dict(PRESETS["v3"].predictor, held_out_prompts=8),
    predictor_mse_steps=100, predictor_gan_steps=100)
# the same probe with v2's DiT and predictor: the teacher's loss and step time side by side with v3's
PRESETS["probe_v2"] = dataclasses.replace(PRESETS["probe"], dit=PRESETS["v2"].dit,
                                          predictor=dict(PRESETS["probe"].predictor, depth=2))
# a candidate for a DiT where 7 DiT calls of 20 give >= 2.5x (README "How many DiT calls"): 192 wide in 64-wide heads,
# 1 + 28 blocks (22.8 MB in bf16; a predicted step ~0.067 of a full one on the CPU)
PRESETS["probe_v4"] = dataclasses.replace(PRESETS["probe"], dit=dict(num_attention_heads=3, attention_head_dim=64,
                                                                     num_layers=1, num_single_layers=28, mlp_ratio=1.0))
SEED = 0


# ---------------------------------------------------------------------------------------------------- paths

FILES = {  # what each stage (and its inputs) leaves under --out; a stage is done when its file exists
    "prompts": "data/prompts.safetensors", "negative": "data/negative.safetensors",
    "latents": "data/latents.safetensors", "predictor_prompts": "data/predictor_prompts.safetensors",
    "classifier": "classifier.safetensors", "classifier_report": "classifier.json", "init_dit": "init_dit.safetensors",
    "teacher": "teacher/flow_matching_dit.safetensors", "cfg_distill": "cfg_distill/cfg_distilled_dit.safetensors",
    "calibrate": "calibrate/calibration.json",
    "meanflow_R0.2": "meanflow_R0.2/meanflow_dit.safetensors", "meanflow_R1.0": "meanflow_R1.0/meanflow_dit.safetensors",
    "predictor_mse": "predictor_mse/predictor.safetensors", "predictor_gan": "predictor_gan/predictor.safetensors",
    "predictor_mse_long": "predictor_mse_long/predictor.safetensors",
    "predictor_on_policy": "predictor_on_policy/predictor.safetensors",
    "predictor_frontier": "predictor_frontier/predictor.safetensors",
    "evaluate": "results.json", "report": "RESULTS.md", "embed": "embedded/demo.json",
}


class Paths:
    """`paths["teacher"]` -> <out>/teacher/flow_matching_dit.safetensors (FILES); `paths.folder(stage)` -> <out>/<stage>."""

    def __init__(self, out: str):
        self.out = out

    def __getitem__(self, name: str) -> str:
        return os.path.join(self.out, FILES[name])

    def folder(self, stage: str) -> str:
        return os.path.join(self.out, stage)


# ---------------------------------------------------------------------------------------------------- stages

def make_data(preset: Preset, paths: Paths) -> None:
    """Prompt caches (train + the predictor's subset), the empty negative, the training latents (fp16) and the
    teacher's initial DiT: everything the training stages read, made in one process before any of them starts."""
    folder = os.path.dirname(paths["prompts"])
    write_prompt_caches(folder, preset.train_clips, TRAIN_SEED, preset.spec)
    write_prompt_caches_subset(paths["prompts"], paths["predictor_prompts"], preset.predictor_prompts)
    save_latents(paths["latents"], training_latents(preset.train_clips, preset.spec, workers=os.cpu_count() or 1))
    init_dit(preset, paths["init_dit"])


def training_latents(count: int, spec: ClipSpec, workers: int, chunk: int = 1024) -> torch.Tensor:
    """The first `count` training clips as fp16 latents. Clips are a pure function of (seed, index), so they are
    rendered in parallel (one CPU renders ~150 clips/s: 32,768 took 274 s in one process) with the same result."""
    ranges = [range(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    render = functools.partial(_latents_of, spec=spec)
    if min(workers, len(ranges)) <= 1:
        return torch.cat([render(r) for r in ranges])
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(ranges)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return torch.cat(list(pool.map(render, ranges)))


def _latents_of(indices: range, spec: ClipSpec) -> torch.Tensor:
    video, _, _ = make_batch(TRAIN_SEED, indices, spec)
    return to_latents(video).half()


def write_prompt_caches_subset(source: str, target: str, count: int) -> None:
    from disca.formats import ARCH_HV10
    from training.data import load_embeddings, save_embeddings

    cond = load_embeddings(source, ARCH_HV10)
    save_embeddings(target, ARCH_HV10, {k: v[:count] for k, v in cond.items()})


def make_classifier(preset: Preset, paths: Paths, device: torch.device) -> None:
    """Fit on real training clips, measure on real held-out clips, refuse to go on if any attribute is weak."""
    model = train_classifier(preset.classifier, spec=preset.spec, device=device).cpu()
    video, labels, _ = make_batch(HELDOUT_SEED, range(preset.real_reference), preset.spec)
    accuracy = attribute_accuracy(classify(model, video)[0], labels)
    with open(paths["classifier_report"], "w") as f:
        json.dump({"held_out_real_accuracy": accuracy, "clips": preset.real_reference}, f, indent=2)
    logger.info("classifier accuracy on %d real held-out clips: %s", preset.real_reference, accuracy)
    weak = {k: v for k, v in accuracy.items() if k != "all" and v < preset.classifier_min_accuracy}
    if weak:
        raise RuntimeError(f"the attribute classifier is too weak to judge generated videos: {weak} < "
                           f"{preset.classifier_min_accuracy} on real held-out clips; fix it before evaluating")
    save_classifier(paths["classifier"], model)


def init_dit(preset: Preset, path: str) -> None:
    """A fresh HunyuanVideo-1.0 DiT (diffusers class) with DiT-style zero init: every modulation and the final
    projection start at 0, so each block starts as the identity and the first steps are stable."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(SEED)
    channels = 3 * 16  # to_latents: 4x4 space-to-depth of RGB
    shape = {"mlp_ratio": 4.0, "attention_head_dim": 128, **preset.dit}
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=channels, out_channels=channels, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=False, text_embed_dim=TEXT_DIM, pooled_projection_dim=768,
        rope_axes_dim=rope_axes(shape["attention_head_dim"]), **shape)
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name == "proj_out" or name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear")):
                module.weight.zero_()
                module.bias.zero_()
    export_dit(path, HunyuanVideoHost(transformer), dtype=torch.float32)


def stage_configs(preset: Preset, paths: Paths) -> dict[str, dict]:
    """The `training/` config of every model stage (what `accelerate launch training/train.py` would read)."""
    common = dict(seed=SEED, log_every=50, checkpoint_every=100_000, keep_checkpoints=1, guidance=preset.cfg_scale)
    data = dict(prompts=paths["prompts"], latents=paths["latents"])
    configs = {
        "teacher": dict(stage="flow_matching", model=paths["init_dit"], negative_prompt=paths["negative"],
                        shift=preset.shift, output_dir=paths.folder("teacher"), **data, **preset.teacher),
        "cfg_distill": dict(stage="cfg_distill", model=paths["teacher"], negative_prompt=paths["negative"], shift=preset.shift,
                            output_dir=paths.folder("cfg_distill"), **data, **preset.cfg_distill),
    }
    for R in (0.2, 1.0):
        configs[f"meanflow_R{R}"] = dict(stage="meanflow", model=paths["cfg_distill"], R=R, shift=preset.shift,
                                         output_dir=paths.folder(f"meanflow_R{R}"), **data, **preset.meanflow)
    predictor = dict(stage="predictor", model=paths["meanflow_R0.2"], prompts=paths["predictor_prompts"],
                     latent_shape=latent_shape(preset), steps=preset.steps, shift=preset.shift,
                     schedules=("N2", "N3", "N4"), **preset.predictor)
    mse, gan = preset.predictor_mse_steps, preset.predictor_gan_steps
    configs["predictor_mse"] = dict(predictor, output_dir=paths.folder("predictor_mse"), max_steps=mse, mse_steps=mse)
    configs["predictor_gan"] = dict(predictor, output_dir=paths.folder("predictor_gan"), max_steps=gan, mse_steps=0,
                                    init_predictor=paths["predictor_mse"])
    configs["predictor_mse_long"] = dict(predictor, output_dir=paths.folder("predictor_mse_long"), max_steps=gan,
                                         mse_steps=gan, init_predictor=paths["predictor_mse"])
    configs["predictor_on_policy"] = dict(predictor, output_dir=paths.folder("predictor_on_policy"), max_steps=mse,
                                          mse_steps=mse, **preset.on_policy)
    configs["predictor_frontier"] = dict(predictor, output_dir=paths.folder("predictor_frontier"), max_steps=mse,
                                         mse_steps=mse, steps=FRONTIER_STEPS,
                                         schedules=(" ".join(map(str, FRONTIER_ANCHORS)),))
    return {name: dict(common, **config) for name, config in configs.items()}


def latent_shape(preset: Preset) -> tuple[int, int, int]:
    return (preset.spec.frames, preset.spec.size // 4, preset.spec.size // 4)


def run_training_stage(name: str, raw: dict) -> dict:
    """One `training/` stage in this process (one rank of it under `accelerate launch`); continues from the stage's
    latest checkpoint when there is one, so a stage cut short by the end of a lease resumes on the next."""
    from training.loop import latest_checkpoint

    processes = world_size()
    if raw["batch_size"] % processes:
        raise ValueError(f"stage {name}: batch_size {raw['batch_size']} does not split over {processes} processes")
    config = build_config(dict(raw, batch_size=raw["batch_size"] // processes), source=f"DisCa-mini stage {name}")
    train = importlib.import_module(f"training.{config.stage}").train  # as training/train.py picks the stage
    started = time.perf_counter()
    resuming = latest_checkpoint(config.output_dir) is not None
    report = train(config, resume=resuming)
    if is_main_process():
        _write_json(os.path.join(config.output_dir, "stage_seconds.json"),
                    {"seconds": time.perf_counter() - started, "processes": processes, "resumed": resuming})
    return report


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------------- evaluation

@dataclass
class EvalSet:
    cond: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    prompts: list[str]
    noise: torch.Tensor  # [N, 48, F, h, w], one fixed noise per prompt: every row starts from the same noises
    real_features: torch.Tensor


def eval_set(preset: Preset, classifier, noise_seed: int = 0) -> EvalSet:
    _, labels, prompts = make_batch(HELDOUT_SEED, range(preset.held_out), preset.spec)
    real, _, _ = make_batch(HELDOUT_SEED, range(preset.real_reference), preset.spec)
    generator = torch.Generator().manual_seed(SEED + 12345 + 1000 * noise_seed)  # noise seed 0: v2's noises
    noise = torch.randn(preset.held_out, 48, *latent_shape(preset), generator=generator)
    return EvalSet(encode_prompts(prompts), labels, prompts, noise, classify(classifier, real)[1])


def generate(sampler, evalset: EvalSet, preset: Preset, host: HunyuanVideoHost, device) -> tuple[torch.Tensor, float, float]:
    """Run `sampler(host, noise, cond)` over the held-out set in batches -> (videos [N, 3, F, H, W] in [-1, 1] on
    the CPU, DiT rows per video, seconds per video)."""
    videos, seconds = [], 0.0
    with count_dit_calls(host.main_blocks()[0]) as counter:
        for start in range(0, preset.held_out, preset.eval_batch):
            rows = slice(start, start + preset.eval_batch)
            cond = {k: v[rows].to(device) for k, v in evalset.cond.items()}
            noise = evalset.noise[rows].to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                latents = sampler(host, noise, cond)
            videos.append(from_latents(latents.float()).clamp(-1, 1).cpu())
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - started
    return torch.cat(videos), counter.per_video(preset.held_out), seconds / preset.held_out


def teacher_sampler(preset: Preset):
    """The teacher with real CFG (two branches) over its own step count: the PSNR reference of every row."""
    negative = encode_prompts([""])

    def sampler(host, noise, cond):
        neg = {k: v.to(noise.device) for k, v in negative.items()}
        return sample_euler(guided(host, cond, neg, preset.cfg_scale), noise, flow_sigmas(preset.teacher_steps, preset.shift))
    return sampler


def plain_sampler(preset: Preset, steps: int):
    """A distilled DiT with Euler steps (a MeanFlow student: its average velocity over each step), no cache."""
    return lambda host, noise, cond: sample_euler(distilled(host, cond, preset.cfg_scale), noise,
                                                  flow_sigmas(steps, preset.shift))


def cached_sampler(preset: Preset, interval: int | None, mode: str, predictor_file: str | None = None,
                   steps: int | None = None, anchors: tuple[int, ...] | None = None):
    """A distilled DiT with a cache: the full model on the anchor steps (every `interval`-th, or `anchors`), `mode`
    (output reuse, Taylor-1 or a learned predictor) on the others."""
    steps = steps or preset.steps
    anchors = anchors or AnchorSchedule(interval=interval).anchor_steps(steps)

    def sampler(host, noise, cond):
        predictor = load_predictor(predictor_file).to(noise.device) if predictor_file else None
        return sample_cached(host, noise, flow_sigmas(steps, preset.shift), cond, anchors, mode=mode,
                             predictor=predictor, guidance=preset.cfg_scale)
    return sampler


def method_rows(preset: Preset, paths: Paths) -> list[dict]:
    """Every evaluated configuration: (row name, model file, sampler). Samplers take (host, noise, cond)."""
    rmf, mf = paths["meanflow_R0.2"], paths["meanflow_R1.0"]
    plain = functools.partial(plain_sampler, preset)
    cached = functools.partial(cached_sampler, preset)

    rows = [dict(name=teacher_row(preset), model=paths["teacher"], sampler=teacher_sampler(preset), group="teacher"),
            dict(name="MeanFlow (R=1.0) 10 steps", model=mf, sampler=plain(10), group="meanflow"),
            dict(name=f"MeanFlow (R=1.0) {preset.steps} steps", model=mf, sampler=plain(preset.steps), group="meanflow")]
    for steps in (10, preset.steps):
        rows.append(dict(name=f"R-MeanFlow (R=0.2) {steps} steps", model=rmf, sampler=plain(steps), group="rmeanflow"))
    for steps in (10, preset.steps):  # what MeanFlow training starts from: Euler on the CFG-distilled DiT
        rows.append(dict(name=f"CFG-distilled, no MeanFlow, {steps} steps", model=paths["cfg_distill"],
                         sampler=plain(steps), group="cfg_distilled"))
    for interval in (2, 3, 4):
        calls = len(AnchorSchedule(interval=interval).anchor_steps(preset.steps))
        rows.append(dict(name=f"R-MeanFlow {calls} steps (no cache; = DisCa N={interval} calls)", model=rmf,
                         sampler=plain(calls), group="equal_calls"))
        rows.append(dict(name=f"output reuse N={interval}", model=rmf, sampler=cached(interval, "reuse_output"), group="training_free"))
        rows.append(dict(name=f"Taylor-1 N={interval}", model=rmf, sampler=cached(interval, "taylor"), group="training_free"))
        for stage, label in (("predictor_mse", "MSE"), ("predictor_mse_long", "MSE, +GAN-phase steps as MSE"),
                             ("predictor_gan", "MSE+GAN"), ("predictor_on_policy", "MSE, on-policy")):
            rows.append(dict(name=f"DisCa N={interval} ({label})", model=rmf, group=stage,
                             sampler=cached(interval, "predictor", paths[stage])))
    rows.append(dict(name=frontier_row(), model=rmf, group="predictor_frontier",
                     sampler=cached(None, "predictor", paths["predictor_frontier"], FRONTIER_STEPS, FRONTIER_ANCHORS)))
    for row in rows:
        row["needs"] = [row["model"], paths["teacher"]] + ([paths[row["group"]]] if row["group"].startswith("predictor") else [])
    return rows


def teacher_row(preset: Preset) -> str:
    return f"teacher {preset.teacher_steps}x2 (CFG {preset.cfg_scale})"


def frontier_row() -> str:
    return f"DisCa {len(FRONTIER_ANCHORS)} of {FRONTIER_STEPS} full steps (MSE)"


@functools.cache
def load_predictor(path: str) -> DiffusersPredictor:
    """A predictor file (official layout) -> the diffusers-host predictor module, in eval mode; read once per path
    (each evaluation batch of each row samples with it)."""
    return DiffusersPredictor.from_file(load_predictor_file(path), path).eval()


def evaluate(preset: Preset, paths: Paths, device: torch.device, rows: list[dict] | None = None,
             results_file: str | None = None, strip_path: str | None = None) -> bool:
    """Every row (default: `method_rows`) whose weights exist, on the same held-out prompts, once per noise seed
    (`Preset.eval_seeds`), into `results_file` (default: the run's results.json) and, given `strip_path`, the first
    prompt's videos there; rows already in the results are kept, so a run split over leases adds rows as their
    models appear. Returns whether every row is done."""
    from safetensors.torch import load_file, save_file

    rows = rows if rows is not None else method_rows(preset, paths)
    results_file = results_file or paths["evaluate"]
    classifier = load_classifier(paths["classifier"])
    seeds = _read_json(results_file).get("seeds", {})
    strip = load_file(strip_path) if strip_path and os.path.isfile(strip_path) else {}
    hosts: dict[str, HunyuanVideoHost] = {}
    done = True
    for noise_seed in preset.eval_seeds:
        evalset = eval_set(preset, classifier, noise_seed)
        results = seeds.setdefault(str(noise_seed), {})
        teacher_videos = None
        for row in rows:
            is_teacher = row["group"] == "teacher"  # always run: its videos are the PSNR reference of the others
            if row["name"] in results and not is_teacher:
                continue
            if not all(os.path.isfile(p) for p in row["needs"]):
                done = False
                continue
            if row["model"] not in hosts:
                hosts[row["model"]] = load_host(row["model"]).to(device).requires_grad_(False).eval()
            videos, calls, seconds = generate(row["sampler"], evalset, preset, hosts[row["model"]], device)
            teacher_videos = videos if is_teacher else teacher_videos
            predicted, features = classify(classifier, videos)
            results[row["name"]] = {
                "group": row["group"], "dit_calls": calls, "seconds_per_video": seconds,
                "accuracy": attribute_accuracy(predicted, evalset.labels),
                "frechet_distance": frechet_distance(features, evalset.real_features),
                "psnr_vs_teacher": float(psnr(videos, teacher_videos).mean()),
            }
            if strip_path and noise_seed == preset.eval_seeds[0]:
                strip[row["name"]] = videos[0].contiguous()
            logger.info("noise seed %d  %-50s calls %5.1f  acc(all) %.3f  FD %.2f  PSNR %.2f dB", noise_seed, row["name"],
                        calls, results[row["name"]]["accuracy"]["all"], results[row["name"]]["frechet_distance"],
                        results[row["name"]]["psnr_vs_teacher"])
            _write_json(results_file, {"seeds": seeds, "prompt_0": evalset.prompts[0],
                                       "held_out": preset.held_out, "device": device_name(device)})
            if strip_path:
                save_file(strip, strip_path)
    return done


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"  # two lanes of a lease (device.sh rest) both write preset.json
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def embed(preset: Preset, paths: Paths) -> None:
    """The demo's files: the R-MeanFlow DiT, the MSE+GAN predictor (both bf16, with our metadata), the classifier,
    and the sampling settings they were evaluated with. `benchmarks/mini/weights/` ships a copy of this folder."""
    import shutil

    folder = os.path.dirname(paths["embed"])
    os.makedirs(folder, exist_ok=True)
    for source, name in ((paths["meanflow_R0.2"], "dit"), (paths["predictor_gan"], "predictor"),
                         (paths["classifier"], "classifier")):
        shutil.copyfile(source, os.path.join(folder, f"{name}.safetensors"))
    _write_json(paths["embed"], {"steps": preset.steps, "shift": preset.shift, "guidance": preset.cfg_scale,
                              "schedule": preset.demo_schedule,
                              "latent_shape": list(latent_shape(preset))})


# ---------------------------------------------------------------------------------------------------- driver

MULTI_PROCESS_STAGES = ("teacher", "cfg_distill", "meanflow_R0.2", "meanflow_R1.0")  # DDP under `accelerate launch`


def stage_done(stage: str, paths: Paths) -> bool:
    if stage == "data":
        return all(os.path.isfile(paths[name]) for name in ("prompts", "negative", "latents", "predictor_prompts", "init_dit"))
    if stage == "evaluate":
        return _read_json(paths["evaluate"]).get("complete", False)
    return os.path.isfile(paths[stage])


def run(preset_name: str, out: str, stages: tuple[str, ...] = STAGES, device: str | None = None,
        teacher_steps: int | None = None) -> None:
    preset = PRESETS[preset_name]
    if teacher_steps:
        preset = dataclasses.replace(preset, teacher=dict(preset.teacher, max_steps=teacher_steps))
    paths = Paths(out)
    pending = [s for s in stages if not stage_done(s, paths)]
    if world_size() > 1 and any(s not in MULTI_PROCESS_STAGES for s in pending):
        raise SystemExit(f"under {world_size()} processes only the stages {list(MULTI_PROCESS_STAGES)} can run; run "
                         f"{[s for s in pending if s not in MULTI_PROCESS_STAGES]} in one process first")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")  # the training stages' autocast
    os.makedirs(out, exist_ok=True)
    if is_main_process():
        _write_json(os.path.join(out, "preset.json"), {"name": preset_name, "seed": SEED, **dataclasses.asdict(preset)})
    configs = stage_configs(preset, paths)
    for stage in stages:
        if stage not in pending:
            logger.info("stage %s: done already, skipped", stage)
            continue
        started = time.perf_counter()
        logger.info("stage %s ...", stage)
        if stage == "data":
            make_data(preset, paths)
        elif stage == "classifier":
            make_classifier(preset, paths, device)
        elif stage == "calibrate":  # FD vs exact du/dt on this device, before the MeanFlow stages rely on fd_epsilon
            from training.meanflow import calibrate
            calibrate(build_config(dict(configs["meanflow_R0.2"], output_dir=paths.folder("calibrate"), batch_size=8),
                                   source="DisCa-mini stage calibrate"), device=device)
        elif stage in configs:
            run_training_stage(stage, configs[stage])
        elif stage == "evaluate":
            if evaluate(preset, paths, device, strip_path=os.path.join(paths.out, "strip.safetensors")):
                results = _read_json(paths["evaluate"])
                _write_json(paths["evaluate"], {**results, "complete": True})
        elif stage == "embed":
            embed(preset, paths)
        elif stage == "report":
            from benchmarks.mini.report import write_report
            write_report(paths.out, paths["report"])
        logger.info("stage %s: %.1f s", stage, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mini", help="run folder (default runs/mini)")
    parser.add_argument("--preset", default="v3", choices=sorted(PRESETS))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--teacher-steps", type=int, default=None,
                        help="override the preset's teacher steps (recorded in preset.json); to fit a time budget")
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(args.preset, args.out, tuple(s for s in STAGES if s in stages), args.device, args.teacher_steps)


if __name__ == "__main__":
    main()
