"""Where a MeanFlow student's few-step samples go wrong (issue 16: why R-MeanFlow lost to R = 1.0 at 10 steps).

    OMP_NUM_THREADS=2 python -m benchmarks.mini.meanflow_diagnosis --dit benchmarks/mini/weights/dit.safetensors \\
        --out benchmarks/mini/logs/meanflow_diagnosis_v2_R0.2.json

A MeanFlow student u(x, r, t) has two readings: with r = t it is the instantaneous velocity (trained by the
`boundary_fraction` samples, whose target is the teacher's velocity), with r < t the average velocity over [r, t],
which should equal the displacement of the flow of that instantaneous velocity divided by t - r (the MeanFlow
identity). Along each few-step trajectory this measures, for every interval [sigma_{i+1}, sigma_i]:

- `average`: |u(x_i, sigma_{i+1}, sigma_i) (sigma_i - sigma_{i+1}) - D| / |D|, D = the displacement of `--substeps`
  Euler steps of the instantaneous velocity from x_i over the interval (the identity's error),
- `euler`: the same for one instantaneous-velocity Euler step (what the average velocity should improve on),

and for the final samples: the student's few-step sample, and the same number of Euler steps of its instantaneous
velocity (r = t), against the fine instantaneous-velocity ODE from the same noise (`--substeps` per interval of the
coarsest schedule): PSNR in pixel space and the classifier's attribute accuracy of each. `--final_r` sweeps the end of
the coarsest schedule's last interval (sampling ends at r = 0). Held-out prompts and noises as the evaluation draws
them (`run.eval_set`'s first `--prompts`). With `--teacher` (the CFG-distilled DiT the student was distilled from):
the MeanFlow objective on training clips by interval, and the share of the adaptive loss weight each interval gets.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from benchmarks.mini.dataset import from_latents
from benchmarks.mini.demo import WEIGHTS
from benchmarks.mini.metrics import attribute_accuracy, classify, load_classifier, psnr
from benchmarks.mini.run import PRESETS, eval_set
from disca.hosts.diffusers import load_host
from disca.sampling import distilled, euler_step, sample_euler
from disca.schedules import flow_sigmas


def velocity(host, x, t, r, cond, guidance):
    g = torch.full_like(t, guidance) if host.is_guidance_embedded else None
    return host(x, t, cond, r, g).float()


def interval_errors(host, x, t, r, cond, substeps: int, guidance: float) -> tuple[dict, torch.Tensor]:
    """From x at t to r ([B] each): the relative errors of the average-velocity step and of one instantaneous Euler
    step against `substeps` Euler steps of the instantaneous velocity; returns (errors, the average-velocity step)."""
    fine = x
    for j in range(substeps):  # the instantaneous velocity's flow over [r, t]
        s, s_next = t + (r - t) * j / substeps, t + (r - t) * (j + 1) / substeps
        fine = euler_step(fine, velocity(host, fine, s, s, cond, guidance), s, s_next)
    reference = fine - x
    average = euler_step(x, velocity(host, x, t, r, cond, guidance), t, r) - x
    euler = euler_step(x, velocity(host, x, t, t, cond, guidance), t, r) - x
    norm = reference.flatten(1).norm(dim=1)
    errors = {"t": float(t[0]), "r": float(r[0]),
              "average": float(((average - reference).flatten(1).norm(dim=1) / norm).mean()),
              "euler": float(((euler - reference).flatten(1).norm(dim=1) / norm).mean())}
    return errors, x + average


@torch.no_grad()
def diagnose(host, noise, cond, steps: int, shift: float, substeps: int, guidance: float) -> dict:
    """Per-interval errors along the student's own `steps`-step trajectory, and its final sample."""
    sigmas = flow_sigmas(steps, shift).to(noise.device)
    x, intervals = noise.float(), []
    for i in range(steps):
        errors, x = interval_errors(host, x, sigmas[i].expand(x.shape[0]), sigmas[i + 1].expand(x.shape[0]), cond,
                                    substeps, guidance)
        intervals.append(errors)
    return {"intervals": intervals, "sample": x}


@torch.no_grad()
def final_interval_sweep(host, noise, cond, steps: int, shift: float, substeps: int, guidance: float,
                         r_values: tuple[float, ...]) -> list[dict]:
    """The last interval of the `steps`-step trajectory, [r, sigma_{steps-1}], ending at each r of `r_values` instead
    of 0: the average-velocity error against the instantaneous flow over the same interval. Sampling always ends
    at r = 0, which training reaches only as the edge of t - r <= min(R, t)."""
    sigmas = flow_sigmas(steps, shift).to(noise.device)
    x = sample_euler(distilled(host, cond, guidance), noise, sigmas[:steps])  # the student's own steps, but the last
    t = sigmas[steps - 1].expand(x.shape[0])
    return [{**interval_errors(host, x, t, torch.full_like(t, r_value), cond, substeps, guidance)[0], "r": r_value}
            for r_value in r_values]


