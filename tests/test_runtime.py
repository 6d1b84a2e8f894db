import logging
import subprocess
import sys

import pytest
import torch

from disca.runtime import CacheStore, DisCaConfig, DisCaRun, DisCaRuntimeError
from disca.schedules import AnchorSchedule


def make_run(steps=8, interval=2, **kw):
    return DisCaRun(DisCaConfig(AnchorSchedule(interval=interval, name=f"N{interval}"), **kw), steps,
                    torch.nn.Linear(512, 512, bias=False))  # a 1 MiB predictor


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


class LinearInTime:
    """A 'model' whose output is a + b t per row: what each mode's cached steps should give is known exactly."""

    def __init__(self):
        self.a, self.b = torch.tensor([[1.0], [-2.0]]), torch.tensor([[0.5], [3.0]])
        self.full_calls, self.captures = 0, []

    def output(self, rows, time):
        return self.a[rows] + self.b[rows] * time.view(-1, 1)

    def call(self, run, uuids, time):
        rows = [("c", "u").index(u) for u in uuids]
        x = torch.zeros(len(rows), 1)

        def full_step(capture):
            self.full_calls += 1
            self.captures.append(capture)
            out = self.output(rows, time)
            return out, ((out * 10),) if capture else None

        return run.call(uuids, x, time, full_step, cached_step=lambda hidden: hidden[0] / 10)


@pytest.mark.parametrize("mode", ["predictor", "reuse_cache", "reuse_output", "taylor"])
def test_every_mode_runs_through_the_one_call(mode):
    """Anchors batched as (c, u), later steps split per cond: each mode gives its output for each cond's rows."""
    model, run = LinearInTime(), make_run(steps=6, interval=3, mode=mode)
    times = torch.tensor([900.0, 800.0, 700.0, 600.0, 500.0, 400.0])
    outputs = []
    for step, t in enumerate(times):
        if run.is_anchor(step):
            outputs.append(model.call(run, ("c", "u"), t.expand(2)))
        else:
            outputs.append(torch.cat([model.call(run, (u,), t.expand(1)) for u in ("c", "u")]))
        run.step_finished(step)
    assert model.full_calls == 2 and set(model.captures) == {mode in ("predictor", "reuse_cache")}
    assert run.stats.full_steps == {0, 3} and run.stats.predicted_steps == {1, 2, 4, 5}
    anchor_at = {1: 0, 2: 0, 4: 3, 5: 3}
    for step, out in enumerate(outputs):
        exact = model.output([0, 1], times[step].expand(2))
        if step in (0, 3) or mode == "taylor" and step > 3:  # two anchors: extrapolation of a line is exact
            torch.testing.assert_close(out, exact)
        else:  # the anchor's output, whether stored as it is or through the 'hidden state' and back
            torch.testing.assert_close(out, model.output([0, 1], times[anchor_at[step]].expand(2)))


def test_config_validation():
    with pytest.raises(ValueError, match="mode must be one of"):
        DisCaConfig(AnchorSchedule(interval=2), mode="fora")
    with pytest.raises(ValueError, match="cache_device must be one of"):
        DisCaConfig(AnchorSchedule(interval=2), cache_device="gpu1")


def test_core_packages_never_import_comfy():
    code = ("import sys, disca.formats, disca.schedules, disca.runtime, disca.predictor;"
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m == 'folder_paths'];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_run_warns_when_a_list_specific_predictor_serves_another_list(caplog):
    predictor = torch.nn.Linear(4, 4)
    predictor.trained_only_on_lists = ((0, 1, 3, 7, 13),)
    warned = lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="disca"):
        DisCaRun(DisCaConfig(AnchorSchedule(anchors=(0, 1, 3, 7, 13))), 20, predictor)
        DisCaRun(DisCaConfig(AnchorSchedule(interval=4), mode="reuse_output"), 20, predictor)  # no predictor runs
        assert not warned()
        DisCaRun(DisCaConfig(AnchorSchedule(interval=4)), 20, predictor)
    assert warned() == ["DisCa: the predictor was trained only for the anchor lists [[0, 1, 3, 7, 13]], and this "
                        "run's anchors [0, 4, 8, 12, 16] are none of them: its quality here is untested. Serve one "
                        "of those lists, or use a predictor trained on interval schedules (the official ones are)."]
