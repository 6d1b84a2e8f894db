"""Stage `predictor`: train a DisCa predictor on trajectories of the frozen distilled DiT (MSE, then GAN).

DisCa (arXiv 2602.05449, §3.2): on a non-anchor step j the predictor maps the current step's embedded tokens and
the cache C_a of the preceding anchor a (the DiT's last hidden state there) to the DiT's last hidden state at j;
the DiT's own final layer turns it into the output u_j. Training data are the frozen model's own trajectories:

    x_0 ~ N(0, I);  u_i, C_i = DiT(x_i, sigma_i, r = sigma_{i+1});  x_{i+1} = x_i + (sigma_{i+1} - sigma_i) u_i

For every schedule the run serves (step lists or intervals), each non-anchor step j gives a pair (a(j), j); a sample
is (x_j, sigma_j, sigma_{j+1}, prompt, C_{a(j)}) -> target u_j (teacher forcing on the DiT's trajectory).
Phase 1 (mse_steps): L = |u_pred - u_j|^2. Phase 2: L_P = MSE + adv_weight * (-D(fake)), L_D = hinge, with D =
frozen-DiT features + spectral-norm heads (training/discriminator.py); both players update every GAN step.

On-policy pairs (`on_policy_fraction`): at inference the cache and x_j come from a trajectory that already contains
predicted steps, so a share of each batch comes from DisCa roll-outs of the current predictor on the served schedules
(refreshed every `on_policy_refresh` steps): x_j and C_a are the roll-out's, the target is the frozen DiT at that x_j.
Every `eval_every` steps the predictor is measured on held-out pairs; the best weights (the start counts) are exported.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import torch

from disca.formats import (ARCH_HV15, base_fingerprint, check_predictor_fits, infer_dit_spec, load_predictor_file,
                           load_safetensors, save_safetensors)
from disca.hosts.diffusers import DiffusersPredictor, HunyuanVideoHost, load_host, predictor_from_dit
from disca.schedules import flow_sigmas
from disca.sampling import distilled, euler_step, sample_cached
from training import loop
from training.batches import guidance_for, select_rows, to_device
from training.config import PredictorConfig
from training.data import DataError, load_embeddings, load_references, with_image_condition
from training.discriminator import (FeatureDiscriminator, default_taps, hinge_discriminator_loss, hinge_generator_loss,
                                    trunk_features)
from training.export import META_FUSION_SLOPE, export_predictor, push_to_hub

logger = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """One sampled trajectory of the frozen DiT: per step i, the input x_i, the output u_i and the cache C_i."""

    prompt: int
    latents: torch.Tensor  # [S, C, F, H, W] inputs x_0 .. x_{S-1}
    velocities: torch.Tensor  # [S, C_out, F, H, W]
    caches: tuple[torch.Tensor, ...]  # each [S, L, D]


@torch.no_grad()
def sample_trajectories(host: HunyuanVideoHost, cond_rows: dict[str, torch.Tensor], noise: torch.Tensor,
                        sigmas: torch.Tensor, guidance: float, prompts: list[int], store) -> list[Trajectory]:
    """Euler (MeanFlow: r = next sigma) through the whole schedule for a batch of prompts, keeping every step's
    input, output and cache; one Trajectory per row, its tensors moved to `store` (CPU, or the GPU for small models).

    Sigmas and the Euler state x stay fp32, as the deployment keeps them (the host casts what enters the DiT): bf16
    sigmas made t = 1000 sigma a multiple of 4 near 1000 and bf16 states put each step's Euler update off."""
    x, inputs, outputs, caches = noise.float(), [], [], []
    batch, device = noise.shape[0], noise.device
    sigmas = sigmas.to(device, torch.float32)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        velocity, cache = host.forward_with_cache(x, sigma, cond_rows, sigma_next if host.is_meanflow else None,
                                                  guidance_for(host, guidance, batch, device))
        inputs.append(x)
        outputs.append(velocity)
        caches.append(cache)
        x = euler_step(x, velocity, sigma, sigma_next)
    inputs, outputs = torch.stack(inputs, 1).to(store), torch.stack(outputs, 1).to(store)
    caches = tuple(torch.stack(parts, 1).to(store) for parts in zip(*caches))
    return [Trajectory(prompt, inputs[b], outputs[b], tuple(c[b] for c in caches)) for b, prompt in enumerate(prompts)]


