"""DisCa speed and memory on full-size HunyuanVideo DiTs in ComfyUI's own implementation (GPU).

Builds HunyuanVideo-1.0 (12.8B) or 1.5 (8.3B) with random bf16 weights through ComfyUI's model classes,
attaches a random predictor of the official shape through the pack's runtime (`disca.hosts.comfyui.apply_disca`,
what the DisCa Apply node calls), and samples with stock ComfyUI `euler`, side by side in one process:

  cfg50x2       50-step CFG baseline (cond + uncond batched); at large sizes only --baseline-steps are run
                and the 50-step time is extrapolated from the measured per-step time (reported as such)
  nocache_S     the distilled model without cache, S steps
  <schedule>    DisCa: official lists (20 steps) and N2/N3/N4 (10 steps)
  easycache_S   ComfyUI's built-in EasyCache (training-free) on the same distilled model

Per-call times come from CUDA events (DisCa's own run timer for DisCa runs, a probe wrapper otherwise);
whole-run times from a synchronised wall clock. Run from the repo root:

  python benchmarks/speed.py --comfyui PATH/ComfyUI --arch hv10 --size 704x704x129 --out results.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from disca.formats import ARCH_HV10, ARCH_HV15, PredictorSpec, comfy_to_tencent_predictor  # noqa: E402
from disca.runtime import DisCaConfig  # noqa: E402
from disca.schedules import AnchorSchedule, flow_sigmas  # noqa: E402

log = logging.getLogger("benchmark")

# Full-size configurations as ComfyUI detects them from the released checkpoints.
UNET_CONFIGS = {
    ARCH_HV10: dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2],
                    vec_in_dim=768, axes_dim=[16, 56, 56], meanflow=True, context_in_dim=4096, hidden_size=3072,
                    mlp_ratio=4.0, num_heads=24, depth=20, depth_single_blocks=40, theta=256, qkv_bias=True,
                    byt5=False, guidance_embed=True, use_cond_type_embedding=False, vision_in_dim=None,
                    meanflow_sum=False),
    ARCH_HV15: dict(image_model="hunyuan_video", in_channels=65, out_channels=32, patch_size=[1, 1, 1],
                    vec_in_dim=None, axes_dim=[16, 56, 56], meanflow=True, context_in_dim=3584, hidden_size=2048,
                    mlp_ratio=4.0, num_heads=16, depth=54, depth_single_blocks=0, theta=256, qkv_bias=True,
                    byt5=False, guidance_embed=False, use_cond_type_embedding=True, vision_in_dim=1152,
                    meanflow_sum=True),
}
# (latent channels, spatial compression) of each VAE; frames compress 4x (F_lat = (F - 1) / 4 + 1)
LATENT = {ARCH_HV10: (16, 8), ARCH_HV15: (32, 16)}
DISCA_SCHEDULES = {ARCH_HV10: {"official_10of20": ("t2v_official_10of20", 20), "official_8of20": ("t2v_official_8of20", 20),
                               "N2": ("N2", 10), "N3": ("N3", 10), "N4": ("N4", 10)},
                   ARCH_HV15: {"official_4of8": ("i2v_official_4of8", 8), "N2": ("N2", 8), "N3": ("N3", 8),
                               "N4": ("N4", 8)}}
SHIFT = {ARCH_HV10: 5.0, ARCH_HV15: 7.0}


def start_comfyui(path: str, comfyui_args: list[str]):
    """ComfyUI's own start-up, without the server: importing its main.py parses `comfyui_args` as command-line
    arguments and sets up memory management exactly as `python main.py` does (DynamicVRAM on NVIDIA from 0.1x on,
    `--reserve-vram` budgets, ...)."""
    sys.path.insert(0, path)
    sys.argv = ["main.py", *comfyui_args]
    import main  # noqa: F401
    import comfy.memory_management
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.supported_models

    log.info("ComfyUI %s: DynamicVRAM %s, model patcher %s", _comfyui_version(path),
             getattr(comfy.memory_management, "aimdo_enabled", False),
             getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__)
    return comfy


def _comfyui_version(path: str) -> str:
    import runpy

    return runpy.run_path(str(Path(path) / "comfyui_version.py"))["__version__"]


def build_model(comfy, arch: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16):
    """ComfyUI's HunyuanVideo with random weights (bf16 unless `dtype`), loaded through ComfyUI's own loader from a
    state dict in host memory (as DisCa Load Distilled Model does from a file), so that ComfyUI picks its patcher
    and memory management as for a real checkpoint. Parameter names and shapes come from the model class built on
    the meta device; the random values are drawn on the GPU (fast) and moved to the host."""
    config_class = comfy.supported_models.HunyuanVideo15 if arch == ARCH_HV15 else comfy.supported_models.HunyuanVideo
    model_config = config_class(dict(UNET_CONFIGS[arch]))
    model_config.set_inference_dtype(dtype, None)
    with _eager_parameters(comfy):
        skeleton = model_config.get_model({}, device="meta").diffusion_model
    device = comfy.model_management.get_torch_device()
    generator = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, param in skeleton.named_parameters():
        if param.ndim == 1 and ("norm" in name or name.endswith(".scale")):
            state[name] = torch.ones(param.shape, dtype=dtype)
        else:
            values = torch.randn(param.shape, device=device, generator=generator) * 0.02
            state[name] = values.to(dtype).to("cpu")
    del skeleton
    return comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype})


@contextlib.contextmanager
def _eager_parameters(comfy):
    """Under DynamicVRAM, ComfyUI's layers create their weights only when a state dict is loaded; to draw random
    weights the benchmark needs them up front, with the same names and shapes."""
    enabled = getattr(comfy.memory_management, "aimdo_enabled", False)
    comfy.memory_management.aimdo_enabled = False
    try:
        yield
    finally:
        comfy.memory_management.aimdo_enabled = enabled


@torch.no_grad()
def _randomize(module: torch.nn.Module, seed: int) -> None:
    generators = {}  # ComfyUI builds a few modules (e.g. 1.5's cond_type_embedding) on the CPU
    for name, param in module.named_parameters():
        if param.ndim == 1 and ("norm" in name or name.endswith(".scale")):
            param.fill_(1.0)
        else:
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, 0.02, generator=generators[param.device])


def random_predictor(comfy, base, arch: str, seed: int = 1):
    """A random predictor of the official shape, built from this ComfyUI's blocks as DisCa Apply builds it, returned
    as official-layout tensors (what a released file holds)."""
    from disca.hosts.comfyui import host_blocks
    from disca.predictor import DisCaPredictor

    config = UNET_CONFIGS[arch]
    spec = PredictorSpec(arch=arch, hidden_size=config["hidden_size"], num_heads=config["num_heads"], depth=2,
                         mlp_hidden_dim=4 * config["hidden_size"])
    ops = comfy.ops.manual_cast
    with _eager_parameters(comfy):
        module = DisCaPredictor(spec, host_blocks(base, spec, torch.bfloat16, ops), operations=ops,
                                dtype=torch.bfloat16, device="meta").to_empty(device="cuda")
    _randomize(module, seed)
    state = {k: v.detach().cpu() for k, v in module.named_parameters()}
    del module
    return spec, comfy_to_tencent_predictor(state)


class DeviceMemory:
    """The GPU's used memory as the driver sees it (NVML), sampled in a thread: with DynamicVRAM, ComfyUI maps
    weights outside torch's allocator, so torch.cuda.max_memory_allocated misses them."""

    def __init__(self, interval_s: float = 0.01):
        import threading

        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        self._interval = interval_s
        self._threading = threading
        self.peak = 0

    def used(self) -> int:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used

    def __enter__(self):
        self.peak = self.used()
        self._stop = self._threading.Event()
        self._thread = self._threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            self._stop.wait(self._interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def conditioning(arch: str, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if arch == ARCH_HV10:
        return [[torch.randn(batch, 256, 4096, generator=g) * 0.1,
                 {"pooled_output": torch.randn(batch, 768, generator=g), "guidance": 6.0}]]
    import types

    vision = types.SimpleNamespace(last_hidden_state=torch.randn(batch, 729, 1152, generator=g))
    return [[torch.randn(batch, 256, 3584, generator=g) * 0.1, {"pooled_output": None, "clip_vision_output": vision}]]


def latent_shape(arch: str, width: int, height: int, frames: int) -> list[int]:
    channels, down = LATENT[arch]
    return [1, channels, (frames - 1) // 4 + 1, height // down, width // down]


class CallTimer:
    """CUDA-event times of every diffusion-model call of a stock run (a DIFFUSION_MODEL probe)."""

    def __init__(self):
        self.events = []

    def wrapper(self, executor, *args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = executor(*args, **kwargs)
        end.record()
        self.events.append((start, end))
        return out

    def seconds(self) -> list[float]:
        torch.cuda.synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in self.events]


def sample(comfy, model, shape, sigmas, arch, cfg=1.0, memory: dict | None = None):
    """One stock `euler` sampling run; returns (wall seconds, peak allocated bytes). `memory`, if given, receives the
    device-level peak (NVML) during the run."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    positive, negative = conditioning(arch, seed=1), conditioning(arch, seed=2)
    sampler = comfy.samplers.sampler_object("euler")
    # loading the DiT and the predictor is not sampling time
    comfy.model_management.load_models_gpu([model] + model.get_nested_additional_models())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    device = DeviceMemory() if memory is not None else contextlib.nullcontext()
    with device:
        started = time.perf_counter()
        comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, torch.zeros(shape),
                                   disable_pbar=True, seed=0)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    if memory is not None:
        memory.update(device_peak_bytes=device.peak)
    return wall, torch.cuda.max_memory_allocated()


def memory_after_run(comfy) -> dict:
    """What stays on the GPU once a run is over and the caller has dropped its own references to it."""
    comfy.model_management.soft_empty_cache()
    return dict(device_used_after_bytes=DeviceMemory().used(), allocated_after_bytes=torch.cuda.memory_allocated())


def disca_run_probe(comfy, model, sink: list):
    """An OUTER_SAMPLE wrapper inside DisCa's: hands the finished run's stats to the benchmark."""
    from disca.hosts.comfyui import RUN_OPTION

    def probe(executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            sink.append(executor.class_obj.model_options["transformer_options"][RUN_OPTION])

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "benchmark_probe", probe)


def profile_calls(comfy, base, patched, shape, arch) -> dict:
    """torch.profiler over one stock sampling run and one DisCa run: host syncs and copies per model call."""
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    for name, model in (("stock", base), ("disca_N2", patched)):
        sample(comfy, model, shape, flow_sigmas(4, SHIFT[arch]), arch)  # warm
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sample(comfy, model, shape, flow_sigmas(4, SHIFT[arch]), arch)
        events = prof.key_averages()
        pick = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense", "aten::item",
                "Memcpy DtoH (Device -> Pageable)", "Memcpy DtoH (Device -> Pinned)", "Memcpy HtoD (Pageable -> Device)",
                "Memcpy HtoD (Pinned -> Device)", "cudaMemcpyAsync", "aten::copy_", "aten::nonzero"}
        counts[name] = {e.key: e.count for e in events if e.key in pick}
    counts["note"] = "counts over one 4-step sampling run (4 model calls; DisCa N2: 2 full + 2 predicted)"
    return counts


def run_size(comfy, arch: str, base, predictor, size: str, full_baseline: bool, baseline_steps: int, only: set | None,
             step_timing: bool, save, repeats: int = 1):
    """Measure one latent size; `save(result)` is called after every run, so a timeout loses one run at most."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    from disca.hosts.comfyui import apply_disca

    width, height, frames = (int(v) for v in size.split("x"))
    shape = latent_shape(arch, width, height, frames)
    spec, state = predictor
    result = dict(latent_shape=shape, tokens=shape[2] * shape[3] * shape[4] // (4 if arch == ARCH_HV10 else 1),
                  runs={})
    schedules = DISCA_SCHEDULES[arch]

    def want(name):
        return only is None or name in only

    sample(comfy, base, shape, flow_sigmas(2, SHIFT[arch]), arch)  # warm-up: kernels, allocator
    if step_timing:  # per-call times of the full model, batch 1 and the CFG batch of 2
        timer = CallTimer()
        probe = base.clone()
        probe.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "benchmark_timer", timer.wrapper)
        sample(comfy, probe, shape, flow_sigmas(3, SHIFT[arch]), arch)
        full_calls = timer.seconds()
        timer.events.clear()
        cfg_steps = 50 if full_baseline else baseline_steps
        wall, peak = sample(comfy, probe, shape, flow_sigmas(cfg_steps, SHIFT[arch]), arch, cfg=6.0)
        cfg_calls = timer.seconds()
        result["full_call_s"] = sorted(full_calls)[len(full_calls) // 2]
        result["cfg_step_s"] = sorted(cfg_calls)[len(cfg_calls) // 2]
        result["runs"]["cfg50x2"] = dict(steps=cfg_steps, wall_s=wall, peak_bytes=peak,
                                         extrapolated_wall_s=wall * 50 / cfg_steps, measured_in_full=full_baseline)
        save(result)

    for steps in sorted({s for _, s in schedules.values()}):
        name = f"nocache_{steps}"
        if want(name):
            memory = {}
            wall, peak = sample(comfy, base, shape, flow_sigmas(steps, SHIFT[arch]), arch, memory=memory)
            result["runs"][name] = dict(steps=steps, wall_s=wall, peak_bytes=peak, **memory, **memory_after_run(comfy))
            save(result)

    for name, (schedule, steps) in schedules.items():
        if not want(name):
            continue
        patched = apply_disca(base, DisCaConfig(AnchorSchedule.from_preset(schedule)), spec, state)
        sink = []
        disca_run_probe(comfy, patched, sink)
        for repeat in range(repeats):  # a second run of the same model shows whether anything outlives a run
            memory = {}
            wall, peak = sample(comfy, patched, shape, flow_sigmas(steps, SHIFT[arch]), arch, memory=memory)
            run = sink.pop()  # the benchmark's own reference to the finished run (and its last cache)
            n_full, n_pred = len(run.stats.full_steps), len(run.stats.predicted_steps)
            result["runs"][name if repeat == 0 else f"{name}_run{repeat + 1}"] = dict(
                steps=steps, anchors=sorted(run.anchors), wall_s=wall, peak_bytes=peak,
                full_s=run.stats.timer.seconds("full"), predicted_s=run.stats.timer.seconds("predicted"),
                full_steps=n_full, predicted_steps=n_pred, cache_bytes=run.cache.peak_bytes,
                predictor_bytes=run.stats.predictor_bytes, **memory)
            del run  # the run holds its last cache: keep it out of the next run's figures
            result["runs"][name if repeat == 0 else f"{name}_run{repeat + 1}"].update(memory_after_run(comfy))
            save(result)
        del patched

    for steps in sorted({s for _, s in schedules.values()}):
        name = f"easycache_{steps}"
        if want(name):
            cached = EasyCacheNode.execute(base, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95,
                                           verbose=False).result[0]
            wall, peak = sample(comfy, cached, shape, flow_sigmas(steps, SHIFT[arch]), arch)
            result["runs"][name] = dict(steps=steps, wall_s=wall, peak_bytes=peak)
            save(result)
    return result


def summarize(result: dict, baseline_wall: float | None) -> None:
    """The figures the issue asks for, keyed by schedule name. Without a 50x2 baseline (`--no-step-timing`), the
    speedups against it are left out; the ones against the no-cache run of the same step count stay."""
    runs = result["runs"]
    keys = ("full_step_s", "predicted_step_s", "predicted_over_full", "cache_bytes", "predictor_bytes",
            "extra_peak_vram_bytes", "extra_peak_device_bytes", "speedup_vs_nocache", "speedup_dit_vs_50x2",
            "ideal_speedup_dit_vs_50x2", "speedup_over_ideal")
    out = {key: {} for key in keys}
    for name, run in runs.items():
        if name == "cfg50x2":
            continue
        baseline = run.get("baseline_wall_s") or baseline_wall
        out["speedup_dit_vs_50x2"][name] = baseline / run["wall_s"] if baseline else None
        if "anchors" not in run:
            out["ideal_speedup_dit_vs_50x2"][name] = 100 / run["steps"] if name.startswith("nocache") else None
            continue
        per_full = run["full_s"] / run["full_steps"]
        per_pred = run["predicted_s"] / run["predicted_steps"] if run["predicted_steps"] else 0.0
        nocache = runs.get(f"nocache_{run['steps']}")
        ideal = 100 * per_full / (run["full_steps"] * per_full + run["predicted_steps"] * per_pred)
        out["full_step_s"][name] = per_full
        out["predicted_step_s"][name] = per_pred
        out["predicted_over_full"][name] = per_pred / per_full
        out["cache_bytes"][name] = run["cache_bytes"]
        out["predictor_bytes"][name] = run["predictor_bytes"]
        out["extra_peak_vram_bytes"][name] = run["peak_bytes"] - nocache["peak_bytes"] if nocache else None
        if nocache and "device_peak_bytes" in run and "device_peak_bytes" in nocache:
            out["extra_peak_device_bytes"][name] = run["device_peak_bytes"] - nocache["device_peak_bytes"]
        out["speedup_vs_nocache"][name] = nocache["wall_s"] / run["wall_s"] if nocache else None
        out["ideal_speedup_dit_vs_50x2"][name] = ideal
        out["speedup_over_ideal"][name] = out["speedup_dit_vs_50x2"][name] / ideal if baseline else None
    result.update(out)


def markdown(report: dict) -> str:
    commands = report["command"] if isinstance(report["command"], list) else [report["command"]]
    host = f"ComfyUI {report['comfyui']}, DynamicVRAM {report['dynamic_vram']}; " if "comfyui" in report else ""
    lines = [f"# DisCa speed benchmark\n\nGPU: {report['gpu']}; torch {report['torch']}; {host}{report['date']}.\n\n"
             "Commands:\n" + "".join(f"- `{c}`\n" for c in commands)]
    for arch, sizes in report["results"].items():
        for size, r in sizes.items():
            lines.append(f"\n## {arch} {size} (latent {r['latent_shape']}, {r['tokens']} image tokens)\n")
            base = r["runs"].get("cfg50x2")
            if base:
                how = "measured" if base["measured_in_full"] else f"extrapolated from {base['steps']} measured steps"
                lines.append(f"Full forward {r['full_call_s']:.3f} s; CFG step (batch 2) {r['cfg_step_s']:.3f} s; "
                             f"50x2 baseline {base['extrapolated_wall_s']:.1f} s ({how}).\n")
            lines.append("| run | steps | full + predicted | wall s | predicted/full | speedup vs no cache | speedup vs 50x2 "
                         "| ideal | measured/ideal | cache MiB | extra peak MiB (torch) | extra peak MiB (device) "
                         "| device used after run MiB |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for name, run in r["runs"].items():
                if name == "cfg50x2":
                    continue

                def fmt(key, scale=1.0, spec=".3f"):
                    value = r.get(key, {}).get(name)
                    return "" if value is None else format(value / scale, spec)
                split = f"{run['full_steps']} + {run['predicted_steps']}" if "anchors" in run else ""
                after = run.get("device_used_after_bytes")
                lines.append(f"| {name} | {run['steps']} | {split} | {run['wall_s']:.2f} | {fmt('predicted_over_full', spec='.4f')} | "
                             f"{fmt('speedup_vs_nocache', spec='.2f')} | "
                             f"{fmt('speedup_dit_vs_50x2', spec='.2f')} | {fmt('ideal_speedup_dit_vs_50x2', spec='.2f')} | "
                             f"{fmt('speedup_over_ideal', spec='.3f')} | {fmt('cache_bytes', 2**20, '.1f')} | "
                             f"{fmt('extra_peak_vram_bytes', 2**20, '.1f')} | {fmt('extra_peak_device_bytes', 2**20, '.1f')} | "
                             f"{'' if after is None else format(after / 2**20, '.0f')} |")
            if "profile" in r:
                lines.append(f"\nProfiler (host syncs / copies): `{json.dumps(r['profile'])}`\n")
    return "\n".join(lines) + "\n"


def merge(paths: list[str]) -> dict:
    """Union of several runs' JSON (one GPU session split into commands). Each run keeps the 50x2 baseline
    measured by its own command; where two files have the same run, the first file's wins."""
    merged = None
    for path in paths:
        report = json.loads(Path(path).read_text())
        for sizes in report["results"].values():  # speedups stay ratios within one command's measurements
            for result in sizes.values():
                baseline = result["runs"].get("cfg50x2", {}).get("extrapolated_wall_s")
                for run in result["runs"].values():
                    run.setdefault("baseline_wall_s", baseline)
                    run.setdefault("source", Path(path).name)
        if merged is None:
            merged = report
            merged["command"] = [report["command"]]
            continue
        merged["command"].append(report["command"])
        for arch, sizes in report["results"].items():
            for size, result in sizes.items():
                target = merged["results"].setdefault(arch, {}).setdefault(size, result)
                if target is not result:
                    for name, run in result["runs"].items():
                        target["runs"].setdefault(name, run)
                    target.setdefault("profile", result.get("profile"))
    for sizes in merged["results"].values():
        for result in sizes.values():
            summarize(result, result["runs"].get("cfg50x2", {}).get("extrapolated_wall_s"))
    return merged


def plot(report: dict, path: Path) -> None:
    """Measured DiT-time speedup vs 50x2 CFG against the number of anchors (full forwards), per model/size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch, sizes in report["results"].items():
        for size, r in sizes.items():
            points = sorted((run["full_steps"], r["speedup_dit_vs_50x2"][name], name)
                            for name, run in r["runs"].items() if "anchors" in run)
            if not points:
                continue
            line, = ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{arch} {size} DisCa")
            for x, y, name in points:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ideal = sorted((run["full_steps"], r["ideal_speedup_dit_vs_50x2"][name])
                           for name, run in r["runs"].items() if "anchors" in run)
            ax.plot([p[0] for p in ideal], [p[1] for p in ideal], "x:", color=line.get_color(), label=f"{arch} {size} ideal")
    ax.set_xlabel("anchors (full DiT forwards)")
    ax.set_ylabel("DiT-time speedup vs 50-step CFG")
    ax.set_title(f"DisCa on {report['gpu']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merge", nargs="+", help="merge these JSON reports into --out (+ .md, .png) and exit")
    parser.add_argument("--comfyui", help="path of a ComfyUI source tree")
    parser.add_argument("--arch", choices=["hv10", "hv15"])
    parser.add_argument("--size", action="append", help="WIDTHxHEIGHTxFRAMES; repeatable")
    parser.add_argument("--full-baseline-max-tokens", type=int, default=20000,
                        help="run the 50x2 baseline in full up to this many image tokens; extrapolate above")
    parser.add_argument("--baseline-steps", type=int, default=3, help="CFG steps measured when extrapolating")
    parser.add_argument("--only", default=None, help="comma-separated run names to measure (default: all)")
    parser.add_argument("--profile", action="store_true", help="profile host syncs on the first size")
    parser.add_argument("--no-step-timing", action="store_true",
                        help="skip the per-call and CFG-baseline timing (when another command of the run measured them)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each DisCa schedule this many times on the same model (device memory after each "
                             "run shows whether anything outlives a run)")
    parser.add_argument("--comfyui-args", default="",
                        help="ComfyUI command-line arguments, e.g. '--reserve-vram 116' for a 24 GB budget on a "
                             "141 GB GPU (DynamicVRAM, ComfyUI's default on NVIDIA, then offloads the rest)")
    parser.add_argument("--out", required=True, help="JSON file to write (merged if it exists)")
    args = parser.parse_args()
    command = "python " + " ".join(sys.argv)  # before ComfyUI's argument parser takes sys.argv over
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.merge:
        report = merge(args.merge)
        out = Path(args.out)
        out.write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))
        plot(report, out.with_suffix(".png"))
        print(markdown(report))
        return
    if not (args.comfyui and args.arch and args.size):
        parser.error("--comfyui, --arch and --size are required unless --merge is given")
    comfy = start_comfyui(args.comfyui, args.comfyui_args.split())
    arch = ARCH_HV10 if args.arch == "hv10" else ARCH_HV15
    torch.backends.cuda.matmul.allow_tf32 = True
    base = build_model(comfy, arch)
    predictor = random_predictor(comfy, base, arch)
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {"results": {}}
    report.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__, comfyui=_comfyui_version(args.comfyui),
                  dynamic_vram=bool(getattr(comfy.memory_management, "aimdo_enabled", False)),
                  date=datetime.date.today().isoformat(), command=command)
    only = set(args.only.split(",")) if args.only else None
    for size in args.size:
        width, height, frames = (int(v) for v in size.split("x"))
        shape = latent_shape(arch, width, height, frames)
        tokens = shape[2] * shape[3] * shape[4] // (4 if arch == ARCH_HV10 else 1)

        def save(result):
            report["results"].setdefault(arch, {})[size] = result
            out_path.write_text(json.dumps(report, indent=1))

        result = run_size(comfy, arch, base, predictor, size, tokens <= args.full_baseline_max_tokens,
                          args.baseline_steps, only, not args.no_step_timing, save, args.repeats)
        if args.profile and size == args.size[0]:
            from disca.hosts.comfyui import apply_disca
            patched = apply_disca(base, DisCaConfig(AnchorSchedule.from_preset("N2")), *predictor)
            result["profile"] = profile_calls(comfy, base, patched, shape, arch)
            save(result)
        log.info("%s %s done", arch, size)
    print(markdown(merge([str(out_path)])))


if __name__ == "__main__":
    main()
