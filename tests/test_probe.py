"""Tests for brainjax.eval.probe: FC features, phenotype typing, metrics and subject-level CV probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold, KFold
from threadpoolctl import threadpool_limits

from brainjax.eval import probe as probe_mod
from brainjax.eval.probe import (
    classification_metrics,
    compare,
    compare_all,
    fc_features,
    phenotype_kind,
    probe,
    probe_all,
    regression_metrics,
)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # hundreds of tiny fits: BLAS threads only spin against the other workers on this shared machine
    with threadpool_limits(1):
        yield


@pytest.fixture
def recorded_splits(monkeypatch):
    """Every subject-grouped (train, test, groups) split that probe draws: outer splits cover all labelled scans,
    inner ones (choosing ridge alpha) a training fold."""
    splits = []

    class Recording(GroupKFold):
        def split(self, x, y=None, groups=None):
            for train, test in super().split(x, y, groups):
                splits.append((train, test, np.asarray(groups)))
                yield train, test

    monkeypatch.setattr(probe_mod, "GroupKFold", Recording)
    return splits


def _pair_auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC by counting (positive, negative) pairs: 1 if the positive scores higher, 0.5 on ties."""
    pos, neg = score[y == 1], score[y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _subjects(n_subjects: int, per_subject: int) -> list[str]:
    return [f"sub-{s:02d}" for s in np.repeat(np.arange(n_subjects), per_subject)]


def test_fc_features_matches_corrcoef():
    rng = np.random.default_rng(0)
    scans = [rng.normal(size=(6, t)) for t in (40, 55, 40)]
    scans[2][3] = scans[2][1] * 2.0 + 1.0  # r = 1 exactly: clipping must keep z finite
    got = fc_features(scans)
    iu = np.triu_indices(6, k=1)
    want = np.stack([np.arctanh(np.clip(np.corrcoef(s)[iu], -0.999999, 0.999999)) for s in scans])
    assert got.dtype == np.float32 and got.shape == (3, 15)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).all()


def test_fc_features_bad_input():
    rng = np.random.default_rng(1)
    good = rng.normal(size=(4, 30))
    flat = rng.normal(size=(4, 30))
    flat[2] = 0.7
    with pytest.raises(ValueError, match=r"scan 1 .*parcel.*\[2\]"):
        fc_features([good, flat])
    with pytest.raises(ValueError, match="scan 1 has 5 parcels"):
        fc_features([good, rng.normal(size=(5, 30))])
    nan = good.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fc_features([nan])
    with pytest.raises(ValueError, match="no scans"):
        fc_features([])


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([str(v) for v in np.linspace(18, 60, 12)] + ["n/a", ""], "continuous"),
        (["0.5", "1.0", "1.5", "2.5"], "continuous"),  # non-integer numbers are measurements
        ([str(v) for v in range(11)], "continuous"),  # 11 integer levels: more than 10
        (["M", "F", "n/a", "", "F", " N/A "], "binary"),
        (["0", "1", "1.0", "n/a"], "binary"),  # "1" and "1.0" are one number
        (["ctrl", "adhd", "asd", "ctrl"], "categorical"),
        (["1", "2", "3", "2", "n/a"], "categorical"),
        (["yes", "yes", "n/a", ""], "constant"),
        (["n/a", "", "n/a"], "constant"),
    ],
)
def test_phenotype_kind(values, kind):
    assert phenotype_kind(values) == kind


def test_classification_metrics_auroc_uses_probabilities():
    y = np.array([0, 0, 0, 1, 1, 1])
    p_a = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.4])
    p_b = np.array([0.1, 0.2, 0.9, 0.7, 0.8, 0.45])
    a = classification_metrics(y, np.stack([1 - p_a, p_a], axis=1))
    b = classification_metrics(y, np.stack([1 - p_b, p_b], axis=1))
    # identical hard predictions, so accuracy cannot tell them apart; the probabilities rank differently
    assert a["accuracy"] == b["accuracy"] == pytest.approx(4 / 6)
    assert a["balanced_accuracy"] == pytest.approx(4 / 6)
    assert a["auroc"] == pytest.approx(_pair_auc(y, p_a)) == pytest.approx(8 / 9)
    assert b["auroc"] == pytest.approx(_pair_auc(y, p_b)) == pytest.approx(6 / 9)


