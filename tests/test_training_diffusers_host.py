"""diffusers host: exact key maps, forward parity with diffusers, embedder inits, predictor layout."""

import subprocess
import sys

import pytest
import torch

from disca.formats import (ARCH_HV10, ARCH_HV15, DisCaFormatError, infer_dit_spec, load_predictor_file,
                           normalize_tencent_layout, read_predictor_state_dict, save_safetensors)
from disca.hosts.diffusers import DiffusersPredictor, load_host, predictor_from_dit, rope_axes
from disca.hosts.diffusers_keys import diffusers_to_tencent_dit, tencent_to_diffusers_dit
from tiny_models import official_predictor_state_dict, tencent_dit_state_dict
from training.tiny import TINY_CONFIGS, TINY_LATENT, tiny_conditioning, tiny_host

ARCHES = [ARCH_HV10, ARCH_HV15]


def _inputs(arch, batch=2, seed=5):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, TINY_CONFIGS[arch]["out_channels"], *TINY_LATENT[arch], generator=generator)
    return latents, torch.tensor([0.8, 0.35])[:batch], tiny_conditioning(arch, batch, seed)


def _full_host(arch):
    host = tiny_host(arch, seed=3)
    host.add_time_r_embedder()
    if arch == ARCH_HV15:
        host.add_guidance_embedder()
    torch.manual_seed(4)
    for module in (host.time_r_in, host.guidance_in):  # non-trivial values, so a swapped key cannot hide
        if module is not None:
            for p in module.parameters():
                p.data.normal_()
    return host


@pytest.mark.parametrize("arch", ARCHES)
def test_diffusers_tencent_diffusers_round_trip_is_exact(arch):
    host = _full_host(arch)
    original = host.diffusers_state_dict()
    tencent = diffusers_to_tencent_dit(original, arch)
    assert any(k.startswith("time_r_in.mlp.0") for k in tencent)
    assert "final_layer.adaLN_modulation.1.weight" in tencent
    back = tencent_to_diffusers_dit(tencent, arch)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    spec = infer_dit_spec(tencent)
    assert (spec.arch, spec.meanflow) == (arch, True)
    assert spec.guidance_distilled == (arch == ARCH_HV15 or TINY_CONFIGS[arch]["guidance_embeds"])


