"""Can a predictor trained on whole DisCa roll-outs reach the no-cache model with 5 DiT calls of 20?

    python -m benchmarks.mini.rollout_tune --out runs/rollout --schedules "0 4 8 12 16" --steps 400   # one H200
    python -m benchmarks.mini.rollout_tune --out /tmp/rollout --steps 2 --batch 2 --device cpu --seeds   # CPU smoke

Every predictor so far learnt one step at a time (the DiT's last hidden state at step j from the anchor's cache) and
its one-step error did not predict the final video's accuracy (README, "How many DiT calls"). Here the loss is the
sampler's: from a fresh noise and training prompt, DisCa samples the whole schedule with gradients (the DiT frozen but
differentiated through, so an early predicted step answers for what the later full steps make of it), and every
state it visits is compared with the no-cache sampler's state from the same noise:

    L = mean_i |x_i(DisCa) - x_i(no cache)|^2,  i = 1 .. steps  (the last one is the sample)

Each anchor list gets its own predictor, continued from the shipped one (`weights/predictor.safetensors`) at its
fusion learning-rate scales. Prompts: the training split (the held-out prompts are the evaluation's). Each list is
then evaluated as `paired.py` evaluates (`--seeds`, the 512 held-out prompts), beside the shipped predictor on the
same list. A list whose predictor exists in --out is not trained again (a run may span device calls).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch
from safetensors import safe_open

from benchmarks.mini import paired
from benchmarks.mini.dataset import TRAIN_SEED, clip_spec, prompt_of
from benchmarks.mini.demo import WEIGHTS
from benchmarks.mini.run import PRESETS, device_name
from benchmarks.mini.text import encode_prompts
from disca.formats import load_predictor_file
from disca.hosts.diffusers import DiffusersPredictor, load_host
from disca.sampling import euler_step
from disca.schedules import ScheduleError, flow_sigmas, parse_step_list, validate_anchor_steps
from training import loop
from training.export import META_FUSION_SLOPE, export_predictor
from training.predictor import fusion_param_groups

logger = logging.getLogger(__name__)

TRAIN_PROMPTS = 8192  # training-split prompts drawn from (the predictor stage saw 544)
CHECK_PROMPTS = 64  # further training-split prompts with fixed noises: the roll-out loss before and after


def roll_out_states(host, predictor, noise, cond, sigmas, anchors, guidance: float | None) -> list[torch.Tensor]:
    """The states x_1 .. x_S that `disca.sampling.sample_cached` visits in predictor mode, differentiably (no
    runtime: each step's choice is the anchor list's); anchors=all steps gives the no-cache sampler's."""
    x, batch, states, cache = noise.float(), noise.shape[0], [], None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        g = torch.full_like(sigma, guidance) if host.is_guidance_embedded else None
        r = sigma_next if host.is_meanflow else None
        if i in anchors:
            velocity, cache = host.forward_with_cache(x, sigma, cond, r, g)
        else:
            velocity = host.predict(predictor, x, sigma, cond, cache, r, g)
        x = euler_step(x, velocity.float(), sigma, sigma_next)
        states.append(x)
    return states


def rollout_loss(host, predictor, noise, cond, sigmas, anchors, guidance) -> torch.Tensor:
    with torch.no_grad():
        reference = roll_out_states(host, predictor, noise, cond, sigmas, range(len(sigmas) - 1), guidance)
    states = roll_out_states(host, predictor, noise, cond, sigmas, frozenset(anchors), guidance)
    return torch.stack([(s - r).pow(2).mean() for s, r in zip(states, reference)]).mean()


def recorded_slope(path: str) -> float | None:
    with safe_open(path, "pt") as f:
        value = (f.metadata() or {}).get(META_FUSION_SLOPE)
    return float(value) if value else None