def test_classification_metrics_multiclass_and_one_class():
    rng = np.random.default_rng(2)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    prob = rng.dirichlet(np.ones(3), size=10)
    got = classification_metrics(y, prob)
    want_auc = np.mean([_pair_auc((y == k).astype(int), prob[:, k]) for k in range(3)])
    pred = prob.argmax(axis=1)
    recalls = [np.mean(pred[y == k] == k) for k in range(3)]
    assert got["auroc"] == pytest.approx(want_auc)
    assert got["accuracy"] == pytest.approx(np.mean(pred == y))
    assert got["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    one = classification_metrics(np.zeros(4, dtype=int), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]))
    assert np.isnan(one["auroc"]) and one["accuracy"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="integers in 0..1"):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5))


def test_regression_metrics_against_numpy():
    t = np.array([1.0, 2.0, 4.0, 7.0])
    p = np.array([1.5, 1.5, 5.0, 6.0])
    got = regression_metrics(t, p)
    assert got["r2"] == pytest.approx(1 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2))
    assert got["mae"] == pytest.approx(np.mean(np.abs(t - p)))
    assert got["pearson_r"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert np.isnan(regression_metrics(t, np.full(4, 3.0))["pearson_r"])
    with pytest.raises(ValueError, match="at least 2"):
        regression_metrics(t[:1], p[:1])


def test_probe_never_splits_a_subject(recorded_splits, monkeypatch):
    rng = np.random.default_rng(3)
    n_subjects, per, dim = 30, 4, 40
    groups = _subjects(n_subjects, per)
    # features fingerprint the subject, the target is noise shared by a subject's scans: only a leaky
    # split (the same subject on both sides) could predict it
    codes = np.repeat(rng.normal(size=(n_subjects, dim)), per, axis=0) + 0.05 * rng.normal(size=(n_subjects * per, dim))
    target = np.repeat(rng.normal(size=n_subjects), per) + 0.05 * rng.normal(size=n_subjects * per)
    values = [f"{v:.6f}" for v in target]
    result = probe(codes, values, groups, folds=4)
    for train, test, g in recorded_splits:
        assert not set(g[train]) & set(g[test])
    outer = [test for train, test, g in recorded_splits if len(g) == n_subjects * per]
    assert len(outer) == 4 and len(recorded_splits) > 4  # the inner alpha search is grouped as well
    assert np.array_equal(np.sort(np.concatenate(outer)), np.arange(n_subjects * per))
    assert result["models"]["ridge"]["r2"] < 0.05 and result["models"]["knn"]["r2"] < 0.05

    class ScanLevel(KFold):  # the mistake the grouping prevents: splits that ignore subjects
        def __init__(self, n_splits: int, shuffle: bool = False, random_state: int | None = None):
            super().__init__(n_splits, shuffle=True, random_state=random_state)

        def split(self, x, y=None, groups=None):
            return super().split(x)

    monkeypatch.setattr(probe_mod, "GroupKFold", ScanLevel)
    assert probe(codes, values, groups, folds=4)["models"]["ridge"]["r2"] > 0.6  # so the check above has teeth


def test_probe_positive_controls():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 10))
    w = rng.normal(size=10)
    groups = _subjects(20, 4)
    reg = probe(x, [f"{v:.6f}" for v in x @ w + 0.1 * rng.normal(size=80)], groups)
    assert reg["kind"] == "continuous" and reg["folds"] == 5
    assert reg["models"]["ridge"]["r2"] > 0.9 and reg["models"]["ridge"]["fold_mean"] > 0.9
    assert reg["chance"]["r2"] <= 0.0
    labels = np.where(x @ w > 0, "patient", "control")
    clf = probe(x, list(labels), groups)
    assert clf["kind"] == "binary" and clf["classes"] == ["control", "patient"]
    assert clf["models"]["logistic"]["auroc"] > 0.9
    majority = max(np.mean(labels == "patient"), np.mean(labels == "control"))
    assert clf["chance"] == {"accuracy": pytest.approx(majority), "balanced_accuracy": 0.5, "auroc": 0.5}


