"""Per-run DisCa state: which step is an anchor, the cache keyed per cond, and the run's numbers.

Host-free. A host builds one `DisCaRun` per sampling run (ComfyUI: in the OUTER_SAMPLE wrapper) and drops it
when the run ends, so a second run, a changed prompt or an interrupted run never sees stale state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .predictor import predictor_bytes
from .schedules import AnchorSchedule

log = logging.getLogger("disca")

# How a step that is not an anchor gets its output. The learned predictor and cache reuse store the anchor's last
# hidden state and ask the host to finish the step from it; output reuse and Taylor store outputs and need no host.
MODE_PREDICTOR = "predictor"        # DisCa: the predictor maps (current tokens, cache) to the last hidden state
MODE_REUSE_OUTPUT = "reuse_output"  # training-free: the last anchor's output, unchanged (FORA-style)
MODE_REUSE_CACHE = "reuse_cache"    # training-free: the anchor's last hidden state through this step's final layer
MODE_TAYLOR = "taylor"              # training-free: first-order extrapolation in time from the last two anchors
MODES = (MODE_PREDICTOR, MODE_REUSE_OUTPUT, MODE_REUSE_CACHE, MODE_TAYLOR)
HIDDEN_STATE_MODES = (MODE_PREDICTOR, MODE_REUSE_CACHE)
CACHE_ON_COMPUTE_DEVICE = "compute_device"
CACHE_ON_CPU = "cpu"
CACHE_DEVICES = (CACHE_ON_COMPUTE_DEVICE, CACHE_ON_CPU)


class DisCaRuntimeError(RuntimeError):
    """Sampling cannot go on with DisCa as configured; the message says what to change."""


@dataclass(frozen=True)
class DisCaConfig:
    """How DisCa runs a model.

    schedule: which steps run the full model (anchors); the others are predicted.
    mode: "predictor" runs the learned predictor on predicted steps (DisCa); "reuse_output", "reuse_cache" and
        "taylor" are the training-free caches (see MODES), for A/B comparisons.
    cache_device: "compute_device" keeps the cache where the model runs (fastest). "cpu" parks it in host
        memory between anchor and predicted steps: saves its size in VRAM, costs two copies per predicted step.
    """

    schedule: AnchorSchedule
    mode: str = MODE_PREDICTOR
    cache_device: str = CACHE_ON_COMPUTE_DEVICE

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.cache_device not in CACHE_DEVICES:
            raise ValueError(f"cache_device must be one of {CACHE_DEVICES}, got {self.cache_device!r}")


UuidKey = tuple  # the conds (uuids) batched into one model call, in batch order


class CacheStore:
    """Tensors saved at an anchor, keyed by the conds batched in that call.

    ComfyUI may batch cond and uncond into one call or split them (memory-dependent), and may decide
    differently at the anchor and at the predicted step. An exact key match returns the stored tensors as
    they are (no copy); otherwise the per-cond rows are gathered from whichever entries hold them.
    """

    def __init__(self, offload_to_cpu: bool = False):
        self._entries: dict[UuidKey, tuple[torch.Tensor, ...]] = {}
        self._offload = offload_to_cpu
        self.peak_bytes = 0

    def discard(self, uuids: UuidKey) -> None:
        """Drop every entry holding one of these conds. Called before an anchor's full forward, so the stale
        cache does not sit in memory next to the full step's activations (it would raise the peak)."""
        for key in [k for k in self._entries if set(k) & set(uuids)]:
            del self._entries[key]

    def put(self, uuids: UuidKey, tensors: tuple[torch.Tensor, ...]) -> None:
        if self._offload:
            tensors = tuple(_copy_to_host(t) for t in tensors)
        self.discard(uuids)
        self._entries[uuids] = tensors
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def get(self, uuids: UuidKey, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        tensors = self._entries.get(uuids)
        if tensors is None:
            tensors = self._gather(uuids)
            if tensors is None:
                return None
        if self._offload:
            tensors = tuple(t.to(device, non_blocking=True) for t in tensors)
        return tensors

    def _gather(self, uuids: UuidKey) -> tuple[torch.Tensor, ...] | None:
        rows = []
        for uuid in uuids:
            for key, tensors in self._entries.items():
                if uuid in key:
                    per_cond = tensors[0].shape[0] // len(key)
                    start = key.index(uuid) * per_cond
                    rows.append(tuple(t[start:start + per_cond] for t in tensors))
                    break
            else:
                return None
        return tuple(torch.cat(parts, dim=0) for parts in zip(*rows))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self._entries.values() for t in ts)


