"""Stage `flow_matching`: plain rectified-flow training with prompt dropout (a teacher from scratch, or a fine-tune).

The other stages start from a trained flow DiT; this one makes it. DisCa-mini trains its teacher here from a
freshly initialised DiT; creators can fine-tune a base on their own videos before distilling it. For each sample:

    x_t = (1 - t) x_0 + t eps,  t = shift(s), s ~ U(0, 1);  v = eps - x_0
    c = negative prompt with probability prompt_dropout, else the video's caption
    L = | DiT(x_t, t, c) - v |^2

Prompt dropout trains the unconditional branch, so the result samples with classifier-free guidance (and
`cfg_distill` can fold that guidance in afterwards).
"""

from __future__ import annotations

import torch

from disca.hosts.diffusers import load_host
from training import loop
from training.config import FlowMatchingConfig
from training.data import load_negative_prompt, load_video_set
from training.export import finish_distillation
from training.batches import select_rows

EVAL_BATCH = 8


def drop_prompts(cond: dict[str, torch.Tensor], negative: dict[str, torch.Tensor], dropped: torch.Tensor) -> dict:
    """Rows where `dropped` [B] is True take the negative prompt's embeddings."""
    return {k: torch.where(dropped.view(-1, *([1] * (v.ndim - 1))), negative[k].to(v.dtype), v) for k, v in cond.items()}


def train(config: FlowMatchingConfig, resume: bool = False) -> dict:
    accelerator = loop.build_accelerator(config)
    device = accelerator.device
    torch.manual_seed(config.seed)
    student = load_host(config.model, torch.float32)
    if student.is_meanflow or student.is_guidance_embedded:
        raise ValueError(f"config key 'model': {config.model} is already distilled (it has "
                         f"{'time_r_in' if student.is_meanflow else 'guidance_in'}); flow_matching trains plain flow "
                         "DiTs: give the undistilled base, or continue with the cfg_distill/meanflow/predictor stages")
    cond, latents = load_video_set(config, student, device)
    negative = load_negative_prompt(config, student, cond, latents, device)
    model, optimizer, state, unwrapped = loop.prepare_single_model_stage(accelerator, config, student, resume,
                                                                        "disca_flow_matching")

    def draw(generator: torch.Generator, batch: int):
        rows = torch.randint(latents.shape[0], (batch,), generator=generator)
        t = loop.shifted_times(generator, batch, config.shift).to(device)
        dropped = torch.rand(batch, generator=generator) < config.prompt_dropout
        x0, noise, x_t = loop.noised(latents, rows, t, generator, device)
        rows_cond = select_rows(cond, rows, device)
        return x_t, t, noise - x0, drop_prompts(rows_cond, negative, dropped.to(device))

    def compute_losses(step: int, generator: torch.Generator) -> dict:
        x_t, t, velocity, rows_cond = draw(generator, config.batch_size)
        return {"loss": (model(x_t, t, rows_cond).float() - velocity).pow(2).mean()}

    eval_batch = draw(loop.step_generator(config.seed, 0, 0, stream=1), EVAL_BATCH)

    def evaluate() -> float:
        x_t, t, velocity, rows_cond = eval_batch
        with torch.no_grad(), accelerator.autocast():
            return float((unwrapped(x_t, t, rows_cond).float() - velocity).pow(2).mean())

    report = loop.run_single_model_stage(accelerator, config, state, model, optimizer, compute_losses, "flow_matching",
                                         evaluate)
    return finish_distillation(accelerator, config, model, unwrapped, report, "flow_matching_dit.safetensors")