def schedule_pairs(schedule, steps: int) -> list[tuple[int, int]]:
    """(anchor a, predicted step j) for every non-anchor step j of one schedule, a = the last anchor before j."""
    anchors = sorted(schedule.anchor_steps(steps))
    return [(max(a for a in anchors if a < step), step) for step in range(steps) if step not in anchors]


def anchor_pairs(config: PredictorConfig) -> list[tuple[int, int]]:
    """(anchor a, predicted step j) for every non-anchor step of every schedule, deduplicated."""
    return sorted({pair for schedule in config.anchor_schedules() for pair in schedule_pairs(schedule, config.steps)})


def training_draws(config: PredictorConfig, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`pairs` with each schedule's first-window pairs listed `first_window_repeats` times: a uniform draw from this
    list is the weighted draw (the held-out evaluation keeps every pair once)."""
    first = set()
    for schedule in config.anchor_schedules():
        found = schedule_pairs(schedule, config.steps)
        first |= {pair for pair in found if pair[0] == found[0][0]}
    return [pair for pair in pairs for _ in range(config.first_window_repeats if pair in first else 1)]


def build_pool(host, cond, prompts: list[int], config: PredictorConfig, seed_offset: int, device) -> list[Trajectory]:
    """Trajectories for `prompts` x trajectories_per_prompt, noise seeded by (seed, prompt, k): identical on every rank."""
    sigmas = flow_sigmas(config.steps, config.shift)
    channels = host.transformer.config.out_channels
    jobs = [(prompt, k) for prompt in prompts for k in range(config.trajectories_per_prompt)]
    store = device if config.pool_on_device else "cpu"
    pool = []
    for start in range(0, len(jobs), config.trajectory_batch):
        chunk = jobs[start:start + config.trajectory_batch]
        noise = torch.cat([torch.randn(1, channels, *config.latent_shape, generator=torch.Generator().manual_seed(
            config.seed * 7919 + seed_offset + prompt * 101 + k)) for prompt, k in chunk]).to(device, host.dtype)
        rows = [prompt for prompt, _ in chunk]
        rows_cond = select_rows(cond, rows, device)
        pool += sample_trajectories(host, rows_cond, noise, sigmas, config.guidance, rows, store)
    return pool


def draw_batch(pool: list[Trajectory], pairs, cond, sigmas, generator: torch.Generator, size: int, device, dtype) -> dict:
    picks = [(pool[int(torch.randint(len(pool), (1,), generator=generator))],
              pairs[int(torch.randint(len(pairs), (1,), generator=generator))]) for _ in range(size)]
    steps = [j for _, (_, j) in picks]
    batch = {
        "latents": torch.stack([t.latents[j] for t, (_, j) in picks]),
        "target": torch.stack([t.velocities[j] for t, (_, j) in picks]),
        "anchor_velocity": torch.stack([t.velocities[a] for t, (a, _) in picks]),
        "cache": tuple(torch.stack([t.caches[c][a] for t, (a, _) in picks]) for c in range(len(pool[0].caches))),
        "sigma": sigmas[steps],
        "sigma_next": sigmas[[j + 1 for j in steps]],
        "cond": select_rows(cond, [t.prompt for t, _ in picks]),
    }
    return to_device(batch, device, dtype)


def discriminator_input(batch: dict, velocity: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample D judges and its sigma, from a step's velocity (the DiT's: real; the predictor's: fake).

    'next_sample': x_r = x_t - (t - r) u at r. Real and fake come from the same x_t, so they differ by (t - r) du:
    a few per mille of a sample still mostly noise, which D barely separates (DisCa-mini: hinge loss stuck at 2).
    'clean_estimate': x_0 = x_t - t u at sigma 0, the end point the velocity implies; the same du, t / (t - r) times
    larger (5-20x on a 20-step schedule) and on a noise-free sample, where blur and artefacts are visible.
    """
    end = batch["sigma_next"] if where == "next_sample" else torch.zeros_like(batch["sigma_next"])
    return euler_step(batch["latents"], velocity, batch["sigma"], end), end


def _predicted(host, predictor, batch, guidance):
    return host.predict(predictor, batch["latents"], batch["sigma"], batch["cond"], batch["cache"],
                        batch["sigma_next"] if host.is_meanflow else None, guidance)


def step_losses(host, predictor, discriminator, taps, batch: dict, guidance, *, gan: bool, disc_input: str,
                adv_weight: float, backward, autocast, segment_blocks: int | None = None) -> dict:
    """One training step's losses, back-propagated (the caller clips and steps the optimizers).

    The predictor gets MSE to the DiT's output, plus in the GAN phase `adv_weight` x the hinge generator loss of its
    output judged through the frozen trunk; then the discriminator gets its hinge loss on real vs fake. `backward`
    and `autocast` (a context-manager factory) are the accelerator's, or plain torch's in `benchmarks/training_steps.py`.
    """
    losses = {}
    with autocast():
        predicted = _predicted(host, predictor, batch, guidance)
        losses["mse"] = (predicted.float() - batch["target"].float()).pow(2).mean()
        loss_p = losses["mse"]
        if gan:
            fake, judged_at = discriminator_input(batch, predicted, disc_input)
            fake_logits = discriminator(trunk_features(host, taps, fake, judged_at, batch["cond"], guidance,
                                                       segment_blocks))
            losses["adv"] = hinge_generator_loss(fake_logits)
            loss_p = loss_p + adv_weight * losses["adv"]
    backward(loss_p)
    if gan:
        # the predictor loss also reached the heads; the discriminator learns only from its own loss
        discriminator.zero_grad(set_to_none=True)
        with autocast():
            with torch.no_grad():
                real, _ = discriminator_input(batch, batch["target"], disc_input)
                real_features = trunk_features(host, taps, real, judged_at, batch["cond"], guidance)
                fake_features = trunk_features(host, taps, fake.detach(), judged_at, batch["cond"], guidance)
            losses["disc"] = hinge_discriminator_loss(discriminator(real_features), discriminator(fake_features))
        backward(losses["disc"])
    return losses


@torch.no_grad()
def evaluate(host, predictor, pool: list[Trajectory], pairs, cond, sigmas, guidance: float, device, dtype,
             baselines: bool = True) -> dict:
    """Per-pair mean squared error of the predicted output vs the DiT's, against two training-free baselines:
    cache reuse (the anchor's last hidden state through the current final layer) and output reuse (u_a).
    They do not depend on the predictor: `baselines=False` skips them (the periodic evaluations)."""
    totals = {"predictor_mse": 0.0} | ({"cache_reuse_mse": 0.0, "output_reuse_mse": 0.0, "target_power": 0.0}
                                      if baselines else {})
    count = 0
    for trajectory in pool:
        for anchor, step in pairs:
            batch = to_device({"latents": trajectory.latents[step:step + 1], "target": trajectory.velocities[step:step + 1],
                         "anchor_velocity": trajectory.velocities[anchor:anchor + 1],
                         "cache": tuple(c[anchor:anchor + 1] for c in trajectory.caches),
                         "sigma": sigmas[step:step + 1], "sigma_next": sigmas[step + 1:step + 2],
                         "cond": select_rows(cond, [trajectory.prompt])}, device, dtype)
            g = guidance_for(host, guidance, 1, device)
            target = batch["target"].float()
            totals["predictor_mse"] += (_predicted(host, predictor, batch, g).float() - target).pow(2).mean().item()
            count += 1
            if not baselines:
                continue
            reuse = host.reuse_cache(batch["latents"], batch["sigma"], batch["cond"], batch["cache"],
                                     batch["sigma_next"] if host.is_meanflow else None, g)
            totals["cache_reuse_mse"] += (reuse.float() - target).pow(2).mean().item()
            totals["output_reuse_mse"] += (batch["anchor_velocity"].float() - target).pow(2).mean().item()
            totals["target_power"] += target.pow(2).mean().item()
    return {k: v / count for k, v in totals.items()} | {"pairs_evaluated": count}


# ---------------------------------------------------------------------------------------------------- roll-outs

# the one-step error of each caching mode of `disca.sampling.sample_cached`, as `evaluate` names it
TEACHER_FORCED_KEY = {"predictor": "predictor_mse", "reuse_cache": "cache_reuse_mse", "reuse_output": "output_reuse_mse"}


@dataclass
class Rollout(Trajectory):
    """A DisCa roll-out on one schedule from a trajectory's noise. `latents` are the states it visits and `velocities`
    the frozen DiT's output at each (on predicted steps computed beside the roll-out: the on-policy targets; without
    targets, the output used); `caches` hold each anchor's cache (a predicted step repeats the one it used); `used`
    is the output each step took."""

    used: torch.Tensor  # [S, C_out, F, H, W]
    final: torch.Tensor  # [C, F, H, W]: the roll-out's sample


@torch.no_grad()
def roll_out(host, mode: str, predictor, starts: list[Trajectory], anchors, cond, sigmas, guidance: float, device,
             store, targets: bool = True) -> list[Rollout]:
    """DisCa roll-outs (`disca.sampling.sample_cached` in `mode`) from the noises x_0 of `starts`, as one batch;
    `targets`: run the frozen DiT at every predicted state too (one more DiT call per predicted step)."""
    anchors = frozenset(anchors)
    noise = torch.stack([t.latents[0] for t in starts]).to(device)
    rows = select_rows(cond, [t.prompt for t in starts], device)
    dit = distilled(host, rows, guidance)
    seen = []

    def record(step, x, sigma, sigma_next, used, cache):
        seen.append((x, dit(x, sigma, sigma_next) if targets and step not in anchors else used, used, *cache))

    final = sample_cached(host, noise, sigmas, rows, anchors, mode=mode, predictor=predictor, guidance=guidance,
                          on_step=record)
    latents, velocities, used, *caches = (torch.stack(parts, 1).to(store) for parts in zip(*seen))
    return [Rollout(t.prompt, latents[b], velocities[b], tuple(c[b] for c in caches), used[b], final[b].to(store))
            for b, t in enumerate(starts)]


def full_final(trajectory: Trajectory, sigmas: torch.Tensor) -> torch.Tensor:
    """The all-full trajectory's sample: its last step's Euler update (fp32)."""
    sigmas = sigmas.to(trajectory.latents.device, torch.float32)  # the pool is on the GPU or not (`pool_on_device`)
    return euler_step(trajectory.latents[-1:].float(), trajectory.velocities[-1:].float(), sigmas[-2:-1], sigmas[-1:])[0]


@torch.no_grad()
def rollout_report(host, predictor, pool: list[Trajectory], config: PredictorConfig, cond, sigmas, device, dtype,
                   modes=("predictor",)) -> dict:
    """Per schedule and caching mode, on `pool` (held-out trajectories): the one-step error on teacher-forced states
    (the DiT's own trajectory and caches), the roll-out's final-sample error against the all-full trajectory from the
    same noise, and for the predictor its one-step error on the states its own roll-out visits (on-policy) and the
    ratio of the two one-step errors (the exposure gap). The training-free modes skip the on-policy targets: a DiT
    call per predicted step each, for a number no choice here depends on."""
    report = {}
    for schedule in config.anchor_schedules():
        pairs = schedule_pairs(schedule, config.steps)
        teacher_forced = evaluate(host, predictor, pool, pairs, cond, sigmas, config.guidance, device, dtype,
                                  baselines=modes != ("predictor",))
        rows = {}
        for mode in modes:
            on_policy, final, targets = 0.0, 0.0, mode == "predictor"
            for begin in range(0, len(pool), config.trajectory_batch):  # one batch of roll-outs in memory at a time
                chunk = pool[begin:begin + config.trajectory_batch]
                for start, rollout in zip(chunk, roll_out(host, mode, predictor, chunk, schedule.anchor_steps(config.steps),
                                                          cond, sigmas, config.guidance, device, "cpu", targets)):
                    on_policy += sum((rollout.used[j].float() - rollout.velocities[j].float()).pow(2).mean().item()
                                     for _, j in pairs) / len(pairs)
                    final += (rollout.final.float() - full_final(start, sigmas).cpu()).pow(2).mean().item()
            tf = teacher_forced[TEACHER_FORCED_KEY[mode]]
            rows[mode] = {"teacher_forced_mse": tf, "final_sample_mse": final / len(pool)}
            if targets:
                rows[mode] |= {"on_policy_mse": on_policy / len(pool), "exposure_gap": on_policy / len(pool) / tf}
        report[schedule.name] = rows
    return report


def on_policy_pool(host, predictor, pool: list[Trajectory], config: PredictorConfig, cond, sigmas,
                   generator: torch.Generator, device) -> list[tuple[list[Rollout], list[tuple[int, int]]]]:
    """Roll-outs of the current predictor from `on_policy_rollouts` training noises on every served schedule, each
    with that schedule's (anchor, step) pairs: what `draw_batch` draws on-policy rows from."""
    picks = torch.randperm(len(pool), generator=generator)[:config.on_policy_rollouts].tolist()
    store = device if config.pool_on_device else "cpu"
    out = []
    for schedule in config.anchor_schedules():
        rollouts = []
        for begin in range(0, len(picks), config.trajectory_batch):
            starts = [pool[i] for i in picks[begin:begin + config.trajectory_batch]]
            rollouts += roll_out(host, "predictor", predictor, starts, schedule.anchor_steps(config.steps), cond, sigmas,
                                 config.guidance, device, store)
        out.append((rollouts, schedule_pairs(schedule, config.steps)))
    return out


def draw_training_batch(pool, pairs, on_policy, fraction: float, cond, sigmas, generator: torch.Generator, size: int,
                        device, dtype) -> dict:
    """`size` rows, each on-policy with probability `fraction` (a schedule's roll-outs chosen uniformly), else
    teacher-forced from the pool. Without roll-outs the draws are exactly those of teacher forcing alone."""
    if not on_policy:
        return draw_batch(pool, pairs, cond, sigmas, generator, size, device, dtype)
    on_rows = int((torch.rand(size, generator=generator) < fraction).sum())
    schedules = torch.randint(len(on_policy), (on_rows,), generator=generator).tolist()
    parts = [draw_batch(pool, pairs, cond, sigmas, generator, size - on_rows, device, dtype)] if on_rows < size else []
    for index, (rollouts, schedule_pairs_) in enumerate(on_policy):
        if schedules.count(index):
            parts.append(draw_batch(rollouts, schedule_pairs_, cond, sigmas, generator, schedules.count(index), device, dtype))
    return _concat(parts)


def _concat(parts: list):
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    return torch.cat(parts)


class HeldOutSelection:
    """The held-out evaluations of a run and the weights of the best one (lowest held-out `metric`, the start
    included, the earliest on a tie): the stage exports those, so it never ends worse on held-out data than it began.
    Saved into every checkpoint, so a resumed run selects among the same evaluations as an uninterrupted one."""

    WEIGHTS, HISTORY = "best_predictor.safetensors", "held_out.json"

    def __init__(self, metric: str = "predictor_mse"):
        self.metric = metric
        self.baselines: dict = {}  # cache / output reuse on the held-out pairs: weight-independent, measured once
        self.history: list[dict] = []  # {"step", metric} per evaluation
        self.rollout_initial: dict | None = None  # rollout_report of the start (fresh runs)
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def best(self) -> dict:
        return min(self.history, key=lambda h: h[self.metric])

    def record(self, step: int, evaluation: dict, module: torch.nn.Module) -> None:
        if "cache_reuse_mse" in evaluation:
            self.baselines = {k: v for k, v in evaluation.items() if k != self.metric}
        self.history.append({"step": step, self.metric: evaluation[self.metric]})
        if self.best is self.history[-1]:
            self.best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def save(self, folder: str) -> None:
        save_safetensors(os.path.join(folder, self.WEIGHTS), self.best_state, {"step": str(self.best["step"])})
        with open(os.path.join(folder, self.HISTORY), "w") as f:
            json.dump({"baselines": self.baselines, "history": self.history, "rollout_initial": self.rollout_initial}, f)

    def load(self, folder: str | None) -> bool:
        """From a checkpoint folder; False when it has none (written before this selection existed)."""
        if folder is None or not os.path.isfile(os.path.join(folder, self.HISTORY)):
            return False
        with open(os.path.join(folder, self.HISTORY)) as f:
            saved = json.load(f)
        self.baselines, self.history, self.rollout_initial = saved["baselines"], saved["history"], saved["rollout_initial"]
        self.best_state, _ = load_safetensors(os.path.join(folder, self.WEIGHTS))
        return True

    def summary(self) -> dict:
        """The baselines and the held-out metric at the start, at its best and at the end, with their steps."""
        start, best, final, metric = self.history[0], self.best, self.history[-1], self.metric
        return {**self.baselines, f"{metric}_initial": start[metric] if start["step"] == 0 else None,
                f"{metric}_best": best[metric], "best_step": best["step"],
                f"{metric}_final": final[metric], "final_step": final["step"]}


def stage_conditions(config, host: HunyuanVideoHost) -> tuple[dict[str, torch.Tensor], list[int], list[int]]:
    """The prompts' conditioning (1.5 I2V: with the reference images' condition latents), the training prompts and
    the held-out ones (the last `held_out_prompts`)."""
    cond = load_embeddings(config.prompts, host.arch)
    if host.arch == ARCH_HV15:
        references = (load_references(config.reference_images, host.arch, cond["prompt_embeds"].shape[0])
                      if config.reference_images else None)
        cond = with_image_condition(cond, host.condition_channels, config.latent_shape, references)
    elif config.reference_images:
        raise DataError(f"config key 'reference_images': {host.arch} takes no reference images (I2V is a "
                        "HunyuanVideo-1.5 input); leave it empty")
    count, held_out = cond["prompt_embeds"].shape[0], config.held_out_prompts
    if count <= held_out:
        raise ValueError(f"config key 'held_out_prompts': {held_out} held out of {count} prompts in {config.prompts} "
                         "leaves none to train on; add prompts or hold out fewer")
    return cond, list(range(count - held_out)), list(range(count - held_out, count))


def build_predictor(config: PredictorConfig, host: HunyuanVideoHost) -> DiffusersPredictor:
    """From `init_predictor` (checked against the base) or from the DiT's last blocks with zero residual gates."""
    if not config.init_predictor:
        return predictor_from_dit(host, config.depth)
    file = load_predictor_file(config.init_predictor)
    tencent = host.tencent_state_dict()
    check_predictor_fits(file.spec, infer_dit_spec(tencent, config.model), config.init_predictor)
    if file.base_fingerprint is not None and file.base_fingerprint != base_fingerprint(tencent):
        raise ValueError(f"config key 'init_predictor': {config.init_predictor} was trained for another base model "
                         f"(fingerprint {file.base_fingerprint} != {base_fingerprint(tencent)} of {config.model}); "
                         "start from the DiT's blocks (init_predictor: '') or give the predictor of this base")
    return DiffusersPredictor.from_file(file, config.init_predictor)


FUSION_SLOPE = 0.002  # s * rms(cache): small enough that SiLU's curvature is below fp32 noise (start = cache reuse)
TRAINING_SLOPE = 0.02  # the slope whose training dynamics the learning-rate scales below reproduce


@torch.no_grad()
def init_fusion_as_cache_passthrough(predictor: DiffusersPredictor, pool: list[Trajectory]) -> None:
    """Start each fusion MLP at fusion([tokens ‖ C]) ~= C, so (with zero-gated blocks) the untrained predictor *is*
    the training-free cache-reuse baseline and training only has to learn the correction from the current tokens.

    SiLU(z) = z/2 + z^2/4 + O(z^4) near 0: with Linear 1 = [0 | s I] and Linear 2 = (2/s) I the output is
    C + s C^2 / 2; s = FUSION_SLOPE / rms(C) keeps that term ~0.001 |C| / rms(C) (training/README.md, "Predictor
    initialisation"). Train it with `fusion_param_groups`, which undoes what the small slope does to Adam's steps.
    """
    for fusion, part in _fusions(predictor):
        rms = torch.cat([t.caches[part].float().reshape(-1) for t in pool]).pow(2).mean().sqrt().clamp_min(1e-6)
        slope = FUSION_SLOPE / float(rms)
        hidden = fusion[2].weight.shape[0]
        eye = torch.eye(hidden, dtype=fusion[0].weight.dtype)
        fusion[0].weight.zero_()
        fusion[0].weight[:, hidden:] = slope * eye
        fusion[0].bias.zero_()
        fusion[2].weight.copy_(eye * (2.0 / slope))
        fusion[2].bias.zero_()


def fusion_param_groups(predictor: DiffusersPredictor, slope: float = FUSION_SLOPE) -> list[dict]:
    """Parameter groups with `lr_scale`s (read by `loop.set_lr`) for a predictor whose fusion started as the
    pass-through at `slope` (`init_fusion_as_cache_passthrough`, in this run or in the one that wrote its
    `init_predictor`). Adam moves each weight by ~lr whatever its gradient's size, and Linear 2's gain 2/s turns a
    step on Linear 1 into an output change ~lr/s, while a step on Linear 2 changes it by ~lr s: scaling Linear 1's
    rate by slope/TRAINING_SLOPE and Linear 2's weight's by the inverse gives the optimiser the dynamics of
    TRAINING_SLOPE from a start without its curvature error."""
    ratio = slope / TRAINING_SLOPE
    scaled = {}
    for fusion, _ in _fusions(predictor):
        scaled.update({id(fusion[0].weight): ratio, id(fusion[0].bias): ratio, id(fusion[2].weight): 1.0 / ratio})
    groups: dict[float, list] = {}
    for parameter in predictor.parameters():
        groups.setdefault(scaled.get(id(parameter), 1.0), []).append(parameter)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


def passthrough_slope(config: PredictorConfig) -> float | None:
    """The pass-through slope the predictor's fusion started from: this run's, or the one its `init_predictor` file
    records (`disca.fusion_slope`, written by this stage); None for other files, the official ones included."""
    if not config.init_predictor:
        return FUSION_SLOPE
    from safetensors import safe_open

    with safe_open(config.init_predictor, "pt") as f:
        recorded = (f.metadata() or {}).get(META_FUSION_SLOPE)
    return float(recorded) if recorded else None


def _fusions(predictor: DiffusersPredictor) -> list[tuple[torch.nn.Sequential, int]]:
    """(fusion MLP, index of the cache it fuses): 1.0 has one, 1.5 one per stream (image, text)."""
    if predictor.spec.arch == ARCH_HV15:
        return [(predictor.fusion_mlp_img, 0), (predictor.fusion_mlp_txt, 1)]
    return [(predictor.fusion_mlp, 0)]


def schedule_metadata(config: PredictorConfig) -> tuple[list | None, list | None]:
    lists = [sorted(s.anchor_steps(config.steps)) for s in config.anchor_schedules() if s.anchors is not None]
    intervals = [s.interval for s in config.anchor_schedules() if s.interval is not None]
    return (lists or None), ([min(intervals), max(intervals)] if intervals else None)


def export_selected(accelerator, config, predictor: DiffusersPredictor, host, report: dict, slope: float | None) -> str:
    """End of a predictor stage, on the main process: export `predictor` (the selected weights) with the run's
    schedules, config and `report["held_out"]` as metadata, push it, write the report. Returns the file (other
    ranks: "")."""
    if not accelerator.is_main_process:
        return ""
    step_lists, interval_range = schedule_metadata(config)
    shape = "x".join(str(s) for s in config.latent_shape)
    out = export_predictor(f"{config.output_dir}/predictor.safetensors", predictor, host, step_lists=step_lists,
                           interval_range=interval_range, resolution=f"latent {shape}",
                           training={k: v for k, v in config.as_dict().items() if k not in ("model", "prompts", "output_dir")},
                           held_out=report["held_out"], fusion_slope=slope)
    report["predictor_file"] = out
    if config.push_to_hub:
        report["hub"] = push_to_hub(out, config.push_to_hub)
    loop.write_report(config.output_dir, report)
    return out


def train(config: PredictorConfig, resume: bool = False) -> dict:
    accelerator = loop.build_accelerator(config)
    device = accelerator.device
    torch.manual_seed(config.seed)  # same initial weights on every rank (DDP also broadcasts them)
    dtype = loop.base_dtype(accelerator, config)
    host = load_host(config.model, dtype).to(device).requires_grad_(False).eval()
    if config.gradient_checkpointing:
        host.transformer.enable_gradient_checkpointing()
    cond, train_prompts, held_out = stage_conditions(config, host)

    predictor = build_predictor(config, host)
    predictor.checkpoint_blocks = config.gradient_checkpointing
    with accelerator.autocast():
        # the pool is a deterministic function of the config, so a resumed run rebuilds the same one
        pool = build_pool(host, cond, train_prompts, config, 0, device)
        held_out_pool = build_pool(host, cond, held_out, config, 1_000_000, device)
    if not config.init_predictor:
        init_fusion_as_cache_passthrough(predictor, pool)
    taps = config.disc_taps or default_taps(len(host.main_blocks()))
    discriminator = FeatureDiscriminator(host.hidden_size, taps, config.disc_width)
    slope = passthrough_slope(config)
    groups = fusion_param_groups(predictor, slope) if slope else predictor.parameters()
    opt_p = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.99),
                              weight_decay=config.weight_decay)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=config.disc_learning_rate, betas=(0.0, 0.99))
    predictor, discriminator, opt_p, opt_d = accelerator.prepare(predictor, discriminator, opt_p, opt_d)
    state = loop.TrainState()
    if resume:
        loop.resume(accelerator, config.output_dir, state)
    accelerator.init_trackers("disca_predictor", config=loop.flatten_config(config))

    sigmas = flow_sigmas(config.steps, config.shift)
    pairs = anchor_pairs(config)
    draws = training_draws(config, pairs)
    logger.info("predictor stage: %d trajectories x %d steps, %d (anchor, step) pairs (%d draws), taps %s",
                len(pool), config.steps, len(pairs), len(draws), list(taps))
    unwrapped = accelerator.unwrap_model(predictor)
    selection = HeldOutSelection()
    rollout_pool = held_out_pool[:config.rollout_eval_prompts]

    def measure(step: int, baselines: bool = False) -> None:
        with accelerator.autocast():
            evaluation = evaluate(host, unwrapped, held_out_pool, pairs, cond, sigmas, config.guidance, device, dtype,
                                  baselines)
        selection.record(step, evaluation, unwrapped)

    if state.step == 0 or not selection.load(loop.latest_checkpoint(config.output_dir)):
        if state.step:
            logger.warning("%s holds no held-out selection (written before it existed): the exported weights are the "
                           "best from step %d on", loop.latest_checkpoint(config.output_dir), state.step)
        measure(state.step, baselines=True)
        if state.step == 0 and rollout_pool:
            with accelerator.autocast():
                selection.rollout_initial = rollout_report(host, unwrapped, rollout_pool, config, cond, sigmas, device,
                                                           dtype, modes=tuple(TEACHER_FORCED_KEY))
    on_policy = None

    history: list[dict] = []
    bar = loop.progress(accelerator, config.max_steps, state.step, "predictor")
    loop.reset_peak_memory(accelerator)
    while state.step < config.max_steps:
        started = time.perf_counter()
        step = state.step
        gan = step >= config.mse_steps
        loop.set_lr(opt_p, loop.lr_at(step, config.learning_rate, config.warmup_steps, config.lr_schedule, config.max_steps))
        loop.set_lr(opt_d, loop.lr_at(step - config.mse_steps, config.disc_learning_rate, config.warmup_steps))
        if config.on_policy_fraction and step % config.on_policy_refresh == 0:
            with accelerator.autocast():
                on_policy = on_policy_pool(host, unwrapped, pool, config, cond, sigmas, loop.step_generator(
                    config.seed, step, accelerator.process_index, stream=1), device)
        generator = loop.step_generator(config.seed, step, accelerator.process_index)
        batch = draw_training_batch(pool, draws, on_policy, config.on_policy_fraction, cond, sigmas, generator,
                                    config.batch_size, device, dtype)
        g = guidance_for(host, config.guidance, config.batch_size, device)
        losses = step_losses(host, predictor, discriminator, taps, batch, g, gan=gan, disc_input=config.disc_input,
                             adv_weight=config.adv_weight, backward=accelerator.backward, autocast=accelerator.autocast)
        values = loop.gather_losses(accelerator, losses)
        loop.stop_if_diverged(accelerator, config, state, values, selection.save)
        values["grad_norm"] = loop.clip_grad(accelerator, predictor, config.grad_clip)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        if gan:
            loop.clip_grad(accelerator, discriminator, config.grad_clip)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.max_steps:
            measure(step + 1)  # before finish_step, so the checkpoint of this step holds this evaluation
        loop.finish_step(accelerator, config, state, values, history, bar, started, selection.save)
    bar.close()
    resources = loop.loop_resources(accelerator, history)

    rank_difference = loop.max_rank_difference(accelerator, predictor)
    held_out = selection.summary()
    if config.mse_steps < config.max_steps and held_out["best_step"] <= config.mse_steps:
        # the adversarial term trades held-out MSE for sharper outputs, and the selection goes by MSE
        logger.warning("predictor: no GAN-phase evaluation beat step %d's held-out MSE, so the exported weights are "
                       "from before the GAN phase", held_out["best_step"])
    rollouts = {"held_out_trajectories": len(rollout_pool), "initial": selection.rollout_initial}
    if rollout_pool and held_out["best_step"] != held_out["final_step"]:  # what the last weights would have given
        with accelerator.autocast():
            rollouts["final"] = rollout_report(host, unwrapped, rollout_pool, config, cond, sigmas, device, dtype)
    unwrapped.load_state_dict(selection.best_state)  # the best held-out weights are the result, not the last ones
    report = {"stage": "predictor", "steps": state.step, "processes": accelerator.num_processes,
              "held_out": held_out, "held_out_evaluations": selection.history, "rank_param_max_abs_diff": rank_difference,
              "first_losses": history[:3], "last_losses": history[-3:], "taps": list(taps), "pairs": pairs,
              "mse_curve": [h["mse"] for h in history], **resources}
    if rollout_pool:
        with accelerator.autocast():
            rollouts["exported"] = rollout_report(host, unwrapped, rollout_pool, config, cond, sigmas, device, dtype)
        report["rollouts"] = rollouts
    out = export_selected(accelerator, config, unwrapped, host, report, slope)
    if out:
        logger.info("predictor: held-out MSE %.4g at step %d exported (start %s, final %.4g; cache reuse %.4g, output "
                    "reuse %.4g) -> %s", held_out["predictor_mse_best"], held_out["best_step"],
                    held_out["predictor_mse_initial"], held_out["predictor_mse_final"], held_out["cache_reuse_mse"],
                    held_out["output_reuse_mse"], out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report
