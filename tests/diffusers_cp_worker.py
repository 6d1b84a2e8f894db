"""One rank of a DisCa pipeline run with Ulysses context parallelism on the CPU (gloo), for
test_diffusers_context_parallel.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/diffusers_cp_worker.py ARCH FOLDER

Every rank builds the same tiny pipeline (2 attention heads) in FOLDER, attaches DisCa N2, enables context
parallelism when there is more than one rank (then tries DisCa again, which must be refused), samples, and writes
FOLDER/rank<r>.safetensors: the final latents, the bytes of the DisCa cache this rank held after each model call, and
the refusal's message.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_pipelines import Case  # noqa: E402
from disca.formats import ARCH_HV15, save_safetensors  # noqa: E402
from disca.hosts.diffusers_hooks import HOOK_NAME, apply_disca  # noqa: E402
from disca.hosts.diffusers_parallel import enable_context_parallel  # noqa: E402


def main(arch: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank:
        dist.barrier()  # rank 0 writes the pipeline folder first (transformers saves on the main process only)
    case = Case(arch, Path(folder), heads=2, predictor_name=f"predictor_rank{rank}.safetensors")
    if not rank:
        dist.barrier()
    apply_disca(case.pipe, case.config("N2"))
    if world > 1:
        from diffusers import ContextParallelConfig

        enable_context_parallel(case.pipe, ContextParallelConfig(ulysses_degree=world,
                                                                 ulysses_anything=arch == ARCH_HV15))
        try:
            apply_disca(case.pipe, case.config("N2"))
            refusal = ""
        except ValueError as error:
            refusal = str(error)
    else:
        refusal = ""
    transformer_hook = case.host.transformer._diffusers_hook.get_hook(HOOK_NAME)
    cache_bytes = []

    def after_each_call(module, args, output):
        states = transformer_hook.state_manager._state_cache.values()
        cache_bytes.append(sum(state.run.cache.nbytes for state in states))

    case.host.transformer.register_forward_hook(after_each_call)
    latents = case.sample()
    save_safetensors(str(Path(folder) / f"rank{rank}.safetensors"),
                     {"latents": latents.contiguous(), "cache_bytes": torch.tensor(cache_bytes)},
                     {"apply_after_parallel": refusal})
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
