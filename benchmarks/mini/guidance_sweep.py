"""The teacher's attribute accuracy against its guidance scale, on validation prompts (not the held-out split).

    python -m benchmarks.mini.guidance_sweep --dit runs/mini/teacher/flow_matching_dit.safetensors \\
        --classifier runs/mini/classifier.safetensors --scales 1.5,2,3,4,6 --out guidance.json

The teacher is sampled as the evaluation samples it (`--steps` Euler steps of classifier-free guidance, shift 2) from
one fixed noise per prompt, so the scales differ only in guidance. Besides each attribute's accuracy it records the
background confusion matrix (rows: the prompt's background, columns: the classifier's reading), where v3's first
teacher was weakest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from benchmarks.mini.dataset import ATTRIBUTES, VALIDATION_SEED, make_batch
from benchmarks.mini.metrics import attribute_accuracy, classify, load_classifier
from benchmarks.mini.run import PRESETS, EvalSet, generate, latent_shape
from benchmarks.mini.text import encode_prompts
from disca.hosts.diffusers import load_host
from disca.sampling import guided, sample_euler
from disca.schedules import flow_sigmas


def confusion(truth: torch.Tensor, predicted: torch.Tensor, classes: int) -> list[list[int]]:
    matrix = torch.zeros(classes, classes, dtype=torch.int64)
    matrix.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    return matrix.tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="the teacher (flow DiT, undistilled)")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--scales", default="1.5,2,3,4,6", help="comma-separated guidance scales")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--preset", default="v3")
    parser.add_argument("--out", required=True, help="a .json file")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = dataclasses.replace(PRESETS[args.preset], held_out=args.prompts)
    _, labels, prompts = make_batch(VALIDATION_SEED, range(args.prompts), preset.spec)
    noise = torch.randn(args.prompts, 48, *latent_shape(preset), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    validation = EvalSet(encode_prompts(prompts), labels, prompts, noise, real_features=None)
    host = load_host(args.dit).to(device).requires_grad_(False).eval()
    classifier = load_classifier(args.classifier).to(device)
    negative = {k: v.to(device) for k, v in encode_prompts([""]).items()}
    sigmas = flow_sigmas(args.steps, preset.shift)
    result = {"dit": args.dit, "prompts": args.prompts, "steps": args.steps, "split_seed": VALIDATION_SEED,
              "device": str(device), "scales": {}}
    for scale in scales:
        started = time.perf_counter()
        videos, _, _ = generate(lambda h, x, c: sample_euler(guided(h, c, negative, scale), x, sigmas), validation, preset,
                                host, device)
        predicted, _ = classify(classifier, videos.to(device))
        predicted = {k: v.cpu() for k, v in predicted.items()}
        accuracy = attribute_accuracy(predicted, labels)
        result["scales"][str(scale)] = {"accuracy": accuracy, "background_confusion": confusion(
            labels["background"], predicted["background"], len(ATTRIBUTES["background"]))}
        print(f"guidance {scale:4}: " + "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
              + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
