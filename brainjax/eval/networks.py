"""Functional network identification: do parcel features recover the atlas's networks?

BrainLM reports that its parcel representations and attention maps identify functional networks (Yeo-7
style). This module turns that claim into numbers. Parcels are assigned to networks either without labels
(k-means on parcel embeddings [P, D], spectral clustering on a parcel-to-parcel attention or similarity
matrix [P, P]) or with labels (cross-validated logistic regression), and the assignment is scored against
the atlas's network labels (Seitzman-300 has 13 networks; synthetic data has ground truth). The baseline is
the same procedure on group functional connectivity (``group_fc``), either as an affinity or as row
features, so a model is only interesting where it beats plain correlation.

Unlabelled parcels carry label -1: they may be clustered (they are part of the brain) but are excluded from
every score. ``ari_difference`` puts a parcel-bootstrap interval on the ARI gap between two clusterings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, adjusted_rand_score, balanced_accuracy_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainjax.eval.bootstrap import N_BOOT, paired_interval, verdict
from brainjax.paths import atomic_path

# Perfectly correlated distinct parcels would give arctanh(1) = inf; clipping keeps the mean finite.
_MAX_R = 1.0 - 1e-7
_UNLABELLED_COLOUR = (0.6, 0.6, 0.6, 1.0)


def _finite_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _labels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            raise ValueError(f"{name} must hold integer labels (found NaN, inf or fractions)")
    return x.astype(np.int64)


def _check_clusters(n_clusters: int, n_parcels: int) -> None:
    if not 1 <= n_clusters <= n_parcels:
        raise ValueError(f"n_clusters must be in [1, {n_parcels}] (the number of parcels), got {n_clusters}")


def group_fc(series: Sequence[np.ndarray], present: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Group functional connectivity: mean over scans of Fisher-z correlation between parcels.

    series: scans, each float [P, T] (same P). present: per scan bool [P] (False = a parcel the scan misses,
    never read), or None (all present): each entry is the mean over the scans that have both parcels (0 when
    none has). Returns float64 [P, P], symmetric, diagonal 0.
    """
    if len(series) == 0:
        raise ValueError("group_fc needs at least one scan")
    if present is not None and len(present) != len(series):
        raise ValueError(f"group_fc: {len(present)} presence masks for {len(series)} scans")
    total = count = None
    for i, scan in enumerate(series):
        scan = np.asarray(scan, np.float64)
        if scan.ndim != 2:
            raise ValueError(f"series[{i}] must be 2-D, got shape {scan.shape}")
        if total is not None and scan.shape[0] != total.shape[0]:
            raise ValueError(f"series[{i}] has {scan.shape[0]} parcels, series[0] has {total.shape[0]}")
        keep = np.ones(scan.shape[0], bool) if present is None else np.asarray(present[i], bool)
        if keep.shape != scan.shape[:1]:
            raise ValueError(f"group_fc: presence mask {i} has shape {keep.shape}, series[{i}] {scan.shape}")
        part = _finite_matrix(scan[keep], f"series[{i}]")
        if part.shape[1] < 3:
            raise ValueError(f"series[{i}] has {part.shape[1]} time points; correlation needs at least 3")
        if np.any(np.ptp(part, axis=1) == 0):
            flat = np.flatnonzero(keep)[np.ptp(part, axis=1) == 0]
            raise ValueError(f"series[{i}] has constant parcels (rows {flat})")
        if total is None:
            total, count = np.zeros((scan.shape[0],) * 2), np.zeros((scan.shape[0],) * 2)
        pair = np.ix_(keep, keep)
        total[pair] += np.arctanh(np.clip(np.corrcoef(part), -_MAX_R, _MAX_R))
        count[pair] += 1
    fc = total / np.maximum(count, 1)
    fc = (fc + fc.T) / 2  # remove float round-off asymmetry
    np.fill_diagonal(fc, 0.0)
    return fc


