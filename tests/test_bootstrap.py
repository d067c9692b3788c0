"""Tests for the paired bootstrap (brainjax.eval.bootstrap): draws against explicit index resampling, cluster
resampling, coverage of a planted difference, the verdict, and the weighted statistics against sklearn on
repeated rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import r2_score, roc_auc_score

from brainjax.eval.bootstrap import (
    paired_interval,
    pooled_r2,
    resample_weights,
    verdict,
    weighted_auroc,
    weighted_mse,
    weighted_r2_score,
)


def _windows(rng: np.random.Generator, n_units: int):
    """Ragged units (5-14 values each): targets and two predictions, as lists of float [n_i] arrays."""
    sizes = rng.integers(5, 15, n_units)
    y = [rng.normal(size=k) + rng.normal() for k in sizes]  # a unit-level offset: units differ in difficulty
    good = [t + 0.5 * rng.normal(size=t.size) for t in y]
    bad = [t + 0.8 * rng.normal(size=t.size) for t in y]
    return y, good, bad


def _sums(y: list[np.ndarray], pred: list[np.ndarray]) -> np.ndarray:
    return np.array([[t.size, ((p - t) ** 2).sum(), t.sum(), (t**2).sum()] for t, p in zip(y, pred)])


def test_paired_interval_equals_explicit_index_resampling():
    rng = np.random.default_rng(0)
    n, n_boot, seed = 30, 200, 7
    y, good, bad = _windows(rng, n)
    s_good, s_bad = _sums(y, good), _sums(y, bad)
    out = paired_interval(lambda w: pooled_r2(w, s_good) - pooled_r2(w, s_bad), n, n_boot=n_boot, seed=seed)

    # the textbook percentile bootstrap: draw unit indices, concatenate their rows, rescore with sklearn
    def diff(units) -> float:
        t = np.concatenate([y[i] for i in units])
        return (r2_score(t, np.concatenate([good[i] for i in units]))
                - r2_score(t, np.concatenate([bad[i] for i in units])))

    index = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    draws = np.array([diff(row) for row in index])
    low, high = np.percentile(draws, [2.5, 97.5])
    assert out["diff"] == pytest.approx(diff(range(n)), rel=1e-12)
    assert out["low"] == pytest.approx(low, rel=1e-9) and out["high"] == pytest.approx(high, rel=1e-9)
    assert (out["level"], out["n_boot"], out["n_units"]) == (0.95, n_boot, n)
    assert out["low"] < out["diff"] < out["high"]


def test_cluster_resampling_keeps_clusters_whole():
    groups = np.array(["s3", "s1", "s3", "s2", "s1", "s3", "s9"])
    weights = resample_weights(len(groups), 500, seed=4, groups=groups)
    labels = np.unique(groups)
    for row in weights:
        per_cluster = [row[groups == g] for g in labels]
        assert all(np.all(w == w[0]) for w in per_cluster)  # every scan of a subject drawn together
        assert sum(w[0] for w in per_cluster) == len(labels)  # as many clusters drawn as there are
    # same draws as explicit resampling of the sorted labels
    index = np.random.default_rng(4).integers(0, len(labels), size=(500, len(labels)))
    counts = np.stack([np.bincount(row, minlength=len(labels)) for row in index])
    np.testing.assert_array_equal(weights, counts[:, np.searchsorted(labels, groups)])
    # a cluster's units move together: a difference carried by one cluster is all or nothing per draw
    effect = np.where(groups == "s2", 1.0, 0.0)
    out = paired_interval(lambda w: w @ effect / w.sum(), len(groups), groups=groups, n_boot=500, seed=4)
    assert out["low"] == 0.0  # s2 absent from at least 2.5 % of the draws ((3/4)^4 = 32 %)
    assert out["diff"] == pytest.approx(1 / 7)


def test_unclustered_weights_are_index_counts():
    weights = resample_weights(9, 300, seed=2)
    index = np.random.default_rng(2).integers(0, 9, size=(300, 9))
    np.testing.assert_array_equal(weights, np.stack([np.bincount(row, minlength=9) for row in index]))
    assert weights.dtype == np.float64 and np.all(weights.sum(axis=1) == 9)


def test_interval_covers_a_planted_difference():
    """200 datasets of 50 paired units with a true mean difference of 0.3: a 95 % interval covers it in about
    95 % of them (the percentile bootstrap runs slightly short at this size)."""
    rng = np.random.default_rng(1)
    truth, covered, beats = 0.3, 0, 0
    for k in range(200):
        shared = rng.normal(size=50) * 3.0  # unit difficulty, common to both: cancels in a paired design
        base = shared + rng.normal(size=50)
        model = shared + truth + rng.normal(size=50)
        diff = model - base
        out = paired_interval(lambda w, d=diff: w @ d / w.sum(), 50, n_boot=300, seed=k)
        covered += out["low"] <= truth <= out["high"]
        beats += verdict(out) == "beats"
    assert 0.88 <= covered / 200 <= 0.99
    # sd of the mean difference is sqrt(2 / 50) = 0.2, so 0.3 is 1.5 sd: beaten in about a third of datasets
    assert 0.15 <= beats / 200 <= 0.55


def test_undefined_draws_are_dropped():
    values = np.arange(20, dtype=np.float64)

    def first_unit_needed(w: np.ndarray, at_least: int) -> float:
        return w @ values / w.sum() if w[0] >= at_least else float("nan")

    out = paired_interval(lambda w: first_unit_needed(w, 1), 20, n_boot=400, seed=3)
    weights = resample_weights(20, 400, seed=3)
    kept = [w @ values / w.sum() for w in weights if w[0] >= 1]  # about 1 - (19/20)^20 = 64 % of draws
    assert out["low"] == pytest.approx(np.quantile(kept, 0.025)) and out["high"] == pytest.approx(
        np.quantile(kept, 0.975))
    # unit 0 drawn twice in only about 26 % of draws: too few defined draws for an interval
    out = paired_interval(lambda w: first_unit_needed(w, 2), 20, n_boot=400, seed=3)
    assert np.isnan(out["low"]) and np.isnan(out["high"]) and verdict(out) == "ties"
    assert out["diff"] == pytest.approx(np.nan, nan_ok=True)


def test_bad_requests():
    with pytest.raises(ValueError, match="level"):
        paired_interval(lambda w: 0.0, 5, level=1.0)
    with pytest.raises(ValueError, match="no units"):
        resample_weights(0, 10, seed=0)
    with pytest.raises(ValueError, match="group labels"):
        resample_weights(4, 10, seed=0, groups=["a", "b"])


@pytest.mark.parametrize(("low", "high", "higher", "expected"), [
    (0.1, 0.3, True, "beats"), (-0.3, -0.1, True, "loses"), (-0.1, 0.2, True, "ties"), (0.0, 0.2, True, "ties"),
    (0.1, 0.3, False, "loses"), (-0.3, -0.1, False, "beats"), (-0.1, 0.2, False, "ties"), (-0.2, 0.0, False, "ties"),
    (np.nan, np.nan, True, "ties"), (np.nan, 0.5, False, "ties"),
])
def test_verdict(low, high, higher, expected):
    assert verdict({"diff": 0.0, "low": low, "high": high}, higher_is_better=higher) == expected


# ------------------------------------------------------------------- weighted statistics = repeated rows
def test_weighted_r2_and_mse_equal_repeated_rows():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 4, 40)
    y, p = rng.normal(size=40), rng.normal(size=40)
    assert weighted_r2_score(w, y, p) == pytest.approx(r2_score(np.repeat(y, w), np.repeat(p, w)), rel=1e-12)
    assert weighted_r2_score(w, y, p) == pytest.approx(r2_score(y, p, sample_weight=w), rel=1e-12)
    assert np.isnan(weighted_r2_score(np.zeros(40), y, p))
    assert np.isnan(weighted_r2_score(w, np.ones(40), p))

    y_units, pred, _ = _windows(rng, 12)
    sums = _sums(y_units, pred)
    w = rng.integers(0, 3, 12)
    t = np.concatenate([np.tile(u, k) for u, k in zip(y_units, w)])
    q = np.concatenate([np.tile(u, k) for u, k in zip(pred, w)])
    assert pooled_r2(w, sums) == pytest.approx(r2_score(t, q), rel=1e-10)
    assert weighted_mse(w, sums) == pytest.approx(np.mean((t - q) ** 2), rel=1e-12)
    assert weighted_mse(w, sums[:, :2]) == weighted_mse(w, sums)
    assert np.isnan(weighted_mse(np.zeros(12), sums))


def test_pooled_r2_is_undefined_for_constant_targets():
    y = np.full(1000, 0.1)  # sum(y²) - sum(y)²/n leaves a rounding residue, not zero
    sums = np.array([[y.size, 0.5, y.sum(), (y**2).sum()]])
    assert np.isnan(pooled_r2(np.ones(1), sums))
    assert np.isnan(pooled_r2(np.ones(1), np.array([[1.0, 0.0, 2.0, 4.0]])))  # a single value
    assert np.isnan(pooled_r2(np.zeros(1), sums))


def test_weighted_auroc_equals_repeated_rows():
    rng = np.random.default_rng(6)
    n = 60
    w = rng.integers(0, 4, n)
    y = rng.integers(0, 2, n)
    score = np.round(y * 0.4 + rng.random(n), 1)  # rounded: many tied scores across classes
    want = roc_auc_score(np.repeat(y, w), np.repeat(score, w))
    assert weighted_auroc(w, y, score) == pytest.approx(want, rel=1e-12)
    assert weighted_auroc(w, y, np.stack([1 - score, score], axis=1)) == pytest.approx(want, rel=1e-12)
    assert weighted_auroc(w, y, score) == pytest.approx(roc_auc_score(y, score, sample_weight=w), rel=1e-12)
    assert np.isnan(weighted_auroc(np.where(y == 1, 0, w), y, score))

    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = roc_auc_score(np.repeat(labels, w), np.repeat(prob, w, axis=0), multi_class="ovr", average="macro")
    assert weighted_auroc(w, labels, prob) == pytest.approx(want, rel=1e-12)
    assert np.isnan(weighted_auroc(np.where(labels == 2, 0, w), labels, prob))


def test_a_single_independent_unit_gives_no_interval_and_no_verdict():
    """Four windows of one scan: every draw repeats the scan, a zero-width interval would claim a win."""
    diff = lambda w: float(np.average([0.2, 0.3, 0.25, 0.1], weights=w))  # noqa: E731
    out = paired_interval(diff, 4, groups=["scan0"] * 4, n_boot=50)
    assert out["diff"] == pytest.approx(0.2125) and np.isnan(out["low"]) and verdict(out) == "ties"
    assert verdict(paired_interval(diff, 4, groups=["a", "a", "b", "b"], n_boot=200)) == "beats"