def test_final_layer_halves_are_swapped_and_linear1_is_split():
    host = _full_host(ARCH_HV10)
    diffusers = host.diffusers_state_dict()
    tencent = host.tencent_state_dict()
    scale, shift = diffusers["norm_out.linear.weight"].chunk(2)
    assert torch.equal(tencent["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))
    parts = [diffusers[f"single_transformer_blocks.1.{n}.weight"] for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert torch.equal(tencent["single_blocks.1.linear1.weight"], torch.cat(parts))


def test_tencent_layout_written_independently_loads_strictly(tmp_path):
    """tests/tiny_models.py lists the Tencent keys from Tencent's module definitions: our map must consume all of them."""
    state = tencent_dit_state_dict(ARCH_HV10, double_blocks=1, single_blocks=2)
    path = str(tmp_path / "dit.safetensors")
    save_safetensors(path, state, {})
    host = load_host(path)
    assert host.is_meanflow and host.is_guidance_embedded
    exported = host.tencent_state_dict()
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_tencent_file_with_64_wide_heads_loads_with_its_width_and_the_same_output(tmp_path, arch):
    """Small DiTs (DisCa-mini candidates) may use heads narrower than HunyuanVideo's 128: the loader reads the width
    from the q-norm weights and scales the rotary split (8/28/28 for 64), so the file reloads as the model it was."""
    host = tiny_host(arch, seed=3, guidance=False, num_attention_heads=2, attention_head_dim=64, rope_axes_dim=rope_axes(64))
    path = str(tmp_path / "dit.safetensors")
    save_safetensors(path, host.tencent_state_dict(), {})
    loaded = load_host(path)
    config = loaded.transformer.config
    assert (config.num_attention_heads, config.attention_head_dim, tuple(config.rope_axes_dim)) == (2, 64, (8, 28, 28))
    latents, sigma, cond = _inputs(arch)
    with torch.no_grad():
        assert torch.equal(loaded(latents, sigma, cond), host(latents, sigma, cond))
    assert rope_axes(128) == (16, 56, 56)
    with pytest.raises(DisCaFormatError, match="multiple of 16"):
        rope_axes(40)


def test_hv15_split_qkv_layout_maps_to_the_same_weights():
    host = _full_host(ARCH_HV15)
    merged = host.tencent_state_dict()
    split = {}
    for key, value in merged.items():
        if key.startswith("double_blocks.") and "_attn_qkv." in key:
            for part, chunk in zip("qkv", value.chunk(3)):
                split[key.replace("_attn_qkv.", f"_attn_{part}.")] = chunk.clone()
        else:
            split[key] = value
    assert tencent_to_diffusers_dit(split, ARCH_HV15).keys() == host.diffusers_state_dict().keys()
    assert all(torch.equal(normalize_tencent_layout(split)[k], merged[k]) for k in merged)


def test_unknown_keys_are_refused():
    tencent = _full_host(ARCH_HV10).tencent_state_dict()
    tencent["lora_unet_double_blocks_0.alpha"] = torch.ones(1)
    with pytest.raises(DisCaFormatError, match=r"1 keys have no Tencent -> diffusers rule .*lora_unet"):
        tencent_to_diffusers_dit(tencent, ARCH_HV10)


@pytest.mark.parametrize("arch", ARCHES)
def test_host_forward_equals_diffusers_forward_exactly(arch):
    host = tiny_host(arch, seed=1)
    latents, sigma, cond = _inputs(arch)
    guidance = torch.full((2,), 6.0) if host.is_guidance_embedded else None
    ours = host(latents, sigma, cond, guidance=guidance)
    tr = host.transformer
    if arch == ARCH_HV10:
        reference = tr(latents, sigma * 1000, cond["prompt_embeds"], cond["prompt_mask"], cond["pooled_embeds"],
                       guidance=guidance * 1000).sample
    else:
        reference = tr(torch.cat([latents, cond["image_latents"]], 1), sigma * 1000, cond["prompt_embeds"],
                       cond["prompt_mask"], encoder_hidden_states_2=cond["byt5_embeds"],
                       encoder_attention_mask_2=cond["byt5_mask"], image_embeds=cond["image_embeds"]).sample
    assert ours.shape == latents.shape
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("arch", ARCHES)
def test_r_embedder_starts_as_the_flow_model(arch):
    """At init u(x, t, r) is the flow model's v bit for bit for every r, not only r = t (the r-embedder's last linear
    is zero but its first is not, so it still gets gradients; 1.0's averaged time_in is doubled to compensate)."""
    host = tiny_host(arch, seed=2)
    latents, sigma, cond = _inputs(arch)
    guidance = torch.full((2,), 6.0) if host.is_guidance_embedded else None
    with torch.no_grad():
        flow = host(latents, sigma, cond, guidance=guidance)
        host.add_time_r_embedder()
        for r in (sigma, sigma - 0.2, torch.zeros_like(sigma)):
            assert torch.equal(host(latents, sigma, cond, r, guidance), flow)
        r_embedder = host.time_r_in if arch == ARCH_HV10 else host.transformer.time_embed.timestep_embedder_r
        assert r_embedder.linear_2.weight.abs().max() == 0 and r_embedder.linear_1.weight.abs().max() > 0
        torch.nn.init.normal_(r_embedder.linear_2.weight, std=0.05)  # once trained, r matters
        assert not torch.allclose(host(latents, sigma, cond, sigma - 0.2, guidance), flow)
    with pytest.raises(ValueError, match="MeanFlow model: pass sigma_next"):
        host(latents, sigma, cond, guidance=guidance)


def test_hv10_r_embedding_matches_comfyui_convention():
    """vec = (time_in(t) + time_r_in(r)) / 2 with both embedded from 1000 * sigma (ComfyUI time_factor=1000 on r)."""
    host = tiny_host(ARCH_HV10, seed=2, guidance=False)
    host.add_time_r_embedder()
    for p in host.time_r_in.parameters():
        p.data.normal_()
    latents, sigma, cond = _inputs(ARCH_HV10)
    r = sigma - 0.1
    e = host.embed(latents, sigma, cond, r)
    tt = host.transformer.time_text_embed
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)

    def sinusoid(x):  # ComfyUI comfy/ldm/flux/layers.py timestep_embedding, time_factor 1000 on sigma
        args = (1000.0 * x)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], -1)

    expected = (tt.timestep_embedder(sinusoid(sigma)) + host.time_r_in(sinusoid(r))) / 2 + tt.text_embedder(cond["pooled_embeds"])
    torch.testing.assert_close(e.temb, expected, rtol=1e-5, atol=1e-5)