def _extrapolate(stored: tuple[torch.Tensor, ...], time: torch.Tensor) -> torch.Tensor:
    """u(t) = u_a + (t - t_a) (u_a - u_b) / (t_a - t_b) from the last anchor a and the one before it, b; fp32."""
    u_a, t_a, u_b, t_b = stored
    shape = (-1, *([1] * (u_a.ndim - 1)))
    slope = (u_a - u_b) / (t_a - t_b).reshape(shape)
    return u_a + (time.float() - t_a).reshape(shape) * slope


def _copy_to_host(tensor: torch.Tensor) -> torch.Tensor:
    """An asynchronous device->host copy into pinned memory: the anchor step does not wait for it, and the copy
    back to the device on a later step is ordered after it on the same stream."""
    if tensor.device.type == "cpu":
        return tensor.clone()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


class StepTimer:
    """Wall time of model calls without a host sync per step: CUDA events are read once, at the end."""

    def __init__(self):
        self._pending: dict[str, list] = {"full": [], "predicted": []}
        self._seconds: dict[str, float] = {"full": 0.0, "predicted": 0.0}

    def start(self, device: torch.device):
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, kind: str, started) -> None:
        if isinstance(started, float):
            self._seconds[kind] += time.perf_counter() - started
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending[kind].append((started, end))

    def seconds(self, kind: str) -> float:
        pending = self._pending[kind]
        if pending:
            pending[-1][1].synchronize()  # one sync per run, when the summary is logged
            self._seconds[kind] += sum(a.elapsed_time(b) for a, b in pending) / 1000.0
            pending.clear()
        return self._seconds[kind]


@dataclass
class RunStats:
    full_steps: set = field(default_factory=set)
    predicted_steps: set = field(default_factory=set)
    full_calls: int = 0
    predicted_calls: int = 0
    predictor_bytes: int = 0
    timer: StepTimer = field(default_factory=StepTimer)


