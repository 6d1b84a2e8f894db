"""Stage `predictor_rollout`: continue a trained DisCa predictor on whole roll-outs of the sampler it serves.

The predictor stage teaches one step at a time: the DiT's last hidden state at step j from the cache of anchor a.
On DisCa-mini that one-step error did not predict the final video (benchmarks/mini/README.md, "Roll-out training").
Here the loss is the sampler's. From a fresh noise and a training prompt, DisCa samples one served anchor list
(drawn per step) with gradients, and every state it visits is compared with the no-cache sampler's from the same
noise:

    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) u_i,  u_i = DiT(x_i) on anchors, final_layer(P(x_i, C_a)) otherwise
    L = mean_i |x_i(DisCa) - x_i(no cache)|^2,  i = 1 .. steps  (the last state is the sample)

The DiT stays frozen, but the gradient passes through its anchor calls (through x, as the cache is stored detached,
as DisCa stores it), so an early predicted step answers for what the later full steps make of it. A step costs a
no-cache trajectory (no gradient) plus a DisCa one with its backward. Every `eval_every` steps the same loss is
measured on fixed noises of the held-out prompts, on every served list; the best evaluation's weights (the start
counts) are exported, in the predictor stage's format.
"""

from __future__ import annotations

import logging
import time

import torch

from disca.hosts.diffusers import load_host
from disca.sampling import euler_step
from disca.schedules import flow_sigmas
from training import loop
from training.batches import guidance_for, select_rows
from training.config import PredictorRolloutConfig
from training.predictor import (HeldOutSelection, build_predictor, export_selected, fusion_param_groups,
                                passthrough_slope, stage_conditions)

logger = logging.getLogger(__name__)

METRIC = "rollout_loss"


def roll_out_states(host, predictor, noise: torch.Tensor, cond: dict, sigmas: torch.Tensor, anchors,
                    guidance: torch.Tensor | None) -> list[torch.Tensor]:
    """The states x_1 .. x_S that `disca.sampling.sample_cached` visits in predictor mode, differentiable (it runs
    under no_grad, through the runtime); `anchors` = every step gives the no-cache sampler's. sigmas: [S + 1], fp32."""
    x, batch, states, cache = noise.float(), noise.shape[0], [], None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        r = sigma_next if host.is_meanflow else None
        if i in anchors:
            velocity, cache = host.forward_with_cache(x, sigma, cond, r, guidance)
        else:
            velocity = host.predict(predictor, x, sigma, cond, cache, r, guidance)
        x = euler_step(x, velocity.float(), sigma, sigma_next)
        states.append(x)
    return states


def no_cache_states(host, noise, cond, sigmas, guidance) -> list[torch.Tensor]:
    """The no-cache sampler's states from `noise`: the roll-out's targets (no gradient)."""
    with torch.no_grad():
        return roll_out_states(host, None, noise, cond, sigmas, range(len(sigmas) - 1), guidance)


