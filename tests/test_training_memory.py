"""Memory options of the predictor stage compute the same thing, and the trunk's segment checkpointing saves memory.

Block checkpointing of the predictor and two-level (segment + block) checkpointing of the frozen discriminator trunk
change no loss or gradient; the segment scheme holds materially fewer bytes than per-block checkpointing of the trunk
(measured on CPU: tensors saved for backward, and the peak of live tensor storages over forward + backward).
"""

import math

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from disca.formats import ARCH_HV10, ARCH_HV15
from disca.hosts.diffusers import predictor_from_dit
from disca.sampling import euler_step
from training.discriminator import FeatureDiscriminator, default_taps, hinge_generator_loss, trunk_features
from training.batches import guidance_for
from training.tiny import randomize_, tiny_conditioning, tiny_host, tiny_latents


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_predictor_block_checkpointing_leaves_loss_and_gradients_unchanged(arch):
    host = tiny_host(arch).requires_grad_(False).eval()
    predictor = randomize_(predictor_from_dit(host, zero_gates=False), seed=3)
    cond = tiny_conditioning(arch, 1, seed=1)
    latents = tiny_latents(arch, 1, seed=2)
    sigma, sigma_next = torch.tensor([0.8]), torch.tensor([0.6])
    guidance = guidance_for(host, 6.0, 1, torch.device("cpu"))
    with torch.no_grad():
        target, cache = host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)

    def loss_and_grads(checkpoint_blocks: bool):
        predictor.checkpoint_blocks = checkpoint_blocks
        predictor.zero_grad(set_to_none=True)
        loss = (host.predict(predictor, latents, sigma, cond, cache, sigma_next, guidance) - target).pow(2).mean()
        loss.backward()
        # (1.5's last block also updates text tokens nobody reads: those weights get no gradient either way)
        return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in predictor.named_parameters()}

    plain_loss, plain_grads = loss_and_grads(False)
    saved_loss, saved_grads = loss_and_grads(True)
    assert torch.equal(plain_loss, saved_loss)
    for name, grad in plain_grads.items():
        if grad is None:
            assert saved_grads[name] is None, name
        else:
            torch.testing.assert_close(saved_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert any(g is not None and g.abs().sum() > 0 for n, g in plain_grads.items() if "blocks" in n)


# ---------------------------------------------------------------------------------------------------- trunk segments

def _deep(arch: str, blocks: int) -> dict:
    """tiny_host overrides for a trunk of `blocks` main blocks (1.0: a quarter double-stream, the rest single)."""
    if arch == ARCH_HV10:
        return dict(num_layers=blocks // 4, num_single_layers=blocks - blocks // 4)
    return dict(num_layers=blocks)


def _generator_pass(host, predictor, discriminator, taps, data, trunk: str, segment_blocks=None):
    """The predictor stage's GAN generator loss; trunk: 'plain' (no checkpointing), 'block' or 'segment'."""
    latents, sigma, sigma_next, cond, guidance, cache = data
    if trunk == "plain":
        host.transformer.disable_gradient_checkpointing()
    else:
        host.transformer.enable_gradient_checkpointing()
    predictor.zero_grad(set_to_none=True)
    discriminator.zero_grad(set_to_none=True)
    predicted = host.predict(predictor, latents, sigma, cond, cache, sigma_next, guidance)
    fake = euler_step(latents, predicted, sigma, sigma_next)
    features = trunk_features(host, taps, fake, sigma_next, cond, guidance, 1 if trunk == "block" else segment_blocks)
    loss = hinge_generator_loss(discriminator(features))
    loss.backward()
    grads = {f"predictor.{n}": p.grad for n, p in predictor.named_parameters()}
    grads.update({f"discriminator.{n}": p.grad for n, p in discriminator.named_parameters()})
    return loss.detach(), [f.detach() for f in features], {n: None if g is None else g.clone() for n, g in grads.items()}


def _gan_setup(arch: str, blocks: int | None, taps: tuple[int, ...] | None, dtype=torch.float32):
    """A tiny host (`blocks` deep, default 3), a random predictor and heads, and one predictor-stage GAN batch."""
    host = tiny_host(arch, **(_deep(arch, blocks) if blocks else {})).requires_grad_(False).eval().to(dtype)
    taps = taps or default_taps(len(host.main_blocks()))
    predictor = randomize_(predictor_from_dit(host, zero_gates=False), seed=3).float()
    predictor.checkpoint_blocks = True
    # eval: spectral norm's power iteration would otherwise move between the passes compared
    discriminator = randomize_(FeatureDiscriminator(host.hidden_size, taps, width=32), seed=4).eval()
    cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_conditioning(arch, 1, seed=1).items()}
    latents = tiny_latents(arch, 1, seed=2).to(dtype)
    sigma, sigma_next = torch.tensor([0.8]), torch.tensor([0.6])
    guidance = guidance_for(host, 6.0, 1, torch.device("cpu"))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, cache = host.forward_with_cache(latents, sigma, cond, sigma_next, guidance)
    return host, predictor, discriminator, taps, (latents, sigma, sigma_next, cond, guidance, cache)


def _assert_same_generator_pass(plain, block, segment, rtol, atol):
    (plain_loss, plain_features, plain_grads), (block_loss, _, block_grads), (loss, features, grads) = plain, block, segment
    assert len(features) == len(plain_features)
    for got, want in zip(features, plain_features):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    torch.testing.assert_close(loss, plain_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(loss, block_loss, rtol=rtol, atol=atol)
    for name, want in plain_grads.items():
        if want is None:
            assert grads[name] is None and block_grads[name] is None, name
            continue
        torch.testing.assert_close(grads[name], want, rtol=rtol, atol=atol, msg=name)
        torch.testing.assert_close(grads[name], block_grads[name], rtol=rtol, atol=atol, msg=name)
    # the adversarial loss does reach the predictor through the trunk
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("predictor.") and "blocks" in n)


@pytest.mark.parametrize("arch,blocks,taps,segment_blocks", [
    (ARCH_HV10, None, None, None),   # the tiny model: 3 blocks, taps 0,1,2, segments [0 1][2]
    (ARCH_HV15, None, None, None),
    (ARCH_HV10, 7, (1, 4), None),    # 5 blocks run, segments [0 1 2][3 4]: taps inside and at a segment's end
    (ARCH_HV15, 7, (2, 3, 6), 3),    # segments [0 1 2][3 4 5][6]: a tap opening a segment, a one-block segment
    (ARCH_HV10, 8, (5,), 8),         # one segment holding every block run
])
def test_trunk_segment_checkpointing_leaves_generator_loss_and_gradients_unchanged(arch, blocks, taps, segment_blocks):
    host, predictor, discriminator, taps, data = _gan_setup(arch, blocks, taps)
    passes = [_generator_pass(host, predictor, discriminator, taps, data, trunk, segment_blocks)
              for trunk in ("plain", "block", "segment")]
    _assert_same_generator_pass(*passes, rtol=1e-5, atol=1e-7)

    # without grad (the discriminator's real/fake passes) the trunk runs plainly and gives the same features
    latents, sigma, sigma_next, cond, guidance, cache = data
    host.transformer.enable_gradient_checkpointing()
    with torch.no_grad():
        predicted = host.predict(predictor, latents, sigma, cond, cache, sigma_next, guidance)
        no_grad = trunk_features(host, taps, euler_step(latents, predicted, sigma, sigma_next), sigma_next, cond, guidance)
    for got, want in zip(no_grad, passes[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_trunk_segment_checkpointing_under_bf16_autocast():
    """As the stage runs it (bf16 DiT, fp32 predictor, autocast): 16 blocks, 4 segments of 4, taps 4, 10, 15."""
    host, predictor, discriminator, taps, data = _gan_setup(ARCH_HV10, 16, None, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        passes = [_generator_pass(host, predictor, discriminator, taps, data, trunk)
                  for trunk in ("plain", "block", "segment")]
    _assert_same_generator_pass(*passes, rtol=1e-5, atol=1e-6)


def test_trunk_segment_size_must_be_positive():
    host = tiny_host(ARCH_HV10).requires_grad_(False).eval()
    host.transformer.enable_gradient_checkpointing()
    latents = tiny_latents(ARCH_HV10, 1, seed=2).requires_grad_(True)
    cond = tiny_conditioning(ARCH_HV10, 1, seed=1)
    with pytest.raises(ValueError, match="segment_blocks"):
        trunk_features(host, (2,), latents, torch.tensor([0.6]), cond, torch.tensor([6.0]), segment_blocks=0)


class _PeakLiveBytes(TorchDispatchMode):
    """CPU stand-in for torch.cuda.max_memory_allocated: the peak total size of tensor storages created while active
    (forward, backward and checkpoint recomputes) and still alive. Storages that existed before (weights, inputs) and
    their views are not counted."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage._cdata not in self.live and storage._cdata not in inputs:
                    self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


def trunk_memory(arch: str, blocks: int, segment_blocks: int | None) -> dict:
    """Bytes the generator pass through a `blocks`-deep tiny trunk (taps spread to the last block) keeps for backward
    inside the trunk (`saved`: storages saved for backward while `block_features` runs), and the peak of live bytes
    over its forward + backward (`peak`); `block_input`: the bytes of one block's input (img + txt tokens)."""
    host = tiny_host(arch, **_deep(arch, blocks)).requires_grad_(False).eval()
    host.transformer.enable_gradient_checkpointing()
    taps = default_taps(blocks)
    discriminator = randomize_(FeatureDiscriminator(host.hidden_size, taps, width=32), seed=4).eval()
    cond = tiny_conditioning(arch, 1, seed=1)
    fake = tiny_latents(arch, 1, seed=2).requires_grad_(True)  # stands for the predictor's sample
    sigma, guidance = torch.tensor([0.6]), guidance_for(host, 6.0, 1, torch.device("cpu"))

    def step(hooks=None):
        e = host.embed(fake, sigma, cond, None, guidance)
        if hooks is None:
            features = host.block_features(e, taps, segment_blocks)
        else:
            with torch.autograd.graph.saved_tensors_hooks(*hooks):
                features = host.block_features(e, taps, segment_blocks)
        hinge_generator_loss(discriminator(features)).backward()
        return e

    step()  # warm-up: lazily built state is not part of the measurement
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
        return tensor

    e = step((pack, lambda tensor: tensor))
    with _PeakLiveBytes() as mode:
        step()
    return {"saved": sum(saved.values()), "peak": mode.peak,
            "block_input": e.img.nelement() * e.img.element_size() + e.txt.nelement() * e.txt.element_size()}


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_trunk_segment_checkpointing_holds_fewer_bytes_than_per_block(arch):
    blocks = 16
    per_block = trunk_memory(arch, blocks, 1)
    segments = trunk_memory(arch, blocks, None)  # ceil(sqrt(16)) = 4 segments of 4 blocks
    b = per_block["block_input"]
    # per-block checkpointing keeps every block's input until backward (the 720p out-of-memory); this measures it
    assert per_block["saved"] >= blocks * b
    # segments keep only the 4 segment inputs (+ the small temb / rotary / mask they share)
    assert segments["saved"] <= 4 * b + (per_block["saved"] - blocks * b)
    assert segments["saved"] <= 0.4 * per_block["saved"]
    # the peak over forward + backward (recomputes included) drops by > 6 block inputs: theory says
    # 16 held vs at most 4 + 3 (the inputs of the segments and the blocks of the one being recomputed)
    assert per_block["peak"] - segments["peak"] >= 6 * b, (per_block, segments)
