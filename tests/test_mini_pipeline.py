"""DisCa-mini end to end on the smoke preset (CPU, ~1 min): every stage of `benchmarks.mini.run`, the report and the
demo on the embedded files it writes; and the shipped demo weights, when present, within the 25 MB budget."""

import dataclasses
import json
import logging
import os

import pytest
import torch

from benchmarks.mini import demo, run
from disca.formats import load_safetensors, save_safetensors
from disca.schedules import AnchorSchedule

SHIPPED = demo.WEIGHTS


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: 2 threads on the shared 2-core machine are far slower
    out = str(tmp_path_factory.mktemp("mini"))
    try:
        run.run("smoke", out)
    finally:
        torch.set_num_threads(threads)
    return out


def test_every_stage_writes_its_result_and_the_report_checks_the_orderings(smoke_run):
    paths = run.Paths(smoke_run)
    for stage in run.STAGES:
        assert run.stage_done(stage, paths), stage
    results = json.load(open(paths["evaluate"]))
    preset = run.PRESETS["smoke"]
    assert results["complete"] and list(results["seeds"]) == [str(s) for s in preset.eval_seeds]
    for rows in results["seeds"].values():
        assert len(rows) == len(run.method_rows(preset, paths))
    rows = results["seeds"]["0"]
    assert rows["R-MeanFlow (R=0.2) 10 steps"]["dit_calls"] == 10
    assert rows[f"DisCa N=4 (MSE+GAN)"]["dit_calls"] == len(range(0, preset.steps, 4))  # predictor steps run no block
    assert rows[run.frontier_row()]["dit_calls"] == len(run.FRONTIER_ANCHORS)
    assert rows[f"teacher {preset.teacher_steps}x2 (CFG 4.0)"]["dit_calls"] == 2 * preset.teacher_steps
    # the two noise seeds give different videos (not one evaluation written twice)
    assert results["seeds"]["0"]["MeanFlow (R=1.0) 10 steps"] != results["seeds"]["1"]["MeanFlow (R=1.0) 10 steps"]
    report = open(paths["report"]).read()
    verdicts = [line for line in report.splitlines() if line.startswith("  - ")]
    assert "## The paper's orderings" in report and len(verdicts) == 20  # (a)-(f): 3+2+2+3+3+3+3+1 comparisons
    assert all(line[4:].startswith(("HOLDS", "DOES NOT HOLD", "NOT SEPARABLE")) for line in verdicts), verdicts
    for image in ("quality_vs_calls.png", "strip.png"):
        assert os.path.getsize(os.path.join(smoke_run, image)) > 1000


