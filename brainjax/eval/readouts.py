"""Second-order readouts of a BrainLM encoder: connectivity computed from the model's token embeddings.

A mean of token embeddings is a first-order summary: it cannot express how two parcels co-vary over time,
which is where functional connectivity (and the phenotypes carried by it) lives. ``token_covariance`` reads
the unmasked encoder's tokens [B, P, N, W] as P parcel trajectories over N time patches in a W-dimensional
space and correlates them, giving a model-derived connectivity [B, P, P] in the same Fisher-z units as
:func:`brainjax.eval.probe.fc_features`. Per-scan readouts average the per-window matrices over the scan's
windows in Fisher-z space (as per-scan CLS / mean embeddings average over windows).

An attention readout is not offered here: parcel-to-parcel attention needs the dense [L, L] attention of
every layer (L = P x N tokens), far too costly to run for every window of every scan; the network maps
already use it on one split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.nn.priors import factor_scores

R_CLIP = 0.999999  # as fc_features: identical parcels give a large finite z rather than inf
# a parcel whose tokens vary less than this (relative to their mean square) is constant up to float32 rounding
_FLAT = 1e-10


def token_covariance(tokens: jax.Array | np.ndarray, parcel_mask: jax.Array | np.ndarray) -> jax.Array:
    """Fisher-z correlation between parcels of their token trajectories, one matrix per window.

    tokens: float [B, P, N, W] encoder outputs (N >= 2 time patches); parcel_mask: bool [B, P] (False on
    padded parcels). Each parcel's tokens are centred over the N patches (per embedding dimension), the
    covariance of parcels p, q is the mean over n and w of the product of their centred tokens, normalised by
    the diagonal into a correlation r, clipped to +-0.999999 and Fisher-z transformed (arctanh).
    Returns float32 [B, P, P], symmetric; the diagonal, padded parcels' rows / columns and those of parcels
    whose tokens do not vary over patches (correlation undefined) are 0: a parcel a scan misses is masked
    like padding, and :func:`pair_present` tells such fill values from measurements. Traceable under jit.
    """
    tokens = jnp.asarray(tokens, jnp.float32)
    if tokens.ndim != 4:
        raise ValueError(f"token_covariance: tokens must be [B, P, N, W], got shape {tokens.shape}")
    batch, parcels, patches, width = tokens.shape
    if patches < 2:
        raise ValueError(f"token_covariance: needs at least 2 time patches per window to centre over, got "
                         f"N={patches} (window / patch); use a longer window or a shorter patch")
    mask = jnp.asarray(parcel_mask).astype(bool)
    if mask.shape != (batch, parcels):
        raise ValueError(f"token_covariance: parcel_mask must be [B={batch}, P={parcels}], got {mask.shape}")
    centred = tokens - tokens.mean(2, keepdims=True)
    # HIGHEST: TPU / GPU default f32 matmuls round inputs to bf16 / tf32, too coarse for correlations near 1
    cov = jnp.einsum("bpnw,bqnw->bpq", centred, centred, precision=jax.lax.Precision.HIGHEST) / (patches * width)
    var = jnp.diagonal(cov, axis1=1, axis2=2)
    varies = mask & (var > _FLAT * jnp.mean(tokens**2, axis=(2, 3)))
    scale = jnp.sqrt(jnp.where(varies, var, 1.0))
    r = jnp.clip(cov / (scale[:, :, None] * scale[:, None, :]), -R_CLIP, R_CLIP)
    keep = varies[:, :, None] & varies[:, None, :] & ~jnp.eye(parcels, dtype=bool)
    return jnp.where(keep, jnp.arctanh(r), 0.0)


def upper_triangle(matrix: np.ndarray, n_parcels: int | None = None) -> np.ndarray:
    """Row-major upper triangle without the diagonal (the order of ``fc_features``).

    matrix: [..., P, P]; n_parcels: keep only the first n_parcels (the dataset's real parcels when the
    model's inputs were padded). Returns [..., n(n-1)/2] in matrix's dtype.
    """
    matrix = np.asarray(matrix)
    n = matrix.shape[-1] if n_parcels is None else n_parcels
    if matrix.ndim < 2 or matrix.shape[-2] != matrix.shape[-1] or not 2 <= n <= matrix.shape[-1]:
        raise ValueError(f"upper_triangle: need [..., P, P] with 2 <= n_parcels <= P, got {matrix.shape}, {n}")
    rows, cols = np.triu_indices(n, k=1)
    return matrix[..., rows, cols]


def square(triangle: np.ndarray, n_parcels: int) -> np.ndarray:
    """Inverse of ``upper_triangle``: [..., n(n-1)/2] -> symmetric [..., n, n] with a zero diagonal."""
    triangle = np.asarray(triangle)
    if triangle.shape[-1] != n_parcels * (n_parcels - 1) // 2:
        raise ValueError(f"square: {triangle.shape[-1]} entries is not the upper triangle of {n_parcels} parcels")
    out = np.zeros((*triangle.shape[:-1], n_parcels, n_parcels), triangle.dtype)
    rows, cols = np.triu_indices(n_parcels, k=1)
    out[..., rows, cols] = triangle
    out[..., cols, rows] = triangle
    return out


def pair_present(present: np.ndarray) -> np.ndarray:
    """Which upper-triangle entries (``upper_triangle`` order) join two present parcels.

    present: bool [..., P] (False = a parcel the scan misses). Returns bool [..., P(P-1)/2]. A connectivity
    entry of a missing parcel is no measurement (``token_covariance`` gives it 0, a fill value): callers mark
    it missing (NaN) or leave it out of averages with this mask.
    """
    present = np.asarray(present, bool)
    rows, cols = np.triu_indices(present.shape[-1], k=1)
    return present[..., rows] & present[..., cols]


def mask_missing_pairs(triangles: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``triangles`` [N, P(P-1)/2] (float) with the entries of missing parcels set to NaN (a copy); present:
    bool [N, P]. NaN features are imputed by the probes from the training fold."""
    out = np.array(triangles, dtype=np.result_type(triangles, np.float32), copy=True)
    out[~pair_present(present)] = np.nan
    return out


def has_time_patches(cfg) -> bool:
    """Whether a run's windows hold at least 2 time patches (``token_covariance`` needs them)."""
    return cfg.data.window // cfg.model.patch >= 2


def factor_covariance(loadings: jax.Array, noise: jax.Array, signal: jax.Array,
                      parcel_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A factor model's view of one window's connectivity: (coupling [B, r(r+1)/2], residual [B, P]) float32.

    loadings [B, P, r], noise [B, P] (a model's learnt factor prior, ``BrainLM.factor_model``); signal
    float [B, P, T] (normalised, T >= 2); parcel_mask bool [B, P] (False = padded or missing: left out of the
    scores, so a scan missing a parcel needs no imputation). The factor scores z_t = E[z | x_t] of every TR
    (all real parcels seen) are correlated over the window: coupling is the upper triangle of their Fisher-z
    correlation (r(r-1)/2, row-major), then the log of each score's variance (r) — the latent networks'
    coupling and strength; residual is the log variance over the window of each parcel's signal that the
    factors leave unexplained (x - L z; 0 on masked parcels) — how much of a parcel is its own.
    """
    signal = jnp.asarray(signal, jnp.float32)
    if signal.ndim != 3 or signal.shape[-1] < 2:
        raise ValueError(f"factor_covariance: signal must be [B, P, T] with T >= 2, got shape {signal.shape}")
    mask = jnp.asarray(parcel_mask).astype(bool)
    signal = jnp.where(mask[:, :, None], signal, 0.0)
    scores = factor_scores(loadings, noise, signal[:, :, None, :], mask[:, :, None])[:, 0]  # [B, r, T]
    centred = scores - scores.mean(-1, keepdims=True)
    cov = jnp.einsum("brt,bst->brs", centred, centred, precision=jax.lax.Precision.HIGHEST) / signal.shape[-1]
    var = jnp.maximum(jnp.diagonal(cov, axis1=1, axis2=2), 1e-12)
    r = jnp.clip(cov / jnp.sqrt(var[:, :, None] * var[:, None, :]), -R_CLIP, R_CLIP)
    rows, cols = np.triu_indices(cov.shape[-1], k=1)
    coupling = jnp.concatenate([jnp.arctanh(r[:, rows, cols]), jnp.log(var)], -1)
    residual = signal - jnp.einsum("bpr,brt->bpt", loadings.astype(jnp.float32), scores,
                                   precision=jax.lax.Precision.HIGHEST)
    residual = jnp.where(mask, jnp.log(jnp.maximum(residual.var(-1), 1e-12)), 0.0)
    return coupling, residual


def window_readouts(model, batch: dict, tokcov: bool) -> dict:
    """The unmasked encoder's readouts of one batch (traceable; tokens never leave the device):
    cls, mean float32 [B, width]; parcel [B, P, width] (tokens averaged over patches); with ``tokcov``,
    tokcov [B, P, P] (:func:`token_covariance`); with a factor prior (``model.factor_prior``), factcov
    [B, r(r+1)/2] and factres [B, P] (:func:`factor_covariance`)."""
    out = model.embed(batch)
    readouts = {"cls": out["cls"], "mean": out["mean"], "parcel": out["tokens"].mean(2)}
    if tokcov:
        readouts["tokcov"] = token_covariance(out["tokens"], batch["parcel_mask"])
    if getattr(model, "factor_loadings", None) is not None:
        mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
        loadings, noise = model.factor_model(batch["coords"], mask)
        readouts["factcov"], readouts["factres"] = factor_covariance(loadings, noise, batch["signal"], mask)
    return readouts


class ScanMeans:
    """Per-scan means of per-window values, added batch by batch (windows of a scan may span batches).

    Sums are kept per scan seen, in ``dtype``: float32 is enough for the readouts (a scan has tens of windows,
    the output is float32) and halves the memory of P(P-1)/2-long rows.
    """

    def __init__(self, dtype=np.float64):
        self.dtype = dtype
        self.sums: dict[int, np.ndarray] = {}
        self.counts: dict[int, int] = {}

    def add(self, scans: np.ndarray, values: np.ndarray) -> None:
        """scans: int [B] scan index per window; values: float [B, ...] one value per window."""
        for scan, value in zip(np.asarray(scans).tolist(), np.asarray(values)):
            if scan in self.sums:
                self.sums[scan] += value
                self.counts[scan] += 1
            else:
                self.sums[scan] = value.astype(self.dtype, copy=True)
                self.counts[scan] = 1

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(scan indices int64 [S] sorted, their mean values [S, ...] in ``dtype``)."""
        scans = np.array(sorted(self.sums), np.int64)
        if scans.size == 0:
            raise ValueError("ScanMeans: no window was added")
        return scans, np.stack([self.sums[s] / self.counts[s] for s in scans.tolist()]).astype(self.dtype)
