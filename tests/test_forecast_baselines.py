"""Forecasting baselines: coefficient recovery on simulated processes, fits against explicit design-matrix
solves, iterated forecasts against hand-unrolled loops, the LSTM against persistence, and error metrics
against direct numpy computations."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from brainjax.eval import forecast_baselines as fb


def _simulate_ar2(a1: np.ndarray, a2: np.ndarray, c: np.ndarray, t: int, seed: int) -> np.ndarray:
    """Per-parcel AR(2) x[t] = a1 x[t-1] + a2 x[t-2] + c + noise; returns [P, t]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((a1.size, t + 100))
    for i in range(2, t + 100):
        x[:, i] = a1 * x[:, i - 1] + a2 * x[:, i - 2] + c + rng.standard_normal(a1.size)
    return x[:, 100:]  # drop burn-in


def _simulate_var1(a: np.ndarray, t: int, seed: int, mean: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((a.shape[0], t + 100))
    for i in range(1, t + 100):
        x[:, i] = a @ x[:, i - 1] + rng.standard_normal(a.shape[0])
    return x[:, 100:] + mean


def _ridge_lstsq(design: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge by data augmentation, penalising every column but the last (the intercept); lstsq solve."""
    d = design.shape[1]
    pen = np.sqrt(alpha) * np.eye(d)[:-1]
    return np.linalg.lstsq(np.vstack([design, pen]), np.concatenate([y, np.zeros((d - 1,) + y.shape[1:])]),
                           rcond=None)[0]


def test_persistence_hand_example():
    context = np.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0, -1.0, 7.0], [2.0, 2.0, -2.0]]], np.float32)
    expected = np.array([[[3.0, 3.0], [6.0, 6.0]], [[7.0, 7.0], [-2.0, -2.0]]], np.float32)
    np.testing.assert_array_equal(fb.persistence(context, 2), expected)


def test_fit_ar_recovers_per_parcel_ar2():
    a1, a2, c = np.array([0.5, 1.2, -0.3, 0.1]), np.array([0.2, -0.5, 0.4, -0.6]), np.array([0.3, 0.0, -0.2, 0.5])
    x = _simulate_ar2(a1, a2, c, 6000, seed=0)
    coefs = fb.fit_ar([x[:, :3000], x[:, 3000:]], order=2)
    assert coefs.shape == (4, 3)
    np.testing.assert_allclose(coefs[:, 0], a1, atol=0.05)
    np.testing.assert_allclose(coefs[:, 1], a2, atol=0.05)
    np.testing.assert_allclose(coefs[:, 2], c, atol=0.05)


def test_predict_ar_one_step_and_recursion_by_hand():
    rng = np.random.default_rng(1)
    coefs = rng.normal(scale=0.5, size=(3, 3))  # [P, lag1, lag2, intercept]
    context = rng.standard_normal((2, 3, 5))
    pred = fb.predict_ar(coefs, context, 3)
    assert pred.shape == (2, 3, 3)
    for n in range(2):
        for p in range(3):
            a1, a2, b = coefs[p]
            prev2, prev1 = context[n, p, -2], context[n, p, -1]
            y1 = a1 * prev1 + a2 * prev2 + b
            y2 = a1 * y1 + a2 * prev1 + b
            y3 = a1 * y2 + a2 * y1 + b
            np.testing.assert_allclose(pred[n, p], [y1, y2, y3], rtol=1e-12)


def test_fit_ar_uses_no_pairs_spanning_two_series():
    rng = np.random.default_rng(2)
    # second series sits 10 units higher: a pair across the seam would be a spurious jump
    first, second = rng.standard_normal((2, 60)), rng.standard_normal((2, 45)) + 10.0
    order, alpha = 2, 0.5
    coefs = fb.fit_ar([first, second], order, alpha)
    for p in range(2):
        rows, ys = [], []
        for s in (first, second):
            for t in range(order, s.shape[1]):
                rows.append([s[p, t - 1], s[p, t - 2], 1.0])
                ys.append(s[p, t])
        np.testing.assert_allclose(coefs[p], _ridge_lstsq(np.array(rows), np.array(ys), alpha), rtol=1e-8, atol=1e-10)
    spanning = fb.fit_ar([np.concatenate([first, second], axis=1)], order, alpha)
    assert np.abs(spanning - coefs).max() > 1e-3


def test_fit_var_recovers_sparse_var1():
    a = np.diag([0.5, 0.4, -0.3, 0.6, 0.2])
    a[0, 2], a[3, 1], a[4, 0] = 0.3, -0.25, 0.35
    x = _simulate_var1(a, 4000, seed=3)
    var = fb.fit_var([x[:, :2500], x[:, 2500:]], order=1, alpha=1e-3)
    assert var["weights"].shape == (5, 5) and var["intercept"].shape == (5,) and int(var["order"]) == 1
    # prediction is z @ weights, so weights is the transpose of the usual VAR matrix
    np.testing.assert_allclose(var["weights"].T, a, atol=0.06)


def test_fit_var_huge_alpha_gives_mean_intercept():
    x = _simulate_var1(np.eye(4) * 0.5, 800, seed=4, mean=2.0)
    series = [x[:, :500], x[:, 500:]]
    var = fb.fit_var(series, order=2, alpha=1e12)
    assert np.abs(var["weights"]).max() < 1e-6
    targets = np.concatenate([s[:, 2:] for s in series], axis=1)
    np.testing.assert_allclose(var["intercept"], targets.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(var["intercept"], x.mean(axis=1), atol=0.02)


def test_fit_var_matches_explicit_ridge_on_stacked_design():
    rng = np.random.default_rng(5)
    series = [rng.standard_normal((4, 70)), rng.standard_normal((4, 33)) + 5.0]  # offset: seam pairs would show
    order, alpha = 2, 0.7
    var = fb.fit_var(series, order, alpha)
    rows, ys = [], []
    for s in series:
        for t in range(order, s.shape[1]):
            rows.append(np.concatenate([s[:, t - 1], s[:, t - 2], [1.0]]))
            ys.append(s[:, t])
    sol = _ridge_lstsq(np.array(rows), np.array(ys), alpha)
    np.testing.assert_allclose(var["weights"], sol[:-1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(var["intercept"], sol[-1], rtol=1e-7, atol=1e-9)


def test_predict_var_recursion_by_hand():
    rng = np.random.default_rng(6)
    p, order = 3, 2
    var = {"weights": rng.normal(scale=0.3, size=(p * order, p)), "intercept": rng.normal(size=p),
           "order": np.asarray(order)}
    context = rng.standard_normal((2, p, 4))
    pred = fb.predict_var(var, context, 3)
    w1, w2, b = var["weights"][:p], var["weights"][p:], var["intercept"]
    for n in range(2):
        prev2, prev1 = context[n, :, -2], context[n, :, -1]
        y1 = prev1 @ w1 + prev2 @ w2 + b
        y2 = y1 @ w1 + prev1 @ w2 + b
        y3 = y2 @ w1 + y1 @ w2 + b
        np.testing.assert_allclose(pred[n], np.stack([y1, y2, y3], axis=1), rtol=1e-12)


def test_choose_var_alpha_matches_independent_selection():
    a = np.diag(np.where(np.arange(8) % 2, -0.5, 0.6))
    x = _simulate_var1(a, 600, seed=0)
    train, val = [x[:, :20], x[:, 20:40]], [x[:, 300:600]]  # 38 pairs for 9 weights per parcel: ridge must help
    alphas = [1e-6, 3.0, 30.0, 1e6]
    chosen = fb.choose_var_alpha(train, val, order=1, alphas=alphas)
    scores = []
    for alpha in alphas:
        var = fb.fit_var(train, 1, alpha)
        windows = np.stack([val[0][:, t - 1 : t] for t in range(1, 300)])  # [N, P, 1] contexts
        pred = fb.predict_var(var, windows, 1)[:, :, 0]
        scores.append(np.mean((pred - val[0][:, 1:].T) ** 2))
    assert chosen == alphas[int(np.argmin(scores))]
    assert chosen not in (1e-6, 1e6)  # neither overfitting nor shrinking the strong dynamics away wins


LSTM_P, LSTM_C, LSTM_H = 4, 24, 6


def _sinusoids(t: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    phase = np.arange(LSTM_P)[:, None] * 0.9
    return (np.sin(2 * np.pi * np.arange(t) / 12.0 + phase) + 0.05 * rng.standard_normal((LSTM_P, t))).astype(
        np.float32)


def test_lstm_untrained_is_persistence():
    model = fb.LSTMForecaster(LSTM_P, LSTM_H, hidden=16, rngs=nnx.Rngs(0))
    context = np.random.default_rng(8).standard_normal((3, LSTM_P, LSTM_C)).astype(np.float32)
    out = np.asarray(model(context))
    assert out.shape == (3, LSTM_P, LSTM_H)
    np.testing.assert_array_equal(out, fb.persistence(context, LSTM_H))


def test_train_lstm_beats_persistence_on_sinusoids():
    model = fb.train_lstm([_sinusoids(300, 9), _sinusoids(200, 10)], LSTM_C, LSTM_H, hidden=32, steps=100,
                          batch=16, lr=1e-2, seed=0)
    test = _sinusoids(400, 11)
    starts = range(0, 400 - LSTM_C - LSTM_H, 7)
    context = np.stack([test[:, s : s + LSTM_C] for s in starts])
    target = np.stack([test[:, s + LSTM_C : s + LSTM_C + LSTM_H] for s in starts])
    lstm_mse = np.mean((np.asarray(model(context)) - target) ** 2)
    persist_mse = np.mean((fb.persistence(context, LSTM_H) - target) ** 2)
    assert lstm_mse < 0.5 * persist_mse


def test_train_lstm_is_deterministic_given_seed():
    train = [_sinusoids(120, 12)]
    params = [nnx.state(fb.train_lstm(train, LSTM_C, LSTM_H, hidden=32, steps=5, batch=16, seed=s), nnx.Param)
              for s in (3, 3, 4)]
    leaves = [jax.tree_util.tree_leaves(p) for p in params]
    for x, y in zip(leaves[0], leaves[1]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves[0], leaves[2]))


def test_forecast_errors_against_numpy_with_mask():
    rng = np.random.default_rng(13)
    pred, target = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3)) + 0.5 * np.arange(3)
    mask = rng.random((5, 4)) > 0.3
    mask[0, 0], mask[1, 3] = True, False
    pred[~mask] = 1e6  # padded parcels hold garbage that must not leak into any number
    out = fb.forecast_errors(pred, target, mask)
    real = [(n, p) for n in range(5) for p in range(4) if mask[n, p]]
    pr, tr = np.array([pred[n, p] for n, p in real]), np.array([target[n, p] for n, p in real])
    np.testing.assert_allclose(out["mse"], np.mean((pr - tr) ** 2), rtol=1e-12)
    np.testing.assert_allclose(out["mse_per_step"], [np.mean((pr[:, h] - tr[:, h]) ** 2) for h in range(3)],
                               rtol=1e-12)
    sse, sst = np.sum((pr - tr) ** 2), np.sum((tr - tr.mean()) ** 2)
    np.testing.assert_allclose(out["r2"], 1 - sse / sst, rtol=1e-12)
    np.testing.assert_allclose(out["pearson_r_per_step"], [np.corrcoef(pr[:, h], tr[:, h])[0, 1] for h in range(3)],
                               rtol=1e-10)
    full = fb.forecast_errors(pred[:, :, :], target)  # without the mask the garbage dominates
    assert full["mse"] > 1e10


def test_bad_input_raises():
    good = np.zeros((3, 20))
    bad = good.copy()
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"train\[1\].*NaN"):
        fb.fit_ar([good, bad], order=2)
    with pytest.raises(ValueError, match=r"train\[1\].*need at least 4"):
        fb.fit_var([good, good[:, :3]], order=3, alpha=1.0)
    with pytest.raises(ValueError, match=r"train\[1\].*parcels"):
        fb.fit_ar([good, good[:2]], order=1)
    with pytest.raises(ValueError, match="need at least 3"):
        fb.predict_ar(np.zeros((3, 4)), np.zeros((1, 3, 2)), 2)
    var = {"weights": np.zeros((6, 3)), "intercept": np.zeros(3), "order": np.asarray(2)}
    with pytest.raises(ValueError, match="need at least 2"):
        fb.predict_var(var, np.zeros((1, 3, 1)), 2)
    with pytest.raises(ValueError, match="NaN"):
        fb.persistence(np.full((1, 2, 3), np.nan), 1)
    with pytest.raises(ValueError, match=r"train\[0\].*need at least 30"):
        fb.train_lstm([good], 20, 10, steps=1)
    with pytest.raises(ValueError, match=r"\[N, P, H\]"):
        fb.forecast_errors(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


# ------------------------------------------------------------------------ bootstrap comparisons of forecasts
def test_window_errors_pool_to_forecast_errors():
    rng = np.random.default_rng(20)
    pred, target = rng.normal(size=(2, 7, 5, 4))
    mask = rng.random((7, 5)) < 0.8
    mask[:, 0] = True
    pred[~mask] = np.nan  # padded parcels: never read
    count, sse = fb.window_errors(pred, target, mask)
    np.testing.assert_array_equal(count, mask.sum(axis=1))
    for n in range(7):
        np.testing.assert_allclose(sse[n], ((pred[n, mask[n]] - target[n, mask[n]]) ** 2).sum(axis=0), rtol=1e-12)
    pooled = fb.forecast_errors(pred, target, mask)
    assert sse.sum() / (count.sum() * 4) == pytest.approx(pooled["mse"], rel=1e-12)
    np.testing.assert_allclose(sse.sum(axis=0) / count.sum(), pooled["mse_per_step"], rtol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        fb.window_errors(pred, target)
    with pytest.raises(ValueError, match="parcel_mask"):
        fb.window_errors(target, target, mask[:, :2])


def _planted_forecasts(rng: np.random.Generator, n: int = 80, p: int = 6, h: int = 6) -> tuple[np.ndarray, dict]:
    """Target [N, P, H] and forecasts with known noise per step: the model's error is flat (sd 0.7); "good" is
    better at early steps and worse later (sd 0.3 -> 1.3); "bad" is worse everywhere (sd 1.5)."""
    target = rng.normal(size=(n, p, h)) + rng.normal(size=(n, 1, 1))  # a window offset, shared by all methods
    sd = {"model": np.full(h, 0.7), "good": np.linspace(0.3, 1.3, h), "bad": np.full(h, 1.5)}
    return target, {name: target + s * rng.normal(size=(n, p, h)) for name, s in sd.items()}


def test_compare_forecasts_on_planted_errors():
    rng = np.random.default_rng(21)
    target, preds = _planted_forecasts(rng)
    mask = np.ones(target.shape[:2], bool)
    mask[::5, -2:] = False  # some windows from a smaller atlas
    errors = {name: fb.window_errors(p, target, mask) for name, p in preds.items()}
    out = fb.compare_forecasts(errors, n_boot=300, seed=3)
    mse = {name: fb.forecast_errors(p, target, mask) for name, p in preds.items()}

    assert set(out["vs"]) == {"good", "bad"}
    for name in ("good", "bad"):
        c = out["vs"][name]
        assert c["diff"] == pytest.approx(mse["model"]["mse"] - mse[name]["mse"], rel=1e-10)
        assert c["low"] <= c["diff"] <= c["high"] and c["metric"] == "mse" and c["n_units"] == 80
    assert out["vs"]["bad"]["verdict"] == "beats"
    best = min(("good", "bad"), key=lambda k: mse[k]["mse"])
    assert out["comparison"] == out["vs"][best] and out["comparison"]["baseline"] == best

    steps = out["per_step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    for h, s in enumerate(steps):
        per_step = {k: mse[k]["mse_per_step"][h] for k in ("good", "bad")}
        assert s["baseline"] == min(per_step, key=per_step.get) == "good"
        assert s["diff"] == pytest.approx(mse["model"]["mse_per_step"][h] - per_step["good"], rel=1e-10)
    # variances 0.09 .. 1.69 against 0.49: loses early, beats late, ties where the two are close
    assert steps[0]["verdict"] == "loses" and steps[-1]["verdict"] == "beats"
    assert [s["verdict"] for s in steps] == sorted((s["verdict"] for s in steps), key=["loses", "ties", "beats"].index)


def test_compare_forecasts_identical_methods_tie_and_bad_input():
    rng = np.random.default_rng(22)
    target, preds = _planted_forecasts(rng, n=20)
    errors = {"model": fb.window_errors(preds["model"], target), "copy": fb.window_errors(preds["model"], target)}
    out = fb.compare_forecasts(errors, n_boot=100)
    assert out["comparison"]["diff"] == out["comparison"]["low"] == out["comparison"]["high"] == 0.0
    assert out["comparison"]["verdict"] == "ties" and all(s["verdict"] == "ties" for s in out["per_step"])
    with pytest.raises(ValueError, match="no baseline"):
        fb.compare_forecasts({"model": errors["model"]})
    with pytest.raises(ValueError, match="aligned"):
        fb.compare_forecasts({"model": errors["model"], "short": fb.window_errors(preds["good"][:5], target[:5])})
