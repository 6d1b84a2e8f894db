"""Stage `meanflow`: Restricted MeanFlow distillation (DisCa, arXiv 2602.05449, §3.1; MeanFlow, arXiv 2505.13447).

The student u_theta(x, t, r) learns the average velocity over [r, t] from a frozen (CFG-distilled) flow teacher,
with the teacher's velocity v_T as tangent and as target (consistency-distillation flavour, distillation.md §3):

    t = shift(s), s ~ U(0, 1);  r = t with prob. boundary_fraction, else r = t - d, d ~ U(0, min(R, t))
    x_t = (1 - t) x_0 + t eps;  v_T = T(x_t, t);  du/dt = d/dt u_theta(x_t, t, r) along (dx/dt, dt/dt, dr/dt) = (v_T, 1, 0)
    u_tgt = sg(v_T - lambda_k (t - r) du/dt);   L = |u_theta - u_tgt|^2 / sg((|.|^2 + c)^p)   (per sample, summed)

Restricting t - r to [0, R] scales any error in du/dt by at most R. du/dt is exact (`torch.func.jvp`, math attention:
small models, calibration) or a central finite difference in fp32 (any attention kernel, FSDP), which `--calibrate`
compares. The student's r-embedder follows ComfyUI's convention (disca.hosts.diffusers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from disca.hosts.diffusers import HunyuanVideoHost, load_host
from training import loop
from training.config import MeanFlowConfig
from training.data import load_video_set
from training.export import finish_distillation
from training.batches import guidance_for, select_rows

logger = logging.getLogger(__name__)
CALIBRATION_EPSILONS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
EVAL_BATCH = 8


def sample_t_r(generator: torch.Generator, batch: int, R: float, boundary_fraction: float, shift: float):
    """(t, r), each [B], on the sigma scale; 0 <= t - r <= min(R, t) always (R = 0 gives r = t: flow matching)."""
    t = loop.shifted_times(generator, batch, shift, torch.float64)
    interval = torch.rand(batch, generator=generator, dtype=torch.float64) * torch.clamp(t, max=R)
    boundary = torch.rand(batch, generator=generator) < boundary_fraction
    interval = torch.where(boundary, torch.zeros_like(interval), interval)
    return t.float(), (t - interval).float()


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


@contextlib.contextmanager
def exact_fp32():
    """fp32 without TF32: cuDNN convolutions (the DiT's patch embedding) use TF32 by default on Ampere and later, and
    its ~5e-4 relative rounding is coarser than the difference of two forwards 1e-4 apart."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def time_derivative(u_fn, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor, method: str,
                    epsilon: float = 1e-3) -> torch.Tensor:
    """du/dt of u_fn(x, t, r) along (v, 1, 0), no grad. x, v: [B, ...]; t, r: [B] (sigma scale).

    'jvp': exact forward-mode AD; flash/efficient SDPA kernels have no forward-AD rule, so attention runs in math mode.
    'finite_difference': [u(x + e v, t + e, r) - u(x - e v, t - e, r)] / 2e, forwards in fp32 without TF32 (bf16 or
    TF32 FD is useless, distillation.md §4.6), difference in fp64.
    """
    with torch.no_grad():
        if method == "jvp":
            with sdpa_kernel(SDPBackend.MATH):
                _, dudt = torch.func.jvp(lambda x_, t_: u_fn(x_, t_, r), (x, t), (v, torch.ones_like(t)))
            return dudt
        if method != "finite_difference":
            raise ValueError(f"derivative must be 'jvp' or 'finite_difference', got {method!r}")
        with torch.autocast(x.device.type, enabled=False), exact_fp32():
            x32, v32, t32, r32 = x.float(), v.float(), t.float(), r.float()
            plus = u_fn(x32 + epsilon * v32, t32 + epsilon, r32)
            minus = u_fn(x32 - epsilon * v32, t32 - epsilon, r32)
        return ((plus.double() - minus.double()) / (2 * epsilon)).to(v.dtype)


def meanflow_target(u_fn, x, t, r, v, method: str, epsilon: float = 1e-3, tangent_scale: float = 1.0):
    """u_tgt = v - tangent_scale * (t - r) * du/dt (MeanFlow identity, Eq. 6), detached. Returns (u_tgt, du/dt)."""
    dudt = time_derivative(u_fn, x, t, r, v, method, epsilon)
    target = v.double() - tangent_scale * _broadcast((t - r).double(), v) * dudt.double()
    return target.to(v.dtype).detach(), dudt


def adaptive_loss(prediction: torch.Tensor, target: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """MeanFlow's adaptive weighting: per-sample L = sum of squares, loss = mean(L / sg((L + c)^p))."""
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).sum(dim=1)
    return (per_sample / (per_sample.detach() + c).pow(p)).mean()


def build_student(config: MeanFlowConfig) -> HunyuanVideoHost:
    student = load_host(config.model, torch.float32)
    if not student.is_meanflow:
        student.add_time_r_embedder()
    return student


def _teacher_velocity(teacher: HunyuanVideoHost, x, t, cond, guidance):
    with torch.no_grad():
        return teacher(x, t, cond, t if teacher.is_meanflow else None, guidance)


