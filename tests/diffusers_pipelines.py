"""Tiny real diffusers HunyuanVideo pipelines with a MeanFlow DiT and a predictor file, for the diffusers tests."""

import torch
from PIL import Image

from disca.formats import ARCH_HV10, ARCH_HV15, save_safetensors
from disca.hosts.diffusers import predictor_from_dit
from disca.hosts.diffusers_hooks import DisCaHookConfig
from training.tiny import tiny_host, write_tiny_pipeline

STEPS = 4
SHIFT = {ARCH_HV10: 5.0, ARCH_HV15: 7.0}


def _randomize(module, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data.copy_(torch.randn(p.shape, generator=generator) * 0.05)


class Case:
    """A tiny pipeline of `arch` with a MeanFlow DiT (1.0: our time_r_in; 1.5: diffusers' use_meanflow) and a
    predictor file in the official layout."""

    def __init__(self, arch, folder, meanflow=True, heads=1, predictor_name="predictor.safetensors"):
        from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline, HunyuanVideoPipeline
        from diffusers.guiders import ClassifierFreeGuidance

        self.arch = arch
        path = str(folder / "pipeline")
        if not (folder / "pipeline" / "model_index.json").exists():  # ranks of a distributed test share one
            write_tiny_pipeline(path, arch)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT[arch])
        if arch == ARCH_HV10:
            self.host = tiny_host(arch, seed=3, **_heads(heads))
            if meanflow:
                self.host.add_time_r_embedder()
                _randomize(self.host.time_r_in, 4)
            self.pipe = HunyuanVideoPipeline.from_pretrained(path, transformer=self.host.transformer,
                                                             scheduler=scheduler)
        else:
            self.host = tiny_host(arch, seed=3, target_size=16, use_meanflow=meanflow, **_heads(heads))
            if meanflow:
                _randomize(self.host.transformer.time_embed.timestep_embedder_r, 4)
            self.pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(
                path, transformer=self.host.transformer, scheduler=scheduler,
                guider=ClassifierFreeGuidance(guidance_scale=1.0))
        self.pipe.set_progress_bar_config(disable=True)
        predictor = predictor_from_dit(self.host, depth=2, zero_gates=False)
        self.predictor_weights = predictor.official_state_dict()
        self.predictor_file = str(folder / predictor_name)
        save_safetensors(self.predictor_file, self.predictor_weights, {})

    def config(self, schedule, **kwargs):
        return DisCaHookConfig(predictor=self.predictor_file, schedule=schedule, time_r_in=self.host.time_r_in,
                               **kwargs)

    def sample(self, prompt="a red fox runs through snow", **kwargs):
        common = dict(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
        if self.arch == ARCH_HV10:
            return self.pipe(prompt=prompt, height=32, width=32, num_frames=5, guidance_scale=6.0,
                             **common, **kwargs).frames
        image = Image.new("RGB", (16, 16), (200, 30, 30))
        return self.pipe(image=image, prompt=prompt, num_frames=5, **common, **kwargs).frames


def _heads(heads: int) -> dict:
    """The tiny models' 128-wide attention as 1 head or 2 (context parallelism splits heads across ranks)."""
    if heads not in (1, 2):
        raise ValueError(f"heads must be 1 or 2, got {heads}")
    return {} if heads == 1 else dict(num_attention_heads=2, attention_head_dim=64, rope_axes_dim=(16, 24, 24))
