"""The DisCa apply node and the matching sigma schedules."""

from __future__ import annotations

from comfy_api.latest import io

from ..disca.hosts import comfyui as host
from ..disca.runtime import CACHE_DEVICES, MODES, DisCaConfig
from ..disca.schedules import PRESETS, AnchorSchedule, flow_sigmas, parse_step_list
from .loaders import DisCaPredictor

SCHEDULE_INTERVAL = "interval"
SCHEDULE_STEP_LIST = "step_list"
SIGMA_PRESETS = [name for name, preset in PRESETS.items() if preset.steps is not None]
SIGMAS_CUSTOM = "custom"
SCHEDULE_CHOICES = [*PRESETS, SCHEDULE_INTERVAL, SCHEDULE_STEP_LIST]
PREDICTOR_ON_DEVICE = "with_model"
PREDICTOR_CPU_OFFLOAD = "cpu_offload"


def build_schedule(schedule: dict) -> AnchorSchedule:
    """The anchor schedule from DisCa Apply's `schedule` input: {"schedule": choice, and that choice's own inputs}."""
    choice = schedule["schedule"]
    if choice == SCHEDULE_INTERVAL:
        return AnchorSchedule(interval=schedule[SCHEDULE_INTERVAL], name=f"N{schedule[SCHEDULE_INTERVAL]}")
    if choice == SCHEDULE_STEP_LIST:
        return AnchorSchedule(anchors=parse_step_list(schedule[SCHEDULE_STEP_LIST]), name="step_list")
    return AnchorSchedule.from_preset(choice)


class DisCaApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaApply",
            display_name="DisCa Apply",
            category="DisCa",
            description="Patches a HunyuanVideo model so that sampling runs the full DiT on anchor steps and the "
                        "DisCa predictor on the others (a learned cache of the last layer's tokens). Sample with "
                        "'euler' on the DisCa Sigmas schedule.",
            inputs=[
                io.Model.Input("model", tooltip="A distilled HunyuanVideo 1.0 or 1.5 model."),
                DisCaPredictor.Input("predictor", optional=True,
                                     tooltip="The DisCa predictor for this base model. Only the predictor mode needs it."),
                io.DynamicCombo.Input("schedule", tooltip=(
                    "Which steps run the full model. Official lists are tied to their step count (t2v: 20 steps, "
                    "i2v: 8); N2..N4 and 'interval' run the full model every Nth step of any count; 'step_list' "
                    "takes your own anchor steps."), options=[
                    *(io.DynamicCombo.Option(name, []) for name in PRESETS),
                    io.DynamicCombo.Option(SCHEDULE_INTERVAL, [
                        io.Int.Input(SCHEDULE_INTERVAL, default=4, min=1, max=100,
                                     tooltip="Full model every N steps. N=1 is plain sampling (bit-identical to no "
                                             "DisCa); larger N is faster and less faithful."),
                    ]),
                    io.DynamicCombo.Option(SCHEDULE_STEP_LIST, [
                        io.String.Input(SCHEDULE_STEP_LIST, default="0 1 2 5 9 13 17 19",
                                        tooltip="Anchor step indices, increasing, starting at 0 (this one is the "
                                                "official 8 of 20)."),
                    ]),
                ]),
                io.Combo.Input("mode", options=list(MODES), default=MODES[0],
                               tooltip="predictor: DisCa. Training-free caches, for A/B comparisons: reuse_output repeats "
                                       "the last anchor's output; reuse_cache runs the anchor's last hidden state "
                                       "through this step's final layer (an untrained predictor); taylor "
                                       "extrapolates the output linearly in time from the last two anchors."),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default=CACHE_DEVICES[0],
                               tooltip="Where the cache lives between steps. cpu saves its size in VRAM "
                                       "(hundreds of MB at 720p) at the cost of two copies per predicted step."),
                io.Combo.Input("predictor_device", options=[PREDICTOR_ON_DEVICE, PREDICTOR_CPU_OFFLOAD],
                               default=PREDICTOR_ON_DEVICE,
                               tooltip="with_model: ComfyUI loads the predictor with the model. cpu_offload: "
                                       "weights stay in RAM and stream to the GPU on each predicted step (low VRAM)."),
                io.Combo.Input("predictor_dtype", options=list(host.PREDICTOR_DTYPES), default="auto",
                               tooltip="The predictor's compute dtype. auto: the model's, except beside an fp16 model "
                                       "(ComfyUI's choice for HunyuanVideo-1.5 on most GPUs), where it is bf16, the "
                                       "dtype the official predictors were trained in, with fp32's range; casts happen "
                                       "at its edges. fp16 did not overflow on a random full-size model and is a "
                                       "little closer to fp32, but trained weights' ranges were not measurable."),
            ],
            outputs=[io.Model.Output(tooltip="The model with DisCa attached.")],
        )

    @classmethod
    def execute(cls, model, mode: str, cache_device: str, predictor_device: str, predictor_dtype: str,
                schedule: dict | None = None, predictor=None) -> io.NodeOutput:
        # The schedule is checked here, not in validate_inputs: up to ComfyUI 0.33 validate_inputs gets the inputs
        # inside a DynamicCombo only through **kwargs, which would also switch off ComfyUI's own checks of every other
        # input (0.38 also passes them when the combo's name is a declared argument), and ComfyUI drops a DynamicCombo
        # whose value is none of its options (an old or hand-edited workflow).
        if schedule is None:
            raise ValueError(f"DisCa Apply: 'schedule' must be one of {SCHEDULE_CHOICES}; this workflow gives "
                             "another value (saved with another version of the pack?). Pick one in the node.")
        config = DisCaConfig(build_schedule(schedule), mode=mode, cache_device=cache_device)
        if predictor is not None:
            host.check_base_fingerprint(model, predictor)
        patched = host.apply_disca(model, config, predictor.spec if predictor else None,
                                   predictor.state_dict if predictor else None,
                                   offload_predictor=predictor_device == PREDICTOR_CPU_OFFLOAD, dtype=predictor_dtype,
                                   trained_only_on_lists=predictor.trained_only_on_lists if predictor else None)
        return io.NodeOutput(patched)


class DisCaSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaSigmas",
            display_name="DisCa Sigmas",
            category="DisCa",
            description="The sigma schedule the official DisCa scripts sample with: steps evenly spaced in t, "
                        "flow-shifted. A preset fixes steps and shift; 'custom' uses the inputs below.",
            inputs=[
                io.DynamicCombo.Input("preset", tooltip=(
                    "Match the DisCa Apply schedule: t2v presets give 20 steps at shift 5, i2v gives 8 steps at "
                    "shift 7; 'custom' takes your own steps and shift."), options=[
                    *(io.DynamicCombo.Option(name, []) for name in SIGMA_PRESETS),
                    io.DynamicCombo.Option(SIGMAS_CUSTOM, [
                        io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Number of sampler steps."),
                        io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.01,
                                       tooltip="Flow shift; higher spends more steps at high noise."),
                    ]),
                ]),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, preset: dict | None = None) -> io.NodeOutput:
        if preset is None:  # ComfyUI drops a DynamicCombo whose value is none of its options
            raise ValueError(f"DisCa Sigmas: 'preset' must be one of {[*SIGMA_PRESETS, SIGMAS_CUSTOM]}; this workflow "
                             "gives another value (saved with another version of the pack?). Pick one in the node.")
        choice = preset["preset"]
        if choice == SIGMAS_CUSTOM:
            return io.NodeOutput(flow_sigmas(preset["steps"], preset["shift"]))
        return io.NodeOutput(flow_sigmas(PRESETS[choice].steps, PRESETS[choice].shift))
