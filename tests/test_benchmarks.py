"""The benchmark scripts run end to end on tiny inputs and print one JSON object with consistent figures.

(Speed is measured by the benchmarks themselves, never asserted here.)
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from brainjax.config import load_config
from brainjax.models.brainlm import model_flops_per_sample

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # exactly one JSON object
    return json.loads(lines[0])


def test_train_step_benchmark_reports_consistent_figures():
    out = _run("train_step.py", "--preset", "tiny", "--batch", "4", "--steps", "2", "--parcels", "12",
               "--peak-size", "256", "--set", "model.dec_depth=2")
    cfg = load_config("tiny")
    assert out["overrides"] == ["model.dec_depth=2"] and out["parcels"] == 12 and out["batch"] == 4
    assert out["tokens_per_sample"] == 12 * cfg.data.window // cfg.model.patch
    model = dataclasses.replace(cfg.model, dec_depth=2)
    expected = model_flops_per_sample(model, 12, cfg.data.window, cfg.mask) * 4 / 1e12
    assert np.isclose(out["model_tflop_per_step"], round(expected, 4))
    assert len(out["step_times_s"]) == 2  # printed times are rounded to ms
    assert abs(out["median_step_s"] - float(np.median(out["step_times_s"]))) <= 1e-3
    assert out["samples_per_s"] > 0 and out["peak_gflops_fp32"] > 0 and out["peak_gflops_bf16"] > 0
    # MFU = achieved / peak of the compute dtype; achieved is printed rounded to 0.05 GFLOP/s
    assert abs(out["mfu"] - out["achieved_gflops"] / out["peak_gflops_fp32"]) <= 0.06 / out["peak_gflops_fp32"] + 1e-4
    assert out["peak_rss_gib"] > 0


def test_loader_benchmark_counts_windows(tmp_path):
    from brainjax.data.synthetic import SynthConfig, synthesize

    synthesize(tmp_path / "ds", SynthConfig(subjects=6, scans_per_subject=1, timepoints=60, atlas="dosenbach160"))
    out = _run("loader.py", "--data", str(tmp_path / "ds"), "--window", "40", "--batch", "4", "--seconds", "1")
    assert out["windows_per_s"] > 0
    # MB/s counts float32 signal: windows/s x parcels x window x 4 bytes
    assert np.isclose(out["mb_per_s"], out["windows_per_s"] * 160 * 40 * 4 / 1e6, rtol=0.02)
