import pytest
import torch

from disca.schedules import PRESETS, AnchorSchedule, ScheduleError, flow_sigmas, parse_step_list


def test_official_presets():
    assert sorted(AnchorSchedule.from_preset("t2v_official_10of20").anchor_steps(20)) == [0, 1, 2, 5, 9, 11, 13, 15, 17, 19]
    assert sorted(AnchorSchedule.from_preset("t2v_official_8of20").anchor_steps(20)) == [0, 1, 2, 5, 9, 13, 17, 19]
    assert sorted(AnchorSchedule.from_preset("i2v_official_4of8").anchor_steps(8)) == [0, 2, 4, 7]
    assert (PRESETS["t2v_official_10of20"].shift, PRESETS["i2v_official_4of8"].shift) == (5.0, 7.0)


@pytest.mark.parametrize("n,steps,expected", [(1, 4, [0, 1, 2, 3]), (2, 5, [0, 2, 4]), (4, 10, [0, 4, 8]), (3, 10, [0, 3, 6, 9])])
def test_interval(n, steps, expected):
    assert sorted(AnchorSchedule(interval=n).anchor_steps(steps)) == expected


@pytest.mark.parametrize("text,message", [
    ("", "step_list is empty"),
    ("  ", "step_list is empty"),
    ("0 2 1", "strictly increasing with no duplicates, e.g. \\[0, 1, 2\\]"),
    ("0 2 2 4", "strictly increasing with no duplicates"),
    ("1 2 3", "must start with step 0"),
    ("0 a 3", "must hold integers"),
])
def test_bad_step_lists(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_step_list(text)


def test_step_list_out_of_range_names_the_step_count():
    schedule = AnchorSchedule(anchors=parse_step_list("0, 4, 9"))
    assert sorted(schedule.anchor_steps(10)) == [0, 4, 9]
    with pytest.raises(ScheduleError, match="has step 9 but the sampler runs only 8 steps"):
        schedule.anchor_steps(8)


def test_preset_tied_to_its_step_count():
    with pytest.raises(ScheduleError, match="is for 20 steps, but the sampler runs 10"):
        AnchorSchedule.from_preset("t2v_official_8of20").anchor_steps(10)


@pytest.mark.parametrize("n", [0, -3])
def test_interval_below_one(n):
    with pytest.raises(ScheduleError, match=f"interval N must be >= 1.*got {n}"):
        AnchorSchedule(interval=n)


def test_unknown_preset_lists_choices():
    with pytest.raises(ScheduleError, match="unknown preset 'N9'; choose one of"):
        AnchorSchedule.from_preset("N9")


def test_flow_sigmas_match_the_official_shifted_schedule():
    sigmas = flow_sigmas(20, 5.0)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (21,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    s = 1 - 7 / 20
    assert sigmas[7].item() == pytest.approx(5 * s / (1 + 4 * s), abs=1e-7)
    assert torch.allclose(flow_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ScheduleError, match="shift must be > 0"):
        flow_sigmas(4, 0.0)


def test_parse_reads_a_preset_or_a_step_list_and_names_both_on_error():
    assert AnchorSchedule.parse("t2v_official_8of20") == AnchorSchedule.from_preset("t2v_official_8of20")
    assert AnchorSchedule.parse("0 2 5").anchor_steps(8) == frozenset({0, 2, 5})
    with pytest.raises(ScheduleError, match=r"'N9' is neither a preset \(.*'N4'.*\) nor a valid step list"):
        AnchorSchedule.parse("N9")
