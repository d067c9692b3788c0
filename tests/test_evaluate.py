"""``brainjax evaluate`` end to end on a tiny pretrained model: report structure, numbers recomputed
independently where the pipeline could misalign them (windows, normalisation, horizons, scan order)."""

import json

import numpy as np
import pytest
from _trainer_utils import pretrained_synthetic

from brainjax.cli import main as cli
from brainjax.data.dataset import Dataset
from brainjax.eval.probe import fc_features, probe
from brainjax.eval.report import format_report

WINDOW = 32
pytestmark = pytest.mark.slow  # pretrains on 160 parcels, then a full `brainjax evaluate`


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data, workdir = pretrained_synthetic(root)
    out = root / "eval" / "report.json"
    rc = cli(["evaluate", "--workdir", str(workdir), "--data", str(data), "--out", str(out), "--batch", "8",
              "--folds", "3", "--lstm-steps", "10"])
    assert rc == 0
    return data, workdir, out, json.loads(out.read_text())


def test_report_has_every_task_and_its_figures(evaluated):
    _, _, out, report = evaluated
    assert list(report["tasks"]) == ["reconstruct", "probe", "forecast", "networks"]
    rec = report["tasks"]["reconstruct"]
    for strategy in ("random", "parcels", "time_block", "future"):
        assert set(rec[strategy]) == {"model", "parcel_mean", "interpolation", "regression", "comparison"}
        assert len(rec[strategy]["model"]["r2_per_parcel"]) == 160
        c = rec[strategy]["comparison"]
        baselines = {name: rec[strategy][name]["r2"] for name in ("parcel_mean", "interpolation", "regression")}
        assert c["metric"] == "r2" and c["n_units"] == rec["windows"] and c["n_boot"] == 1000
        # the best baseline by the report's own pooled R², and the difference of the report's own numbers
        assert baselines[c["baseline"]] >= max(v for v in baselines.values() if v is not None) - 1e-12
        assert c["diff"] == pytest.approx(rec[strategy]["model"]["r2"] - baselines[c["baseline"]], abs=1e-9)
        _check_interval(c, higher_is_better=True)
    figures = [*rec["figures"].values(), *report["tasks"]["forecast"]["figures"].values(),
               *report["tasks"]["networks"]["figures"].values()]
    for path in figures:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob("*.tmp*"))
    text = format_report(report)
    for title in ("reconstruction", "probes", "forecast", "networks"):
        assert title in text
    assert "model - best [CI]" in text and "scan-bootstrap interval" in text and "steps beaten: " in text


def _check_interval(c: dict, higher_is_better: bool) -> None:
    """A comparison's interval brackets its difference and its verdict reads the interval (JSON: NaN = None)."""
    assert c["level"] == 0.95 and c["verdict"] in ("beats", "ties", "loses")
    if c["low"] is None or c["high"] is None:
        assert c["verdict"] == "ties"
        return
    assert c["low"] <= c["diff"] <= c["high"]
    good, bad = (c["low"] > 0, c["high"] < 0) if higher_is_better else (c["high"] < 0, c["low"] > 0)
    assert c["verdict"] == ("beats" if good else "loses" if bad else "ties")


