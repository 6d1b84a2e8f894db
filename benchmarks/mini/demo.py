"""DisCa on your CPU in a minute: the embedded DisCa-mini model generates one prompt without and with DisCa.

    python -m benchmarks.mini.demo                                   # default prompt -> disca_demo.gif
    python -m benchmarks.mini.demo --prompt "a blue square moving up, fast, over a dotted background"

Both videos start from the same noise. Left: the R-MeanFlow-distilled DiT for every step. Right: DisCa, the full DiT
on the anchor steps (demo.json's: steps 0, 1, 2, 4, 7, 11 and 15 of 20; or --schedule / --interval) and the learned
predictor on the others. The demo prints the measured wall-time speedup (same machine, same run: medians of
alternating timed runs after a first untimed one each), the runtime's summary of a DisCa run and what the attribute
classifier sees in each video.
Prompts use the DisCa-mini vocabulary: `a <colour> <shape> moving <direction>, <speed>[, and a small <colour>
<shape> moving <direction>, <speed>], over a <background> background`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import re

import torch

from benchmarks.mini.cost_ratio import median_seconds
from benchmarks.mini.dataset import ATTRIBUTES, from_latents
from benchmarks.mini.metrics import classify, load_classifier
from benchmarks.mini.text import encode_prompts
from disca.formats import DisCaFormatError, load_predictor_file
from disca.hosts.diffusers import DiffusersPredictor, load_host
from disca.sampling import distilled, sample_cached, sample_euler
from disca.schedules import AnchorSchedule, ScheduleError, flow_sigmas

TIMED_RUNS = 3
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
DEFAULT_PROMPT = "a red circle moving right, fast, and a small white square moving down, slow, over a striped background"
_PROMPT = re.compile(r"a (\w+) (\w+) moving (\w+), (\w+)(, and a small \w+ \w+ moving \w+, \w+)?, over a (\w+) background$")


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The attributes a DisCa-mini prompt asks for (of the first, larger object), or a clear error."""
    match = _PROMPT.match(prompt.strip().lower())
    if not match:
        raise SystemExit(f"--prompt {prompt!r} does not follow the DisCa-mini pattern: 'a <colour> <shape> moving "
                         "<direction>, <speed>[, and a small <colour> <shape> moving <direction>, <speed>], over a "
                         f"<background> background'; e.g. {DEFAULT_PROMPT!r}")
    colour, shape, direction, speed, second, background = match.groups()
    wanted = {"shape": shape, "colour": colour, "direction": direction, "speed": speed, "background": background,
              "count": "two" if second else "one"}
    for name, value in wanted.items():
        if value not in ATTRIBUTES[name]:
            raise SystemExit(f"--prompt: {name} {value!r} is not one of {list(ATTRIBUTES[name])}")
    return wanted


def load_models(weights: str, predictor_path: str | None = None):
    """The DiT, predictor (the weights folder's unless `predictor_path`; read first, the smallest file) and
    classifier."""
    predictor_path = predictor_path or os.path.join(weights, "predictor.safetensors")
    predictor = DiffusersPredictor.from_file(load_predictor_file(predictor_path), predictor_path).eval()
    host = load_host(os.path.join(weights, "dit.safetensors")).requires_grad_(False).eval()
    classifier = load_classifier(os.path.join(weights, "classifier.safetensors"))
    return host, predictor, classifier