def _draw(config, cond, latents, generator, device, batch):
    rows = torch.randint(latents.shape[0], (batch,), generator=generator)
    t, r = sample_t_r(generator, batch, config.R, config.boundary_fraction, config.shift)
    t, r = t.to(device), r.to(device)
    _, _, x_t = loop.noised(latents, rows, t, generator, device)
    return x_t, t, r, select_rows(cond, rows, device)


def train(config: MeanFlowConfig, resume: bool = False) -> dict:
    accelerator = loop.build_accelerator(config)
    device = accelerator.device
    torch.manual_seed(config.seed)
    dtype = loop.base_dtype(accelerator, config)
    teacher = loop.load_frozen_dit(accelerator, config.model, dtype)
    student = build_student(config)
    cond, latents = load_video_set(config, teacher, device)
    model, optimizer, state, unwrapped = loop.prepare_single_model_stage(accelerator, config, student, resume,
                                                                        "disca_meanflow")

    def compute_losses(step: int, generator: torch.Generator) -> dict:
        x_t, t, r, rows = _draw(config, cond, latents, generator, device, config.batch_size)
        g = guidance_for(teacher, config.guidance, config.batch_size, device)
        g_student = guidance_for(unwrapped, config.guidance, config.batch_size, device)
        v_teacher = _teacher_velocity(teacher, x_t, t, rows, g).float()
        warmup = min(1.0, (step + 1) / config.tangent_warmup_steps) if config.tangent_warmup_steps else 1.0
        target, dudt = meanflow_target(lambda x, tt, rr: unwrapped(x, tt, rows, rr, g_student), x_t, t, r, v_teacher,
                                       config.derivative, config.fd_epsilon, warmup)
        u = model(x_t, t, rows, r, g_student)
        return {"loss": adaptive_loss(u, target, config.adaptive_p, config.adaptive_c),
                "mse": (u.float() - target.float()).pow(2).mean(),
                "dudt_rms": dudt.float().pow(2).mean().sqrt(), "interval_mean": (t - r).mean()}

    # a fixed batch, drawn apart from the training stream, measures the objective before and after training
    eval_batch = _draw(config, cond, latents, loop.step_generator(config.seed, 0, 0, stream=1), device, EVAL_BATCH)

    def evaluate() -> float:
        x_t, t, r, rows = eval_batch
        g = guidance_for(teacher, config.guidance, EVAL_BATCH, device)
        g_student = guidance_for(unwrapped, config.guidance, EVAL_BATCH, device)
        with accelerator.autocast():
            v_teacher = _teacher_velocity(teacher, x_t, t, rows, g).float()
            target, _ = meanflow_target(lambda x, tt, rr: unwrapped(x, tt, rows, rr, g_student), x_t, t, r, v_teacher,
                                        config.derivative, config.fd_epsilon)
            with torch.no_grad():
                u = unwrapped(x_t, t, rows, r, g_student)
        return float((u.float() - target.float()).pow(2).mean())

    report = loop.run_single_model_stage(accelerator, config, state, model, optimizer, compute_losses, "meanflow",
                                         evaluate) | {"R": config.R, "derivative": config.derivative}
    return finish_distillation(accelerator, config, model, unwrapped, report, "meanflow_dit.safetensors", R=config.R)


def calibrate(config: MeanFlowConfig, epsilons: tuple[float, ...] = CALIBRATION_EPSILONS, device=None) -> dict:
    """Relative error |FD - JVP| / |JVP| of du/dt on one batch, per epsilon: pick fd_epsilon from this table.

    Run it at low resolution (math attention is O(L^2) memory) on the real weights before a large FD run, on the
    device that will train (default: the GPU when there is one): its kernels set the FD's rounding floor.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    teacher = load_host(config.model).requires_grad_(False).eval().to(device)
    student = build_student(config).requires_grad_(False).eval().to(device)
    cond, latents = load_video_set(config, teacher, "cpu")
    x_t, t, r, rows = _draw(config, cond, latents, loop.step_generator(config.seed, 0, 0), device, config.batch_size)
    g = guidance_for(student, config.guidance, config.batch_size, device)
    v_teacher = _teacher_velocity(teacher, x_t, t, rows, guidance_for(teacher, config.guidance, config.batch_size, device))

    def u_fn(x, tt, rr):
        return student(x, tt, rows, rr, g)

    with exact_fp32():
        exact = time_derivative(u_fn, x_t, t, r, v_teacher, "jvp").double()
    table = {}
    for epsilon in epsilons:
        approx = time_derivative(u_fn, x_t, t, r, v_teacher, "finite_difference", epsilon).double()
        table[str(epsilon)] = float((approx - exact).norm() / exact.norm().clamp_min(1e-30))
    result = {"device": str(device), "relative_error_by_epsilon": table, "dudt_over_u": float(exact.norm() / u_fn(x_t, t, r).double().norm()),
              "best_epsilon": float(min(table, key=table.get))}
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "calibration.json"), "w") as f:
        json.dump(result, f, indent=2)
    for epsilon, error in table.items():
        logger.info("fd_epsilon %-8s relative error %.3e", epsilon, error)
    return result