def cluster_features(features: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means networks from parcel embeddings.

    Columns are standardised (so no embedding dimension dominates by scale) and rows L2-normalised (so
    parcels group by the direction of their embedding, i.e. cosine similarity, not its norm).
    features: float [P, D]. Returns int64 [P] cluster ids in [0, n_clusters).
    """
    x = _finite_matrix(features, "features")
    _check_clusters(n_clusters, x.shape[0])
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)  # constant columns become 0, not NaN
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    return kmeans.fit_predict(x).astype(np.int64)


def cluster_affinity(affinity: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral-clustering networks from a parcel-to-parcel attention or similarity matrix.

    Attention is directed, so the matrix is symmetrised ((A + A.T) / 2). Negative entries (anti-correlation
    in FC) are clipped to 0 because spectral clustering treats the affinity as graph edge weights: a negative
    weight breaks the Laplacian's positive semi-definiteness and the method's guarantees.
    affinity: float [P, P]. Returns int64 [P] cluster ids in [0, n_clusters).
    """
    a = _finite_matrix(affinity, "affinity")
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"affinity must be square [P, P], got shape {a.shape}")
    _check_clusters(n_clusters, a.shape[0])
    a = np.clip((a + a.T) / 2, 0.0, None)
    if not np.any(a):
        raise ValueError("affinity has no positive entries after symmetrising and clipping negatives")
    spectral = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                                  assign_labels="cluster_qr")  # cluster_qr: no k-means restarts to vary
    return spectral.fit_predict(a).astype(np.int64)


