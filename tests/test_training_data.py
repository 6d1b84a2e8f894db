"""Data prep end to end on CPU with tiny random encoders in the classes diffusers' HunyuanVideo pipelines load
(1.0: LlamaModel + CLIPTextModel; 1.5: Qwen2_5_VLTextModel + T5EncoderModel (ByT5) + SiglipVisionModel; diffusers
VAEs), built offline: prompt caches, I2V reference images, video latents, and the stages training from them."""

import os

import pytest
import torch
from PIL import Image

from disca.formats import ARCH_HV10, ARCH_HV15, load_safetensors
from training import data
from training.config import build_config
from training.tiny import TINY_CONFIGS, TINY_VAE_COMPRESSION, tiny_host, tiny_vae, write_tiny_pipeline, write_tiny_run_files

WIDTH, HEIGHT, FRAMES = 32, 16, 5
COLOURS = ((200, 30, 90), (10, 250, 128))


def _write_dataset(folder, arch):
    write_tiny_pipeline(str(folder / "pipe"), arch)
    (folder / "prompts.txt").write_text("a red fox runs\n# skipped\nthe cat sleeps on sofa\n")
    for i, colour in enumerate(COLOURS):
        clip = folder / "clips" / f"clip{i}"
        clip.mkdir(parents=True)
        for k in range(FRAMES + 2):  # longer than asked: only the first FRAMES are read
            Image.new("RGB", (48, 20), colour).save(clip / f"{k:04d}.png")
        (folder / "clips" / f"clip{i}.txt").write_text(f"a city at night {i}")
    toml = f'''[general]
arch = "{arch}"
pipeline = "pipe"
max_sequence_length = 16
negative_prompt = ""
resolution = [{WIDTH}, {HEIGHT}]
frames = {FRAMES}

[[datasets]]
prompts_file = "prompts.txt"
cache_file = "cache/prompts.safetensors"

[[datasets]]
video_directory = "clips"
cache_file = "cache/video_prompts.safetensors"
latents_file = "cache/latents.safetensors"
'''
    if arch == ARCH_HV15:
        (folder / "refs").mkdir()
        for i, colour in enumerate(COLOURS):
            Image.new("RGB", (40, 24), colour).save(folder / "refs" / f"ref{i}.png")
            (folder / "refs" / f"ref{i}.txt").write_text('a sign says "hello world"')
        toml += '''
[[datasets]]
image_directory = "refs"
cache_file = "cache/i2v_prompts.safetensors"
image_cache_file = "cache/i2v_images.safetensors"
'''
    (folder / "dataset.toml").write_text(toml)
    return str(folder / "dataset.toml")


@pytest.fixture(scope="module", params=[ARCH_HV10, ARCH_HV15])
def encoded(request, tmp_path_factory):
    arch = request.param
    folder = tmp_path_factory.mktemp(f"data_{arch}")
    dataset = _write_dataset(folder, arch)
    written = data.encode_dataset(dataset, device="cpu", dtype=torch.float32)
    written += data.encode_videos_dataset(dataset, device="cpu", dtype=torch.float32)
    return arch, folder, dataset, written


