import logging
import subprocess
import sys

import pytest
import torch

from disca.runtime import CacheStore, DisCaConfig, DisCaRun, DisCaRuntimeError
from disca.schedules import AnchorSchedule


def make_run(steps=8, interval=2, **kw):
    return DisCaRun(DisCaConfig(AnchorSchedule(interval=interval, name=f"N{interval}"), **kw), steps,
                    predictor_bytes=2**20)


def test_steps_come_from_the_samplers_reports():
    run = make_run()
    assert [run.is_anchor(i) for i in range(8)] == [True, False] * 4
    assert run.register_call(("c", "u")) == 0
    run.step_finished(0)
    assert run.register_call(("c",)) == 1 and run.register_call(("u",)) == 1  # split conds share the step
    with pytest.raises(DisCaRuntimeError, match="a second time in step 0 .*Use 'euler'"):
        run.register_call(("c",))
    run.step_finished(7)
    with pytest.raises(DisCaRuntimeError, match="after the last of 8 steps"):
        run.register_call(("c",))


def test_cache_exact_key_returns_same_tensors():
    store = CacheStore()
    a = torch.randn(2, 5, 4)
    store.put(("cond", "uncond"), (a,))
    assert store.get(("cond", "uncond"), a.device)[0] is a
    assert store.nbytes == a.numel() * 4 and store.peak_bytes == store.nbytes


def test_cache_split_and_rebatched_conds():
    store = CacheStore()
    batched = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    store.put(("c", "u"), (batched, batched + 100))
    u_only = store.get(("u",), batched.device)
    assert torch.equal(u_only[0], batched[1:]) and torch.equal(u_only[1], batched[1:] + 100)
    swapped = store.get(("u", "c"), batched.device)[0]
    assert torch.equal(swapped, batched.flip(0))
    assert store.get(("other",), batched.device) is None
    # a new anchor for one cond replaces entries that hold it
    store.put(("c",), (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)))
    assert store.get(("u",), batched.device) is None


def test_cache_offload_to_cpu_round_trip():
    store = CacheStore(offload_to_cpu=True)
    a = torch.randn(1, 4, 4)
    store.put(("c",), (a,))
    got = store.get(("c",), torch.device("cpu"))[0]
    assert torch.equal(got, a) and got is not a


def test_shape_change_drops_the_cache(caplog):
    run = make_run()
    run.check_signature(torch.zeros(1, 16, 2, 4, 4))
    run.cache.put(("c",), (torch.ones(1, 3, 4),))
    with caplog.at_level(logging.WARNING, logger="disca"):
        run.check_signature(torch.zeros(1, 16, 2, 8, 8))
    assert run.cache.get(("c",), torch.device("cpu")) is None
    assert "dropping the cache" in caplog.text


def test_summary_reports_true_counts_and_bytes():
    run = make_run(steps=4, interval=2)
    for step, kind in [(0, "full"), (1, "predicted"), (2, "full"), (3, "predicted")]:
        started = run.stats.timer.start(torch.device("cpu"))
        run.stats.timer.stop(kind, started)
        (run.stats.full_steps if kind == "full" else run.stats.predicted_steps).add(step)
    run.stats.full_calls, run.stats.predicted_calls = 2, 2
    run.cache.put(("c",), (torch.zeros(1, 256, 1024),))
    line = run.summary()
    assert "2 full + 2 predicted of 4 steps (2 + 2 model calls)" in line
    assert "cache 1.0 MiB" in line and "predictor 1.0 MiB" in line and "[N2, predictor]" in line


def test_config_validation():
    with pytest.raises(ValueError, match="mode must be one of"):
        DisCaConfig(AnchorSchedule(interval=2), mode="taylor")
    with pytest.raises(ValueError, match="cache_device must be one of"):
        DisCaConfig(AnchorSchedule(interval=2), cache_device="gpu1")


def test_core_packages_never_import_comfy():
    code = ("import sys, disca.formats, disca.schedules, disca.runtime, disca.predictor;"
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m == 'folder_paths'];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