def test_windows_and_forecast_baseline_recomputed(evaluated):
    data, _, _, report = evaluated
    ds = Dataset(data)
    test = ds.indices("test")
    windows = [ds.normalize(ds.read(i))[:, k * WINDOW:(k + 1) * WINDOW]
               for i in test for k in range(ds.manifest[i]["length"] // WINDOW)]
    assert report["tasks"]["reconstruct"]["windows"] == len(windows)
    fc = report["tasks"]["forecast"]
    assert (fc["context_trs"], fc["horizon_trs"], fc["windows"]) == (16, 16, len(windows))
    stacked = np.stack(windows)
    persistence = np.repeat(stacked[:, :, 15:16], 16, axis=2)
    errors = (persistence - stacked[:, :, 16:]) ** 2
    assert fc["methods"]["persistence"]["mse"] == pytest.approx(errors.mean(), rel=1e-5)
    np.testing.assert_allclose(fc["methods"]["persistence"]["mse_per_step"], errors.mean((0, 1)), rtol=1e-5)
    assert set(fc["methods"]) == {"model", "persistence", "ar3", "var1", "lstm"}
    # bootstrap comparisons: model MSE - baseline MSE over the same windows, lower is better
    baselines = {name: m for name, m in fc["methods"].items() if name != "model"}
    assert set(fc["vs"]) == set(baselines)
    for name, c in fc["vs"].items():
        assert c["baseline"] == name and c["metric"] == "mse" and c["n_units"] == len(windows)
        assert c["diff"] == pytest.approx(fc["methods"]["model"]["mse"] - baselines[name]["mse"], rel=1e-6, abs=1e-9)
        _check_interval(c, higher_is_better=False)
    best = min(baselines, key=lambda name: baselines[name]["mse"])
    assert fc["comparison"] == fc["vs"][best]
    assert [s["step"] for s in fc["per_step"]] == list(range(1, 17))
    for h, c in enumerate(fc["per_step"]):
        at_h = {name: m["mse_per_step"][h] for name, m in baselines.items()}
        assert at_h[c["baseline"]] == pytest.approx(min(at_h.values()), rel=1e-9)
        assert c["diff"] == pytest.approx(fc["methods"]["model"]["mse_per_step"][h] - at_h[c["baseline"]], rel=1e-6,
                                          abs=1e-9)
        _check_interval(c, higher_is_better=False)


def test_probes_align_scans_with_their_labels(evaluated):
    data, _, _, report = evaluated
    ds = Dataset(data)
    probes = report["tasks"]["probe"]
    assert probes["n_scans"] == len(ds) and set(probes["phenotypes"]) == {"age", "sex", "diagnosis"}
    fc = fc_features([ds.normalize(ds.read(i)) for i in range(len(ds))])
    direct = probe(fc, [r["age"] for r in ds.manifest], [r["subject"] for r in ds.manifest], folds=3, seed=0)
    assert probes["phenotypes"]["age"]["fc"]["models"]["ridge"]["r2"] == pytest.approx(
        direct["models"]["ridge"]["r2"], rel=1e-6)


def test_networks_against_atlas_labels(evaluated):
    data, _, _, report = evaluated
    net = report["tasks"]["networks"]
    truth, names = Dataset(data).atlas.network_ids()
    assert net["n_networks"] == len(names) == 6
    assert set(net["sources"]) == {"embedding", "attention_last", "attention_mean", "tokcov", "tokcov_spectral",
                                   "fc_baseline", "fc_rows"}
    majority = np.bincount(truth[truth >= 0]).max() / (truth >= 0).sum()
    for source in net["sources"].values():
        assert source["classification"]["chance"] == pytest.approx(majority)
        assert len(source["assignment"]) == 160 and -1 <= source["clustering"]["ari"] <= 1


def test_bad_requests_exit_2_with_a_message(evaluated, tmp_path, capsys):
    data, workdir, _, _ = evaluated
    assert cli(["evaluate", "--workdir", str(workdir), "--data", str(data), "--tasks", "bogus"]) == 2
    assert "unknown ['bogus']" in capsys.readouterr().err
    assert cli(["evaluate", "--workdir", str(workdir), "--data", str(data), "--tasks", "finetuned"]) == 2
    assert cli(["evaluate", "--workdir", str(tmp_path), "--data", str(data)]) == 2
    assert "no checkpoints/" in capsys.readouterr().err
    assert cli(["evaluate", "--workdir", str(workdir), "--data", str(tmp_path / "nope")]) == 2


def test_real_surface_run_with_another_atlas(evaluated, tmp_path):
    """The tiny model (pretrained on Dosenbach-160 synthetic data) on a real fsaverage5 run parcellated into 20
    surface parcels: reconstruction and forecasting run; probes and networks say why they cannot."""
    import importlib.resources

    from brainjax.data.atlas import load_atlas
    from brainjax.data.clean import CleanOptions
    from brainjax.data.prepare import PrepareOptions, prepare

    _, workdir, _, _ = evaluated
    run = importlib.resources.files("brainspace") / "datasets" / "preprocessing"
    prepare([str(run)], tmp_path / "real", PrepareOptions(atlas="fsaverage5-20", clean=CleanOptions(high_pass=None)),
            spec=load_atlas("fsaverage5-20"))
    out = tmp_path / "real.json"
    assert cli(["evaluate", "--workdir", str(workdir), "--data", str(tmp_path / "real"), "--split", "train",
                "--out", str(out), "--lstm-steps", "5", "--no-figures"]) == 0
    tasks = json.loads(out.read_text())["tasks"]
    assert tasks["reconstruct"]["windows"] == 652 // WINDOW
    assert len(tasks["reconstruct"]["random"]["model"]["r2_per_parcel"]) == 20
    assert tasks["forecast"]["windows"] == 652 // WINDOW
    assert "no phenotype columns" in tasks["probe"]["skipped"]
    assert "no network labels" in tasks["networks"]["skipped"]
