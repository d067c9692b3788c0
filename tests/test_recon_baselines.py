"""Tests for the masked-reconstruction baselines and the R² accumulator (brainjax.eval.recon_baselines)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import r2_score

from brainjax.eval.recon_baselines import (
    BASELINES,
    ParcelMoments,
    ReconMetrics,
    accumulate_moments,
    compare_to_best,
    interp_baseline,
    mean_baseline,
    regression_baseline,
)


def _random_moments(rng: np.random.Generator, p: int) -> ParcelMoments:
    a = rng.normal(size=(p, 2 * p))
    return ParcelMoments(mean=rng.normal(size=p), cov=a @ a.T / (2 * p), count=2 * p)


def _random_tokens(rng: np.random.Generator, b: int = 3, p: int = 6, n: int = 4, length: int = 3, frac=0.4):
    target = rng.normal(size=(b, p, n, length))
    masked = rng.random((b, p, n)) < frac
    parcel_mask = np.ones((b, p), bool)
    parcel_mask[1, -1] = False
    return target, masked, parcel_mask


def _tiny():
    """P=2, N=3, L=2; window 0 hand-worked in the tests, window 1: parcel 0 fully masked, parcel 1 padded."""
    target = np.array([[[[1, 2], [3, 4], [5, 6]], [[10, 20], [30, 40], [50, 60]]],
                       [[[1, 1], [1, 1], [1, 1]], [[9, 9], [9, 9], [9, 9]]]], dtype=np.float64)
    masked = np.array([[[False, True, False], [True, False, True]],
                       [[True, True, True], [False, False, False]]])
    parcel_mask = np.array([[True, True], [True, False]])
    moments = ParcelMoments(mean=np.array([7.0, -3.0]), cov=np.eye(2), count=10)
    return target, masked, parcel_mask, moments


def test_mean_baseline_hand_example():
    target, masked, parcel_mask, moments = _tiny()
    out = mean_baseline(target, masked, parcel_mask, moments)
    # parcel 0 sees 1, 2, 5, 6 -> 3.5; parcel 1 sees 30, 40 -> 35
    expected0 = np.array([[[1, 2], [3.5, 3.5], [5, 6]], [[35, 35], [30, 40], [35, 35]]])
    np.testing.assert_allclose(out[0], expected0)
    np.testing.assert_allclose(out[1, 0], 7.0)  # nothing visible: training mean
    np.testing.assert_array_equal(out[1, 1], 0.0)  # padded parcel


def test_interp_baseline_hand_example():
    target, masked, parcel_mask, moments = _tiny()
    out = interp_baseline(target, masked, parcel_mask, moments)
    # parcel 0: visible TRs 1 (2) and 4 (5) -> TRs 2, 3 on the line; parcel 1: hold 30 before, 40 after
    expected0 = np.array([[[1, 2], [3, 4], [5, 6]], [[30, 30], [30, 40], [40, 40]]])
    np.testing.assert_allclose(out[0], expected0)
    np.testing.assert_allclose(out[1, 0], 7.0)
    np.testing.assert_array_equal(out[1, 1], 0.0)


def test_interp_matches_per_row_np_interp():
    rng = np.random.default_rng(1)
    target, masked, parcel_mask = _random_tokens(rng, b=2, p=5, n=6, length=2, frac=0.5)
    masked[0, 0] = [True, False, True, True, False, True]
    out = interp_baseline(target, masked, parcel_mask, _random_moments(rng, 5))
    row, hidden = target[0, 0].reshape(-1), np.repeat(masked[0, 0], 2)
    t = np.arange(12)
    expected = row.copy()
    expected[hidden] = np.interp(t[hidden], t[~hidden], row[~hidden])
    np.testing.assert_allclose(out[0, 0].reshape(-1), expected)


def test_regression_matches_per_tr_formula():
    rng = np.random.default_rng(2)
    b, p, n, length, lam = 3, 6, 4, 3, 0.05
    target, masked, parcel_mask = _random_tokens(rng, b, p, n, length)
    moments = _random_moments(rng, p)
    out = regression_baseline(target, masked, parcel_mask, moments, lam=lam)
    mu, s = moments.mean, moments.cov
    for i in range(b):
        for t in range(n * length):
            k = t // length
            v = np.flatnonzero(~masked[i, :, k] & parcel_mask[i])
            m = np.flatnonzero(masked[i, :, k] & parcel_mask[i])
            for j in m:
                if v.size == 0:
                    expected = mu[j]
                else:
                    s_vv = s[np.ix_(v, v)] + lam * np.trace(s[np.ix_(v, v)]) / v.size * np.eye(v.size)
                    w = np.linalg.solve(s_vv, s[v, j])
                    expected = mu[j] + w @ (target[i, v, k, t % length] - mu[v])
                assert out[i, j, k, t % length] == pytest.approx(expected, rel=1e-9, abs=1e-9)
            for j in v:
                assert out[i, j, k, t % length] == target[i, j, k, t % length]


def _regression_per_slot(target, masked, parcel_mask, moments, lam):
    """The unbatched reference: one ridge solve per (window, patch) straight from the docstring's formula."""
    visible = ~masked & parcel_mask[:, :, None]
    todo = masked & parcel_mask[:, :, None]
    out = np.where(visible[..., None], target, 0.0).astype(np.float64)
    mu, s = moments.mean, moments.cov
    for i, k in zip(*np.nonzero(todo.any(axis=1))):
        v, m = np.flatnonzero(visible[i, :, k]), np.flatnonzero(todo[i, :, k])
        out[i, m, k] = mu[m, None]
        if v.size and np.trace(s[np.ix_(v, v)]) > 0:
            ridge = lam * np.trace(s[np.ix_(v, v)]) / v.size * np.eye(v.size)
            weights = np.linalg.solve(s[np.ix_(v, v)] + ridge, s[np.ix_(v, m)])  # [V, M]
            out[i, m, k] += weights.T @ (target[i, v, k] - mu[v, None])
    return out


