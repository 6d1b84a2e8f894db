"""Test-only ComfyUI node pack: stand-in loaders for the weights a CPU test machine cannot have.

The shipped workflows load HunyuanVideo's text encoders (multi-GB, and the snapshot lacks the llama tokenizer
blob), its VAE and a SigLIP vision encoder. A workflow test swaps only those loader nodes' class_type for the
stubs below, with the same input names, so that every other node runs stock: CLIPTextEncode calls
`tokenize` / `encode_from_tokens_scheduled`, VAEDecode(Tiled) and HunyuanVideo15ImageToVideo call
`decode` / `decode_tiled` / `encode` and the compression getters, CLIPVisionEncode calls `encode_image`.
The tensors they produce have the shapes the tiny DiTs in tests/tiny_models.py take; test_comfyui_workflows.py
asserts the constants below match that file (this pack is imported by ComfyUI, without tests/ on sys.path).

Not part of the DisCa pack: it lives under tests/ and is only linked into a test server's custom_nodes.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from comfy_api.latest import ComfyExtension, io

import comfy.clip_vision
import comfy.model_management

TEXT_DIM = 32  # tests/tiny_models.py TEXT_DIM
POOLED_DIM = 768  # tests/tiny_models.py POOLED_DIM
VISION_DIM = 1152  # tests/tiny_models.py VISION_DIM
TEXT_TOKENS = 6
VISION_TOKENS = 9  # SigLIP 384/14 gives 729; a square number keeps the stand-in honest

CLIP_TYPES = {"hunyuan_video": True, "hunyuan_video_15": False}  # type -> has a pooled CLIP-L vector
# VAE file -> (latent channels, spatial compression); temporal compression is 4 for both
VAES = {
    "hunyuan_video_vae_bf16.safetensors": (16, 8),
    "hunyuanvideo15_vae_fp16.safetensors": (32, 16),
}
TEMPORAL_COMPRESSION = 4


def _generator(text: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))


class StubClip:
    """Encodes a prompt to a random [1, TEXT_TOKENS, TEXT_DIM] context seeded by the prompt text."""

    def __init__(self, pooled: bool):
        self.pooled = pooled

    def tokenize(self, text: str) -> dict:
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens: dict) -> list:
        generator = _generator(tokens["text"])
        context = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=generator)
        pooled = torch.randn(1, POOLED_DIM, generator=generator) if self.pooled else None
        return [[context, {"pooled_output": pooled}]]


class StubVae:
    """A deterministic, shape-faithful video VAE: latent [B, C, T, h, w] <-> frames [B, 1 + 4(T-1), h*s, w*s, 3]."""

    def __init__(self, latent_channels: int, spatial: int):
        self.latent_channels = latent_channels
        self.spatial = spatial

    def spacial_compression_decode(self) -> int:
        return self.spatial

    def temporal_compression_decode(self) -> int:
        return TEMPORAL_COMPRESSION

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.shape[1] != self.latent_channels:
            raise ValueError(f"stub VAE takes {self.latent_channels}-channel latents, got shape {tuple(latent.shape)}")
        frames = 1 + TEMPORAL_COMPRESSION * (latent.shape[2] - 1)
        size = (frames, latent.shape[3] * self.spatial, latent.shape[4] * self.spatial)
        pixels = F.interpolate(torch.sigmoid(latent[:, :3].float()), size=size, mode="nearest")
        return pixels.movedim(1, -1).to(comfy.model_management.intermediate_device())

    def decode_tiled(self, samples: torch.Tensor, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.decode(samples)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, H, W, 3] (N frames) -> [1, C, 1 + (N-1)//4, H/s, W/s]."""
        frames = 1 + (pixels.shape[0] - 1) // TEMPORAL_COMPRESSION
        video = pixels.movedim(-1, 0)[None].float()  # [1, 3, N, H, W]
        size = (frames, pixels.shape[1] // self.spatial, pixels.shape[2] // self.spatial)
        pooled = F.interpolate(video, size=size, mode="area").mean(dim=1, keepdim=True)
        return pooled.expand(-1, self.latent_channels, -1, -1, -1).contiguous()


class StubClipVision:
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> comfy.clip_vision.Output:
        """image [B, H, W, 3] -> last_hidden_state [B, VISION_TOKENS, VISION_DIM] derived from the pixels."""
        side = int(VISION_TOKENS ** 0.5)
        patches = F.adaptive_avg_pool2d(image.movedim(-1, 1).float(), side).flatten(2).transpose(1, 2)  # [B, T, 3]
        hidden = patches.repeat(1, 1, VISION_DIM // 3)
        outputs = comfy.clip_vision.Output()
        outputs["last_hidden_state"] = hidden
        outputs["penultimate_hidden_states"] = hidden
        outputs["image_embeds"] = hidden.mean(dim=1)
        return outputs


class DisCaTestStubDualCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaTestStubDualCLIPLoader",
            category="_for_testing",
            description="Test stand-in for DualCLIPLoader (same inputs); no weights are read.",
            inputs=[
                io.String.Input("clip_name1"),
                io.String.Input("clip_name2"),
                io.Combo.Input("type", options=list(CLIP_TYPES)),
                io.Combo.Input("device", options=["default", "cpu"], optional=True),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> io.NodeOutput:
        return io.NodeOutput(StubClip(pooled=CLIP_TYPES[type]))


class DisCaTestStubVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaTestStubVAELoader",
            category="_for_testing",
            description="Test stand-in for VAELoader (same input); no weights are read.",
            inputs=[io.Combo.Input("vae_name", options=list(VAES))],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        return io.NodeOutput(StubVae(*VAES[vae_name]))


class DisCaTestStubCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DisCaTestStubCLIPVisionLoader",
            category="_for_testing",
            description="Test stand-in for CLIPVisionLoader (same input); no weights are read.",
            inputs=[io.String.Input("clip_name")],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        return io.NodeOutput(StubClipVision())


class StubExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DisCaTestStubDualCLIPLoader, DisCaTestStubVAELoader, DisCaTestStubCLIPVisionLoader]


async def comfy_entrypoint() -> StubExtension:
    return StubExtension()
