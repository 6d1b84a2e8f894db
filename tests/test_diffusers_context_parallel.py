"""DisCa pipelines with Ulysses context parallelism over 2 CPU processes (gloo), against the same run on 1 process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disca.formats import ARCH_HV10, ARCH_HV15, load_safetensors

WORKER = Path(__file__).resolve().parent / "diffusers_cp_worker.py"


def launch(arch: str, ranks: int, folder: Path) -> list[tuple[dict, dict]]:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                             "--standalone", str(WORKER), arch, str(folder)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [load_safetensors(str(folder / f"rank{rank}.safetensors")) for rank in range(ranks)]


@pytest.mark.parametrize("arch", [ARCH_HV10, ARCH_HV15])
def test_two_ranks_equal_one_and_each_keeps_half_the_cache(arch, tmp_path):
    ((single, _),) = launch(arch, 1, tmp_path / "one")
    ranks = launch(arch, 2, tmp_path / "two")
    for tensors, metadata in ranks:
        torch.testing.assert_close(tensors["latents"], single["latents"], rtol=1e-5, atol=2e-6)
        # the cache is the rank's sequence shard, never gathered: half of the single process's after every call
        assert torch.equal(tensors["cache_bytes"] * 2, single["cache_bytes"])
        assert "apply_disca before enable_context_parallel" in metadata["apply_after_parallel"]
    assert torch.equal(ranks[0][0]["latents"], ranks[1][0]["latents"])
    assert single["cache_bytes"].min() > 0


def test_configurations_that_cannot_work_are_refused_with_the_fix(tmp_path):
    from diffusers import ContextParallelConfig

    from diffusers_pipelines import Case
    from disca.hosts.diffusers_parallel import enable_context_parallel

    case = Case(ARCH_HV10, tmp_path, heads=2)
    with pytest.raises(ValueError, match="ring_degree: .*padded text would be attended wrongly; use ulysses_degree"):
        enable_context_parallel(case.pipe, ContextParallelConfig(ring_degree=2))
    other = Case(ARCH_HV15, tmp_path / "hv15", heads=2)
    with pytest.raises(ValueError, match=r"rarely divides by the degree; pass .*ulysses_anything=True"):
        enable_context_parallel(other.pipe, ContextParallelConfig(ulysses_degree=2))