@contextlib.contextmanager
def runtime_records():
    """What the DisCa runtime logs while inside: its summary at the end of a run (`sample_cached(log_summary=True)`)
    and its warnings."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("disca")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def to_gif(left: torch.Tensor, right: torch.Tensor, labels: tuple[str, str], path: str, scale: int = 4) -> None:
    """Two videos [3, F, H, W] in [-1, 1] side by side, upscaled, with a caption row; 8 frames per second, looping."""
    from PIL import Image, ImageDraw

    frames = []
    _, count, height, width = left.shape
    for f in range(count):
        canvas = Image.new("RGB", (2 * width * scale + 8, height * scale + 22), "black")
        for i, video in enumerate((left, right)):
            pixels = ((video[:, f].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
            image = Image.fromarray(pixels).resize((width * scale, height * scale), Image.NEAREST)
            canvas.paste(image, (i * (width * scale + 8), 22))
            ImageDraw.Draw(canvas).text((i * (width * scale + 8) + 4, 5), labels[i], fill="white")
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (both videos use the same noise)")
    parser.add_argument("--schedule", default=None, help="DisCa's anchor steps: N2/N3/N4 or a step list such as "
                        "'0 1 4 8 12 16' (default: demo.json's, '0 1 2 4 7 11 15': 7 DiT calls, where DisCa matches "
                        "the no-cache model)")
    parser.add_argument("--interval", type=int, default=None, help="DisCa: full DiT every N-th step instead (4: about "
                        "3x, and DisCa loses ~0.08 accuracy on this model)")
    parser.add_argument("--predictor", default=None, help="another predictor file (default: the --weights folder's), "
                        "e.g. the one roll-out-trained for one anchor list: --schedule '0 1 3 7 13' --predictor "
                        "benchmarks/mini/logs/rollout/dense5_650_predictor.safetensors (5 DiT calls, about 3x, DisCa "
                        "0.026 below the no-cache model over the 512 held-out prompts)")
    parser.add_argument("--out", default="disca_demo.gif", help="side-by-side GIF to write")
    parser.add_argument("--weights", default=WEIGHTS, help="folder with dit/predictor/classifier safetensors + demo.json")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".gif"):
        parser.error(f"--out {args.out!r}: give the path of a .gif file to write, e.g. --out disca_demo.gif")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    wanted = prompt_attributes(args.prompt)
    with open(os.path.join(args.weights, "demo.json")) as f:
        settings = json.load(f)
    steps, shift, guidance = settings["steps"], settings["shift"], settings["guidance"]
    if args.schedule is not None and args.interval is not None:
        parser.error("give --schedule or --interval, not both")
    try:
        schedule = (AnchorSchedule(interval=args.interval) if args.interval is not None else
                    AnchorSchedule.parse(settings["schedule"] if args.schedule is None else args.schedule))
        anchors = schedule.anchor_steps(steps)
    except ScheduleError as error:
        parser.error(f"--schedule / --interval: {error}")
    predictor_path = args.predictor or os.path.join(args.weights, "predictor.safetensors")
    if args.predictor is not None and not os.path.isfile(args.predictor):
        parser.error(f"--predictor {args.predictor!r} is not a file")
    try:
        host, predictor, classifier = load_models(args.weights, predictor_path)
    except DisCaFormatError as error:  # names the file: not safetensors, not a predictor, another architecture
        parser.error(str(error))
    sigmas = flow_sigmas(steps, shift)
    cond = encode_prompts([args.prompt])
    noise = torch.randn(1, host.transformer.config.in_channels, *settings["latent_shape"],
                        generator=torch.Generator().manual_seed(args.seed))

    def plain():
        return sample_euler(distilled(host, cond, guidance), noise, sigmas)

    runs = itertools.count()

    def disca():  # the last timed run logs the runtime's own account: cost per step, cache and predictor memory
        return sample_cached(host, noise, sigmas, cond, anchors, mode="predictor", predictor=predictor,
                             guidance=guidance, log_summary=next(runs) == TIMED_RUNS)

    with runtime_records() as records:
        full, cached = plain(), disca()  # the videos shown, and the timing's warm-up
        # medians of alternating runs: one pair of runs on a shared CPU can swing the ratio by tenths
        full_seconds, cached_seconds = median_seconds(plain, disca, TIMED_RUNS, warm_up=False)
    videos = from_latents(torch.cat([full, cached]).float()).clamp(-1, 1)
    predicted, _ = classify(classifier, videos)
    verdicts = []
    for row in range(2):
        seen = {name: ATTRIBUTES[name][int(predicted[name][row])] for name in ATTRIBUTES}
        verdicts.append({"seen": seen, "matches": {name: seen[name] == wanted[name] for name in ATTRIBUTES}})
    labels = (f"R-MeanFlow {steps} steps: {steps} DiT calls",
              f"DisCa: {len(anchors)} DiT + {steps - len(anchors)} predictor")
    to_gif(videos[0], videos[1], labels, args.out)
    result = {"prompt": args.prompt, "gif": os.path.abspath(args.out), "seconds_without_disca": full_seconds,
              "seconds_with_disca": cached_seconds, "speedup": full_seconds / cached_seconds,
              "predictor": os.path.abspath(predictor_path),
              "dit_calls": {"without": steps, "with": len(anchors)}, "classifier": {"without": verdicts[0], "with": verdicts[1]}}
    print(f"prompt: {args.prompt}")
    print(f"without DisCa: {full_seconds:.2f} s ({steps} DiT calls) | with DisCa, anchors {sorted(anchors)}: {cached_seconds:.2f} s "
          f"({len(anchors)} DiT calls + {steps - len(anchors)} predictor steps) -> speedup {result['speedup']:.2f}x "
          f"(medians of {TIMED_RUNS} alternating runs on this machine, {torch.get_num_threads()} threads)")
    if args.predictor is not None:
        print(f"predictor: {result['predictor']}")
    for warning in dict.fromkeys(r.getMessage() for r in records if r.levelno >= logging.WARNING):  # once each
        print(f"warning: {warning}")
    print(f"runtime, last timed run: {[r.getMessage() for r in records if r.levelno == logging.INFO][-1]}")
    for name, verdict in (("without DisCa", verdicts[0]), ("with DisCa", verdicts[1])):
        right = sum(verdict["matches"].values())
        seen = ", ".join(f"{k}={v}{'' if verdict['matches'][k] else ' (asked ' + wanted[k] + ')'}" for k, v in verdict["seen"].items())
        print(f"classifier, {name}: {right}/{len(ATTRIBUTES)} attributes as asked: {seen}")
    print(f"side-by-side GIF: {result['gif']}")
    return result


if __name__ == "__main__":
    main()