def test_encode_writes_what_the_trainer_reads_and_matches_the_pipeline(encoded):
    arch, folder, dataset, written = encoded
    cache = folder / "cache"
    assert {os.path.basename(p) for p in written} >= {"prompts.safetensors", "negative.safetensors",
                                                       "video_prompts.safetensors", "latents.safetensors"}
    cond = data.load_embeddings(str(cache / "prompts.safetensors"), arch)
    assert cond["prompt_embeds"].shape == (2, 16, 32) and cond["prompt_mask"].dtype == torch.int64
    _, metadata = load_safetensors(str(cache / "prompts.safetensors"))
    assert metadata[data.META_PROMPTS] == '["a red fox runs", "the cat sleeps on sofa"]'
    # the cache holds exactly what diffusers' encode_prompt returns for these prompts
    pipe = data._load_pipeline(arch, str(folder / "pipe"), torch.float32, "cpu")
    direct = data.encode_prompts(pipe, arch, ["a red fox runs", "the cat sleeps on sofa"], 16)
    for key, value in direct.items():
        assert torch.equal(cond[key], value), key
    if arch == ARCH_HV10:
        assert cond["pooled_embeds"].shape == (2, 768)
    else:
        assert cond["byt5_embeds"].shape == (2, 256, 1472)  # ByT5 keeps the pipeline's 256 glyph tokens and cond["image_embeds"].abs().sum() == 0
        quoted = data.load_embeddings(str(cache / "i2v_prompts.safetensors"), arch)
        assert quoted["byt5_mask"].sum() > 0  # a quoted text in the prompt goes through ByT5
    # and a tiny DiT of the same arch runs on the cache
    host = tiny_host(arch, seed=0)
    latent = (2, HEIGHT // TINY_VAE_COMPRESSION, WIDTH // TINY_VAE_COMPRESSION)
    if arch == ARCH_HV15:
        extra = TINY_CONFIGS[arch]["in_channels"] - TINY_CONFIGS[arch]["out_channels"]
        cond = data.with_image_condition(cond, extra, latent)
    guidance = torch.full((2,), 6.0) if host.is_guidance_embedded else None
    out = host(torch.randn(2, TINY_CONFIGS[arch]["out_channels"], *latent), torch.full((2,), 0.5), cond, None, guidance)
    assert torch.isfinite(out).all()


def test_video_latents_have_the_vae_geometry_and_are_the_vae_latents_of_the_clip(encoded):
    arch, folder, _, _ = encoded
    latents = data.load_latents(str(folder / "cache" / "latents.safetensors"))
    channels = TINY_CONFIGS[arch]["out_channels"]
    assert latents.shape == (2, channels, (FRAMES - 1) // 4 + 1, HEIGHT // 4, WIDTH // 4)
    vae = tiny_vae(arch, seed=0)
    for row, colour in enumerate(COLOURS):
        # independent construction of the VAE input: a constant clip, RGB order, [0, 255] -> [-1, 1]
        pixels = (torch.tensor(colour, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1, 1).expand(1, 3, FRAMES, HEIGHT, WIDTH)
        with torch.no_grad():
            want = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
            torch.testing.assert_close(latents[row:row + 1], want, rtol=1e-5, atol=1e-5)
    swapped = (torch.tensor(COLOURS[0][::-1], dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1, 1).expand(1, 3, FRAMES, HEIGHT, WIDTH)
    with torch.no_grad():
        assert not torch.allclose(latents[:1], vae.encode(swapped).latent_dist.mode() * vae.config.scaling_factor, atol=1e-3)


def test_i2v_references_are_siglip_tokens_and_the_first_frame_latent(encoded):
    arch, folder, _, _ = encoded
    if arch != ARCH_HV15:
        pytest.skip("I2V reference images are a 1.5 input")
    refs = data.load_references(str(folder / "cache" / "i2v_images.safetensors"), arch, 2)
    assert refs["image_embeds"].shape == (2, 4, 1152)
    assert refs["reference_latents"].shape == (2, 32, 1, HEIGHT // 4, WIDTH // 4)
    vae = tiny_vae(arch, seed=0)
    pixels = (torch.tensor(COLOURS[1], dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1, 1).expand(1, 3, 1, HEIGHT, WIDTH)
    with torch.no_grad():
        want = vae.encode(pixels).latent_dist.mode()[0] * vae.config.scaling_factor
    torch.testing.assert_close(refs["reference_latents"][1], want, rtol=1e-5, atol=1e-5)
    # the 33 condition channels: reference latent at frame 0, zeros after, mask 1 at frame 0 (diffusers' I2V pipeline)
    cond = data.load_embeddings(str(folder / "cache" / "i2v_prompts.safetensors"), arch)
    full = data.with_image_condition(cond, 33, (3, HEIGHT // 4, WIDTH // 4), refs)
    assert torch.equal(full["image_latents"][:, :32, 0], refs["reference_latents"][:, :, 0])
    assert full["image_latents"][:, :32, 1:].abs().sum() == 0
    assert torch.equal(full["image_latents"][:, 32], torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(2, 3, 4, 8))
    assert torch.equal(full["image_embeds"], refs["image_embeds"])
    with pytest.raises(data.DataError, match=r"reference latents have shape .* encode the reference images at the run's resolution"):
        data.with_image_condition(cond, 33, (3, 2, 2), refs)


def test_i2v_predictor_stage_consumes_the_reference_cache(encoded, tmp_path):
    arch, folder, _, _ = encoded
    if arch != ARCH_HV15:
        pytest.skip("I2V reference images are a 1.5 input")
    from training.predictor import train

    paths = write_tiny_run_files(str(tmp_path), ARCH_HV15, prompts=2, meanflow=False)
    config = build_config(dict(stage="predictor", model=paths["model"], prompts=str(folder / "cache" / "i2v_prompts.safetensors"),
                               reference_images=str(folder / "cache" / "i2v_images.safetensors"),
                               output_dir=str(tmp_path / "run"), latent_shape=[1, HEIGHT // 4, WIDTH // 4], steps=4,
                               schedules=["N2"], held_out_prompts=1, max_steps=3, mse_steps=2, batch_size=1,
                               checkpoint_every=3, log_every=1))
    report = train(config)
    assert report["steps"] == 3 and all(torch.isfinite(torch.tensor(h["mse"])) for h in report["last_losses"])


def test_meanflow_and_cfg_distill_train_from_encoded_videos(encoded, tmp_path):
    arch, folder, _, _ = encoded
    if arch != ARCH_HV10:
        pytest.skip("one arch is enough for the stages; both archs' latents are checked above")
    from training.cfg_distill import train as train_cfg
    from training.meanflow import train as train_meanflow

    paths = write_tiny_run_files(str(tmp_path), arch, prompts=2, meanflow=False, guidance=False)
    common = dict(model=paths["model"], prompts=str(folder / "cache" / "video_prompts.safetensors"),
                  latents=str(folder / "cache" / "latents.safetensors"), max_steps=12, batch_size=2,
                  learning_rate=1e-3, log_every=4, checkpoint_every=12)
    report = train_cfg(build_config(dict(common, stage="cfg_distill", output_dir=str(tmp_path / "cfg"),
                                         negative_prompt=str(folder / "cache" / "negative.safetensors"))))
    print(f"\ncfg_distill on encoded videos: {report['eval_mse_initial']:.4g} -> {report['eval_mse_final']:.4g}")
    assert report["eval_mse_final"] < report["eval_mse_initial"]
    report = train_meanflow(build_config(dict(common, stage="meanflow", output_dir=str(tmp_path / "mf"),
                                              model=report["dit_file"])))
    print(f"meanflow on encoded videos: {report['eval_mse_initial']:.4g} -> {report['eval_mse_final']:.4g}")
    assert report["eval_mse_final"] < report["eval_mse_initial"]


@pytest.mark.parametrize("edit, message", [
    ('frames = 5', r"\[general\] frames must be 4k\+1"),
    ('resolution = [32, 16]', r"has a video_directory: set \[general\] resolution"),
])
def test_dataset_errors_name_the_key(tmp_path, edit, message):
    toml = '[general]\narch = "hunyuan_video"\npipeline = "x"\n' + (
        'frames = 6\nresolution = [32, 16]\n' if edit.startswith("frames") else 'frames = 5\n')
    toml += '[[datasets]]\nvideo_directory = "clips"\ncache_file = "c.safetensors"\nlatents_file = "l.safetensors"\n'
    (tmp_path / "d.toml").write_text(toml)
    with pytest.raises(data.DataError, match=message):
        data.read_dataset_config(str(tmp_path / "d.toml"))