def rollout_loss(host, predictor, noise, cond, sigmas, anchors, guidance, reference: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the steps of the squared distance between DisCa's states and `reference` (`no_cache_states`)."""
    states = roll_out_states(host, predictor, noise, cond, sigmas, frozenset(anchors), guidance)
    return torch.stack([(state - target).pow(2).mean() for state, target in zip(states, reference)]).mean()


@torch.no_grad()
def held_out_loss(host, predictor, noise: torch.Tensor, prompts: list[int], cond, sigmas, schedules, config) -> float:
    """`rollout_loss` on fixed noises of the held-out prompts, averaged over the prompts and the served lists (the
    no-cache states of a batch are sampled once for all lists)."""
    total = 0.0
    for begin in range(0, len(prompts), config.batch_size):
        rows = prompts[begin:begin + config.batch_size]
        g = guidance_for(host, config.guidance, len(rows), noise.device)
        chunk, rows_cond = noise[begin:begin + len(rows)], select_rows(cond, rows, noise.device)
        reference = no_cache_states(host, chunk, rows_cond, sigmas, g)
        total += sum(rollout_loss(host, predictor, chunk, rows_cond, sigmas, anchors, g, reference).item()
                     for anchors in schedules) * len(rows)
    return total / (len(prompts) * len(schedules))


def train(config: PredictorRolloutConfig, resume: bool = False) -> dict:
    accelerator = loop.build_accelerator(config)
    device = accelerator.device
    torch.manual_seed(config.seed)
    dtype = loop.base_dtype(accelerator, config)
    host = load_host(config.model, dtype).to(device).requires_grad_(False).eval()
    if config.gradient_checkpointing:
        host.transformer.enable_gradient_checkpointing()
    cond, train_prompts, held_out = stage_conditions(config, host)
    predictor = build_predictor(config, host)
    predictor.checkpoint_blocks = config.gradient_checkpointing
    slope = passthrough_slope(config)
    optimizer = torch.optim.AdamW(fusion_param_groups(predictor, slope) if slope else predictor.parameters(),
                                  lr=config.learning_rate, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    predictor, optimizer = accelerator.prepare(predictor, optimizer)
    unwrapped = accelerator.unwrap_model(predictor)
    state = loop.TrainState()
    if resume:
        loop.resume(accelerator, config.output_dir, state)
    accelerator.init_trackers("disca_predictor_rollout", config=loop.flatten_config(config))

    sigmas = flow_sigmas(config.steps, config.shift).to(device, torch.float32)
    schedules = [frozenset(s.anchor_steps(config.steps)) for s in config.anchor_schedules()]
    shape = (host.transformer.config.in_channels, *config.latent_shape)
    held_out_noise = loop.randn_on((len(held_out), *shape), torch.Generator().manual_seed(config.seed + 1_000_003),
                                   device)
    selection = HeldOutSelection(METRIC)

    def measure(step: int) -> None:
        with accelerator.autocast():
            loss = held_out_loss(host, unwrapped, held_out_noise, held_out, cond, sigmas, schedules, config)
        selection.record(step, {METRIC: loss}, unwrapped)
        logger.info("predictor_rollout: held-out roll-out loss %.5g at step %d", loss, step)

    if state.step == 0 or not selection.load(loop.latest_checkpoint(config.output_dir)):
        measure(state.step)
    logger.info("predictor_rollout: %d training prompts, %d held out, %d anchor list(s) of %d steps",
                len(train_prompts), len(held_out), len(schedules), config.steps)

    history: list[dict] = []
    bar = loop.progress(accelerator, config.max_steps, state.step, "predictor_rollout")
    loop.reset_peak_memory(accelerator)
    while state.step < config.max_steps:
        started = time.perf_counter()
        step = state.step
        loop.set_lr(optimizer, loop.lr_at(step, config.learning_rate, config.warmup_steps, config.lr_schedule,
                                          config.max_steps))
        generator = loop.step_generator(config.seed, step, accelerator.process_index)
        anchors = schedules[int(torch.randint(len(schedules), (1,), generator=generator))]
        rows = [train_prompts[i] for i in torch.randint(len(train_prompts), (config.batch_size,),
                                                        generator=generator).tolist()]
        noise = loop.randn_on((config.batch_size, *shape), generator, device)
        g = guidance_for(host, config.guidance, config.batch_size, device)
        rows_cond = select_rows(cond, rows, device)
        with accelerator.autocast():
            reference = no_cache_states(host, noise, rows_cond, sigmas, g)
            loss = rollout_loss(host, predictor, noise, rows_cond, sigmas, anchors, g, reference)
        accelerator.backward(loss)
        values = loop.gather_losses(accelerator, {METRIC: loss})
        loop.stop_if_diverged(accelerator, config, state, values, selection.save)
        values["grad_norm"] = loop.clip_grad(accelerator, predictor, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.max_steps:
            measure(step + 1)  # before finish_step, so the checkpoint of this step holds this evaluation
        loop.finish_step(accelerator, config, state, values, history, bar, started, selection.save)
    bar.close()
    resources = loop.loop_resources(accelerator, history)

    rank_difference = loop.max_rank_difference(accelerator, predictor)
    summary = selection.summary()
    unwrapped.load_state_dict(selection.best_state)  # the best held-out weights are the result, not the last ones
    report = {"stage": "predictor_rollout", "steps": state.step, "processes": accelerator.num_processes,
              "held_out": summary, "held_out_evaluations": selection.history,
              "rank_param_max_abs_diff": rank_difference, "first_losses": history[:3], "last_losses": history[-3:],
              "loss_curve": [h[METRIC] for h in history], **resources}
    out = export_selected(accelerator, config, unwrapped, host, report, slope)
    if out:
        logger.info("predictor_rollout: held-out roll-out loss %.4g at step %d exported (start %s, final %.4g) -> %s",
                    summary[f"{METRIC}_best"], summary["best_step"], summary[f"{METRIC}_initial"],
                    summary[f"{METRIC}_final"], out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report