def test_probe_out_of_fold_with_missing_values(recorded_splits):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 6))
    values = [f"{v:.6f}" for v in x[:, 0] + 0.5 * rng.normal(size=60)]
    missing = rng.choice(60, size=12, replace=False)
    for i in missing:
        values[i] = "n/a" if i % 2 else ""
    groups = _subjects(15, 4)
    result = probe(x, values, groups, folds=3)
    keep = np.setdiff1d(np.arange(60), missing)
    y = np.array([float(values[i]) for i in keep])
    assert result["n_scans"] == 48 and result["n_subjects"] == len(set(np.asarray(groups)[keep]))
    # chance predicts each scan with the mean of its own training fold, exactly once
    baseline = np.full(48, np.nan)
    for train, test, g in recorded_splits:
        if len(g) != 48:
            continue  # an inner split of a training fold
        assert np.isnan(baseline[test]).all()
        baseline[test] = y[train].mean()
    assert np.isfinite(baseline).all()
    r2 = 1 - np.sum((y - baseline) ** 2) / np.sum((y - y.mean()) ** 2)
    assert result["chance"]["r2"] == pytest.approx(r2) and result["chance"]["r2"] <= 0.0
    assert result["chance"]["mae"] == pytest.approx(np.mean(np.abs(y - baseline)))


def test_probe_categorical_numeric_labels():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(72, 5))
    level = np.digitize(x[:, 0] + 0.2 * rng.normal(size=72), [-0.5, 0.5])
    values = [["2", "3", "10"][k] for k in level]
    result = probe(x, values, _subjects(18, 4), folds=3)
    assert result["kind"] == "categorical" and result["classes"] == ["2", "3", "10"]
    assert result["models"]["logistic"]["auroc"] > 0.8
    assert result["chance"]["balanced_accuracy"] == pytest.approx(1 / 3)


def test_probe_fold_with_one_training_class():
    groups = _subjects(8, 2)
    # pick a seed whose outer split puts both class-1 subjects in the same test fold
    seed = next(s for s in range(500) if any(
        {"sub-00", "sub-01"} <= set(np.asarray(groups)[test])
        for _, test in GroupKFold(4, shuffle=True, random_state=s).split(groups, groups=groups)))
    rng = np.random.default_rng(7)
    values = ["1" if g in ("sub-00", "sub-01") else "0" for g in groups]
    result = probe(rng.normal(size=(16, 3)), values, groups, folds=4, seed=seed)
    assert result["n_scans"] == 16
    assert any("class 0 only" in note for note in result["notes"])
    assert None in result["models"]["logistic"]["C"]
    assert 0.0 <= result["models"]["logistic"]["accuracy"] <= 1.0


def test_probe_fold_with_one_training_subject():
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    x = np.random.default_rng(10).normal(size=(9, 3))
    # GroupKFold(2) over 3 subjects leaves one fold trained on a single subject: no grouped inner CV exists
    result = probe(x, [f"{v:.3f}" for v in x[:, 0]], groups, folds=2)
    assert result["n_scans"] == 9 and result["folds"] == 2 and len(result["models"]["ridge"]["alpha"]) == 2
    assert any("holds one subject" in note for note in result["notes"])


def test_probe_skips_instead_of_raising():
    x = np.random.default_rng(8).normal(size=(12, 3))
    many = _subjects(6, 2)
    few_scans = probe(x[:8], [str(v) for v in range(8)], many[:8], folds=5)
    assert few_scans["kind"] == "categorical" and "8 labelled scans" in few_scans["skipped"]
    two_subjects = probe(x, [f"{v:.3f}" for v in x[:, 0]], ["a"] * 6 + ["b"] * 6, folds=3)
    assert "2 labelled subjects" in two_subjects["skipped"]
    lone_class = probe(x, ["1", "1"] + ["0"] * 10, many, folds=3)
    assert lone_class == {"kind": "binary", "skipped": "class '1' has 1 subject(s), need at least 2"}
    assert probe(x, ["x"] * 12, many)["kind"] == "constant"
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="contain Inf"):
        probe(bad, [f"{v:.3f}" for v in x[:, 0]], many)
    with pytest.raises(ValueError, match="groups"):
        probe(x, [f"{v:.3f}" for v in x[:, 0]], many[:-1])