def _mask_kinds(rng: np.random.Generator, b: int, p: int, n: int) -> dict[str, np.ndarray]:
    """masked bool [B, P, N] as each masking strategy lays it out."""
    block = np.zeros((b, p, n), bool)
    for i in range(b):
        start = rng.integers(0, n - 2)
        block[i, :, start:start + 3] = True
    future = np.zeros((b, p, n), bool)
    future[:, :, -2:] = True
    parcels = np.repeat(rng.random((b, p, 1)) < 0.6, n, axis=2)
    mixture = parcels | (rng.random((b, p, n)) < 0.3)  # a strategy topped up with random tokens
    return {"random": rng.random((b, p, n)) < 0.75, "parcels": parcels, "time_block": block, "future": future,
            "mixture": mixture}


@pytest.mark.parametrize("kind", ["random", "parcels", "time_block", "future", "mixture"])
def test_regression_equals_per_slot_reference(kind):
    rng = np.random.default_rng(11)
    b, p, n, length, lam = 5, 40, 6, 4, 0.03
    moments = _random_moments(rng, p)
    cov = moments.cov.copy()
    cov[7], cov[:, 7] = 0.0, 0.0  # a parcel with no training variance: alone it explains nothing
    moments = ParcelMoments(mean=moments.mean, cov=cov, count=moments.count)
    target = 3.0 * rng.normal(size=(b, p, n, length)) + 2.0
    masked = _mask_kinds(rng, b, p, n)[kind]
    parcel_mask = np.ones((b, p), bool)
    parcel_mask[1, 30:] = False  # a window from a smaller atlas
    parcel_mask[3, ::4] = False
    masked[2, :, 0] = True  # a patch with nothing visible: the prior mean
    masked[4, :, 1], masked[4, 7, 1] = True, False  # only the zero-variance parcel visible: the prior mean too
    # one visible set in two windows with different hidden parcels (window 1 lacks parcels 30+, window 0 hides them)
    masked[1, :, 3] = np.arange(p) % 3 == 0
    masked[0, :, 3] = masked[1, :, 3] | (np.arange(p) >= 30)
    out = regression_baseline(target, masked, parcel_mask, moments, lam=lam)
    expected = _regression_per_slot(target, masked, parcel_mask, moments, lam)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_array_equal(out[2, parcel_mask[2], 0], np.repeat(moments.mean[parcel_mask[2], None], length, 1))
    np.testing.assert_array_equal(out[4, parcel_mask[4] & (np.arange(p) != 7), 1],
                                  np.repeat(moments.mean[parcel_mask[4] & (np.arange(p) != 7), None], length, 1))