class DisCaRun:
    """One sampling run of `total_steps` sampler steps."""

    def __init__(self, config: DisCaConfig, total_steps: int, predictor: torch.nn.Module | None = None):
        self.config = config
        self.total_steps = total_steps
        self.anchors = config.schedule.anchor_steps(total_steps)
        lists = getattr(predictor, "trained_only_on_lists", None)
        if lists and config.mode == MODE_PREDICTOR and tuple(sorted(self.anchors)) not in lists:
            log.warning("DisCa: the predictor was trained only for the anchor lists %s, and this run's anchors %s are "
                        "none of them: its quality here is untested. Serve one of those lists, or use a predictor "
                        "trained on interval schedules (the official ones are).",
                        [list(steps) for steps in lists], sorted(self.anchors))
        self.current_step = 0  # advanced by the sampler's own end-of-step report, never by counting model calls
        self.cache = CacheStore(offload_to_cpu=config.cache_device == CACHE_ON_CPU)
        self.stats = RunStats(predictor_bytes=predictor_bytes(predictor) if predictor is not None else 0)
        self._signature = None
        self._evaluated: set[tuple[int, object]] = set()

    def step_finished(self, step: int) -> None:
        """The sampler reports that its step `step` is done (k-diffusion's callback `i`)."""
        self.current_step = step + 1

    def register_call(self, uuids: tuple) -> int:
        """The step of a model call. Each cond may be evaluated once per step: a second evaluation means a
        multi-stage sampler (heun, dpm_2, ...) or one that does not report its steps."""
        step = self.current_step
        if step >= self.total_steps:
            raise DisCaRuntimeError(f"DisCa: model called after the last of {self.total_steps} steps; use 'euler'")
        seen = {(step, uuid) for uuid in uuids}
        if seen & self._evaluated:
            # Multi-evaluation samplers report a step's end after its first model call and make the second one
            # afterwards, so that second call is counted in the next step: the step that evaluated twice is the
            # one before (step 0 for a sampler that reports no steps at all).
            raise DisCaRuntimeError(
                f"DisCa: the sampler evaluated the model a second time in step {max(step - 1, 0)} for the same "
                "conditioning; samplers with several model calls per step (heun, dpm_2, ...) or that do not report "
                "their steps break the anchor/predicted schedule. Use 'euler'."
            )
        self._evaluated |= seen
        return step

    def is_anchor(self, step: int) -> bool:
        return step in self.anchors

    def call(self, uuids: UuidKey, x: torch.Tensor, time: torch.Tensor, full_step: Callable, cached_step: Callable):
        """One model call of the run, the same for every host: a full step on anchors (and wherever nothing is
        cached), else the mode's cached step.

        x: the call's input (only its device, dtype and shape are read); time: [B] timesteps, any linear function of
        sigma (Taylor extrapolates in it). `full_step(capture)` runs the full model and returns (output, the last
        block's hidden tokens as a tuple, or None when `capture` is False); `cached_step(hidden)` finishes a step from
        stored hidden tokens (hidden-state modes only). Returns the step's output.
        """
        self.check_signature(x)
        step = self.register_call(uuids)
        stored = None if self.is_anchor(step) else self.cache.get(uuids, x.device)
        if stored is None:
            if not self.is_anchor(step):
                log.warning("DisCa: no cache for step %d (conds %s); running the full model", step, uuids)
            return self._full_step(step, uuids, x, time, full_step)
        started = self.stats.timer.start(x.device)
        mode = self.config.mode
        if mode in HIDDEN_STATE_MODES:
            out = cached_step(stored)
        elif mode == MODE_REUSE_OUTPUT or len(stored) == 2:  # Taylor with one anchor so far: reuse it
            out = stored[0]
        else:
            out = _extrapolate(stored, time)
        self.stats.timer.stop("predicted", started)
        self.stats.predicted_steps.add(step)
        self.stats.predicted_calls += 1
        return out

    def _full_step(self, step: int, uuids: UuidKey, x: torch.Tensor, time: torch.Tensor, full_step: Callable):
        mode = self.config.mode
        previous = self.cache.get(uuids, x.device) if mode == MODE_TAYLOR else None
        self.cache.discard(uuids)  # before the forward: the stale cache must not raise the step's peak memory
        started = self.stats.timer.start(x.device)
        out, hidden = full_step(mode in HIDDEN_STATE_MODES)
        if mode in HIDDEN_STATE_MODES:
            self.cache.put(uuids, hidden)
        elif mode == MODE_REUSE_OUTPUT:
            self.cache.put(uuids, (out.detach().clone(),))
        else:  # Taylor keeps (output, time) of the last two anchors, in fp32
            latest = (out.detach().float(), time.detach().float().clone())
            self.cache.put(uuids, latest + (previous[:2] if previous is not None else ()))
        self.stats.timer.stop("full", started)
        self.stats.full_steps.add(step)
        self.stats.full_calls += 1
        return out

    def check_signature(self, x: torch.Tensor) -> None:
        """A change of device, dtype or latent shape within a run invalidates the cache (EasyCache does the same)."""
        signature = (x.device, x.dtype, tuple(x.shape[1:]))
        if self._signature is not None and signature != self._signature:
            log.warning("DisCa: input changed from %s to %s mid-run; dropping the cache", self._signature, signature)
            self.cache = CacheStore(offload_to_cpu=self.config.cache_device == CACHE_ON_CPU)
        self._signature = signature

    def summary(self) -> str:
        stats = self.stats
        n_full, n_pred = len(stats.full_steps), len(stats.predicted_steps)
        t_full, t_pred = stats.timer.seconds("full"), stats.timer.seconds("predicted")
        per_full = t_full / n_full if n_full else 0.0
        per_pred = t_pred / n_pred if n_pred else 0.0
        # DiT-time speedup against running the full model on every step of this run
        spent = t_full + t_pred
        speedup = (per_full * (n_full + n_pred) / spent) if spent > 0 else 1.0
        ratio = f", {100 * per_pred / per_full:.1f}% of full" if per_full > 0 and n_pred else ""
        return (
            f"DisCa [{self.config.schedule.name}, {self.config.mode}]: {n_full} full + {n_pred} predicted of "
            f"{self.total_steps} steps ({stats.full_calls} + {stats.predicted_calls} model calls); "
            f"full {t_full:.3f} s ({per_full:.3f} s/step), predicted {t_pred:.3f} s ({per_pred:.3f} s/step{ratio}); "
            f"est. {speedup:.2f}x DiT speedup vs all-full; cache {self.cache.peak_bytes / 2**20:.1f} MiB, "
            f"predictor {stats.predictor_bytes / 2**20:.1f} MiB"
        )
