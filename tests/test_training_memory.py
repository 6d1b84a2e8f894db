"""Memory options of the predictor stage compute the same thing: block checkpointing changes no loss or gradient."""

import pytest
import torch

from disca.formats import ARCH_HV10, ARCH_HV15
from disca.hosts.diffusers import predictor_from_dit
from training.predictor import guidance_for
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
