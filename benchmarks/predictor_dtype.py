"""Is the DisCa predictor safe in fp16 beside ComfyUI's fp16 HunyuanVideo-1.5? (GPU)

ComfyUI runs HunyuanVideo-1.5 in fp16 on GPUs that do fp16 well; the official predictor was trained in bf16. This
builds the full-size HunyuanVideo-1.5 DiT (8.3B, random weights) in fp16 through ComfyUI's loader and a random
predictor of the official shape, then samples two steps (an anchor, then a predicted step) with the predictor in
fp32, bf16 and fp16 (DisCa Apply's `predictor_dtype`). It reports, per dtype, the largest |activation| of every
predictor module (fp16 overflows past 65504), non-finite outputs, the magnitudes the fusion sees (current tokens and
the cache, the last block's residual stream), and how far the sample is from the fp32 predictor's.

    python benchmarks/predictor_dtype.py --comfyui PATH/ComfyUI --size 848x480x121 --out predictor_dtype.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speed  # noqa: E402
from disca.formats import ARCH_HV15  # noqa: E402
from disca.runtime import DisCaConfig  # noqa: E402
from disca.schedules import AnchorSchedule, flow_sigmas  # noqa: E402

log = logging.getLogger("benchmark")
FP16_MAX = torch.finfo(torch.float16).max


class ActivationRanges:
    """max |output| and non-finite counts of every module of the predictor, and max |input| of its fusion MLPs."""

    def __init__(self, predictor: torch.nn.Module):
        self.max_abs, self.nonfinite, self.fusion_inputs = {}, {}, {}
        self._handles = []
        for name, module in predictor.named_modules():
            if name:
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
            if name.startswith("fusion_mlp") and "." not in name:
                self._handles.append(module.register_forward_pre_hook(self._fusion_hook(name)))

    def _output_hook(self, name):
        def hook(module, args, output):
            for i, tensor in enumerate(output if isinstance(output, tuple) else (output,)):
                if torch.is_tensor(tensor) and tensor.is_floating_point():
                    key = name if i == 0 else f"{name}[{i}]"
                    self.max_abs[key] = max(self.max_abs.get(key, 0.0), tensor.abs().max().item())
                    self.nonfinite[key] = self.nonfinite.get(key, 0) + int((~torch.isfinite(tensor)).sum().item())
        return hook

    def _fusion_hook(self, name):
        def hook(module, args):
            tokens, cache = args[0].chunk(2, dim=-1)  # the fusion input is [current tokens ‖ cache]
            self.fusion_inputs[name] = dict(tokens_max_abs=tokens.abs().max().item(),
                                            cache_max_abs=cache.abs().max().item())
        return hook

    def remove(self):
        for handle in self._handles:
            handle.remove()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--size", default="848x480x121", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--comfyui-args", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    command = "python " + " ".join(sys.argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfy = speed.start_comfyui(args.comfyui, args.comfyui_args.split())
    from disca.hosts.comfyui import SETUP_OPTION, apply_disca

    base = speed.build_model(comfy, ARCH_HV15, dtype=torch.float16)
    spec, state = speed.random_predictor(comfy, base, ARCH_HV15)
    width, height, frames = (int(v) for v in args.size.split("x"))
    shape = speed.latent_shape(ARCH_HV15, width, height, frames)
    report = dict(command=command, gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                  comfyui=speed._comfyui_version(args.comfyui), size=args.size, latent_shape=shape,
                  dit_weight_dtype=str(base.model_dtype()), dit_compute_dtype=str(base.model.manual_cast_dtype or
                                                                                  base.model_dtype()),
                  fp16_max=FP16_MAX, runs={})
    samples = {}
    for dtype in ("fp32", "bf16", "fp16"):
        patched = apply_disca(base, DisCaConfig(AnchorSchedule(interval=2, name="N2")), spec, state, dtype=dtype)
        predictor = patched.model_options["transformer_options"][SETUP_OPTION].predictor
        ranges = ActivationRanges(predictor)
        sink = []
        speed.disca_run_probe(comfy, patched, sink)
        samples[dtype] = sample_latent(comfy, patched, shape)
        ranges.remove()
        run = sink[-1]
        report["runs"][dtype] = dict(
            predicted_step_s=run.stats.timer.seconds("predicted"),
            max_abs=ranges.max_abs, nonfinite=ranges.nonfinite, fusion_inputs=ranges.fusion_inputs,
            largest_activation=max(ranges.max_abs.values()), any_nonfinite=any(ranges.nonfinite.values()),
            sample_nonfinite=int((~torch.isfinite(samples[dtype])).sum().item()))
        del patched, predictor, run, sink
        Path(args.out).write_text(json.dumps(report, indent=1))
    reference = samples["fp32"].double()
    for dtype in ("bf16", "fp16"):
        difference = (samples[dtype].double() - reference).norm() / reference.norm()
        report["runs"][dtype]["relative_difference_to_fp32_predictor"] = difference.item()
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({d: {k: v for k, v in r.items() if k not in ("max_abs", "nonfinite")}
                      for d, r in report["runs"].items()}, indent=1))


def sample_latent(comfy, model, shape) -> torch.Tensor:
    """Two euler steps: step 0 runs the full DiT (anchor), step 1 the predictor; the sample after both."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    positive, negative = speed.conditioning(ARCH_HV15, seed=1), speed.conditioning(ARCH_HV15, seed=2)
    return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"),
                                      flow_sigmas(2, speed.SHIFT[ARCH_HV15]), positive, negative, torch.zeros(shape),
                                      disable_pbar=True, seed=0).float().cpu()


if __name__ == "__main__":
    main()