def test_regression_rejects_indefinite_covariance():
    rng = np.random.default_rng(12)
    target, masked, parcel_mask = _random_tokens(rng)
    masked[:] = False
    masked[0, 2, 0] = True  # parcels 0 and 1 visible beside it
    cov = np.eye(target.shape[1])
    cov[0, 1] = cov[1, 0] = 2.0  # eigenvalue -1 on (e0 - e1): no ridge of 1 % of the trace fixes that
    bad = ParcelMoments(mean=np.zeros(target.shape[1]), cov=cov, count=10)
    with pytest.raises(ValueError, match="positive semi-definite"):
        regression_baseline(target, masked, parcel_mask, bad)


def test_regression_falls_back_to_mean_for_fully_masked_patch():
    rng = np.random.default_rng(3)
    target, masked, parcel_mask = _random_tokens(rng)
    masked[:, :, 1] = True
    moments = _random_moments(rng, target.shape[1])
    out = regression_baseline(target, masked, parcel_mask, moments)
    expected = np.where(parcel_mask[:, :, None], moments.mean[None, :, None], 0.0)
    np.testing.assert_allclose(out[:, :, 1, :], np.broadcast_to(expected, out[:, :, 1, :].shape))


def test_regression_beats_mean_on_low_rank_data():
    rng = np.random.default_rng(4)
    p, rank, length, n = 12, 2, 4, 5
    loadings = rng.normal(size=(p, rank))
    offsets = rng.normal(size=p)

    def draw(count: int) -> np.ndarray:  # [count, P, N * L]; factors independent in time
        z = rng.normal(size=(count, rank, n * length))
        return offsets[None, :, None] + np.einsum("pr,crt->cpt", loadings, z) + 0.1 * rng.normal(
            size=(count, p, n * length))

    moments = accumulate_moments(draw(40))
    test = draw(8).reshape(8, p, n, length)
    masked = rng.random((8, p, n)) < 0.3
    parcel_mask = np.ones((8, p), bool)
    r2 = {}
    for name in ("parcel_mean", "regression"):
        acc = ReconMetrics()
        acc.update(BASELINES[name](test, masked, parcel_mask, moments), test, masked)
        r2[name] = acc.result()["r2"]
    assert r2["regression"] > 0.9
    assert r2["regression"] > r2["parcel_mean"] + 0.5


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_never_read_masked_or_padded_values(name):
    rng = np.random.default_rng(5)
    target, masked, parcel_mask = _random_tokens(rng)
    moments = _random_moments(rng, target.shape[1])
    clean = BASELINES[name](target, masked, parcel_mask, moments)
    hidden = masked[..., None] | ~parcel_mask[:, :, None, None]
    for poison in (np.nan, 1e12):
        poisoned = np.where(np.broadcast_to(hidden, target.shape), poison, target)
        np.testing.assert_array_equal(BASELINES[name](poisoned, masked, parcel_mask, moments), clean)
    np.testing.assert_array_equal(clean[~parcel_mask], 0.0)
    visible = np.broadcast_to(~hidden, target.shape)
    np.testing.assert_array_equal(clean[visible], target[visible])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_reject_bad_input(name):
    rng = np.random.default_rng(6)
    target, masked, parcel_mask = _random_tokens(rng)
    moments = _random_moments(rng, target.shape[1])
    fn = BASELINES[name]
    with pytest.raises(ValueError, match="masked"):
        fn(target, masked[:, :, :-1], parcel_mask, moments)
    with pytest.raises(ValueError, match="parcel_mask"):
        fn(target, masked, parcel_mask[:, :-1], moments)
    with pytest.raises(ValueError, match="parcels"):
        fn(target, masked, parcel_mask, _random_moments(rng, target.shape[1] + 1))
    bad = target.copy()
    bad[np.nonzero(~masked & parcel_mask[:, :, None])[0][0], ...] = np.nan
    with pytest.raises(ValueError, match="visible"):
        fn(bad, masked, parcel_mask, moments)


