"""The benchmark scripts run end to end on tiny inputs and print one JSON object with consistent figures.

(Speed is measured by the benchmarks themselves, never asserted here.) The figures are checked against the
model's FLOP formula, the dataset's shapes and, for the scaling table, the runs' own ``metrics.jsonl``.
"""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainjax.config import load_config
from brainjax.models.brainlm import model_flops_per_sample
from brainjax.train.memory import count_parameters

REPO = Path(__file__).resolve().parent.parent
# One step setup for train_step, sweep and loader_vs_step (160 = the parcels of `small_data`): they compile the
# same programs, so the persistent compilation cache (conftest) compiles them once per test worker.
STEP = ("--batch", "4", "--steps", "2", "--set", "model.dec_depth=2")


def _run(script: str, *args: str, stderr: bool = False) -> dict | tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object
    out = json.loads(lines[0])
    return (out, proc.stderr) if stderr else out


def _script(name: str):
    """A benchmark script imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Dosenbach-160, 6 subjects x 60 TRs: enough windows for a few tiny-preset batches."""
    from brainjax.data.synthetic import SynthConfig, synthesize

    path = tmp_path_factory.mktemp("bench") / "ds"
    synthesize(path, SynthConfig(subjects=6, scans_per_subject=1, timepoints=60, atlas="dosenbach160"))
    return path


@pytest.mark.slow
def test_train_step_benchmark_reports_consistent_figures():
    out = _run("train_step.py", "--preset", "tiny", *STEP, "--parcels", "160", "--peak-size", "256")
    cfg = load_config("tiny")
    assert out["overrides"] == ["model.dec_depth=2"] and out["parcels"] == 160 and out["batch"] == 4
    assert out["tokens_per_sample"] == 160 * cfg.data.window // cfg.model.patch
    model = dataclasses.replace(cfg.model, dec_depth=2)
    expected = model_flops_per_sample(model, 160, cfg.data.window, cfg.mask) * 4 / 1e12
    assert np.isclose(out["model_tflop_per_step"], expected, rtol=1e-3)  # printed to 4 significant digits
    assert len(out["step_times_s"]) == 2  # printed to 4 significant digits
    assert abs(out["median_step_s"] - float(np.median(out["step_times_s"]))) <= 1e-3
    assert out["samples_per_s"] > 0 and out["peak_gflops_fp32"] > 0 and out["peak_gflops_bf16"] > 0
    # MFU = achieved / peak of the compute dtype; achieved is printed rounded to 0.05 GFLOP/s
    assert abs(out["mfu"] - out["achieved_gflops"] / out["peak_gflops_fp32"]) <= 0.06 / out["peak_gflops_fp32"] + 1e-4
    assert out["peak_rss_gib"] > 0


def test_loader_benchmark_counts_windows(small_data):
    out = _run("loader.py", "--data", str(small_data), "--window", "40", "--batch", "4", "--seconds", "1")
    assert out["windows_per_s"] > 0
    # MB/s counts float32 signal: windows/s x parcels x window x 4 bytes
    assert np.isclose(out["mb_per_s"], out["windows_per_s"] * 160 * 40 * 4 / 1e6, rtol=0.02)