def _scored(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = _labels(true, "true"), _labels(pred, "pred")
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in length: {true.shape[0]} vs {pred.shape[0]}")
    keep = true >= 0
    if not np.any(keep):
        raise ValueError("no labelled parcels (every true label is -1)")
    return true[keep], pred[keep]


def matched_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy of clusters under the best one-to-one matching of clusters to networks.

    Parcels with true == -1 are ignored. Each network is matched to at most one cluster (Hungarian
    algorithm on the contingency table); parcels in unmatched clusters count as wrong, so splitting a
    network into several clusters is penalised.
    true, pred: int [P]. Returns a float in [0, 1].
    """
    true, pred = _scored(true, pred)
    networks, t = np.unique(true, return_inverse=True)
    clusters, c = np.unique(pred, return_inverse=True)
    table = np.zeros((networks.size, clusters.size), dtype=np.int64)
    np.add.at(table, (t, c), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / true.size)


def agreement(true: np.ndarray, pred: np.ndarray) -> dict:
    """Cluster-vs-network agreement on labelled parcels (true >= 0).

    true, pred: int [P]. Returns {"accuracy": matched_accuracy, "ari", "nmi", "n_networks",
    "n_parcels_scored"}.
    """
    t, p = _scored(true, pred)
    return {"accuracy": matched_accuracy(true, pred), "ari": float(adjusted_rand_score(t, p)),
            "nmi": float(normalized_mutual_info_score(t, p)), "n_networks": int(np.unique(t).size),
            "n_parcels_scored": int(t.size)}


def ari_difference(true: np.ndarray, pred: np.ndarray, baseline: np.ndarray, *, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict:
    """Paired bootstrap over labelled parcels of ARI(pred) - ARI(baseline), both against ``true``.

    The clusterings are fixed; each draw resamples the labelled parcels with replacement (a parcel drawn k
    times is repeated k times) and rescores both on the same resampled parcels, so parcels that every method
    gets right or wrong cancel. true, pred, baseline: int [P] (true -1 = unlabelled, not resampled).
    Returns ``bootstrap.paired_interval``'s dict ("diff", "low", "high", ...) plus "verdict".
    """
    t, p = _scored(true, pred)
    _, b = _scored(true, baseline)

    def difference(weights: np.ndarray) -> float:
        drawn = np.repeat(np.arange(t.size), np.rint(weights).astype(np.int64))
        return float(adjusted_rand_score(t[drawn], p[drawn]) - adjusted_rand_score(t[drawn], b[drawn]))

    interval = paired_interval(difference, t.size, n_boot=n_boot, seed=seed)
    return {**interval, "verdict": verdict(interval)}


def classify_networks(features: np.ndarray, true: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """Supervised network identification: cross-validated multinomial logistic regression.

    Networks with fewer than ``folds`` labelled parcels cannot appear in every stratified fold and are
    excluded (listed in "excluded_networks"); unlabelled parcels (-1) are dropped.
    features: float [P, D], true: int [P]. Returns {"accuracy", "balanced_accuracy", "chance" (majority-class
    fraction of the scored parcels), "n_parcels" (scored), "excluded_networks": list[int]}.
    """
    x = _finite_matrix(features, "features")
    true = _labels(true, "true")
    if true.shape[0] != x.shape[0]:
        raise ValueError(f"features has {x.shape[0]} parcels but true has {true.shape[0]} labels")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    networks, counts = np.unique(true[true >= 0], return_counts=True)
    excluded = [int(n) for n in networks[counts < folds]]
    keep = (true >= 0) & ~np.isin(true, excluded)
    kept = networks[counts >= folds]
    if kept.size < 2:
        raise ValueError(f"need at least 2 networks with >= {folds} parcels each, found {kept.size}")
    x, y = x[keep], true[keep]
    # lbfgs fits the multinomial (softmax) model for more than two classes
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(model, x, y, cv=split)
    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "chance": float(np.bincount(np.searchsorted(kept, y)).max() / y.size), "n_parcels": int(y.size),
            "excluded_networks": excluded}


def identify(features_or_affinity: np.ndarray, true: np.ndarray, names: Sequence[str], *,
             kind: Literal["features", "affinity"], seed: int = 0) -> dict:
    """Cluster parcels into as many groups as there are labelled networks, then score and classify.

    features_or_affinity: float [P, D] embeddings (kind="features") or [P, P] attention/similarity
    (kind="affinity"; its rows are the classifier's features). true: int [P] network ids (-1 unlabelled),
    names: network names indexed by id. Returns {"clustering": agreement dict, "classification":
    classify_networks dict plus "excluded_names", "assignment": list[int] cluster per parcel}.
    """
    if kind not in ("features", "affinity"):
        raise ValueError(f"kind must be 'features' or 'affinity', got {kind!r}")
    x = _finite_matrix(features_or_affinity, kind)
    true = _labels(true, "true")
    if true.shape[0] != x.shape[0]:
        raise ValueError(f"{kind} has {x.shape[0]} parcels but true has {true.shape[0]} labels")
    if np.any(true < -1) or (true.size and true.max() >= len(names)):
        raise ValueError(f"true labels must be -1 or in [0, {len(names)}) (one name per network)")
    n_networks = np.unique(true[true >= 0]).size
    if n_networks == 0:
        raise ValueError("no labelled parcels (every true label is -1)")
    if kind == "features":
        assignment = cluster_features(x, n_networks, seed)
    else:
        assignment = cluster_affinity(x, n_networks, seed)
    classification = classify_networks(x, true, seed=seed)
    classification["excluded_names"] = [names[i] for i in classification["excluded_networks"]]
    return {"clustering": agreement(true, assignment), "classification": classification,
            "assignment": [int(a) for a in assignment]}


def save_network_figure(path: str | os.PathLike, coords: np.ndarray, labels: np.ndarray, names: Sequence[str],
                        title: str) -> None:
    """Glass-brain plot of parcel centres coloured by network, with a legend; unlabelled (-1) in grey.

    coords: float [P, 3] MNI mm, labels: int [P] (-1 or an index into names). The image is written to a
    temporary file and renamed, so readers never see a half-written figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from nilearn import plotting

    xyz = _finite_matrix(coords, "coords")
    labels = _labels(labels, "labels")
    if xyz.shape[1] != 3 or xyz.shape[0] != labels.shape[0]:
        raise ValueError(f"coords must be [P, 3] with P = len(labels) = {labels.shape[0]}, got {xyz.shape}")
    if np.any(labels < -1) or np.any(labels >= len(names)):
        raise ValueError(f"labels must be -1 or in [0, {len(names)}) (one name per network)")
    present = [int(n) for n in np.unique(labels[labels >= 0])]
    # tab20 alternates dark/light shades of one hue: dark ones first so neighbouring ids differ, and its greys
    # (14, 15) are skipped because grey means unlabelled
    tab20 = plt.get_cmap("tab20")
    colours = [tab20(i) for i in [*range(0, 20, 2), *range(1, 20, 2)] if i not in (14, 15)]
    if len(names) > len(colours):
        colours = [plt.get_cmap("hsv")(i / len(names)) for i in range(len(names))]
    palette = {n: colours[n] for n in present}
    palette[-1] = _UNLABELLED_COLOUR
    path = Path(path)
    fig = plt.figure(figsize=(12, 3.6))
    try:
        plotting.plot_connectome(np.zeros((xyz.shape[0],) * 2), xyz, node_color=np.array([palette[n] for n in labels]),
                                 node_size=30, display_mode="lzry", figure=fig, colorbar=False, title=title)
        handles = [Line2D([], [], ls="", marker="o", color=palette[n], label=names[n]) for n in present]
        if np.any(labels == -1):
            handles.append(Line2D([], [], ls="", marker="o", color=_UNLABELLED_COLOUR, label="unlabelled"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
        with atomic_path(path) as tmp:  # the temporary name has no extension: give the format
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    finally:
        plt.close(fig)