@torch.no_grad()
def objective_by_interval(host, teacher, preset, samples: int, R: float, p: float, c: float, guidance: float,
                          epsilon: float = 1e-4, device: torch.device = torch.device("cpu")) -> list[dict]:
    """The MeanFlow objective on training clips, by interval t - r and by whether r is near the data: per-sample
    L = |u(x_t, r, t) - u_tgt|^2 (summed over the latent, as the stage sums it), with the teacher's velocity as
    tangent and target and du/dt by fp32 finite differences, as the stage computes them; and the share of the
    adaptive weight 1 / (L + c)^p each bucket gets (the stage's p, and p = 0.5), against plain MSE's equal weights.
    The teacher must be the one the student was distilled from (a student's own u(x, t, t) is no stand-in: at t = r
    its L is 0 and takes all the weight)."""
    from benchmarks.mini.dataset import TRAIN_SEED, make_batch, to_latents
    from benchmarks.mini.text import encode_prompts
    from training.meanflow import meanflow_target, sample_t_r

    generator = torch.Generator().manual_seed(0)
    video, _, prompts = make_batch(TRAIN_SEED, range(samples), preset.spec)
    x0, cond = to_latents(video), encode_prompts(prompts)
    t, r = sample_t_r(generator, samples, R, 0.0, preset.shift)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    losses = []
    for rows in torch.arange(samples).split(32):
        rows_cond = {k: v[rows].to(device) for k, v in cond.items()}
        x_rows, t_rows, r_rows = x_t[rows].to(device), t[rows].to(device), r[rows].to(device)

        def u_fn(x, t_, r_):
            return velocity(host, x, t_, r_, rows_cond, guidance)

        v = velocity(teacher, x_rows, t_rows, t_rows if teacher.is_meanflow else None, rows_cond, guidance)
        target, _ = meanflow_target(u_fn, x_rows, t_rows, r_rows, v, "finite_difference", epsilon)
        losses.append((u_fn(x_rows, t_rows, r_rows) - target).pow(2).flatten(1).sum(dim=1).cpu())
    loss = torch.cat(losses).double()
    weight = 1 / (loss + c).pow(p)
    half_power = 1 / (loss + c).pow(0.5)  # between the stage's p = 1 and plain MSE's p = 0
    buckets = []
    for low, high in ((0.0, 0.05), (0.05, 0.1), (0.1, 1.0)):
        for near_data in (False, True):
            mask = ((t - r) >= low) & ((t - r) < high) & ((r < 0.05) == near_data)
            if mask.any():
                buckets.append({"interval": [low, high], "r_below_0.05": near_data, "samples": int(mask.sum()),
                                "mean_L": float(loss[mask].mean()),
                                "adaptive_weight_share": float(weight[mask].sum() / weight.sum()),
                                "adaptive_weight_share_p0.5": float(half_power[mask].sum() / half_power.sum()),
                                "mse_weight_share": float(mask.sum() / samples)})
    return buckets