@pytest.mark.slow
def test_sweep_keeps_a_failing_configuration_as_an_error_row():
    out, err = _run("sweep.py", "--presets", "tiny,no_such_preset", "--dtypes", "float32", *STEP, "--parcels",
                    "160", "--peak-size", "256", "--markdown", stderr=True)
    good, bad = out["rows"]
    cfg = load_config("tiny")
    assert (good["preset"], good["dtype"], good["batch"], good["parcels"]) == ("tiny", "float32", 4, 160)
    assert "error" not in good and good["tokens"] == 160 * cfg.data.window // cfg.model.patch
    model = dataclasses.replace(cfg.model, dec_depth=2)  # --set reaches every configuration
    expected = model_flops_per_sample(model, 160, cfg.data.window, cfg.mask) * 4 / 1e12
    assert np.isclose(good["model_tflop_per_step"], expected, rtol=1e-3)
    assert np.isclose(good["samples_per_s"], 4 / good["median_step_s"], rtol=2e-3)  # 4 significant digits
    assert np.isclose(good["tokens_per_s"], good["tokens"] * good["samples_per_s"], rtol=1e-3)
    peak = good["peak_gflops_fp32"]
    assert abs(good["mfu"] - good["achieved_gflops"] / peak) <= 0.06 / peak + 1e-4  # achieved: 0.1 GFLOP/s steps
    assert good["peak_rss_gib"] > 0
    assert bad["preset"] == "no_such_preset" and "no_such_preset" in bad["error"] and "median_step_s" not in bad
    table = [line for line in err.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[2].startswith("| tiny | float32 | 4 | 160 |") and "no_such_preset" in table[3]


def test_sweep_helpers_reject_empty_lists_and_format_rows():
    sweep = _script("sweep")
    with pytest.raises(ValueError, match="--dtypes is empty"):
        sweep.split_list(" , ", "--dtypes")
    assert sweep.split_list("tiny, default,", "--presets") == ["tiny", "default"]
    record = {"preset": "p", "dtype": "bfloat16", "batch": 4, "parcels": 10, "tokens_per_sample": 20, "params": 7,
              "median_step_s": 0.5, "samples_per_s": 8.0, "model_tflop_per_step": 0.1, "mfu": 0.2,
              "peak_rss_gib": 1.0, "compile_s": 3.0}
    row = sweep.row_from_record(record)
    assert row["tokens"] == 20 and row["tokens_per_s"] == 160.0 and row["compile_s"] == 3.0
    assert sweep.markdown([row, {"preset": "q", "dtype": "float32", "error": "a | b"}]).splitlines()[-1].endswith(
        "| a / b |")  # a pipe inside a cell would split it


@pytest.mark.slow
def test_loader_vs_step_reports_both_rates_and_their_ratio(small_data):
    out = _run("loader_vs_step.py", "--preset", "tiny", "--data", str(small_data), *STEP, "--threads", "2",
               "--seconds", "1")
    assert out["parcels"] == 160 and out["window"] == load_config("tiny").data.window and out["batch"] == 4
    loader, step = out["loader"], out["step"]
    assert loader["read_threads"] == 2 and loader["workers"] == 0 and loader["batch_size"] == 4
    assert loader["data"] == str(small_data.resolve()) and loader["batches"] > 0
    assert step["tokens_per_sample"] == 160 * out["window"] // load_config("tiny").model.patch
    assert np.isclose(out["step_windows_per_s"], 4 / step["median_step_s"], rtol=1e-3)
    assert np.isclose(out["loader_windows_per_s"], loader["windows_per_s"], rtol=1e-3)
    assert np.isclose(out["ratio"], out["loader_windows_per_s"] / out["step_windows_per_s"], rtol=2e-3)


def test_loader_vs_step_compare_rejects_a_loader_that_delivered_nothing():
    compare = _script("loader_vs_step").compare
    assert compare(30.0, 8, 0.5) == {"loader_windows_per_s": 30.0, "step_windows_per_s": 16.0, "ratio": 1.875}
    with pytest.raises(ValueError, match="rates must be positive"):
        compare(0.0, 8, 0.5)


@pytest.mark.slow
def test_scaling_matches_losses_across_devices_against_the_metrics_files(small_data, tmp_path):
    out = _run("scaling.py", "--preset", "tiny", "--steps", "2", "--devices", "1,2", "--multi", "none",
               "--data", str(small_data), "--set", "train.peak_flops=1e11", "--set", "data.eval_batches=1",
               "--keep", str(tmp_path))
    one, two = out["rows"]
    assert (one["devices"], one["processes"], two["devices"], two["processes"]) == (1, 1, 2, 1)
    assert "error" not in one and "error" not in two and out["batch"] == load_config("tiny").data.batch_size
    runs = {}
    for name in ("p1_d1", "p1_d2"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(line) for line in lines]
    losses = {name: np.array([r["loss"] for r in records]) for name, records in runs.items()}
    assert [r["step"] for r in runs["p1_d2"]] == [1, 2] and one["steps_compared"] == 2
    assert one["max_abs_loss_diff"] == 0.0
    assert math.isfinite(two["max_abs_loss_diff"])
    assert np.isclose(two["max_abs_loss_diff"], np.abs(losses["p1_d2"] - losses["p1_d1"]).max(), rtol=0, atol=1e-12)
    assert two["max_abs_loss_diff"] < 1e-4  # same global batch and rng: only the reduction order differs
    for row, name in ((one, "p1_d1"), (two, "p1_d2")):
        rates = [r["steps_per_s"] for r in runs[name] if r["step"] >= 2]
        assert np.isclose(row["step_s"], np.median(1 / np.array(rates)), rtol=1e-3)  # 4 significant digits
        assert row["final_loss"] == losses[name][-1] and row["wall_s"] > row["step_s"]
    assert one["overhead"] == 1.0 and abs(two["overhead"] - two["step_s"] / one["step_s"]) <= 5e-4


@pytest.mark.slow
def test_scaling_reports_a_failed_run_as_an_error_row(tmp_path):
    out = _run("scaling.py", "--preset", "tiny", "--steps", "2", "--devices", "1", "--multi", "none",
               "--data", str(tmp_path / "missing"))
    (row,) = out["rows"]
    assert row["devices"] == 1 and "exit status" in row["error"] and "missing" in row["error"]
    assert "step_s" not in row and "overhead" not in row


def test_scaling_summary_needs_every_reference_step():
    scaling = _script("scaling")
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "steps_per_s": 4.0},
               {"step": 3, "loss": 1.25, "steps_per_s": 2.0}, {"step": 4, "loss": 1.0, "steps_per_s": 1.0}]
    row = scaling.summarize(records, {1: 2.5, 2: 1.5, 3: 1.0, 4: 1.0})
    assert row == {"step_s": 0.5, "max_abs_loss_diff": 0.5, "steps_compared": 4, "final_loss": 1.0}
    assert scaling.summarize(records, None)["max_abs_loss_diff"] == 0.0
    with pytest.raises(ValueError, match=r"steps \[5\] of the 1-device run"):
        scaling.summarize(records, {4: 1.0, 5: 1.0})
    assert scaling.parse_multi("2x4") == (2, 4) and scaling.parse_multi("none") is None
    for bad in ("2by4", "1x4"):
        with pytest.raises(ValueError, match="--multi"):
            scaling.parse_multi(bad)


