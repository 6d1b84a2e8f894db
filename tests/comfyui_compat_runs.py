"""The runs each row of the compatibility matrix (tests/test_comfyui_compat.py) compares: one model, sampled stock,
with DisCa on every step, and with DisCa N2, on the tiny models' inputs."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from comfyui_disca import add_probe, apply, conditioning, noise
from disca.schedules import flow_sigmas

STEPS = 4


@dataclass
class Runs:
    stock: torch.Tensor  # the model sampled without DisCa
    every_step: torch.Tensor  # DisCa with every step an anchor: must equal `stock` bit for bit
    n2: torch.Tensor  # DisCa interval 2: anchors 0, 2, predicted 1, 3
    blocks: list[int]  # DiT blocks run per model call of the N2 run (0 on predicted steps)
    outputs: list[torch.Tensor]  # the model's output per call of the N2 run
    depth: int  # DiT blocks per full forward


def disca_runs(comfyui, model, predictor, arch: str) -> Runs:
    sigmas, positive, x = flow_sigmas(STEPS, 5.0), conditioning(arch, 1), noise(arch, 0)
    calls: list = []
    patched = apply(comfyui, model, predictor, interval=2)
    add_probe(comfyui, patched, calls)
    n2 = comfyui.sample(patched, x, sigmas, positive)
    module = model.model.diffusion_model
    return Runs(stock=comfyui.sample(model, x, sigmas, positive),
                every_step=comfyui.sample(apply(comfyui, model, predictor, interval=1), x, sigmas, positive),
                n2=n2, blocks=[c["blocks"] for c in calls], outputs=[c["out"] for c in calls],
                depth=len(module.double_blocks) + len(module.single_blocks))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_disca_on(runs: Runs, name: str) -> None:
    """What must hold for DisCa on any loader's model: every-step-anchor is stock bit for bit, N2 is finite and runs
    no DiT block on its predicted steps."""
    print(f"{name}: every-step-anchor == stock bit for bit: {torch.equal(runs.every_step, runs.stock)}; "
          f"N2 blocks per call {runs.blocks}")
    assert torch.equal(runs.every_step, runs.stock), f"{name}: every-step-anchor DisCa differs from stock sampling"
    assert runs.blocks == [runs.depth, 0, runs.depth, 0], runs.blocks
    assert torch.isfinite(runs.n2).all()


# --------------------------------------------------------------------------------------------------
# ComfyUI-GGUF


def gguf_pack_path() -> Path:
    """Where the ComfyUI-GGUF pack is: $DISCA_GGUF_PACK, else ComfyUI's custom_nodes/ComfyUI-GGUF."""
    configured = os.environ.get("DISCA_GGUF_PACK")
    if configured:
        return Path(configured)
    return Path(os.environ.get("COMFYUI_PATH", ""), "custom_nodes", "ComfyUI-GGUF")


def gguf_skip_reason() -> str | None:
    pack = gguf_pack_path()
    if not (pack / "nodes.py").is_file():
        return (f"ComfyUI-GGUF pack not found at {pack}: set DISCA_GGUF_PACK to a checkout of "
                "github.com/city96/ComfyUI-GGUF (README: compatibility matrix)")
    if importlib.util.find_spec("gguf") is None:
        return "the 'gguf' module is missing from this python: pip install gguf"
    return None


def load_gguf_pack(comfyui):
    """ComfyUI-GGUF's nodes loaded into the in-process ComfyUI, as ComfyUI loads any custom node (once)."""
    if "UnetLoaderGGUF" not in comfyui.nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(comfyui.nodes.load_custom_node(str(gguf_pack_path()))):
            raise RuntimeError(f"ComfyUI-GGUF at {gguf_pack_path()} failed to import; see the log above")
    return comfyui.nodes.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]