@torch.no_grad()
def instantaneous_sample(host, noise, cond, steps: int, shift: float, guidance: float) -> torch.Tensor:
    """`steps` Euler steps of the student's instantaneous velocity (r = t)."""
    return sample_euler(lambda x, t, t_next: velocity(host, x, t, t, cond, guidance), noise, flow_sigmas(steps, shift))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="a MeanFlow DiT file (time_r_in), CFG-distilled or not")
    parser.add_argument("--out", help="write the result as JSON")
    parser.add_argument("--classifier", default=os.path.join(WEIGHTS, "classifier.safetensors"),
                        help="the attribute classifier (its eval set also gives the held-out prompts and noises)")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts (the evaluation's first N)")
    parser.add_argument("--schedules", default="10,20", help="few-step schedules to follow")
    parser.add_argument("--substeps", type=int, default=6, help="Euler substeps of the reference flow per interval")
    parser.add_argument("--preset", default="v2", help="clip spec, shift and guidance of this preset")
    parser.add_argument("--teacher", help="the CFG-distilled DiT the student was distilled from: adds the objective "
                        "by interval (per-sample loss and adaptive-weight share)")
    parser.add_argument("--objective_samples", type=int, default=256, help="training clips for that table")
    parser.add_argument("--R", type=float, default=0.2, help="the student's R (the intervals it was trained on)")
    parser.add_argument("--final_r", default="0,0.001,0.003,0.01,0.03",
                        help="end points of the coarsest schedule's last interval to sweep ('' to skip)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available); fp32 either way")
    args = parser.parse_args(argv)
    from training.meanflow import exact_fp32
    with exact_fp32():  # no TF32 on the GPU: the errors measured here are differences of nearby readings
        return measure(args)


def measure(args) -> dict:
    preset = PRESETS[args.preset]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    host = load_host(args.dit).requires_grad_(False).eval().to(device)
    if not host.is_meanflow:
        raise SystemExit(f"--dit {args.dit}: not a MeanFlow DiT (no time_r_in); nothing to diagnose")
    classifier = load_classifier(args.classifier)
    evalset = eval_set(preset, classifier)
    classifier.to(device)
    rows = range(min(args.prompts, preset.held_out))
    cond = {k: v[rows].to(device) for k, v in evalset.cond.items()}
    noise = evalset.noise[rows].to(device)
    labels = {k: v[rows].to(device) for k, v in evalset.labels.items()}
    schedules = [int(s) for s in args.schedules.split(",")]
    fine_steps = min(schedules) * args.substeps
    def euler_video(steps):  # `steps` Euler steps of the instantaneous velocity, in pixels
        return from_latents(instantaneous_sample(host, noise, cond, steps, preset.shift, preset.cfg_scale)).clamp(-1, 1)

    fine = euler_video(fine_steps)
    result = {"dit": args.dit, "device": str(device), "prompts": len(rows), "substeps": args.substeps,
              "shift": preset.shift, "guidance": preset.cfg_scale, "fine_ode_steps": fine_steps,
              "fine_ode_accuracy": attribute_accuracy(classify(classifier, fine)[0], labels), "schedules": {}}
    for steps in schedules:
        found = diagnose(host, noise, cond, steps, preset.shift, args.substeps, preset.cfg_scale)
        video = from_latents(found.pop("sample")).clamp(-1, 1)
        found["psnr_vs_fine_ode"] = float(psnr(video, fine).mean())
        found["accuracy"] = attribute_accuracy(classify(classifier, video)[0], labels)
        # the same number of steps with r = t: plain Euler of the student's instantaneous velocity
        euler = euler_video(steps)
        found["euler_psnr_vs_fine_ode"] = float(psnr(euler, fine).mean())
        found["euler_accuracy"] = attribute_accuracy(classify(classifier, euler)[0], labels)
        result["schedules"][str(steps)] = found
        print(f"{steps} steps: PSNR vs the fine ODE {found['psnr_vs_fine_ode']:.2f} dB, accuracy {found['accuracy']}; "
              f"with r = t (Euler): {found['euler_psnr_vs_fine_ode']:.2f} dB, accuracy {found['euler_accuracy']}")
        for interval in found["intervals"]:
            print(f"  [{interval['r']:.3f}, {interval['t']:.3f}]  average-velocity error {interval['average']:.4f}"
                  f"  one Euler step {interval['euler']:.4f}")
    print(f"fine ODE ({fine_steps} instantaneous-velocity steps): accuracy {result['fine_ode_accuracy']}")
    if args.final_r:
        r_values = tuple(float(v) for v in args.final_r.split(","))
        result["final_interval_sweep"] = final_interval_sweep(host, noise, cond, min(schedules), preset.shift,
                                                              args.substeps, preset.cfg_scale, r_values)
        for row in result["final_interval_sweep"]:
            print(f"last interval [{row['r']:.3f}, {row['t']:.3f}]: average-velocity error {row['average']:.4f}, one "
                  f"Euler step {row['euler']:.4f}")
    if args.teacher:
        from training.config import MeanFlowConfig
        teacher = load_host(args.teacher).requires_grad_(False).eval().to(device)
        defaults = MeanFlowConfig.__dataclass_fields__
        p, c = (preset.meanflow.get(k, defaults[k].default) for k in ("adaptive_p", "adaptive_c"))
        result["objective_by_interval"] = objective_by_interval(host, teacher, preset, args.objective_samples, args.R,
                                                                p, c, preset.cfg_scale, device=device)
        for row in result["objective_by_interval"]:
            print(f"t - r in {row['interval']}, r < 0.05: {row['r_below_0.05']}: {row['samples']} samples, mean L "
                  f"{row['mean_L']:.1f}, adaptive weight share {row['adaptive_weight_share']:.3f} (p = 0.5: "
                  f"{row['adaptive_weight_share_p0.5']:.3f}, MSE: "
                  f"{row['mse_weight_share']:.3f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
