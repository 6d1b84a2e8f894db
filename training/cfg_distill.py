"""Stage `cfg_distill`: fold classifier-free guidance into a guidance-embedded student (`guidance_in`).

For bases that are not guidance-distilled (HunyuanVideo-1.0's public weights already are: skip this stage there).
The student S gets a guidance embedder (zero last linear, so S = T at init) and learns, for w ~ U[w_min, w_max]:

    x_t = (1 - t) x_0 + t eps,  t = shift(s), s ~ U(0, 1)
    L = | S(x_t, t, c, w) - sg[ T(x_t, t, neg) + w (T(x_t, t, c) - T(x_t, t, neg)) ] |^2

the standard guidance-distillation objective (Meng et al., arXiv 2210.03142; distillation.md §5).
"""

from __future__ import annotations


import torch

from disca.hosts.diffusers import load_host
from training import loop
from training.config import CFGDistillConfig
from training.data import load_negative_prompt, load_video_set
from training.export import finish_distillation
from training.batches import select_rows

EVAL_BATCH = 8


def guided_velocity(teacher, x_t, t, cond, negative, scale: torch.Tensor) -> torch.Tensor:
    """T(neg) + w (T(c) - T(neg)) with w: [B]; both branches in one batched call."""
    batch = x_t.shape[0]
    both = {k: torch.cat([cond[k], negative[k]]) for k in cond}
    with torch.no_grad():
        out = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
    positive, uncond = out[:batch], out[batch:]
    return uncond + scale.view(-1, *([1] * (x_t.ndim - 1))) * (positive - uncond)


def train(config: CFGDistillConfig, resume: bool = False) -> dict:
    accelerator = loop.build_accelerator(config)
    device = accelerator.device
    torch.manual_seed(config.seed)
    teacher = loop.load_frozen_dit(accelerator, config.model, loop.base_dtype(accelerator, config))
    if teacher.is_guidance_embedded:
        raise ValueError(f"config key 'model': {config.model} is already guidance-distilled (it has guidance_in); "
                         "CFG distillation is for bases without it: go on to the meanflow or predictor stage")
    student = load_host(config.model, torch.float32)
    student.add_guidance_embedder()
    cond, latents = load_video_set(config, teacher, device)
    negative = load_negative_prompt(config, teacher, cond, latents, device)
    model, optimizer, state, unwrapped = loop.prepare_single_model_stage(accelerator, config, student, resume,
                                                                        "disca_cfg_distill")

    def draw(generator: torch.Generator, batch: int):
        rows = torch.randint(latents.shape[0], (batch,), generator=generator)
        t = loop.shifted_times(generator, batch, config.shift).to(device)
        scale = config.guidance_min + (config.guidance_max - config.guidance_min) * torch.rand(batch, generator=generator)
        _, _, x_t = loop.noised(latents, rows, t, generator, device)
        rows_cond = select_rows(cond, rows, device)
        rows_negative = {k: v.expand(batch, *v.shape[1:]).to(device) for k, v in negative.items()}
        return x_t, t, scale.to(device), rows_cond, rows_negative

    def compute_losses(step: int, generator: torch.Generator) -> dict:
        x_t, t, scale, rows_cond, rows_negative = draw(generator, config.batch_size)
        target = guided_velocity(teacher, x_t, t, rows_cond, rows_negative, scale).float()
        prediction = model(x_t, t, rows_cond, None, scale)
        return {"loss": (prediction.float() - target).pow(2).mean()}

    eval_batch = draw(loop.step_generator(config.seed, 0, 0, stream=1), EVAL_BATCH)

    def evaluate() -> float:
        x_t, t, scale, rows_cond, rows_negative = eval_batch
        with torch.no_grad(), accelerator.autocast():
            target = guided_velocity(teacher, x_t, t, rows_cond, rows_negative, scale).float()
            return float((unwrapped(x_t, t, rows_cond, None, scale).float() - target).pow(2).mean())

    report = loop.run_single_model_stage(accelerator, config, state, model, optimizer, compute_losses, "cfg_distill",
                                         evaluate)
    return finish_distillation(accelerator, config, model, unwrapped, report, "cfg_distilled_dit.safetensors")
