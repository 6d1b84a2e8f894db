"""Run ComfyUI in-process (CPU) with this pack loaded, for the integration tests.

The tests run under the ComfyUI testbed's python (`../shared/tools/comfyui-testbed.sh` prints COMFYUI_PATH and
COMFYUI_PYTHON); anywhere else they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def comfyui_skip_reason() -> str | None:
    if not COMFYUI_PATH:
        return ("COMFYUI_PATH is not set: ComfyUI integration tests need the testbed "
                "(eval \"$(../shared/tools/comfyui-testbed.sh <ComfyUI snapshot>)\", see README)")
    if not Path(COMFYUI_PATH, "comfy").is_dir():
        return f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no comfy/ folder)"
    try:
        import aiohttp  # noqa: F401  (one of ComfyUI's requirements: the wrong python lacks it)
    except ImportError:
        return f"this python ({sys.executable}) lacks ComfyUI's requirements; run the tests with $COMFYUI_PYTHON"
    return None


requires_comfyui = pytest.mark.skipif(comfyui_skip_reason() is not None, reason=comfyui_skip_reason() or "")


class ComfyUI:
    """Handles to ComfyUI's modules and the pack's, after `start`."""

    def __init__(self, models_dir: Path):
        sys.path.insert(0, COMFYUI_PATH)
        sys.argv = [sys.argv[0], "--cpu"]
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.model_management  # noqa: F401  (parses the args above)
        import comfy.sample
        import comfy.samplers
        import folder_paths
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        for folder in ("diffusion_models", "disca"):
            (models_dir / folder).mkdir(parents=True, exist_ok=True)
        self.models_dir = models_dir
        if not asyncio.run(nodes.load_custom_node(str(REPO_ROOT))):
            raise RuntimeError("the DisCa pack failed to import into ComfyUI; see the log above")
        for folder in ("diffusion_models", "disca"):
            folder_paths.add_model_folder_path(folder, str(models_dir / folder), is_default=True)
        self.nodes = nodes
        self.comfy = comfy
        self.folder_paths = folder_paths
        self.pack = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
        self.host = sys.modules[self.pack.__name__ + ".disca.hosts.comfyui"]

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def run_node(self, node_id: str, **inputs):
        return self.node(node_id).execute(**inputs).result

    def sample(self, model, noise, sigmas, positive, negative=None, cfg=1.0, latent=None, callback=None):
        """Stock ComfyUI sampling with 'euler' (what SamplerCustom does)."""
        import torch

        sampler = self.comfy.samplers.sampler_object("euler")
        latent = torch.zeros_like(noise) if latent is None else latent
        negative = positive if negative is None else negative
        return self.comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                               callback=callback, disable_pbar=True, seed=0)
