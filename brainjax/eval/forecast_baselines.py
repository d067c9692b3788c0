"""Forecasting baselines for parcel time series: persistence, per-parcel AR, ridge VAR and a small LSTM.

A pretrained fMRI masked autoencoder is judged on forecasting the next ``H`` TRs of every parcel from a
``C``-TR context. Its numbers only mean something beside baselines fitted on the same training split, so
this module gives four of increasing capacity and one shared error report:

- ``persistence``: repeat the last context value (the floor any model must beat);
- ``fit_ar`` / ``predict_ar``: one AR(order) per parcel, blind to other parcels;
- ``fit_var`` / ``predict_var``: a ridge VAR(order) across all parcels, solved from accumulated normal
  equations so memory is O((P * order)^2) however long the training set is;
- ``LSTMForecaster`` / ``train_lstm``: a nonlinear sequence model predicting the change from persistence.

Training series are a list of float [P, T_i] arrays (lengths may differ); lagged pairs never span two
series, since the end of one scan says nothing about the start of the next. Evaluation contexts are
[N, P, C] and every forecaster returns [N, P, H]. AR and VAR forecasts are iterated: each predicted TR is
fed back as input for the next. ``window_errors`` keeps error sums per window and ``compare_forecasts``
turns them into paired bootstrap intervals of the model's MSE minus a baseline's, overall and per step.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
import scipy.stats
from flax import nnx
from sklearn.metrics import r2_score

from brainjax.eval.bootstrap import N_BOOT, paired_interval, verdict, weighted_mse


def _check_series(series: Sequence[np.ndarray], min_len: int, name: str = "train") -> list[np.ndarray]:
    """Validate a list of [P, T_i] series (same P, finite, T_i >= min_len); returns float64 copies."""
    if len(series) == 0:
        raise ValueError(f"{name}: no series given")
    out = []
    for i, s in enumerate(series):
        s = np.asarray(s, dtype=np.float64)
        if s.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected a [P, T] array, got shape {s.shape}")
        if out and s.shape[0] != out[0].shape[0]:
            raise ValueError(f"{name}[{i}]: has {s.shape[0]} parcels, {name}[0] has {out[0].shape[0]}")
        if s.shape[1] < min_len:
            raise ValueError(f"{name}[{i}]: {s.shape[1]} TRs, need at least {min_len}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name}[{i}]: contains NaN or inf")
        out.append(s)
    return out


def _check_context(context: np.ndarray, horizon: int, min_len: int = 1) -> np.ndarray:
    """Validate a [N, P, C] context with C >= min_len and a positive horizon."""
    context = np.asarray(context)
    if context.ndim != 3:
        raise ValueError(f"context: expected [N, P, C], got shape {context.shape}")
    if context.shape[2] < min_len:
        raise ValueError(f"context: {context.shape[2]} TRs, need at least {min_len} (the model order)")
    if not np.all(np.isfinite(context)):
        raise ValueError("context: contains NaN or inf")
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon}")
    return context


def _check_order(order: int, alpha: float) -> None:
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")


def persistence(context: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last context TR. context: [N, P, C]; returns [N, P, horizon] in the context's dtype."""
    context = _check_context(context, horizon)
    return np.repeat(context[:, :, -1:], int(horizon), axis=2)


def _lags(s: np.ndarray, order: int) -> list[np.ndarray]:
    """Views of s [P, T] aligned with targets s[:, order:]; entry k is lag k + 1, each [P, T - order]."""
    t = s.shape[1]
    return [s[:, order - 1 - k : t - 1 - k] for k in range(order)]