def test_guidance_embedder_starts_as_no_op():
    host = tiny_host(ARCH_HV15, seed=2)
    latents, sigma, cond = _inputs(ARCH_HV15)
    with torch.no_grad():
        plain = host(latents, sigma, cond)
        host.add_guidance_embedder()
        assert torch.equal(host(latents, sigma, cond, guidance=torch.full((2,), 4.0)), plain)


@pytest.mark.parametrize("arch", ARCHES)
def test_predictor_exports_in_official_layout_and_loads_back(arch, tmp_path):
    host = tiny_host(arch, seed=6)
    predictor = predictor_from_dit(host, depth=2)
    official = predictor.official_state_dict()
    spec, _ = read_predictor_state_dict(official, "p")
    assert spec == predictor.spec
    path = str(tmp_path / "p.safetensors")
    save_safetensors(path, official, {})
    file = load_predictor_file(path)
    again = DiffusersPredictor(file.spec)
    again.load_official_state_dict(file.state_dict)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in predictor.state_dict().items())


@pytest.mark.parametrize("arch", ARCHES)
def test_official_random_predictor_loads_into_diffusers_blocks(arch):
    """The official layout as tests/tiny_models.py writes it (1.5: q/k/v split) loads strictly and exports back to the
    same tensors under the same names."""
    state = official_predictor_state_dict(arch, hidden=128, heads=1)
    spec, _ = read_predictor_state_dict(state, "official")
    predictor = DiffusersPredictor(spec)
    predictor.load_official_state_dict(state)
    back = predictor.official_state_dict()
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in back)


@pytest.mark.parametrize("arch", ARCHES)
def test_zero_gated_predictor_blocks_are_identity(arch):
    host = tiny_host(arch, seed=7)
    predictor = predictor_from_dit(host, depth=2)
    latents, sigma, cond = _inputs(arch)
    e = host.embed(latents, sigma, cond, guidance=torch.full((2,), 6.0) if host.is_guidance_embedded else None)
    with torch.no_grad():
        img, txt = e.img, e.txt
        for block in predictor.blocks:
            out_img, out_txt = block(img, txt, e.temb, e.attention_mask, e.rotary)
            assert torch.equal(out_img, img) and torch.equal(out_txt, txt)
    last = (host.transformer.single_transformer_blocks if arch == ARCH_HV10 else host.transformer.transformer_blocks)[-1]
    assert torch.equal(predictor.blocks[-1].attn.to_q.weight, last.attn.to_q.weight)


def test_training_never_imports_comfy():
    code = ("import sys, training.train, training.predictor, training.meanflow, training.cfg_distill, training.export, "
            "training.data, disca.hosts.diffusers; bad = [m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', "
            "'folder_paths'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