def test_probe_all_structure_and_errors():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(30, 4))
    groups = _subjects(10, 3)
    manifest = [{"subject": g, "age": f"{20 + 3 * x[i, 0]:.2f}", "sex": "F" if x[i, 1] > 0 else "M"}
                for i, g in enumerate(groups)]
    manifest[4]["sex"] = "n/a"
    feature_sets = {"mean": x, "fc": rng.normal(size=(30, 6))}
    result = probe_all(feature_sets, manifest, ["age", "sex"], folds=3)
    assert set(result) == {"age", "sex"} and all(set(r) == {"mean", "fc"} for r in result.values())
    assert result["age"]["mean"]["kind"] == "continuous" and result["sex"]["fc"]["n_scans"] == 29
    assert json.loads(json.dumps(result))["age"]["mean"]["n_subjects"] == 10
    broken = dict(feature_sets, cls=np.where(np.arange(120).reshape(30, 4) == 7, np.inf, 0.0))  # NaN: a missing value
    with pytest.raises(ValueError, match="feature set 'cls'"):
        probe_all(broken, manifest, ["age"])
    with pytest.raises(ValueError, match="'iq' is not a manifest column"):
        probe_all(feature_sets, manifest, ["iq"])


def test_row_space_projection_leaves_the_probes_unchanged():
    """Wide features (D >> N): the projected pipelines predict what the plain ones do."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from brainjax.eval.probe import RowSpace

    rng = np.random.default_rng(3)
    x_train, x_test = rng.normal(size=(40, 600)), rng.normal(size=(15, 600))
    y_reg = x_train[:, :5].sum(1) + rng.normal(size=40)
    y_cls = (y_reg > 0).astype(int)
    assert RowSpace().fit(x_train).transform(x_test).shape == (15, 39)  # rank of 40 centred rows
    pairs = [(Ridge(alpha=3.0), y_reg, "predict", 1e-8),
             (LogisticRegression(C=0.05, tol=1e-10, max_iter=5000), y_cls, "predict_proba", 1e-5),
             (KNeighborsClassifier(n_neighbors=5), y_cls, "predict_proba", 0.0)]
    with threadpool_limits(1):
        for model, y, method, atol in pairs:
            plain = make_pipeline(StandardScaler(), clone(model)).fit(x_train, y)
            projected = make_pipeline(StandardScaler(), RowSpace(), clone(model)).fit(x_train, y)
            np.testing.assert_allclose(getattr(projected, method)(x_test), getattr(plain, method)(x_test),
                                       atol=atol)


def test_probe_keeps_its_out_of_fold_predictions():
    """The stored predictions are the ones scored: sklearn on them gives the reported metrics."""
    from sklearn.metrics import r2_score, roc_auc_score

    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, 5))
    groups = _subjects(10, 4)
    values = [f"{v:.6f}" for v in x[:, 0] + 0.3 * rng.normal(size=40)]
    values[6] = "n/a"
    reg = probe(x, values, groups, folds=3)
    pred = reg["predictions"]
    assert pred["rows"] == [i for i in range(40) if i != 6] and pred["subjects"] == [groups[i] for i in pred["rows"]]
    assert pred["y"] == [float(values[i]) for i in pred["rows"]]
    for model in ("ridge", "knn"):
        assert r2_score(pred["y"], pred[model]) == pytest.approx(reg["models"][model]["r2"])
    clf = probe(x, ["a" if v > 0 else "b" for v in x[:, 1]], groups, folds=3)
    prob = np.asarray(clf["predictions"]["logistic"])
    assert prob.shape == (40, 2) and np.allclose(prob.sum(1), 1.0)
    assert roc_auc_score(clf["predictions"]["y"], prob[:, 1]) == pytest.approx(clf["models"]["logistic"]["auroc"])
    json.dumps(clf)  # still JSON-able


def _check_comparison(c: dict, by_features: dict, model: str) -> None:
    """A comparison agrees with itself and with the probe results it summarises."""
    assert c["low"] <= c["diff"] <= c["high"]
    assert c["verdict"] == ("beats" if c["low"] > 0 else "loses" if c["high"] < 0 else "ties")
    scores = {k: r["models"][model][c["metric"]] for k, r in by_features.items() if k != c["baseline"]}
    assert c["candidates"] == scores and c["score"] == max(scores.values()) == scores[c["features"]]
    assert c["baseline_score"] == by_features[c["baseline"]]["models"][model][c["metric"]]
    # the bootstrap's point estimate (all weights 1) rescored the stored predictions: sklearn's numbers
    assert c["diff"] == pytest.approx(c["score"] - c["baseline_score"], abs=1e-12)


@pytest.mark.slow
def test_compare_by_subject_bootstrap(monkeypatch):
    rng = np.random.default_rng(12)
    n_subjects, per = 24, 3
    groups = _subjects(n_subjects, per)
    signal = np.repeat(rng.normal(size=n_subjects), per) + 0.2 * rng.normal(size=n_subjects * per)
    strong = signal[:, None] * rng.normal(size=(1, 4)) + 0.1 * rng.normal(size=(n_subjects * per, 4))
    noise, other_noise = rng.normal(size=(2, n_subjects * per, 4))
    manifest = [{"subject": g, "age": f"{50 + 10 * v:.4f}", "sex": "F" if v > 0 else "M"}
                for g, v in zip(groups, signal)]
    manifest[5]["age"] = "n/a"
    drawn_groups = []
    real_interval = probe_mod.paired_interval

    def recording(difference, n_units, **kwargs):
        drawn_groups.append((n_units, list(kwargs["groups"])))
        return real_interval(difference, n_units, **kwargs)

    monkeypatch.setattr(probe_mod, "paired_interval", recording)
    wins = probe_all({"mean": noise, "tokcov": strong, "fc": other_noise}, manifest, ["age", "sex"], folds=4)
    comparisons = compare_all(wins, n_boot=300, seed=1)
    for pheno, model in (("age", "ridge"), ("age", "knn"), ("sex", "logistic"), ("sex", "knn")):
        c = comparisons[pheno][model]
        assert c["features"] == "tokcov" and c["baseline"] == "fc" and c["verdict"] == "beats"
        _check_comparison(c, wins[pheno], model)
    assert comparisons["age"]["ridge"]["metric"] == "r2" and comparisons["sex"]["logistic"]["metric"] == "auroc"
    # subjects are resampled, not scans: the groups are the subject of every labelled scan
    assert drawn_groups[0] == (71, [g for i, g in enumerate(groups) if i != 5])
    assert comparisons["age"]["ridge"]["n_units"] == 71 and comparisons["age"]["ridge"]["n_subjects"] == 24

    loses = probe_all({"mean": noise, "fc": strong}, manifest, ["sex"], folds=4)
    c = compare(loses["sex"], n_boot=300)["logistic"]
    assert c["verdict"] == "loses" and c["features"] == "mean"
    _check_comparison(c, loses["sex"], "logistic")
    same = probe_all({"copy": strong, "fc": strong}, manifest, ["age"], folds=4)
    c = compare(same["age"], n_boot=300)["ridge"]
    assert c["diff"] == c["low"] == c["high"] == 0.0 and c["verdict"] == "ties"

    skipped = {"fc": {"kind": "binary", "skipped": "too few"}, "mean": wins["sex"]["mean"]}
    assert "baseline 'fc'" in compare(skipped)["skipped"]
    assert "no feature set" in compare({"fc": wins["sex"]["fc"]})["skipped"]
    with pytest.raises(ValueError, match="other scans"):
        compare({"fc": wins["sex"]["fc"], "mean": wins["age"]["mean"]})
