"""External cohorts (all test data, no training split): baselines fitted on the checkpoint's own training data
or --baseline-data, and probes fitted on one cohort's labels and tested on the other."""

import json
import shutil

import numpy as np
import pytest
from _trainer_utils import pretrained_synthetic

from brainjax.cli import main as cli
from brainjax.config import with_data
from brainjax.data.dataset import Dataset
from brainjax.data.synthetic import SynthConfig, synthesize
from brainjax.errors import DatasetError
from brainjax.eval.inputs import baseline_data
from brainjax.eval.probe import probe
from brainjax.eval.reconstruct import evaluate_reconstruction
from brainjax.run import load_model


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """(training cohort, its pretrained work dir, an external all-test cohort of the same atlas)."""
    root = tmp_path_factory.mktemp("external")
    data, work = pretrained_synthetic(root)
    external = root / "external"
    synthesize(external, SynthConfig(subjects=12, scans_per_subject=1, timepoints=96, atlas="dosenbach160",
                                     sites=1, seed=7), (0.0, 0.0, 1.0))
    return data, work, external


def test_the_external_cohort_has_no_training_split(cohorts):
    _, _, external = cohorts
    assert {row["split"] for row in Dataset(external).manifest} == {"test"}


def test_baselines_come_from_the_checkpoints_training_data(cohorts, tmp_path):
    data, work, external = cohorts
    loaded = load_model(work)
    assert baseline_data(loaded, str(data)) == {"path": str(data), "source": "the evaluated dataset's training split"}
    chosen = baseline_data(loaded, str(external))
    assert chosen["path"] == str(data) and "checkpoint's training data" in chosen["source"]
    assert baseline_data(loaded, str(external), str(data))["source"] == "--baseline-data"
    with pytest.raises(DatasetError, match=r"no training scans.*--baseline-data"):
        baseline_data(loaded, str(external), str(external))
    other = tmp_path / "other-atlas"
    synthesize(other, SynthConfig(subjects=4, scans_per_subject=1, timepoints=64, atlas="power264", seed=2))
    with pytest.raises(DatasetError, match=r"264 parcels, the evaluated data has 160"):
        baseline_data(loaded, str(external), str(other))


def test_the_recorded_training_data_gone_asks_for_baseline_data(cohorts, tmp_path):
    data, work, external = cohorts
    loaded = load_model(work)
    loaded.cfg = with_data(loaded.cfg, str(tmp_path / "gone"))
    with pytest.raises(DatasetError, match=r"external.*no training split.*dataset directory not found.*"
                                           r"--baseline-data DIR"):
        baseline_data(loaded, str(external))


def test_reconstruction_on_an_external_cohort_uses_the_training_baselines(cohorts, tmp_path):
    data, work, external = cohorts
    loaded = load_model(work)
    chosen = baseline_data(loaded, str(external))
    report = evaluate_reconstruction(loaded, str(external), "test", strategies=("random",), n_boot=50,
                                     baselines_from=chosen["path"])
    assert report["windows"] == len(Dataset(external)) * (96 // loaded.cfg.data.window)
    assert np.isfinite(report["random"]["regression"]["r2"])
    # the regression baseline is fitted on the chosen cohort: another one changes its numbers, not the model's
    other = tmp_path / "other"
    synthesize(other, SynthConfig(subjects=12, scans_per_subject=1, timepoints=96, atlas="dosenbach160", seed=9))
    refit = evaluate_reconstruction(loaded, str(external), "test", strategies=("random",), n_boot=50,
                                    baselines_from=str(other))
    assert refit["random"]["model"] == report["random"]["model"]
    assert refit["random"]["regression"]["r2"] != report["random"]["regression"]["r2"]


def _planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    return x, x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0, 0.0]) + 0.05 * rng.normal(size=n)


def test_transfer_probe_fits_on_one_cohort_and_scores_the_other():
    x_fit, y_fit = _planted(40, 0)
    x_test, y_test = _planted(16, 1)
    x = np.concatenate([x_fit, x_test])
    groups = [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(16)]
    train = np.arange(56) < 40
    result = probe(x, [str(v) for v in np.concatenate([y_fit, y_test])], groups, train=train)
    assert result["transfer"] and result["n_scans"] == 16 and result["n_train"] == 40
    assert result["predictions"]["rows"] == list(range(40, 56))
    assert result["models"]["ridge"]["r2"] > 0.95  # the planted linear effect carries over
    # the external labels are never fitted on: scrambling them leaves the predictions unchanged
    scrambled = np.concatenate([y_fit, np.random.default_rng(5).permutation(y_test)])
    again = probe(x, [str(v) for v in scrambled], groups, train=train)
    np.testing.assert_array_equal(again["predictions"]["ridge"], result["predictions"]["ridge"])
    assert again["models"]["ridge"]["r2"] < 0.5


def test_transfer_probe_skips_when_a_class_is_missing_from_training():
    x, _ = _planted(20, 2)
    labels = ["a"] * 10 + ["b"] * 2 + ["a"] * 4 + ["b"] * 4
    groups = [f"s{i}" for i in range(20)]
    assert "skipped" not in probe(x, labels, groups, train=np.arange(20) < 12)  # 2 training subjects of b
    result = probe(x, labels, groups, train=np.arange(20) < 11)
    assert "class 'b' has 1 training subject(s)" in result["skipped"]


@pytest.mark.slow
def test_evaluate_an_external_cohort_end_to_end(cohorts, tmp_path):
    data, work, external = cohorts
    out = tmp_path / "report.json"
    assert cli(["evaluate", "--workdir", str(work), "--data", str(external), "--tasks", "reconstruct,forecast,probe",
                "--probe-train", str(data), "--lstm-steps", "0", "--out", str(out), "--no-figures"]) == 0
    report = json.loads(out.read_text())
    assert report["baselines"]["path"] == str(data)
    assert report["tasks"]["probe"]["transfer"]["n_train"] == len(Dataset(data))
    assert report["tasks"]["probe"]["n_scans"] == len(Dataset(external))
    age = report["tasks"]["probe"]["phenotypes"]["age"]["fc"]
    assert age["n_scans"] == len(Dataset(external)) and age["folds"] == 1
    assert set(report["tasks"]["forecast"]["methods"]) >= {"model", "persistence", "ar3", "var1"}
    shutil.rmtree(tmp_path / "eval", ignore_errors=True)