def train_list(host, anchors: list[int], args, cond, device, out: str) -> dict:
    """Continue `args.init` on roll-outs of `anchors`; export it to `out`/predictor.safetensors."""
    source = args.init
    predictor = DiffusersPredictor.from_file(load_predictor_file(source), source).to(device).train()
    slope = recorded_slope(source)
    optimizer = torch.optim.AdamW(fusion_param_groups(predictor, slope) if slope else predictor.parameters(),
                                  lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    with open(os.path.join(WEIGHTS, "demo.json")) as f:
        demo = json.load(f)
    sigmas = flow_sigmas(demo["steps"], demo["shift"]).to(device)
    shape = (host.transformer.config.in_channels, *demo["latent_shape"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def rows(indices):
        return {k: v[indices].to(device) for k, v in cond.items()}

    check_rows = list(range(TRAIN_PROMPTS, TRAIN_PROMPTS + min(CHECK_PROMPTS, args.batch * 8)))
    check_noise = torch.randn(len(check_rows), *shape, generator=torch.Generator().manual_seed(99)).to(device)

    @torch.no_grad()
    def check() -> float:
        with autocast:
            return sum(rollout_loss(host, predictor, check_noise[i:i + args.batch], rows(check_rows[i:i + args.batch]),
                                    sigmas, anchors, demo["guidance"]).item() * len(check_rows[i:i + args.batch])
                       for i in range(0, len(check_rows), args.batch)) / len(check_rows)

    report = {"anchors": anchors, "init": source, "check_loss_start": check(), "losses": []}
    started = time.perf_counter()
    for step in range(args.steps):
        loop.set_lr(optimizer, loop.lr_at(step, args.lr, args.warmup, "cosine", args.steps))
        generator = loop.step_generator(0, step, 0)
        prompts = torch.randint(TRAIN_PROMPTS, (args.batch,), generator=generator).tolist()
        noise = torch.randn(args.batch, *shape, generator=generator).to(device)
        with autocast:
            loss = rollout_loss(host, predictor, noise, rows(prompts), sigmas, anchors, demo["guidance"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report["losses"].append(loss.item())
        if step % 25 == 0 or step + 1 == args.steps:
            logger.info("%s step %d loss %.5f (%.2f s/step)", anchors, step, loss.item(),
                        (time.perf_counter() - started) / (step + 1))
    report["seconds"] = time.perf_counter() - started
    report["check_loss_end"] = check()
    predictor.eval()
    os.makedirs(out, exist_ok=True)
    for name in ("dit.safetensors", "classifier.safetensors"):  # paired.py's --weights folder
        if not os.path.exists(os.path.join(out, name)):
            os.symlink(os.path.join(WEIGHTS, name), os.path.join(out, name))
    export_predictor(os.path.join(out, "predictor.safetensors"), predictor, host, step_lists=[anchors],
                     resolution="latent " + "x".join(map(str, demo["latent_shape"])),
                     training=dict(objective="roll-out states", steps=args.steps, batch=args.batch, lr=args.lr),
                     fusion_slope=slope)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    logger.info("%s: check loss %.5f -> %.5f in %.0f s", anchors, report["check_loss_start"], report["check_loss_end"],
                report["seconds"])
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--schedules", nargs="+", default=["0 4 8 12 16", "0 1 3 7 13"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="paired.py's noise seeds (none: skip)")
    parser.add_argument("--prompts", type=int, default=None, help="paired.py --prompts")
    parser.add_argument("--init", default=os.path.join(WEIGHTS, "predictor.safetensors"), help="predictor to continue")
    parser.add_argument("--tag", default="", help="suffix of each list's folder name (another run on the same list)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    steps = PRESETS["v3"].steps
    try:
        lists = [validate_anchor_steps(parse_step_list(text), steps) for text in args.schedules]
    except ScheduleError as error:
        raise SystemExit(f"--schedules: {error}") from None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    host = load_host(os.path.join(WEIGHTS, "dit.safetensors")).to(device).requires_grad_(False).eval()
    spec = PRESETS["v3"].spec
    cond = encode_prompts([prompt_of(clip_spec(TRAIN_SEED, i, spec)) for i in range(TRAIN_PROMPTS + CHECK_PROMPTS)])
    for anchors in lists:
        name = "anchors_" + "_".join(map(str, anchors)) + args.tag
        folder = os.path.join(args.out, name)
        if not os.path.isfile(os.path.join(folder, "predictor.safetensors")):
            train_list(host, list(anchors), args, cond, device, folder)
        if args.seeds:
            text = " ".join(map(str, anchors))
            common = ["--seeds", *map(str, args.seeds), "--schedules", text, "--device", device.type]
            common += ["--prompts", str(args.prompts)] if args.prompts else []
            paired.main(["--out", os.path.join(folder, "paired"), "--weights", folder, *common])
            paired.main(["--out", os.path.join(folder, "paired_shipped"), *common])
    logger.info("done on %s", device_name(device))


if __name__ == "__main__":
    main()