def fit_ar(train: Sequence[np.ndarray], order: int, alpha: float = 1e-3) -> np.ndarray:
    """Per-parcel AR(order) with intercept, ridge ``alpha`` on the lag weights only (the intercept is free).

    train: list of float [P, T_i] series, each T_i >= order + 1. Returns float64 [P, order + 1]:
    column k (k < order) weights lag k + 1 (x[t - 1 - k]), the last column is the intercept.
    """
    _check_order(order, alpha)
    train = _check_series(train, order + 1)
    p = train[0].shape[0]
    gram = np.zeros((p, order + 1, order + 1))
    rhs = np.zeros((p, order + 1))
    for s in train:
        # design columns per parcel: the lags then a column of ones; summed per series, never concatenated
        cols = _lags(s, order) + [np.ones((p, s.shape[1] - order))]
        design = np.stack(cols, axis=2)  # [P, T - order, order + 1]
        gram += np.einsum("ptk,ptl->pkl", design, design)
        rhs += np.einsum("ptk,pt->pk", design, s[:, order:])
    gram[:, np.arange(order), np.arange(order)] += alpha
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def predict_ar(coefs: np.ndarray, context: np.ndarray, horizon: int) -> np.ndarray:
    """Iterated AR forecast. coefs: [P, order + 1] from ``fit_ar``; context: [N, P, C >= order];
    returns float64 [N, P, horizon]."""
    coefs = np.asarray(coefs, dtype=np.float64)
    if coefs.ndim != 2 or coefs.shape[1] < 2:
        raise ValueError(f"coefs: expected [P, order + 1], got shape {coefs.shape}")
    order = coefs.shape[1] - 1
    context = _check_context(context, horizon, order)
    if context.shape[1] != coefs.shape[0]:
        raise ValueError(f"context has {context.shape[1]} parcels, coefs {coefs.shape[0]}")
    # recent[..., k] is lag k + 1 (most recent first), matching the coefficient columns
    recent = context[:, :, ::-1][:, :, :order].astype(np.float64)
    out = np.empty(context.shape[:2] + (int(horizon),))
    for h in range(int(horizon)):
        nxt = np.einsum("npk,pk->np", recent, coefs[:, :order]) + coefs[:, order]
        out[:, :, h] = nxt
        recent = np.concatenate([nxt[:, :, None], recent[:, :, :-1]], axis=2)
    return out


def _var_sums(train: list[np.ndarray], order: int) -> tuple[np.ndarray, ...]:
    """Sufficient statistics of the VAR regression, built from lag slices without a [T, P*order] design.

    Returns gram [D, D], cross [D, P], feature sum [D], target sum [P], pair count (D = P * order);
    feature index k * P + j is parcel j at lag k + 1.
    """
    p = train[0].shape[0]
    d = p * order
    gram, cross = np.zeros((d, d)), np.zeros((d, p))
    zsum, ysum, count = np.zeros(d), np.zeros(p), 0
    for s in train:
        lags, target = _lags(s, order), s[:, order:]
        for k in range(order):
            for m in range(order):
                gram[k * p : (k + 1) * p, m * p : (m + 1) * p] += lags[k] @ lags[m].T
            cross[k * p : (k + 1) * p] += lags[k] @ target.T
            zsum[k * p : (k + 1) * p] += lags[k].sum(axis=1)
        ysum += target.sum(axis=1)
        count += target.shape[1]
    return gram, cross, zsum, ysum, count


def _var_solve(sums: tuple[np.ndarray, ...], order: int, alpha: float) -> dict:
    """Ridge VAR from ``_var_sums``: the intercept row of the augmented system carries no penalty."""
    gram, cross, zsum, ysum, count = sums
    d = gram.shape[0]
    lhs = np.empty((d + 1, d + 1))
    lhs[:d, :d] = gram + alpha * np.eye(d)
    lhs[:d, d] = lhs[d, :d] = zsum
    lhs[d, d] = count
    rhs = np.vstack([cross, ysum[None]])
    try:
        sol = scipy.linalg.solve(lhs, rhs, assume_a="pos")
    except np.linalg.LinAlgError as err:
        raise ValueError(f"VAR normal equations are singular (alpha={alpha}); use alpha > 0 or more data") from err
    return {"weights": sol[:d], "intercept": sol[d], "order": np.asarray(order)}


def fit_var(train: Sequence[np.ndarray], order: int, alpha: float) -> dict:
    """Ridge VAR(order) over all parcels jointly, intercept unpenalised.

    train: list of float [P, T_i] series, each T_i >= order + 1. Returns {"weights": float64 [P*order, P]
    (row k*P + j: parcel j at lag k + 1), "intercept": float64 [P], "order": int array []}; the one-step
    prediction is z @ weights + intercept with z = [x[t-1], ..., x[t-order]] concatenated.
    """
    _check_order(order, alpha)
    return _var_solve(_var_sums(_check_series(train, order + 1), order), order, alpha)


