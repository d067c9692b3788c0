"""Paired bootstrap intervals for "model minus baseline" and the one-word verdict printed beside them.

A comparison is *paired*: model and baseline are scored on the same units (windows, scans), and each
bootstrap draw resamples units with replacement and recomputes both scores on the same draw, so what they
share (hard windows, easy subjects) cancels out of the difference. When several units belong to one cluster
(the scans of a subject) whole clusters are resampled, as the probes' folds keep subjects together.

A draw is represented by a multiplicity per unit (how often it was drawn): every statistic here takes a
``weights`` vector float [U] and computes a weighted score, which is exact for resampling (a unit drawn k
times counts k times) and avoids building index arrays of repeated rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 1000


def resample_weights(n_units: int, n_boot: int, seed: int, groups: Sequence | None = None) -> np.ndarray:
    """Multiplicities float64 [n_boot, n_units] of ``n_boot`` bootstrap draws.

    Without ``groups`` each draw takes ``n_units`` units with replacement. With ``groups`` (one label per
    unit) it takes as many clusters as there are, with replacement, and each unit inherits its cluster's count.
    The draws are the indices ``np.random.default_rng(seed).integers(0, n, (n_boot, n))`` (n = units or
    clusters, clusters in sorted label order), counted per row, so a reference that indexes rows reproduces them.
    """
    if n_units < 1:
        raise ValueError("bootstrap: no units to resample")
    rng = np.random.default_rng(seed)
    if groups is None:
        return _counts(rng, n_units, n_boot)
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(inverse) != n_units:
        raise ValueError(f"bootstrap: {len(inverse)} group labels for {n_units} units")
    return _counts(rng, len(labels), n_boot)[:, inverse.reshape(-1)]


def _counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of n items is drawn in each of n_boot draws of n with replacement: float64 [n_boot, n]."""
    index = rng.integers(0, n, size=(n_boot, n))
    flat = (index + n * np.arange(n_boot)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def paired_interval(difference: Callable[[np.ndarray], float], n_units: int, *, groups: Sequence | None = None,
                    n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Percentile bootstrap interval of ``difference(weights)`` (model score minus baseline score).

    difference: maps unit weights float [U] to the scalar difference on that draw; called once with all
    weights 1 for the point estimate. Returns {"diff", "low", "high", "level", "n_boot", "n_units"}; draws
    on which the difference is undefined (NaN, e.g. one class only) are dropped, and "low"/"high" are NaN when
    fewer than half the draws are defined, or when there is a single independent unit (one scan or subject:
    every draw repeats it, so the spread says nothing about uncertainty and no verdict can be claimed).
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    point = float(difference(np.ones(n_units)))
    independent = n_units if groups is None else np.unique(np.asarray(groups)).size
    draws = np.array([difference(w) for w in resample_weights(n_units, n_boot, seed, groups)], np.float64)
    draws = draws[np.isfinite(draws)]
    low = high = float("nan")
    if draws.size >= n_boot / 2 and independent >= 2:
        tail = (1 - level) / 2
        low, high = (float(v) for v in np.quantile(draws, [tail, 1 - tail]))
    return {"diff": point, "low": low, "high": high, "level": level, "n_boot": n_boot, "n_units": n_units}


def verdict(interval: dict, higher_is_better: bool = True) -> str:
    """"beats" when the interval excludes zero on the good side, "loses" on the bad side, else "ties"."""
    low, high = interval["low"], interval["high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "ties"
    if not higher_is_better:
        low, high = -high, -low
    if low > 0:
        return "beats"
    if high < 0:
        return "loses"
    return "ties"


# ------------------------------------------------------------------------------------- weighted statistics
def pooled_r2(weights: np.ndarray, sums: np.ndarray) -> float:
    """R² pooled over units from per-unit sums float [U, 4] = (n, sse, sum_y, sum_y2) (see ReconMetrics).

    NaN when fewer than 2 values are pooled or SST vanishes up to rounding of the raw sums (ReconMetrics' rule),
    so a cancellation residue of constant targets gives NaN rather than a huge R².
    """
    n, sse, sum_y, sum_y2 = np.asarray(weights, np.float64) @ np.asarray(sums, np.float64)
    if n < 2:
        return float("nan")
    sst = sum_y2 - sum_y**2 / n
    return float(1.0 - sse / sst) if sst > 1e-12 * max(sum_y2, np.finfo(np.float64).tiny) else float("nan")


def weighted_mse(weights: np.ndarray, sums: np.ndarray) -> float:
    """MSE pooled over units from per-unit (n, sse) float [U, 2]."""
    n, sse = np.asarray(weights, np.float64) @ np.asarray(sums, np.float64)[:, :2]
    return sse / n if n > 0 else float("nan")


def weighted_r2_score(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination with sample weights (sklearn's r2_score with sample_weight)."""
    w = np.asarray(weights, np.float64)
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    total = w.sum()
    if total <= 0:
        return float("nan")
    mean = (w * y).sum() / total
    sst = (w * (y - mean) ** 2).sum()
    return 1.0 - (w * (y - p) ** 2).sum() / sst if sst > 0 else float("nan")


def weighted_auroc(weights: np.ndarray, y_true: np.ndarray, prob: np.ndarray) -> float:
    """AUROC with sample weights: binary ``prob`` [U] (positive class), or one-vs-rest macro average over
    the classes of ``prob`` [U, C] with integer labels ``y_true``. NaN when a class has zero weight."""
    w, y, prob = np.asarray(weights, np.float64), np.asarray(y_true), np.asarray(prob, np.float64)
    if prob.ndim == 2 and prob.shape[1] == 2:
        prob = prob[:, 1]
    if prob.ndim == 1:
        return _binary_auroc(w, y.astype(bool), prob)
    scores = [_binary_auroc(w, y == c, prob[:, c]) for c in range(prob.shape[1])]
    return float(np.mean(scores))


def _binary_auroc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> float:
    # Weighted Mann-Whitney: P(score_pos > score_neg) + 0.5 P(tie), pairs weighted by w_pos * w_neg.
    w_pos, w_neg = w * positive, w * ~positive
    if w_pos.sum() <= 0 or w_neg.sum() <= 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s, wp, wn = score[order], w_pos[order], w_neg[order]
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    pos_tie, neg_tie = np.add.reduceat(wp, start), np.add.reduceat(wn, start)
    neg_below = np.cumsum(neg_tie) - neg_tie
    wins = (pos_tie * (neg_below + 0.5 * neg_tie)).sum()
    return float(wins / (w_pos.sum() * w_neg.sum()))
