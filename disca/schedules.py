"""Anchor schedules (which sampler steps run the full model) and the matching sigma schedules.

A schedule is a set of anchor step indices over the sampler's steps; every other step is predicted from
the cache of the preceding anchor. Step 0 is always an anchor (there is no cache before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ScheduleError(ValueError):
    """A step list, interval or preset that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    description: str
    steps: int | None  # the step count the list was tuned for; None for intervals (any count)
    shift: float | None  # the flow shift the official scripts sample with
    anchors: tuple[int, ...] | None = None
    interval: int | None = None


# Official lists from Tencent-Hunyuan/DisCa (infer_disca.sh): T2V on the 20-step R-MeanFlow HunyuanVideo-1.0
# (--flow-shift 5.0), I2V on the 8-step HunyuanVideo-1.5 480p step-distilled model (shift 7.0 in
# HunyuanVideo-1.5's SCHEDULER_CONFIGS["480p_i2v_step_distilled"]).
PRESETS: dict[str, Preset] = {
    "t2v_official_10of20": Preset("HunyuanVideo-1.0 T2V, 10 anchors in 20 steps (official default)", 20, 5.0,
                                  anchors=(0, 1, 2, 5, 9, 11, 13, 15, 17, 19)),
    "t2v_official_8of20": Preset("HunyuanVideo-1.0 T2V, 8 anchors in 20 steps (official, faster)", 20, 5.0,
                                 anchors=(0, 1, 2, 5, 9, 13, 17, 19)),
    "i2v_official_4of8": Preset("HunyuanVideo-1.5 480p I2V step-distilled, 4 anchors in 8 steps (official)", 8, 7.0,
                                anchors=(0, 2, 4, 7)),
    "N2": Preset("full model every 2nd step", None, None, interval=2),
    "N3": Preset("full model every 3rd step", None, None, interval=3),
    "N4": Preset("full model every 4th step (paper's 11.8x row)", None, None, interval=4),
}


def parse_step_list(text: str) -> tuple[int, ...]:
    """'0 1 2 5, 9' -> (0, 1, 2, 5, 9). Must be non-empty, start at 0, strictly increasing. No silent fixes."""
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise ScheduleError("step_list is empty; give anchor step indices such as '0 1 2 5 9 13 17 19'")
    try:
        steps = tuple(int(t) for t in tokens)
    except ValueError:
        raise ScheduleError(f"step_list {text!r} must hold integers separated by spaces or commas") from None
    return validate_anchor_steps(steps)


def validate_anchor_steps(steps: tuple[int, ...], total_steps: int | None = None) -> tuple[int, ...]:
    if not steps:
        raise ScheduleError("step_list is empty; it needs at least step 0")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ScheduleError(f"step_list {list(steps)} must be strictly increasing with no duplicates, e.g. {sorted(set(steps))}")
    if steps[0] != 0:
        raise ScheduleError(f"step_list {list(steps)} must start with step 0: the first step has no cache to predict from")
    if total_steps is not None and steps[-1] >= total_steps:
        raise ScheduleError(
            f"step_list {list(steps)} has step {steps[-1]} but the sampler runs only {total_steps} steps "
            f"(indices 0..{total_steps - 1}); shorten the list or sample with more steps"
        )
    return steps


@dataclass(frozen=True)
class AnchorSchedule:
    """Either an explicit step list (optionally tied to a step count) or an interval N."""

    anchors: tuple[int, ...] | None = None
    interval: int | None = None
    steps: int | None = None  # the step count an explicit list requires; None = any
    name: str = "custom"

    def __post_init__(self):
        if (self.anchors is None) == (self.interval is None):
            raise ScheduleError("give exactly one of an anchor step list or an interval N")
        if self.interval is not None and self.interval < 1:
            raise ScheduleError(f"interval N must be >= 1 (N=1 runs the full model every step), got {self.interval}")
        if self.anchors is not None:
            validate_anchor_steps(self.anchors, self.steps)

    @classmethod
    def from_preset(cls, name: str) -> "AnchorSchedule":
        if name not in PRESETS:
            raise ScheduleError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[name]
        return cls(anchors=preset.anchors, interval=preset.interval, steps=preset.steps, name=name)

    @classmethod
    def parse(cls, text: str) -> "AnchorSchedule":
        """A preset's name (`t2v_official_8of20`, `N4`, ...) or a step list ("0 1 2 5 9 13 17 19")."""
        if text in PRESETS:
            return cls.from_preset(text)
        try:
            return cls(anchors=parse_step_list(text), name=text)
        except ScheduleError as error:
            raise ScheduleError(f"{text!r} is neither a preset ({sorted(PRESETS)}) nor a valid step list: {error}") \
                from None

    def anchor_steps(self, total_steps: int) -> frozenset[int]:
        """The anchor indices for a run of `total_steps` sampler steps; errors name the fix."""
        if total_steps < 1:
            raise ScheduleError(f"the sampler has no steps (got {total_steps} sigmas intervals)")
        if self.interval is not None:
            return frozenset(range(0, total_steps, self.interval))
        if self.steps is not None and self.steps != total_steps:
            raise ScheduleError(
                f"schedule {self.name!r} is for {self.steps} steps, but the sampler runs {total_steps}; "
                f"sample with {self.steps} steps (DisCa Sigmas node with the same preset) or use an interval"
            )
        validate_anchor_steps(self.anchors, total_steps)
        return frozenset(self.anchors)

    def describe(self, total_steps: int) -> str:
        anchors = sorted(self.anchor_steps(total_steps))
        return f"{self.name}: anchors {anchors} of {total_steps} steps"


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The official FlowMatchDiscreteScheduler schedule: sigma = shift*s / (1 + (shift-1)*s), s = linspace(1, 0, steps+1).

    Returns a float32 CPU tensor of steps+1 descending sigmas ending in 0 (ComfyUI's SIGMAS).
    """
    if steps < 1:
        raise ScheduleError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ScheduleError(f"shift must be > 0, got {shift}")
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).to(torch.float32)