@pytest.mark.slow
def test_quality_rows_restate_the_evaluation_report(small_data, tmp_path):
    out = _run("quality.py", "--presets", "tiny", "--data", str(small_data), "--root", str(tmp_path),
               "--set", "train.steps=3", "--set", "train.figure=false",
               "--eval-args", "--tasks reconstruct,forecast --lstm-steps 0 --max-windows 8")
    assert out["cpu"] and set(out["presets"]) == {"tiny"}
    entry = out["presets"]["tiny"]
    assert entry["steps"] == 3 and entry["train_s"] > 0 and entry["eval_s"] > 0
    report = json.loads((tmp_path / "tiny" / "eval" / "report.json").read_text())
    rows = {row["task"]: row for row in entry["rows"]}
    assert {f"reconstruct/{s}" for s in ("random", "parcels", "time_block", "future")} <= set(rows)
    for strategy in ("random", "future"):
        row, rec = rows[f"reconstruct/{strategy}"], report["tasks"]["reconstruct"][strategy]
        assert row["model"] == rec["model"]["r2"] and row["baseline_value"] == rec[row["baseline"]]["r2"]
        assert np.isclose(row["diff"], row["model"] - row["baseline_value"], atol=1e-9)
    forecast = report["tasks"]["forecast"]
    row = rows["forecast"]
    assert row["model"] == forecast["methods"]["model"]["mse"]
    assert sum(row["steps"].values()) == forecast["horizon_trs"] == len(forecast["per_step"])
    for row in entry["rows"]:
        finite = all(isinstance(row[k], float) and math.isfinite(row[k]) for k in ("low", "high"))
        if finite:
            assert row["low"] <= row["diff"] <= row["high"]
            good = row["low"] > 0 if row["metric"] != "mse" else row["high"] < 0
            bad = row["high"] < 0 if row["metric"] != "mse" else row["low"] > 0
            assert row["verdict"] == ("beats" if good else "loses" if bad else "ties")


@pytest.mark.slow
def test_restore_memory_compares_the_two_restores_of_one_checkpoint():
    out = _run("restore_memory.py", "--preset", "tiny")
    n_params = count_parameters(load_config("tiny").model)  # the memory plan's analytic count
    assert out["preset"] == "tiny" and out["parameters"] == n_params and out["checkpoint_bytes"] > 4 * n_params
    full, params = out["full_state"], out["params_only"]
    for entry in (full, params):
        assert entry["peak_rss_gib"] >= entry["restore_rss_gib"] > 0 and entry["seconds"] > 0
    assert out["ratio"] == pytest.approx(full["restore_rss_gib"] / params["restore_rss_gib"], abs=0.01)