def test_regression_rejects_bad_lam():
    rng = np.random.default_rng(7)
    target, masked, parcel_mask = _random_tokens(rng)
    for lam in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="lam"):
            regression_baseline(target, masked, parcel_mask, _random_moments(rng, target.shape[1]), lam=lam)


def test_accumulate_moments_matches_numpy_and_batching():
    rng = np.random.default_rng(8)
    windows = [5.0 + rng.normal(size=(4, t)) for t in (7, 3, 10)]
    moments = accumulate_moments(iter(windows))
    joined = np.concatenate(windows, axis=1)
    np.testing.assert_allclose(moments.mean, joined.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(moments.cov, np.cov(joined, bias=True), rtol=1e-10, atol=1e-12)
    assert moments.count == joined.shape[1]
    same = [rng.normal(size=(4, 6)) for _ in range(4)]
    single, batched = accumulate_moments(same), accumulate_moments([np.stack(same[:3]), same[3]])
    np.testing.assert_allclose(batched.mean, single.mean, rtol=1e-12)
    np.testing.assert_allclose(batched.cov, single.cov, rtol=1e-12, atol=1e-14)
    assert batched.count == single.count == 24


def test_accumulate_moments_rejects_bad_input():
    with pytest.raises(ValueError, match="no data"):
        accumulate_moments([])
    with pytest.raises(ValueError, match="no data"):
        accumulate_moments([np.zeros((3, 0))])
    with pytest.raises(ValueError, match="NaN"):
        accumulate_moments([np.array([[1.0, np.nan]])])
    with pytest.raises(ValueError, match="parcels"):
        accumulate_moments([np.zeros((3, 4)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="shape"):
        accumulate_moments([np.zeros(5)])
    with pytest.raises(ValueError, match="cov"):
        ParcelMoments(mean=np.zeros(3), cov=np.eye(2), count=4)


def _scored(rng: np.random.Generator):
    target, masked, parcel_mask = _random_tokens(rng, b=6, p=5, n=4, length=3, frac=0.5)
    pred = target + 0.5 * rng.normal(size=target.shape)
    pred[~parcel_mask] = np.nan  # padded parcels are not scored, so this must not matter
    return pred, target, masked & parcel_mask[:, :, None]


def test_recon_metrics_match_direct_computation():
    rng = np.random.default_rng(9)
    pred, target, sel = _scored(rng)
    acc = ReconMetrics()
    acc.update(pred, target, sel)
    res = acc.result()
    full = np.broadcast_to(sel[..., None], target.shape)
    y, yhat = target[full], pred[full]
    assert res["n_values"] == y.size
    assert res["mse"] == pytest.approx(np.mean((yhat - y) ** 2), rel=1e-12)
    assert res["r2"] == pytest.approx(1 - np.sum((yhat - y) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-10)
    for j in range(target.shape[1]):
        pick = full[:, j]
        if pick.sum() >= 2:
            assert res["r2_per_parcel"][j] == pytest.approx(r2_score(target[:, j][pick], pred[:, j][pick]),
                                                            rel=1e-9)
    # parcel 4 is padded in window 1 only; a parcel scored nowhere would be NaN
    finite = [v for v in res["r2_per_parcel"] if np.isfinite(v)]
    assert res["r2_parcel_median"] == pytest.approx(np.median(finite))


def test_recon_metrics_independent_of_batching_and_merge():
    rng = np.random.default_rng(10)
    pred, target, sel = _scored(rng)
    sel[:, 2] = False  # a parcel never scored: NaN in every variant
    whole = ReconMetrics()
    whole.update(pred, target, sel)
    split = ReconMetrics()
    for part in np.array_split(np.arange(6), 3):
        split.update(pred[part], target[part], sel[part])
    left, right = ReconMetrics(), ReconMetrics()
    left.update(pred[:2], target[:2], sel[:2])
    right.update(pred[2:], target[2:], sel[2:])
    merged = ReconMetrics().merge(left).merge(right)
    ref = whole.result()
    assert np.isnan(ref["r2_per_parcel"][2])
    for other in (split.result(), merged.result()):
        assert other["n_values"] == ref["n_values"]
        for key in ("mse", "r2", "r2_parcel_median"):
            assert other[key] == pytest.approx(ref[key], rel=1e-12)
        np.testing.assert_allclose(other["r2_per_parcel"], ref["r2_per_parcel"], rtol=1e-12)


def test_recon_metrics_rejects_bad_input():
    acc = ReconMetrics()
    with pytest.raises(ValueError, match="no masked values"):
        acc.result()
    x = np.zeros((1, 2, 3, 2))
    with pytest.raises(ValueError, match="shape"):
        acc.update(x, x[:, :1], np.ones((1, 2, 3), bool))
    with pytest.raises(ValueError, match="masked"):
        acc.update(x, x, np.ones((1, 2, 2), bool))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.update(bad, x, np.ones((1, 2, 3), bool))
    acc.update(x, x, np.ones((1, 2, 3), bool))
    with pytest.raises(ValueError, match="parcels"):
        acc.update(x[:, :1], x[:, :1], np.ones((1, 1, 3), bool))
    other = ReconMetrics()
    other.update(x[:, :1], x[:, :1], np.ones((1, 1, 3), bool))
    with pytest.raises(ValueError, match="merge"):
        acc.merge(other)
    # constant targets: zero variance, so R² is undefined rather than 1 or 0
    assert np.isnan(acc.result()["r2"]) and all(np.isnan(acc.result()["r2_per_parcel"]))


def test_recon_metrics_update_returns_per_window_sums():
    rng = np.random.default_rng(13)
    pred, target, sel = _scored(rng)
    acc = ReconMetrics()
    sums = acc.update(pred, target, sel)
    assert sums.shape == (6, 4)
    full = np.broadcast_to(sel[..., None], target.shape)
    for b in range(6):
        y, yhat = target[b][full[b]], pred[b][full[b]]
        np.testing.assert_allclose(sums[b], [y.size, ((yhat - y) ** 2).sum(), y.sum(), (y**2).sum()], rtol=1e-12)
    res = acc.result()
    assert sums[:, 0].sum() == res["n_values"] and sums[:, 1].sum() / sums[:, 0].sum() == pytest.approx(res["mse"])


def _window_sums(target: np.ndarray, pred: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Per-window (n, sse, sum_y, sum_y2) float [B, 4] of ``pred`` against ``target`` on ``sel``."""
    return ReconMetrics().update(pred, target, sel)


def test_compare_to_best_on_planted_baselines():
    rng = np.random.default_rng(14)
    target, masked, parcel_mask = _random_tokens(rng, b=40, p=8, n=4, length=5, frac=0.5)
    target = target + rng.normal(size=(40, 1, 1, 1))  # window offsets, shared by every method
    sel = masked & parcel_mask[:, :, None]
    noisy = {name: target + sd * rng.normal(size=target.shape)
             for name, sd in (("model", 0.5), ("weak", 1.2), ("fair", 0.8), ("sharp", 0.2))}
    full = np.broadcast_to(sel[..., None], target.shape)
    r2 = {name: r2_score(target[full], pred[full]) for name, pred in noisy.items()}

    def compare(names, seed=0):
        return compare_to_best({n: _window_sums(target, noisy[n], sel) for n in names}, n_boot=300, seed=seed)

    c = compare(["model", "weak", "fair"])
    assert c["baseline"] == "fair" and c["metric"] == "r2" and c["n_units"] == 40 and c["verdict"] == "beats"
    assert c["diff"] == pytest.approx(r2["model"] - r2["fair"], rel=1e-10)
    assert 0 < c["low"] <= c["diff"] <= c["high"]
    assert compare(["model", "weak", "fair"], seed=0) == c  # seeded: the same draws
    c = compare(["model", "fair", "sharp"])
    assert c["baseline"] == "sharp" and c["verdict"] == "loses" and c["high"] < 0
    same = compare_to_best({"model": _window_sums(target, noisy["fair"], sel),
                            "fair": _window_sums(target, noisy["fair"], sel)}, n_boot=100)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and same["verdict"] == "ties"
    flat = np.ones_like(target)
    assert "skipped" in compare_to_best({"model": _window_sums(flat, flat, sel), "mean": _window_sums(flat, flat, sel)})
