"""Loader nodes: the distilled HunyuanVideo DiT and the DisCa predictor."""

from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..disca.formats import load_predictor_file
from ..disca.hosts import comfyui as host

log = logging.getLogger("disca")

PREDICTOR_FOLDER = "disca"
DisCaPredictor = io.Custom("DISCA_PREDICTOR")


class DisCaLoadDistilledModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaLoadDistilledModel",
            display_name="DisCa Load Distilled Model",
            category="DisCa",
            description="Loads a CFG/MeanFlow-distilled HunyuanVideo 1.0 or 1.5 DiT (Tencent key layout, .safetensors) "
                        "from models/diffusion_models through ComfyUI's own loader, and reports what it found.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The distilled DiT, e.g. hyvideo10_t2v_restricted_meanflow_540p.safetensors."),
                io.Combo.Input("weight_dtype", options=list(host.WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights. 'default' lets ComfyUI pick: bf16 for "
                                       "HunyuanVideo-1.0, fp16 for 1.5 on GPUs that run fp16 well (bf16 or fp32 "
                                       "elsewhere; fp32 on CPU). fp8 halves memory at some quality cost."),
                io.Boolean.Input("allow_non_distilled", default=False,
                                 tooltip="Off: refuse a model that is not MeanFlow-distilled (time_r_in) or, for "
                                         "HunyuanVideo-1.0, not guidance-distilled (guidance_in). On: load any "
                                         "HunyuanVideo DiT; DisCa also runs on plain flow models, e.g. for comparisons."),
            ],
            outputs=[
                io.Model.Output(tooltip="The distilled model."),
                io.String.Output(display_name="report", tooltip="What the loader found in the file."),
            ],
        )

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str, allow_non_distilled: bool) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        model, spec = host.load_distilled_model(path, weight_dtype, allow_non_distilled)
        report = f"{unet_name}: {spec.describe()}"
        log.info("DisCa: loaded %s", report)
        return io.NodeOutput(model, report)


class DisCaLoadPredictor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaLoadPredictor",
            display_name="DisCa Load Predictor",
            category="DisCa",
            description="Loads a DisCa predictor from models/disca: the official Tencent files unchanged, or files "
                        "written by this pack's trainer.",
            inputs=[
                io.Combo.Input("predictor_name", options=folder_paths.get_filename_list(PREDICTOR_FOLDER),
                               tooltip="e.g. hyvideo10_t2v_predictor_540p.safetensors or hyvideo15_i2v_predictor_480p.safetensors."),
            ],
            outputs=[DisCaPredictor.Output(display_name="predictor")],
        )

    @classmethod
    def validate_inputs(cls, predictor_name: str) -> bool | str:
        if folder_paths.get_full_path(PREDICTOR_FOLDER, predictor_name) is None:
            return f"predictor file '{predictor_name}' not found in models/{PREDICTOR_FOLDER}"
        return True

    @classmethod
    def execute(cls, predictor_name: str) -> io.NodeOutput:
        predictor = load_predictor_file(folder_paths.get_full_path_or_raise(PREDICTOR_FOLDER, predictor_name))
        log.info("DisCa: loaded predictor %s: %s", predictor_name, predictor.spec)
        return io.NodeOutput(predictor)