def _var_one_step_mse(var: dict, series: list[np.ndarray]) -> float:
    """Pooled one-step MSE of a VAR over all lagged pairs of the given [P, T_i] series."""
    order, p = int(var["order"]), var["intercept"].shape[0]
    sse, count = 0.0, 0
    for s in series:
        pred = sum(var["weights"][k * p : (k + 1) * p].T @ lag for k, lag in enumerate(_lags(s, order)))
        sse += float(np.sum((pred + var["intercept"][:, None] - s[:, order:]) ** 2))
        count += s[:, order:].size
    return sse / count


def choose_var_alpha(train: Sequence[np.ndarray], val: Sequence[np.ndarray], order: int,
                     alphas: Sequence[float]) -> float:
    """The alpha in ``alphas`` with the lowest one-step MSE on ``val`` (ties: the earliest listed).

    train, val: lists of float [P, T_i] series with the same P. The training sums are accumulated once.
    """
    if len(alphas) == 0:
        raise ValueError("alphas: no candidates given")
    for a in alphas:
        _check_order(order, a)
    train = _check_series(train, order + 1, "train")
    val = _check_series(val, order + 1, "val")
    if val[0].shape[0] != train[0].shape[0]:
        raise ValueError(f"val has {val[0].shape[0]} parcels, train {train[0].shape[0]}")
    sums = _var_sums(train, order)
    scores = [_var_one_step_mse(_var_solve(sums, order, a), val) for a in alphas]
    return float(alphas[int(np.argmin(scores))])


def predict_var(var: dict, context: np.ndarray, horizon: int) -> np.ndarray:
    """Iterated VAR forecast. var: from ``fit_var``; context: [N, P, C >= order]; returns float64 [N, P, H]."""
    order, weights, intercept = int(var["order"]), np.asarray(var["weights"]), np.asarray(var["intercept"])
    p = intercept.shape[0]
    if weights.shape != (p * order, p):
        raise ValueError(f"var weights: expected shape {(p * order, p)}, got {weights.shape}")
    context = _check_context(context, horizon, order)
    if context.shape[1] != p:
        raise ValueError(f"context has {context.shape[1]} parcels, the VAR {p}")
    n = context.shape[0]
    # z = [x[t-1], x[t-2], ...] flattened lag-major, the row order of ``weights``
    z = context[:, :, ::-1][:, :, :order].transpose(0, 2, 1).reshape(n, p * order).astype(np.float64)
    out = np.empty((n, p, int(horizon)))
    for h in range(int(horizon)):
        nxt = z @ weights + intercept
        out[:, :, h] = nxt
        z = np.concatenate([nxt, z[:, : p * (order - 1)]], axis=1)
    return out


class LSTMForecaster(nnx.Module):
    """LSTM over the context's P-dimensional TR vectors; a linear head maps the last hidden state to the
    change from persistence for all P * H outputs. The head starts at zero, so an untrained model is
    exactly the persistence baseline.

    parcels: P; horizon: H; hidden: LSTM state size; rngs: initialises the LSTM (the head is zero).
    """

    def __init__(self, parcels: int, horizon: int, hidden: int = 64, *, rngs: nnx.Rngs):
        self.parcels, self.horizon, self.hidden = parcels, horizon, hidden
        cell = nnx.OptimizedLSTMCell(parcels, hidden, rngs=rngs)
        # rngs=False: the carry is passed explicitly, so the RNN keeps no RNG state that changes per call
        self.rnn = nnx.RNN(cell, time_major=True, rngs=False)
        self.head = nnx.Linear(hidden, parcels * horizon, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, context: jax.Array) -> jax.Array:
        """context: float [N, P, C]; returns float32 [N, P, H]."""
        n = context.shape[0]
        zeros = jnp.zeros((n, self.hidden), jnp.float32)
        hidden = self.rnn(jnp.transpose(context, (2, 0, 1)).astype(jnp.float32), initial_carry=(zeros, zeros))
        delta = self.head(hidden[-1]).reshape(n, self.parcels, self.horizon)
        return context[:, :, -1:].astype(jnp.float32) + delta