@pytest.mark.slow
def test_checkpoint_integrity_times_saves_and_restores_with_and_without_checksums():
    out = _run("checkpoint_integrity.py", "--preset", "tiny", "--repeats", "1")
    n_params = count_parameters(load_config("tiny").model)  # the memory plan's analytic count
    assert out["preset"] == "tiny" and out["parameters"] == n_params and out["repeats"] == 1
    assert out["checkpoint_bytes"] > 4 * n_params and out["files"] > 1 and out["cpu"]
    for key in ("save_s", "restore_s", "restore_params_s"):
        entry = out[key]
        assert entry["without"] > 0 and entry["with"] > 0
        assert entry["overhead"] == pytest.approx(entry["with"] / entry["without"] - 1, abs=0.01)
    assert 0 < out["checksum_s"] and 0 < out["verify_s"]
    assert out["checksum_gb_per_s"] == pytest.approx(out["checkpoint_bytes"] / out["checksum_s"] / 1e9, rel=0.05,
                                                     abs=0.01)


def test_oracle_bound_scores_the_generator_above_the_regression_baseline(small_data):
    # held-out scans (the test split's one scan): on its own training scans the regression overfits its covariance
    out = _run("oracle_bound.py", "--data", str(small_data), "--split", "test", "--max-windows", "3",
               "--window", "20", "--patch", "5", "--strategies", "random,future")
    assert out["windows"] == 3 and set(out["strategies"]) == {"random", "future"}
    for entry in out["strategies"].values():
        r2, diff = entry["r2"], entry["oracle_minus_regression"]
        assert np.isclose(diff["diff"], r2["oracle"] - r2["regression"], atol=1e-9)
        assert r2["oracle"] > r2["regression"]  # the generator's own conditional mean is the best predictor
    steps = out["future_step_mse"]
    assert set(steps) == {"oracle", "regression", "ar3", "var1"} and all(len(v) == 5 for v in steps.values())
    assert steps["oracle"][0] < min(steps["ar3"][0], steps["var1"][0])
    assert sum(out["forecast_steps"]["oracle"][v] for v in ("beats", "ties", "loses")) == 5


@pytest.mark.slow
def test_time_to_quality_reads_each_curve_from_its_metrics_log(small_data, tmp_path):
    from brainjax.train.logging import read_metrics

    out = _run("time_to_quality.py", "--preset", "tiny", "--decoders", "full,cross", "--steps", "4",
               "--eval-every", "2", "--root", str(tmp_path), "--data", str(small_data))
    assert set(out["runs"]) == {"full", "cross"} and out["cpu"]
    for decoder, run in out["runs"].items():
        logged = [r for r in read_metrics(tmp_path / decoder) if "val_r2" in r]
        assert [p["step"] for p in run["curve"]] == [r["step"] for r in logged] == [2, 4]
        assert [p["val_r2"] for p in run["curve"]] == [round(r["val_r2"], 4) for r in logged]
        assert 0 < run["curve"][0]["train_s"] < run["curve"][1]["train_s"] <= run["wall_s"]
        assert run["best_val_r2"] == max(p["val_r2"] for p in run["curve"])
    assert out["target_val_r2"] == out["runs"]["full"]["best_val_r2"] and out["runs"]["full"]["time_ratio"] == 1.0


def test_time_to_reach_takes_the_first_point_at_the_target():
    reach = _script("time_to_quality").time_to_reach
    points = [{"train_s": 1.0, "val_r2": 0.1}, {"train_s": 2.0, "val_r2": 0.3}, {"train_s": 3.0, "val_r2": 0.2}]
    assert reach(points, 0.25) == 2.0 and reach(points, 0.1) == 1.0 and reach(points, 0.31) is None


@pytest.mark.slow
def test_plan_vs_xla_sets_the_plan_beside_the_compiled_step():
    from brainjax.train import memory

    out = _run("plan_vs_xla.py", "--presets", "tiny")
    (row,) = out["rows"]
    est = memory.estimate(load_config("tiny"), row["parcels"], 1, 1, out["platform"])
    assert row["plan_gib"] == round(est.total / 2**30, 3) and row["mesh"] == [1, 1]
    assert row["xla_gib"] >= row["xla_temp_gib"] > 0
    assert row["xla_over_plan"] == pytest.approx(row["xla_gib"] / row["plan_gib"], rel=0.02)
