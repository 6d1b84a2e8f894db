"""Worker for tests/test_training_fsdp2.py: the FSDP2 layout of `training/configs/accelerate_fsdp2.yaml` on a tiny
MeanFlow student, on CPU. accelerate only builds FSDP on GPU kinds (a CPU launch falls back to DDP), so this drives
torch's `fully_shard` and distributed checkpoint directly, with the wrap classes read from the shipped config.

    torchrun --standalone --nproc_per_node 2 tests/fsdp2_worker.py sharded OUT   # 2 gloo ranks, FSDP2
    python tests/fsdp2_worker.py reference OUT                                   # 1 process, no sharding

Both train 3 MeanFlow steps (finite-difference du/dt, teacher velocity as tangent, SGD with momentum) on the same
global batches. `sharded` shards the frozen teacher with `training.loop.shard_blocks` and the student with the
wrap classes of the shipped config and the mixed-precision policy of `training.loop.fsdp_plugin()`, as the stages do;
it also saves a sharded checkpoint after step 2, resumes a fresh sharded model from it, and measures du/dt under the
bf16 policy accelerate would build for --mixed_precision bf16. Results go to OUT/*.safetensors + json.
"""

import json
import os
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from disca.formats import ARCH_HV10  # noqa: E402
from training.loop import fsdp_plugin, shard_blocks  # noqa: E402
from training.meanflow import meanflow_target, time_derivative  # noqa: E402
from training.tiny import TINY_LATENT, tiny_conditioning, tiny_host  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 3
CHECKPOINT_AFTER = 2


def wrap_classes() -> set[str]:
    config = yaml.safe_load((REPO / "training" / "configs" / "accelerate_fsdp2.yaml").read_text())
    return set(config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","))


def student():
    host = tiny_host(ARCH_HV10, seed=0)
    host.add_time_r_embedder()
    return host


def teacher():
    return tiny_host(ARCH_HV10, seed=1).requires_grad_(False).eval()


def sgd(model):
    """SGD with momentum: its update is linear in the gradient, so sharded vs unsharded differ only by float
    reduction order (Adam's normalisation would blow that noise up where gradients are ~0), and the momentum
    buffers still exercise the sharded optimiser state."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def global_batch(step: int):
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, 16, *TINY_LATENT[ARCH_HV10], generator=generator)
    t = torch.rand(GLOBAL_BATCH, generator=generator) * 0.7 + 0.3
    r = t - 0.2 * torch.rand(GLOBAL_BATCH, generator=generator)
    return x, t, r, tiny_conditioning(ARCH_HV10, GLOBAL_BATCH, seed=step)


def local_batch(step: int, rows: slice):
    return (part[rows] if torch.is_tensor(part) else {k: c[rows] for k, c in part.items()} for part in global_batch(step))


def train_step(model, frozen, optimizer, step: int, rows: slice) -> float:
    x, t, r, cond = local_batch(step, rows)
    guidance = torch.full((x.shape[0],), 6.0)
    with torch.no_grad():
        v = frozen(x, t, cond, None, guidance)

    def u_fn(x_, t_, r_):
        return model(x_, t_, cond, r_, guidance)

    target, _ = meanflow_target(u_fn, x, t, r, v, "finite_difference", 1e-3)
    loss = (u_fn(x, t, r) - target).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def full_weights(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone().contiguous()
            for k, v in model.state_dict().items()}


def dudt(model, frozen, rows: slice, epsilon: float = 1e-4) -> torch.Tensor:
    """du/dt of `model` on step 0's batch, along the frozen teacher's velocity."""
    x, t, r, cond = local_batch(0, rows)
    guidance = torch.full((x.shape[0],), 6.0)
    with torch.no_grad():
        v = frozen(x, t, cond, None, guidance)
    return time_derivative(lambda x_, t_, r_: model(x_, t_, cond, r_, guidance), x, t, r, v, "finite_difference", epsilon)


def reference(out: Path) -> None:
    model, frozen = student(), teacher()
    derivative = dudt(model, frozen, slice(None))
    optimizer = sgd(model)
    losses = [train_step(model, frozen, optimizer, step, slice(None)) for step in range(STEPS)]
    save_file(full_weights(model) | {"dudt": derivative}, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps({"losses": losses}))


def sharded(out: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    # the plugin the stages build from the accelerate config (accelerate launch exports it as these variables)
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_ACTIVATION_CHECKPOINTING="false")
    policy = fsdp_plugin().mixed_precision_policy

    def build(mp_policy=policy):
        model = student()
        units = [name for name, m in model.named_modules() if type(m).__name__ in wrap_classes()]
        for name in units:
            fully_shard(model.get_submodule(name), mesh=mesh, mp_policy=mp_policy)
        fully_shard(model, mesh=mesh, mp_policy=mp_policy)
        return model, sgd(model), units

    frozen = teacher()
    shard_blocks(frozen, mesh)
    model, optimizer, units = build()
    derivative = dudt(model, frozen, rows)
    losses = []
    for step in range(STEPS):
        if step == CHECKPOINT_AFTER:
            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(out / "checkpoint"))
        losses.append(train_step(model, frozen, optimizer, step, rows))
    uninterrupted = full_weights(model)

    resumed, resumed_optimizer, _ = build()
    model_state, optim_state = get_state_dict(resumed, resumed_optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(out / "checkpoint"))
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for step in range(CHECKPOINT_AFTER, STEPS):
        train_step(resumed, frozen, resumed_optimizer, step, rows)
    resumed_weights = full_weights(resumed)

    # accelerate's own policy for --mixed_precision bf16 (FullyShardedDataParallelPlugin.set_mixed_precision)
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, output_dtype=torch.bfloat16)
    derivative_bf16 = dudt(build(bf16)[0], frozen, rows)
    gathered = [[torch.empty_like(derivative) for _ in range(world)] for _ in range(2)]
    dist.all_gather(gathered[0], derivative.contiguous())
    dist.all_gather(gathered[1], derivative_bf16.float().contiguous())

    local = {name: tuple(p.to_local().shape) for name, p in model.named_parameters()}
    full = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if rank == 0:
        save_file(uninterrupted | {"dudt": torch.cat(gathered[0]), "dudt_bf16_policy": torch.cat(gathered[1])},
                  str(out / "sharded.safetensors"))
        save_file(resumed_weights, str(out / "resumed.safetensors"))
        (out / "sharded.json").write_text(json.dumps({
            "world": world, "units": units, "block_classes": sorted(wrap_classes()), "losses_rank0": losses,
            "local_shapes": local, "full_shapes": full, "teacher_sharded": [
                name for name, m in frozen.named_modules() if type(m).__name__.startswith("FSDP")],
            "blocks": [name for name, m in model.named_modules() if type(m).__name__.endswith("TransformerBlock")],
        }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    {"reference": reference, "sharded": sharded}[mode](out)