@functools.cache
def _adam(lr: float) -> optax.GradientTransformation:
    # the optimizer's graph includes the transformation object: reusing it lets repeated ``train_lstm`` calls
    # (seeds, folds) hit the compiled step instead of recompiling it each time
    return optax.adam(lr)


@nnx.jit
def _train_step(model: LSTMForecaster, optimizer: nnx.Optimizer, context: jax.Array, target: jax.Array):
    def loss_fn(m: LSTMForecaster) -> jax.Array:
        return jnp.mean((m(context) - target) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_lstm(train: Sequence[np.ndarray], context_len: int, horizon: int, *, hidden: int = 64, steps: int = 300,
               batch: int = 32, lr: float = 1e-3, seed: int = 0) -> LSTMForecaster:
    """Fit an ``LSTMForecaster`` by MSE on random crops of the training series (Adam, ``steps`` updates).

    train: list of float [P, T_i] series, each T_i >= context_len + horizon. Crops are drawn uniformly over
    all (series, start) positions by a numpy Generator seeded with ``seed``, which also seeds the model,
    so the result is deterministic. Returns the trained model (maps [N, P, context_len] -> [N, P, horizon]).
    """
    for name, v in (("context_len", context_len), ("horizon", horizon), ("hidden", hidden), ("steps", steps),
                    ("batch", batch)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    window = context_len + horizon
    series = [s.astype(np.float32) for s in _check_series(train, window)]
    starts = np.array([s.shape[1] - window + 1 for s in series])  # crop positions per series
    offsets = np.concatenate([[0], np.cumsum(starts)])
    model = LSTMForecaster(series[0].shape[0], horizon, hidden, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, _adam(float(lr)), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        flat = rng.integers(0, offsets[-1], size=batch)
        which = np.searchsorted(offsets, flat, side="right") - 1
        crops = np.stack([series[i][:, f - offsets[i] : f - offsets[i] + window] for i, f in zip(which, flat)])
        _train_step(model, optimizer, jnp.asarray(crops[:, :, :context_len]), jnp.asarray(crops[:, :, context_len:]))
    return model


def forecast_errors(pred: np.ndarray, target: np.ndarray, parcel_mask: np.ndarray | None = None) -> dict:
    """Error summary of a forecast over real parcels.

    pred, target: float [N, P, H]; parcel_mask: bool [N, P] (False = padded parcel, excluded) or None.
    Returns {"mse": float, "mse_per_step": list[H], "r2": pooled R^2 of all predicted values around their
    pooled mean, "pearson_r_per_step": list[H] correlation across samples x parcels (NaN if constant)}.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, P, H]; got {pred.shape} and {target.shape}")
    if parcel_mask is None:
        parcel_mask = np.ones(pred.shape[:2], dtype=bool)
    parcel_mask = np.asarray(parcel_mask)
    if parcel_mask.shape != pred.shape[:2] or parcel_mask.dtype != bool:
        raise ValueError(f"parcel_mask must be bool {pred.shape[:2]}, got {parcel_mask.dtype} {parcel_mask.shape}")
    p, t = pred[parcel_mask], target[parcel_mask]  # [M, H]
    if p.shape[0] < 2:
        raise ValueError(f"need at least 2 real (sample, parcel) rows, got {p.shape[0]}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("pred or target contains NaN or inf at real parcels")
    err = (p - t) ** 2
    with warnings.catch_warnings():
        # a constant step (e.g. persistence of a flat signal) has no correlation: report NaN, quietly
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        r = scipy.stats.pearsonr(p, t, axis=0).statistic
    return {
        "mse": float(err.mean()),
        "mse_per_step": err.mean(axis=0).tolist(),
        "r2": float(r2_score(t.ravel(), p.ravel(), force_finite=False)),
        "pearson_r_per_step": np.atleast_1d(r).tolist(),
    }


def window_errors(pred: np.ndarray, target: np.ndarray, parcel_mask: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-window error sums over real parcels, the units of a bootstrap over windows.

    pred, target: float [N, P, H]; parcel_mask: bool [N, P] or None (all real). Returns (count float64 [N]:
    real parcels per window, sse float64 [N, H]: squared error summed over them at each step); the pooled MSE
    of :func:`forecast_errors` is sse.sum() / (count.sum() * H), that of step h sse[:, h].sum() / count.sum().
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, P, H]; got {pred.shape} and {target.shape}")
    real = np.ones(pred.shape[:2], bool) if parcel_mask is None else np.asarray(parcel_mask, bool)
    if real.shape != pred.shape[:2]:
        raise ValueError(f"parcel_mask must be {pred.shape[:2]}, got {real.shape}")
    err = np.where(real[:, :, None], pred - target, 0.0)  # np.where: padded parcels may hold anything
    if not np.all(np.isfinite(err)):
        raise ValueError("pred or target contains NaN or inf at real parcels")
    return real.sum(axis=1).astype(np.float64), (err**2).sum(axis=1)


def _mse_interval(model: np.ndarray, base: np.ndarray, n_boot: int, seed: int, groups=None) -> dict:
    """Bootstrap of MSE(model) - MSE(base) over windows (or over ``groups`` of them, e.g. scans) from (n, sse)
    float [N, 2] each; lower is better."""
    interval = paired_interval(lambda w: weighted_mse(w, model) - weighted_mse(w, base), len(model),
                               groups=groups, n_boot=n_boot, seed=seed)
    return {**interval, "verdict": verdict(interval, higher_is_better=False)}


def compare_forecasts(errors: dict[str, tuple[np.ndarray, np.ndarray]], *, n_boot: int = N_BOOT, seed: int = 0,
                      groups=None) -> dict:
    """The model's forecast against the baselines by paired bootstraps over windows (diff = model MSE - baseline
    MSE, so "beats" means a lower error).

    errors: {"model": (count [N], sse [N, H]), baseline name: ..., ...} from :func:`window_errors`, rows
    aligned (window n is the same window in every entry). Returns {"comparison": model vs the baseline of
    lowest overall MSE, "per_step": list[H] of model vs the baseline of lowest MSE at that step (with "step",
    1-based), "vs": {baseline: model vs it overall}}; each entry carries "baseline", "metric": "mse", "diff",
    "low", "high", "level", "n_boot", "n_units", "verdict". Every interval uses the same draws of windows;
    ``groups`` (one label per window, e.g. its scan) resamples whole groups, since windows of one scan are
    not independent.
    """
    count, sse = (np.asarray(a, np.float64) for a in errors["model"])
    if sse.ndim != 2 or count.shape != sse.shape[:1]:
        raise ValueError(f"model errors: expected count [N] and sse [N, H], got {count.shape} and {sse.shape}")
    baselines = {name: np.asarray(e[1], np.float64) for name, e in errors.items() if name != "model"}
    if not baselines:
        raise ValueError("compare_forecasts: no baseline to compare with")
    for name, b_sse in baselines.items():
        if b_sse.shape != sse.shape:
            raise ValueError(f"{name}: sse {b_sse.shape} is not aligned with the model's {sse.shape}")
    horizon = sse.shape[1]
    overall = lambda s: np.stack([count * horizon, s.sum(axis=1)], axis=1)  # (n, sse) [N, 2]
    step = lambda s, h: np.stack([count, s[:, h]], axis=1)
    vs = {name: {"baseline": name, "metric": "mse", **_mse_interval(overall(sse), overall(b), n_boot, seed, groups)}
          for name, b in baselines.items()}
    best = min(baselines, key=lambda name: baselines[name].sum())
    per_step = []
    for h in range(horizon):
        best_h = min(baselines, key=lambda name: baselines[name][:, h].sum())
        per_step.append({"step": h + 1, "baseline": best_h, "metric": "mse",
                         **_mse_interval(step(sse, h), step(baselines[best_h], h), n_boot, seed, groups)})
    return {"comparison": vs[best], "per_step": per_step, "vs": vs}
