"""Baselines for masked reconstruction of parcel time series, a batching-independent R² accumulator, and the
paired scan bootstrap of the model's R² against the best baseline (``compare_to_best``).

A BrainLM-style masked autoencoder sees parcel x time-patch tokens, some hidden, and reconstructs the hidden
ones. Its R² only means something beside baselines that get exactly the same visible tokens:

- ``mean_baseline``: each masked value is the mean of its parcel's visible values in the same window;
- ``interp_baseline``: linear interpolation in time between the parcel's visible TRs;
- ``regression_baseline``: the conditional Gaussian mean given the parcels visible at the same TR, with the
  parcel mean and covariance of the training split (a ridge regression from every visible parcel).

Tokens use the model's layout: ``target`` float [B, P, N, L] (B windows, P parcels, N patches of L TRs,
already normalised), ``masked`` bool [B, P, N] (True = hidden, to reconstruct) and ``parcel_mask`` bool
[B, P] (False = padded parcel: never visible, never scored). A token is visible iff it is not masked and its
parcel is real. Baselines never read masked values, so the model's inputs and theirs agree by construction.
When a parcel (or, for regression, a whole patch) has nothing visible, the training-split mean stands in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

from brainjax.eval.bootstrap import N_BOOT, paired_interval, pooled_r2, verdict


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array equality has no single truth value
class ParcelMoments:
    """Training-split parcel statistics: mean float64 [P], covariance float64 [P, P] (biased), TR count."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self) -> None:
        mean, cov = np.asarray(self.mean, np.float64), np.asarray(self.cov, np.float64)
        if mean.ndim != 1 or mean.size < 1 or cov.shape != (mean.size, mean.size):
            raise ValueError(f"moments: expected mean [P] and cov [P, P], got {mean.shape} and {cov.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise ValueError("moments: mean or cov contains NaN or inf")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)


def accumulate_moments(windows: Iterable[np.ndarray]) -> ParcelMoments:
    """Parcel mean and covariance of streamed training data in one pass, O(P^2) memory.

    windows: iterable of float [P, T] series or batches [B, P, T] (mixed freely; T may vary). Every TR
    counts as one sample. Sums are kept in float64 around a shift (the first window's parcel means) so the
    raw-moment formula cov = E[xx'] - mm' does not lose precision when means are large against the spread.
    Returns ParcelMoments with cov normalised by the TR count (np.cov(bias=True)).
    """
    shift = total = outer = None
    count = 0
    for i, w in enumerate(windows):
        w = np.asarray(w, dtype=np.float64)
        if w.ndim == 2:
            w = w[None]
        if w.ndim != 3:
            raise ValueError(f"windows[{i}]: expected [P, T] or [B, P, T], got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"windows[{i}]: contains NaN or inf")
        if shift is not None and w.shape[1] != shift.shape[0]:
            raise ValueError(f"windows[{i}]: has {w.shape[1]} parcels, earlier windows {shift.shape[0]}")
        if w.shape[0] * w.shape[2] == 0:
            continue
        if shift is None:
            shift = w.mean(axis=(0, 2))
            total, outer = np.zeros_like(shift), np.zeros((shift.size, shift.size))
        d = w - shift[None, :, None]
        total += d.sum(axis=(0, 2))
        outer += np.einsum("bpt,bqt->pq", d, d)
        count += w.shape[0] * w.shape[2]
    if count == 0:
        raise ValueError("accumulate_moments: no data (no window with at least one TR)")
    centre = total / count
    cov = outer / count - np.outer(centre, centre)
    return ParcelMoments(mean=shift + centre, cov=(cov + cov.T) / 2, count=count)


def _prepare(target: np.ndarray, masked: np.ndarray, parcel_mask: np.ndarray, moments: ParcelMoments
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate tokens; returns visible values float64 [B, P, N, L] (0 elsewhere), visible and todo [B, P, N]."""
    target, masked, parcel_mask = np.asarray(target), np.asarray(masked), np.asarray(parcel_mask)
    if target.ndim != 4:
        raise ValueError(f"target: expected [B, P, N, L], got shape {target.shape}")
    if masked.shape != target.shape[:3]:
        raise ValueError(f"masked: expected shape {target.shape[:3]} ([B, P, N]), got {masked.shape}")
    if parcel_mask.shape != target.shape[:2]:
        raise ValueError(f"parcel_mask: expected shape {target.shape[:2]} ([B, P]), got {parcel_mask.shape}")
    if moments.mean.shape[0] != target.shape[1]:
        raise ValueError(f"moments cover {moments.mean.shape[0]} parcels, target has {target.shape[1]}")
    visible = ~masked.astype(bool) & parcel_mask.astype(bool)[:, :, None]
    todo = masked.astype(bool) & parcel_mask.astype(bool)[:, :, None]
    # np.where, not multiplication: masked slots may hold NaN and must not leak into anything
    x = np.where(visible[..., None], target, 0.0).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("target: visible values contain NaN or inf")
    return x, visible, todo


def _out_dtype(target: np.ndarray) -> np.dtype:
    dtype = np.asarray(target).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def mean_baseline(target: np.ndarray, masked: np.ndarray, parcel_mask: np.ndarray, moments: ParcelMoments
                  ) -> np.ndarray:
    """Masked values = the mean of the parcel's visible values in the window (training mean if none visible).

    target: float [B, P, N, L]; masked: bool [B, P, N]; parcel_mask: bool [B, P]. Returns [B, P, N, L] in
    target's dtype: visible values copied, masked values predicted, padded parcels 0.
    """
    x, visible, todo = _prepare(target, masked, parcel_mask, moments)
    seen = visible.sum(axis=2) * x.shape[3]  # [B, P] visible TRs
    means = np.where(seen > 0, x.sum(axis=(2, 3)) / np.maximum(seen, 1), moments.mean[None, :])
    out = np.where(todo[..., None], means[:, :, None, None], x)
    return out.astype(_out_dtype(target))


def interp_baseline(target: np.ndarray, masked: np.ndarray, parcel_mask: np.ndarray, moments: ParcelMoments
                    ) -> np.ndarray:
    """Per parcel, linear interpolation in time between visible TRs (np.interp).

    Before the first and after the last visible TR the nearest visible value is held; a parcel with no
    visible TR in the window gets the training mean. Shapes and return as :func:`mean_baseline`.
    """
    x, visible, todo = _prepare(target, masked, parcel_mask, moments)
    b, p, n, length = x.shape
    series = x.reshape(b, p, n * length).copy()
    seen = np.repeat(visible, length, axis=2)
    hidden = np.repeat(todo, length, axis=2)
    t = np.arange(n * length)
    for i, j in zip(*np.nonzero(hidden.any(axis=2))):
        gaps = hidden[i, j]
        if seen[i, j].any():
            series[i, j, gaps] = np.interp(t[gaps], t[seen[i, j]], series[i, j, seen[i, j]])
        else:
            series[i, j, gaps] = moments.mean[j]
    return series.reshape(b, p, n, length).astype(_out_dtype(target))


def _factor(cov: np.ndarray, seen: np.ndarray, lam: float):
    """Cholesky factor of S_vv + lam * mean(diag S_vv) * I for the parcels ``seen`` (bool [P]), or None when
    they carry no variance (then S_mv = 0 for a PSD covariance and the conditional mean is the prior mean)."""
    s_vv = cov[np.ix_(seen, seen)]  # a copy: the ridge goes onto its diagonal in place
    scale = np.trace(s_vv) / seen.sum()
    if not scale > 0:
        return None
    s_vv[np.diag_indices_from(s_vv)] += lam * scale
    try:
        return scipy.linalg.cho_factor(s_vv, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError as err:
        raise ValueError("moments.cov is not positive semi-definite on the visible parcels") from err


def regression_baseline(target: np.ndarray, masked: np.ndarray, parcel_mask: np.ndarray, moments: ParcelMoments,
                        lam: float = 1e-2) -> np.ndarray:
    """Conditional Gaussian mean of the masked parcels given the visible ones, under the training moments.

    At each TR, x_m = mu_m + S_mv (S_vv + lam * tr(S_vv) / |v| * I)^-1 (x_v - mu_v), v = parcels visible
    at that TR, m = masked real parcels: a ridge regression from all visible parcels with weights implied by
    the training covariance. ``lam`` (> 0) is relative to the mean visible variance, so one value suits any
    normalisation; it keeps the solve well-posed when P approaches the number of training TRs. Masking is per
    patch, so one solve serves the L TRs of a (window, patch); with no parcel visible the prediction is mu.
    Shapes and return as :func:`mean_baseline`.
    """
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be finite and > 0, got {lam}")
    x, visible, todo = _prepare(target, masked, parcel_mask, moments)
    mu, cov = moments.mean, moments.cov
    out = x.copy()
    win, patch = np.nonzero(todo.any(axis=1))  # the K (window, patch) slots with something to predict
    seen, gaps = visible[win, :, patch], todo[win, :, patch]  # [K, P]
    resid = x[win, :, patch] - mu[None, :, None]  # [K, P, L]; only the visible rows are read
    pred = np.broadcast_to(mu[None, :, None], resid.shape).copy()
    # One factorisation per distinct visible set: parcel masking repeats a set across a window's patches,
    # future / time-block masking across windows; every slot of a set is one more right-hand side.
    sets, which = np.unique(seen, axis=0, return_inverse=True)
    by_set = np.split(np.argsort(which.reshape(-1), kind="stable"), np.cumsum(np.bincount(which.reshape(-1)))[:-1])
    # Single-threaded BLAS: the solves are many small ones, where OpenBLAS's threaded Cholesky spends far more
    # time synchronising than computing (30x slower on a busy 2-core machine, and no faster on an idle one).
    with threadpool_limits(limits=1, user_api="blas"):
        for u in np.flatnonzero(sets.any(axis=1)):
            v = sets[u]
            factor = _factor(cov, v, lam)
            if factor is None:
                continue
            slots = by_set[u]
            rows = gaps[slots].any(axis=0)  # parcels hidden in any of these slots: the only ones predicted
            rhs = resid[slots][:, v].transpose(1, 0, 2).reshape(v.sum(), -1)  # [V, slots * L]
            alpha = scipy.linalg.cho_solve(factor, rhs, check_finite=False)
            fit = (cov[np.ix_(rows, v)] @ alpha).reshape(rows.sum(), len(slots), -1)  # [M, slots, L]
            pred[slots[:, None], np.flatnonzero(rows)[None, :]] += fit.transpose(1, 0, 2)
    out[win, :, patch] = np.where(gaps[..., None], pred, out[win, :, patch])
    return out.astype(_out_dtype(target))


BASELINES = {"parcel_mean": mean_baseline, "interpolation": interp_baseline, "regression": regression_baseline}


def compare_to_best(sums: dict[str, np.ndarray], *, n_boot: int = N_BOOT, seed: int = 0, groups=None) -> dict:
    """The model against the baseline with the best pooled R², by a paired bootstrap over windows.

    sums: {"model": float [W, 4], baseline name: float [W, 4], ...} per-window (n, sse, sum_y, sum_y2) from
    :meth:`ReconMetrics.update`, rows aligned (window w is the same window, masked alike, in every entry).
    Returns {"baseline", "metric": "r2", "diff" (model R² - baseline R²), "low", "high", "level", "n_boot",
    "n_units", "verdict"}, or {"skipped": why} when no baseline has a defined R². ``groups`` (one label per
    window, e.g. its scan) resamples whole groups: windows of one scan are not independent.
    """
    model = np.asarray(sums["model"], np.float64)
    ones = np.ones(len(model))
    r2 = {name: pooled_r2(ones, s) for name, s in sums.items() if name != "model"}
    finite = {name: value for name, value in r2.items() if np.isfinite(value)}
    if not finite:
        return {"skipped": "no baseline has a defined R² (constant targets?)"}
    best = max(finite, key=finite.get)
    base = np.asarray(sums[best], np.float64)
    if base.shape != model.shape:
        raise ValueError(f"window sums of the model {model.shape} and of {best} {base.shape} are not aligned")
    # one draw reweights the same windows for both, so window difficulty cancels out of the difference
    interval = paired_interval(lambda w: pooled_r2(w, model) - pooled_r2(w, base), len(model), groups=groups,
                               n_boot=n_boot, seed=seed)
    return {"baseline": best, "metric": "r2", **interval, "verdict": verdict(interval, higher_is_better=True)}


class ReconMetrics:
    """Streaming MSE and R² over masked values, as float64 sums so results do not depend on batching.

    Pooled and per-parcel sums of the count, squared error, y and y². R² uses SST = sum(y²) - sum(y)²/n,
    accurate for normalised targets (mean small against the spread).
    """

    def __init__(self) -> None:
        self.n = 0
        self.sse = self.sum_y = self.sum_y2 = 0.0
        self.n_p = self.sse_p = self.sum_y_p = self.sum_y2_p = None  # [P], sized by the first update

    def update(self, pred: np.ndarray, target: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """Add the values selected by ``masked`` bool [B, P, N] (pass ``masked & parcel_mask[..., None]``).

        pred, target: float [B, P, N, L]; unselected values are ignored (may be NaN). Returns this batch's
        per-window sums float64 [B, 4] = (n, sse, sum_y, sum_y2), the units of a bootstrap over windows.
        """
        pred, target, masked = np.asarray(pred), np.asarray(target), np.asarray(masked, dtype=bool)
        if pred.shape != target.shape or target.ndim != 4:
            raise ValueError(f"pred {pred.shape} and target {target.shape} must share one [B, P, N, L] shape")
        if masked.shape != target.shape[:3]:
            raise ValueError(f"masked: expected shape {target.shape[:3]} ([B, P, N]), got {masked.shape}")
        if self.n_p is not None and target.shape[1] != self.n_p.size:
            raise ValueError(f"target has {target.shape[1]} parcels, earlier updates {self.n_p.size}")
        sel = np.broadcast_to(masked[..., None], target.shape)
        y = np.where(sel, target, 0.0).astype(np.float64)
        err = np.where(sel, pred, 0.0).astype(np.float64) - y
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(err))):
            raise ValueError("pred or target: scored (masked) values contain NaN or inf")
        per_parcel = np.stack([sel.sum(axis=(2, 3)), (err**2).sum(axis=(2, 3)), y.sum(axis=(2, 3)),
                               (y**2).sum(axis=(2, 3))], axis=-1)  # [B, P, 4]
        self._add(*per_parcel.sum(axis=0).T)
        return per_parcel.sum(axis=1)

    def _add(self, n_p: np.ndarray, sse_p: np.ndarray, sum_y_p: np.ndarray, sum_y2_p: np.ndarray) -> None:
        if self.n_p is None:
            self.n_p, self.sse_p = np.zeros(n_p.size, np.int64), np.zeros(n_p.size)
            self.sum_y_p, self.sum_y2_p = np.zeros(n_p.size), np.zeros(n_p.size)
        self.n_p += n_p.astype(np.int64)
        self.sse_p += sse_p
        self.sum_y_p += sum_y_p
        self.sum_y2_p += sum_y2_p
        self.n += int(n_p.sum())
        self.sse += float(sse_p.sum())
        self.sum_y += float(sum_y_p.sum())
        self.sum_y2 += float(sum_y2_p.sum())

    def merge(self, other: ReconMetrics) -> ReconMetrics:
        """Add ``other``'s sums into this accumulator (same parcel count); returns self."""
        if other.n_p is None:
            return self
        if self.n_p is not None and other.n_p.size != self.n_p.size:
            raise ValueError(f"cannot merge metrics over {other.n_p.size} parcels into {self.n_p.size}")
        self._add(other.n_p, other.sse_p, other.sum_y_p, other.sum_y2_p)
        return self

    def result(self) -> dict:
        """{"mse", "r2" (pooled), "r2_per_parcel" list[P] (NaN: < 2 values or zero variance),
        "r2_parcel_median" (over finite per-parcel R²; NaN if none), "n_values"}."""
        if self.n == 0:
            raise ValueError("ReconMetrics: no masked values were scored")
        per_parcel = _r2(self.n_p, self.sse_p, self.sum_y_p, self.sum_y2_p)
        finite = per_parcel[np.isfinite(per_parcel)]
        return {"mse": self.sse / self.n,
                "r2": float(_r2(np.array([self.n]), np.array([self.sse]), np.array([self.sum_y]),
                                np.array([self.sum_y2]))[0]),
                "r2_per_parcel": [float(v) for v in per_parcel],
                "r2_parcel_median": float(np.median(finite)) if finite.size else float("nan"),
                "n_values": self.n}


def _r2(n: np.ndarray, sse: np.ndarray, sum_y: np.ndarray, sum_y2: np.ndarray) -> np.ndarray:
    """1 - SSE / SST per entry; NaN where n < 2 or SST is zero up to rounding of the raw sums."""
    sst = sum_y2 - sum_y**2 / np.maximum(n, 1)
    ok = (n >= 2) & (sst > 1e-12 * np.maximum(sum_y2, np.finfo(np.float64).tiny))
    return np.where(ok, 1.0 - sse / np.where(ok, sst, 1.0), np.nan)