def test_predictor_budget_trains_a_variant_from_the_run_and_evaluates_it_beside_the_frontier_rows(smoke_run):
    from benchmarks.mini import predictor_budget as budget
    preset, paths = run.PRESETS["smoke"], run.Paths(smoke_run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        budget.main(["--out", smoke_run, "--preset", "smoke", "--train", "x6", "--device", "cpu"])
        with pytest.raises(SystemExit):
            budget.main(["--out", smoke_run, "--preset", "smoke", "--train", "x7"])
        budget.main(["--out", smoke_run, "--preset", "smoke", "--evaluate", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    report = json.load(open(os.path.join(smoke_run, budget.FOLDER, "x6", "report.json")))
    assert report["steps"] == budget.STEPS_FACTOR * preset.predictor_mse_steps
    assert [e["step"] for e in report["held_out_evaluations"]][-1] == report["steps"]
    rows = json.load(open(os.path.join(smoke_run, budget.FOLDER, "results.json")))["seeds"]["0"]
    assert rows["DisCa N=4 (MSE, x6)"]["dit_calls"] == len(range(0, preset.steps, 4))
    assert rows[f"output reuse, {len(run.FRONTIER_ANCHORS)} of {run.FRONTIER_STEPS} full steps"]["dit_calls"] == len(run.FRONTIER_ANCHORS)
    assert not any("x6_lr4x" in name for name in rows)  # untrained variants are left out, not failed
    assert "DisCa N=4 (MSE, x6)" in open(os.path.join(smoke_run, budget.FOLDER, "RESULTS.md")).read()


def test_served_schedule_continues_a_predictor_on_one_list_and_adds_only_new_rows(smoke_run, monkeypatch):
    from benchmarks.mini import served_schedule as served
    # the lists are 20-step lists: the smoke run's models on a 20-step schedule; the smoke predictor as the start
    preset = dataclasses.replace(run.PRESETS["smoke"], steps=20)
    monkeypatch.setitem(run.PRESETS, "smoke20", preset)
    start = run.Paths(smoke_run)["predictor_mse"]
    args = ["--out", smoke_run, "--preset", "smoke20", "--start", start, "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        served.main(args + ["--train", "early5"])
        with pytest.raises(SystemExit):
            served.main(args + ["--train", "early4"])
        served.main(args + ["--evaluate"])
        results_file = os.path.join(smoke_run, served.FOLDER, "results.json")
        first = json.load(open(results_file))["seeds"]["0"]
        served.main(args + ["--evaluate"])  # nothing new: every row but the teacher's (the PSNR reference) is kept
        again = json.load(open(results_file))["seeds"]["0"]
    finally:
        torch.set_num_threads(threads)
    config = json.load(open(os.path.join(smoke_run, served.FOLDER, "early5", "report.json")))
    assert config["steps"] == 2 * preset.predictor_mse_steps
    trained = f"DisCa anchors {' '.join(map(str, served.EARLY5))} (early5)"
    assert first[trained]["dit_calls"] == len(served.EARLY5)
    assert first["DisCa anchors 0 1 2 4 7 11 15 (shipped x6)"]["dit_calls"] == 7
    assert not any("dense6" in name for name in first)  # untrained variants are left out, not failed
    assert {name: row for name, row in again.items() if row["group"] != "teacher"} == \
        {name: row for name, row in first.items() if row["group"] != "teacher"}
    assert trained in open(os.path.join(smoke_run, served.FOLDER, "RESULTS.md")).read()


def test_a_finished_stage_is_skipped_not_redone(smoke_run):
    before = os.path.getmtime(run.Paths(smoke_run)["teacher"])
    run.run("smoke", smoke_run, stages=("teacher",))
    assert os.path.getmtime(run.Paths(smoke_run)["teacher"]) == before


def test_demo_writes_a_side_by_side_gif_and_reports_speed_and_verdicts(smoke_run, tmp_path, capsys):
    from PIL import Image
    out = str(tmp_path / "demo.gif")
    result = demo.main(["--weights", os.path.join(smoke_run, "embedded"), "--out", out])
    gif = Image.open(out)
    size = run.PRESETS["smoke"].spec.size * 4
    assert gif.n_frames == run.PRESETS["smoke"].spec.frames and gif.size == (2 * size + 8, size + 22)
    assert result["speedup"] > 0 and result["dit_calls"]["with"] < result["dit_calls"]["without"]
    printed = capsys.readouterr().out
    assert "speedup" in printed and "classifier, with DisCa" in printed
    assert "runtime, last timed run: DisCa [" in printed and "of full" in printed and "MiB, predictor" in printed
    assert not logging.getLogger("disca").handlers  # the demo's collector is gone


def test_demo_takes_an_anchor_list_and_a_predictor_and_refuses_bad_ones_before_loading_models(smoke_run, tmp_path,
                                                                                               capsys):
    weights = os.path.join(smoke_run, "embedded")
    other = str(tmp_path / "list_trained.safetensors")  # outside the weights folder, trained for one list only
    tensors, metadata = load_safetensors(os.path.join(weights, "predictor.safetensors"))
    del metadata["disca.interval_range"]
    save_safetensors(other, tensors, {**metadata, "disca.step_lists": "[[0, 1, 3]]"})
    result = demo.main(["--weights", weights, "--out", str(tmp_path / "d.gif"), "--schedule", "0 1 4",
                        "--predictor", other])
    printed = capsys.readouterr().out
    assert result["dit_calls"]["with"] == 3 and "anchors [0, 1, 4]" in printed
    assert result["predictor"] == other and f"predictor: {other}" in printed
    assert printed.count("warning: DisCa: the predictor was trained only for the anchor lists [[0, 1, 3]], and this "
                         "run's anchors [0, 1, 4] are none of them") == 1
    steps = run.PRESETS["smoke"].steps
    settings_only = tmp_path / "settings_only"  # no model files: a bad schedule must be refused before loading them
    settings_only.mkdir()
    (settings_only / "demo.json").write_text(open(os.path.join(weights, "demo.json")).read())
    for args, message in ((["--schedule", f"0 {steps}"], f"has step {steps} but the sampler runs only {steps} steps"),
                          (["--schedule", "1 2"], "must start with step 0"),
                          (["--interval", "0"], "interval N must be >= 1"),
                          (["--schedule", "N2", "--interval", "2"], "give --schedule or --interval, not both"),
                          (["--predictor", str(tmp_path / "absent.safetensors")], "absent.safetensors' is not a file"),
                          (["--predictor", str(settings_only / "demo.json")], "demo.json: not a safetensors file")):
        with pytest.raises(SystemExit):
            demo.main(["--weights", str(settings_only), "--out", str(tmp_path / "e.gif"), *args])
        assert message in capsys.readouterr().err, args


def test_paired_comparison_counts_prompts_and_pools_each_prompt_over_seeds():
    from benchmarks.mini import paired

    correct = {paired.NO_CACHE: {"0": [1, 0, 1, 0], "1": [1, 1, 0, 0]},
               "DisCa anchors 0 2": {"0": [1, 1, 1, 0], "1": [0, 1, 0, 0], "2": [1, 1, 1, 1]}}
    baseline, disca = paired.summarize(correct)
    assert list(disca["seeds"]) == ["0", "1"]  # seed 2 has no no-cache row to pair with
    assert disca["seeds"]["0"]["accuracy"] == 0.75 and disca["seeds"]["0"]["standard_error"] == pytest.approx(0.2165, abs=1e-4)
    assert disca["seeds"]["0"]["difference"] == 0.25 and disca["seeds"]["0"]["difference_error"] == pytest.approx(0.25)
    assert disca["seeds"]["1"]["difference"] == -0.25
    # per prompt over the seeds: -0.5, 0.5, 0, 0 -> mean 0, standard error of 4 prompts (not of 8 prompt-seed pairs)
    assert disca["pooled"]["difference"] == 0 and disca["pooled"]["difference_error"] == pytest.approx(0.2041, abs=1e-4)
    assert baseline["pooled"] == {"difference": 0.0, "difference_error": 0.0}
    assert "| DisCa anchors 0 2 | 2 | 0.750 ± 0.217 | 0.250 ± 0.217 | +0.250 ± 0.250 | -0.250 ± 0.250 | +0.000 ± 0.204 |" \
        in paired.table([baseline, disca], {paired.NO_CACHE: 20, "DisCa anchors 0 2": 2})


def test_paired_comparison_refuses_a_bad_schedule_before_loading_models(tmp_path):
    from benchmarks.mini import paired

    with pytest.raises(SystemExit, match="--schedules: step_list \\[0, 25\\] has step 25 but the sampler runs only 20"):
        paired.main(["--out", str(tmp_path), "--schedules", "0 25", "--weights", str(tmp_path / "absent")])


def test_paired_comparison_refuses_a_missing_predictor_before_loading_models(tmp_path):
    from benchmarks.mini import paired

    with pytest.raises(SystemExit, match="--predictor: .*absent.safetensors is not a file"):
        paired.main(["--out", str(tmp_path), "--predictor", str(tmp_path / "absent.safetensors")])


@pytest.mark.parametrize("flags, message", [
    (["--schedules", "0 25"], "--schedules: step_list \\[0, 25\\] has step 25"),
    (["--init", "absent.safetensors"], "--init: absent.safetensors is not a file"),
    (["--held-out", "0"], "--held-out must be >= 1, got 0"),
])
def test_rollout_tune_refuses_bad_flags_before_writing_anything(tmp_path, flags, message):
    from benchmarks.mini import rollout_tune

    with pytest.raises(SystemExit, match=message):
        rollout_tune.main(["--out", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run").exists()


def test_demo_refuses_an_output_that_is_not_a_gif(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--out", "results"])
    assert "--out 'results': give the path of a .gif file" in capsys.readouterr().err


def test_demo_refuses_prompts_outside_the_vocabulary():
    with pytest.raises(SystemExit, match="does not follow the DisCa-mini pattern"):
        demo.prompt_attributes("a cat playing piano")
    with pytest.raises(SystemExit, match="colour 'pink' is not one of"):
        demo.prompt_attributes("a pink circle moving left, fast, over a plain background")


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "demo.json")), reason="no shipped demo weights yet")
def test_shipped_demo_weights_fit_the_budget_and_carry_metadata():
    from disca.formats import load_predictor_file, load_safetensors
    sizes = {name: os.path.getsize(os.path.join(SHIPPED, f"{name}.safetensors")) for name in ("dit", "predictor")}
    assert sum(sizes.values()) <= 25e6, sizes
    _, metadata = load_safetensors(os.path.join(SHIPPED, "dit.safetensors"))
    assert any(k.startswith("disca") for k in metadata)
    load_predictor_file(os.path.join(SHIPPED, "predictor.safetensors"))
    settings = json.load(open(os.path.join(SHIPPED, "demo.json")))
    assert AnchorSchedule.parse(settings["schedule"]).anchor_steps(settings["steps"])  # the demo's default runs


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHIPPED, "demo.json")), reason="no shipped demo weights yet")
def test_cost_ratio_splits_the_demo_models_predicted_step_into_its_parts(tmp_path):
    from benchmarks.mini import cost_ratio

    out = tmp_path / "parts.json"
    parts = cost_ratio.main(["--parts", "--repeats", "1", "--out", str(out)])
    assert list(parts) == ["full step", "predicted step", "embedding (latent, text, t, r, guidance)", "fusion MLP",
                           "predictor blocks (1)", "final layer"]
    assert all(ms > 0 for ms in parts.values()) and parts["predicted step"] < parts["full step"]
    assert json.load(open(out))["milliseconds"] == parts


def test_training_stages_run_on_two_processes_resume_and_refuse_the_rest(tmp_path):
    """v3's teacher runs under `accelerate launch` on every GPU of a lease (benchmarks/mini/device.sh teacher-ddp):
    here 2 gloo processes. The preset's batch is global (split per process); a stage whose output is missing but
    whose checkpoint exists continues from it; the stages that must run in one process are refused up front."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = str(tmp_path / "mini")
    run.run("smoke", out, stages=("data",))
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "benchmarks.mini.run", "--out", out, "--preset", "smoke"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def launched(*args, check=True):
        result = subprocess.run(launch + list(args), env=env, cwd=str(repo), capture_output=True, text=True, timeout=300)
        assert not check or result.returncode == 0, result.stderr[-3000:]
        return result

    refused = launched("--stages", "classifier,teacher", check=False)
    assert refused.returncode != 0 and "['classifier'] in one process first" in refused.stderr
    assert not os.path.exists(os.path.join(out, "teacher"))

    launched("--stages", "teacher")
    paths = run.Paths(out)
    report = json.load(open(os.path.join(paths.folder("teacher"), "report.json")))
    assert report["processes"] == 2 and report["rank_param_max_abs_diff"] == 0.0
    assert json.load(open(os.path.join(paths.folder("teacher"), "stage_seconds.json")))["resumed"] is False
    from training.loop import latest_checkpoint
    config = json.load(open(os.path.join(latest_checkpoint(paths.folder("teacher")), "train_state.json")))
    assert config["run"]["batch_size"] == run.PRESETS["smoke"].teacher["batch_size"] // 2

    steps = run.PRESETS["smoke"].teacher["max_steps"]
    os.remove(paths["teacher"])  # a lease ended after the last checkpoint: the stage continues, to more steps here
    launched("--stages", "teacher", "--teacher-steps", str(steps + 2))
    assert json.load(open(os.path.join(paths.folder("teacher"), "report.json")))["steps"] == steps + 2
    assert json.load(open(os.path.join(paths.folder("teacher"), "stage_seconds.json")))["resumed"] is True


def test_training_latents_rendered_in_parallel_equal_the_serial_ones():
    spec = run.PRESETS["smoke"].spec
    serial = run.training_latents(20, spec, workers=1, chunk=8)
    parallel = run.training_latents(20, spec, workers=2, chunk=8)
    assert serial.shape[0] == 20 and serial.dtype == torch.float16
    assert torch.equal(serial, parallel)


def test_a_verdict_needs_every_noise_seed_to_agree():
    from benchmarks.mini.report import verdict
    yes, no = {"holds": True}, {"holds": False}
    assert verdict([yes, yes]) == "HOLDS" and verdict([no, no]) == "DOES NOT HOLD"
    assert verdict([yes, no]) == verdict([no, yes]) == "NOT SEPARABLE"
    assert verdict([None, None]) == "NOT MEASURED" and verdict([yes, None]) == "HOLDS"


def test_meanflow_diagnosis_measures_against_the_instantaneous_flow(smoke_run, tmp_path):
    """With one substep the reference flow is one Euler step of the instantaneous velocity, so that step's error is
    0 on every interval, while the average velocity (a different reading of the student) is not; the objective table
    (with the CFG-distilled teacher) covers every sample once and splits the adaptive weight over its buckets."""
    from benchmarks.mini import meanflow_diagnosis
    paths = run.Paths(smoke_run)
    result = meanflow_diagnosis.main(["--dit", paths["meanflow_R0.2"], "--classifier", paths["classifier"],
                                      "--preset", "smoke", "--prompts", "3", "--schedules", "2,4", "--substeps", "1",
                                      "--final_r", "0,0.05", "--teacher", paths["cfg_distill"],
                                      "--objective_samples", "6", "--out", str(tmp_path / "diagnosis.json")])
    for steps in ("2", "4"):
        intervals = result["schedules"][steps]["intervals"]
        assert len(intervals) == int(steps) and intervals[-1]["r"] == 0.0
        assert all(i["euler"] < 1e-6 for i in intervals) and any(i["average"] > 1e-4 for i in intervals)
    assert [row["r"] for row in result["final_interval_sweep"]] == [0.0, 0.05]
    assert json.load(open(tmp_path / "diagnosis.json"))["fine_ode_steps"] == 2
    buckets = result["objective_by_interval"]
    assert sum(b["samples"] for b in buckets) == 6 and all(b["mean_L"] > 0 for b in buckets)
    for share in ("adaptive_weight_share", "adaptive_weight_share_p0.5", "mse_weight_share"):
        assert sum(b[share] for b in buckets) == pytest.approx(1.0)


def test_guidance_sweep_reads_validation_prompts_and_records_each_scale(smoke_run, tmp_path):
    """The sweep that chose v3's guidance: one row per scale from the same noises, on prompts of the validation split
    (not the held-out one the verdicts use); its background confusion matrix agrees with the background accuracy."""
    from benchmarks.mini import guidance_sweep
    from benchmarks.mini.dataset import HELDOUT_SEED, VALIDATION_SEED, make_batch
    paths = run.Paths(smoke_run)
    spec = run.PRESETS["smoke"].spec
    assert make_batch(VALIDATION_SEED, range(4), spec)[2] != make_batch(HELDOUT_SEED, range(4), spec)[2]
    out = tmp_path / "guidance.json"
    result = guidance_sweep.main(["--dit", paths["teacher"], "--classifier", paths["classifier"], "--preset", "smoke",
                                  "--scales", "1,3", "--steps", "2", "--prompts", "4", "--out", str(out)])
    assert json.load(open(out)) == result and list(result["scales"]) == ["1.0", "3.0"]
    for row in result["scales"].values():
        matrix = torch.tensor(row["background_confusion"])
        assert matrix.sum() == 4 and matrix.trace() / 4 == pytest.approx(row["accuracy"]["background"])
