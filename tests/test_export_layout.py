"""Exported predictors and DiTs are in the layout the official code loads, and still load in the pack.

The official HunyuanVideo-1.5 code defines q, k and v of its double-stream blocks as three linears and loads DisCa
predictors with `load_state_dict(strict=False)` (Tencent-Hunyuan/DisCa disca_i2v_hyvideo15/generate_disca.py), so a
file with fused `*_attn_qkv` would load without error and leave q/k/v at their random initialisation. Here the
official module definitions are re-implemented as their key lists (tests/tiny_models.py, from Tencent's
MMDoubleStreamBlock, ByT5Mapper, ...) and every export must load into them strictly, with the right rows in q, k, v.
"""

import pytest
import torch
from torch import nn

from disca.formats import ARCH_HV10, ARCH_HV15, load_predictor_file, save_safetensors
from disca.hosts.diffusers import DiffusersPredictor, load_host
from tiny_models import official_predictor_state_dict, tencent_dit_state_dict
from training.export import export_dit, export_predictor
from training.tiny import tiny_host


def official_module(reference: dict[str, torch.Tensor]) -> nn.Module:
    """A module whose parameters are exactly `reference`'s names and shapes, zero-filled: the official definitions."""
    root = nn.Module()
    for name, value in reference.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(leaf, nn.Parameter(torch.zeros(value.shape, dtype=value.dtype), requires_grad=False))
    return root


def _save(path, state: dict[str, torch.Tensor]) -> str:
    save_safetensors(str(path), state, {})
    return str(path)


def _loads_strictly_as(path: str, reference: dict[str, torch.Tensor]) -> None:
    """The file loads strictly into the official definitions and every tensor is the reference's, bit for bit."""
    from safetensors.torch import load_file

    module = official_module(reference)
    module.load_state_dict(load_file(path), strict=True)  # names and shapes, as the official modules have them
    loaded = module.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_exported_predictor_is_the_official_layout(arch, tmp_path):
    """An official predictor (1.5: q/k/v split, as Tencent ships it) through our trainer's module and its export comes
    back as the same official file: same names, q/k/v rows in place; and it still loads in the pack."""
    official = official_predictor_state_dict(arch, hidden=128, heads=1)
    predictor = DiffusersPredictor.from_file(load_predictor_file(_save(tmp_path / "official.safetensors", official)))
    path = export_predictor(str(tmp_path / "exported.safetensors"), predictor, tiny_host(arch, seed=1), dtype=None)
    _loads_strictly_as(path, official)
    again = DiffusersPredictor.from_file(load_predictor_file(path))  # the pack's loader (fuses 1.5's q/k/v)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in predictor.state_dict().items())


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_exported_dit_is_the_official_layout(arch, tmp_path):
    """A Tencent-layout DiT (every key of Tencent's definition; 1.5: q/k/v split) loaded by the trainer and exported
    comes back as the same file, which the trainer's loader reads back to the same model."""
    if arch == ARCH_HV10:
        official = tencent_dit_state_dict(ARCH_HV10, double_blocks=1, single_blocks=2)
    else:
        official = tencent_dit_state_dict(ARCH_HV15, double_blocks=2, single_blocks=0, byt5=True)
    host = load_host(_save(tmp_path / "official.safetensors", official))
    path = export_dit(str(tmp_path / "exported.safetensors"), host, R=0.2, dtype=None)
    _loads_strictly_as(path, official)
    reloaded = load_host(path).diffusers_state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in host.diffusers_state_dict().items())
