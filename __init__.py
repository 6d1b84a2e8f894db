"""ComfyUI-DisCa: DisCa (learned feature cache + distillation) for HunyuanVideo 1.0 and 1.5 in ComfyUI.

ComfyUI imports this folder as a custom node pack and calls `comfy_entrypoint()`. pytest also imports it,
as the package above tests/, where ComfyUI's modules do not exist: the nodes are only wired up inside ComfyUI.
"""

import importlib.util

if importlib.util.find_spec("folder_paths") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401
