"""Imaging descriptors per scan: the numbers behind the fMRI-LM style text corpus.

fMRI-LM trains its language model on text that describes each scan's imaging features, because real
fMRI-text pairs do not exist. Its corpus is built from NeuroMark ICA outputs that outsiders cannot
reproduce; ours is a pure function of a brainjax dataset's parcel series (and a seed), so anyone can
rebuild it. The features of one scan form a flat ``{key: float}`` dict (network names are the atlas's
own labels; parcels with an empty label are left out of network features but stay in the graph):

* ``fc_within.{net}`` / ``fc_between.{a}.{b}`` (a < b): mean Fisher z of the Pearson FC (diagonal excluded;
  ``|r|`` is clipped to ``1 - 1e-7`` so identical parcels give a finite z). Within needs >= 2 parcels.
* graph metrics on the graph that keeps the top ``density`` of ``|r|`` over all parcel pairs, weight ``|r|``
  (see :func:`threshold_graph`): ``global_efficiency`` (:func:`weighted_global_efficiency`), ``modularity``
  (seeded Louvain), ``clustering`` (networkx weighted average clustering, isolated parcels count as 0),
  ``strength.{net}`` (mean weighted degree).
* ``gradient{k}_range`` / ``gradient{k}_mean.{net}`` for k = 1, 2: BrainSpace diffusion-map gradients of
  the FC, Procrustes-aligned to a :class:`GradientReference` fitted on the training split. BrainSpace's
  default sparsity is kept (each row keeps its top 10 % before the normalized-angle kernel), which is why
  at least 20 parcels are required: fewer keep only the diagonal and the gradients are meaningless.
* ``alff``, ``falff``, ``band_ratio``, ``autocorr1`` per network: the mean over the network's parcels of
  per-parcel values from :func:`scipy.signal.periodogram` (boxcar window, mean removed, density scaling,
  so ALFF is in signal units / sqrt(Hz) and comparable across scan lengths). Band edges are inclusive for
  the low band; "high" is above it up to and including Nyquist. A band with no frequency bin (short scan,
  long TR) gives NaN, as does a zero denominator.
* ``outlier_fraction``: fraction of TRs whose DVARS (RMS over parcels of the temporal derivative of the
  per-parcel z-scored series) exceeds median + 3 * 1.4826 * MAD of the scan's DVARS.

Features are computed on the stored (prepared) series, not the normalised ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
from brainspace.gradient import GradientMaps
from scipy.signal import periodogram
from scipy.sparse.csgraph import shortest_path

from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import Dataset, DatasetError

_N_GRADIENTS = 3  # fitted; the first two are described
_MIN_PARCELS = 20  # BrainSpace keeps int(0.1 * P) entries per row, which must reach beyond the diagonal
_R_CLIP = 1.0 - 1e-7


@dataclass(frozen=True)
class DescriptorSettings:
    """Graph density (fraction of parcel pairs kept), the seed (Louvain, BrainSpace) and the low band in Hz."""

    density: float = 0.10
    seed: int = 0
    low_band: tuple[float, float] = (0.01, 0.08)

    def __post_init__(self):
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        lo, hi = self.low_band
        if not 0 < lo < hi:
            raise ValueError(f"low_band must be (low, high) with 0 < low < high Hz, got {self.low_band}")


@dataclass(frozen=True)
class GradientReference:
    """Reference gradients (float [P, 3]) and eigenvalues ([3]) from the mean training FC of ``n_scans`` scans."""

    gradients: np.ndarray
    lambdas: np.ndarray
    n_scans: int

    def __post_init__(self):
        grads = np.asarray(self.gradients, np.float64)
        object.__setattr__(self, "gradients", grads)
        object.__setattr__(self, "lambdas", np.asarray(self.lambdas, np.float64))
        if grads.ndim != 2 or grads.shape[1] != _N_GRADIENTS or self.lambdas.shape != (_N_GRADIENTS,):
            raise ValueError(f"gradient reference must hold [P, {_N_GRADIENTS}] gradients and {_N_GRADIENTS} "
                             f"eigenvalues, got {grads.shape} and {self.lambdas.shape}")
        if not (np.all(np.isfinite(grads)) and np.all(np.isfinite(self.lambdas))):
            raise ValueError("gradient reference holds non-finite values")

    def to_json(self) -> dict:
        """Plain lists and numbers (``json.dumps``-able; no pickle)."""
        return {"gradients": self.gradients.tolist(), "lambdas": self.lambdas.tolist(), "n_scans": self.n_scans}

    @classmethod
    def from_json(cls, data: dict) -> GradientReference:
        """Inverse of :meth:`to_json`; ValueError on missing keys or wrong shapes."""
        try:
            return cls(np.asarray(data["gradients"], np.float64), np.asarray(data["lambdas"], np.float64),
                       int(data["n_scans"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"invalid gradient reference JSON ({err!r})") from None


def _check_series(series: np.ndarray, n_parcels: int | None = None) -> np.ndarray:
    x = np.asarray(series, np.float64)
    if x.ndim != 2:
        raise ValueError(f"series must be [P, T], got shape {x.shape}")
    if n_parcels is not None and x.shape[0] != n_parcels:
        raise ValueError(f"series has {x.shape[0]} parcels, expected {n_parcels}")
    if x.shape[0] < _MIN_PARCELS:
        raise ValueError(f"series has {x.shape[0]} parcels; gradients need at least {_MIN_PARCELS}")
    if x.shape[1] < 3:
        raise ValueError(f"series has {x.shape[1]} time points; descriptors need at least 3")
    if not np.all(np.isfinite(x)):
        raise ValueError("series contains NaN or infinite values")
    constant = np.flatnonzero(np.ptp(x, axis=1) == 0)
    if constant.size:
        raise ValueError(f"{constant.size} constant parcel(s) (first: {constant[0]}); correlation is undefined")
    return x


def _fc(x: np.ndarray) -> np.ndarray:
    """Pearson r [P, P] with the diagonal set to 1."""
    r = np.corrcoef(x)
    np.fill_diagonal(r, 1.0)
    return r


def _fisher_z(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -_R_CLIP, _R_CLIP))


def _gradient_maps(seed: int) -> GradientMaps:
    return GradientMaps(n_components=_N_GRADIENTS, approach="dm", kernel="normalized_angle",
                        alignment="procrustes", random_state=seed)


def fit_gradient_reference(series: Sequence[np.ndarray], settings: DescriptorSettings) -> GradientReference:
    """Gradients of the mean Fisher-z FC (back to r) over training scans, each float [P, T_i].

    Scans are visited one at a time (a lazy sequence keeps memory at one scan). The sign of each gradient
    is fixed so that its largest-magnitude entry is positive, making the reference independent of the
    eigensolver's arbitrary sign.
    """
    total, count = None, 0
    for scan in series:
        x = _check_series(scan, None if total is None else total.shape[0])
        z = _fisher_z(_fc(x))
        total = z if total is None else total + z
        count += 1
    if total is None:
        raise ValueError("no scans to fit the gradient reference on")
    mean_r = np.tanh(total / count)
    np.fill_diagonal(mean_r, 1.0)
    maps = _gradient_maps(settings.seed).fit(mean_r)
    grads = np.asarray(maps.gradients_, np.float64)
    peak = grads[np.argmax(np.abs(grads), axis=0), np.arange(grads.shape[1])]
    return GradientReference(grads * np.where(peak < 0, -1.0, 1.0), np.asarray(maps.lambdas_), count)


def threshold_graph(r: np.ndarray, density: float) -> nx.Graph:
    """Graph on all P parcels keeping the ``round(density * n_pairs)`` pairs of largest ``|r|`` (r: [P, P]).

    Edge weight is ``|r|``. Ties are broken by the row-major order of the upper triangle (the earlier pair
    wins), via a stable sort, so the edge count is always exact.
    """
    n = r.shape[0]
    rows, cols = np.triu_indices(n, k=1)
    keep = int(round(density * rows.size))
    if keep < 1:
        raise ValueError(f"density {density} keeps no edge among {rows.size} parcel pairs")
    weight = np.abs(r[rows, cols])
    top = np.argsort(-weight, kind="stable")[:keep]
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from(zip(rows[top].tolist(), cols[top].tolist(), weight[top].tolist()))
    return graph


def weighted_global_efficiency(graph: nx.Graph) -> float:
    """Mean over ordered node pairs of 1 / shortest-path length, edge length 1 / weight.

    This is the weighted analogue of ``nx.global_efficiency`` (which ignores weights and equals this when all
    weights are 1): unreachable pairs contribute 0 rather than being dropped, so a fragmented graph is not
    rewarded for tight but disconnected pieces. Zero-weight edges are treated as absent.
    """
    n = graph.number_of_nodes()
    if n < 2:
        return 0.0
    # SciPy's compiled Dijkstra on the graph's length matrix (networkx's pure-Python all-pairs Dijkstra took
    # seconds per 300-parcel scan); a zero entry of the sparse matrix is "no edge"
    weights = nx.to_scipy_sparse_array(graph, nodelist=sorted(graph.nodes), weight="weight", format="csr")
    lengths = weights.copy()
    lengths.data = np.where(lengths.data > 0, 1.0 / np.maximum(lengths.data, 1e-300), 0.0)
    lengths.eliminate_zeros()
    dist = shortest_path(lengths, method="D", directed=False)
    off_diagonal = ~np.eye(n, dtype=bool) & np.isfinite(dist) & (dist > 0)
    return float((1.0 / dist[off_diagonal]).sum() / (n * (n - 1)))


def _spectral(x: np.ndarray, tr: float, band: tuple[float, float]) -> dict[str, np.ndarray]:
    """Per-parcel ALFF, fALFF, band ratio ([P] each; NaN where a band has no bin or a zero denominator)."""
    freqs, power = periodogram(x, fs=1.0 / tr, window="boxcar", detrend="constant", scaling="density", axis=1)
    amp = np.sqrt(power)
    low = (freqs >= band[0]) & (freqs <= band[1])
    high = freqs > band[1]
    nan = np.full(x.shape[0], np.nan)
    if not low.any():
        return {"alff": nan, "falff": nan, "band_ratio": nan}
    high_power = power[:, high].sum(axis=1)
    safe = np.where(high_power > 0, high_power, 1.0)
    ratio = np.where(high_power > 0, power[:, low].sum(axis=1) / safe, np.nan) if high.any() else nan
    return {"alff": amp[:, low].mean(axis=1), "falff": amp[:, low].sum(axis=1) / amp[:, freqs > 0].sum(axis=1),
            "band_ratio": ratio}


def _autocorr1(x: np.ndarray) -> np.ndarray:
    """Pearson r between x[:, :-1] and x[:, 1:] per parcel ([P]; NaN where either part is constant)."""
    a = x[:, :-1] - x[:, :-1].mean(axis=1, keepdims=True)
    b = x[:, 1:] - x[:, 1:].mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def _outlier_fraction(x: np.ndarray) -> float:
    """Fraction of the T TRs whose DVARS exceeds median + 3 * 1.4826 * MAD of the scan's DVARS.

    DVARS at TR t >= 1 is the RMS over parcels of z(t) - z(t-1) on per-parcel z-scored series; TR 0 has no
    predecessor and is never flagged. A one-TR spike therefore flags two TRs (the jump in and out).
    """
    z = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    dvars = np.sqrt(np.mean(np.diff(z, axis=1) ** 2, axis=0))
    median = np.median(dvars)
    limit = median + 3 * 1.4826 * np.median(np.abs(dvars - median))
    return float(np.count_nonzero(dvars > limit) / x.shape[1])


def scan_features(series: np.ndarray, tr: float, atlas: Atlas, reference: GradientReference,
                  settings: DescriptorSettings) -> dict[str, float]:
    """All descriptors of one scan (series: float [P, T], TR in seconds); deterministic given ``settings.seed``."""
    x = _check_series(series, atlas.n_parcels)
    if reference.gradients.shape[0] != x.shape[0]:
        raise ValueError(f"gradient reference has {reference.gradients.shape[0]} parcels, scan has {x.shape[0]}")
    if not (np.isfinite(tr) and tr > 0):
        raise ValueError(f"TR must be a positive number of seconds, got {tr}")
    ids, names = atlas.network_ids()
    members = [np.flatnonzero(ids == k) for k in range(len(names))]
    r = _fc(x)
    z = _fisher_z(r)
    out: dict[str, float] = {}
    for name, idx in zip(names, members):
        if idx.size >= 2:
            block = z[np.ix_(idx, idx)]
            out[f"fc_within.{name}"] = float(block[~np.eye(idx.size, dtype=bool)].mean())
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            out[f"fc_between.{names[a]}.{names[b]}"] = float(z[np.ix_(members[a], members[b])].mean())

    graph = threshold_graph(r, settings.density)
    communities = nx.community.louvain_communities(graph, weight="weight", seed=settings.seed)
    out["global_efficiency"] = weighted_global_efficiency(graph)
    out["modularity"] = float(nx.community.modularity(graph, communities, weight="weight"))
    out["clustering"] = float(nx.average_clustering(graph, weight="weight"))
    strength = np.array([graph.degree(i, weight="weight") for i in range(x.shape[0])], np.float64)
    out.update({f"strength.{name}": float(strength[idx].mean()) for name, idx in zip(names, members)})

    aligned = np.asarray(_gradient_maps(settings.seed).fit(r, reference=reference.gradients).aligned_)
    for k in (1, 2):
        grad = aligned[:, k - 1]
        out[f"gradient{k}_range"] = float(grad.max() - grad.min())
        out.update({f"gradient{k}_mean.{name}": float(grad[idx].mean()) for name, idx in zip(names, members)})

    per_parcel = {**_spectral(x, tr, settings.low_band), "autocorr1": _autocorr1(x)}
    for key, values in per_parcel.items():
        out.update({f"{key}.{name}": float(values[idx].mean()) for name, idx in zip(names, members)})
    out["outlier_fraction"] = _outlier_fraction(x)
    return out


def cohort_stats(rows: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Per-feature (mean, population std) over the given (training) scans' feature dicts.

    Non-finite and missing values are ignored; a feature with no finite value gets (NaN, NaN). A feature that
    is identical across scans gets std exactly 0 (kept, so :func:`zscores` can report NaN for it).
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    stats = {}
    for key in keys:
        values = np.array([row.get(key, np.nan) for row in rows], np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            stats[key] = (float("nan"), float("nan"))
            continue
        std = 0.0 if values.max() == values.min() else float(values.std())
        stats[key] = (float(values.mean()), std)
    return stats


def zscores(features: dict[str, float], stats: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``(value - mean) / std`` per feature; NaN where the value is not finite, std is 0/NaN or no stats exist."""
    out = {}
    for key, value in features.items():
        mean, std = stats.get(key, (np.nan, np.nan))
        good = np.isfinite(value) and np.isfinite(mean) and np.isfinite(std) and std > 0
        out[key] = float((value - mean) / std) if good else float("nan")
    return out


class _LazyScans(Sequence):
    """Scans of a dataset read on access, so fitting the reference holds one scan at a time."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset.read(self.indices[i])


def describe_dataset(dataset: Dataset, settings: DescriptorSettings) -> tuple[list[dict], dict]:
    """Features and training-referenced z-scores of every manifest row, plus the cohort information.

    Returns (rows, cohort): rows ``{"scan_id", "subject", "split", "features", "z"}`` in manifest order;
    cohort ``{"stats": {key: [mean, std]}, "reference": GradientReference JSON, "settings", "n_train"}``.
    The statistics and the gradient reference use the training split; a dataset without training scans
    (tiny cohorts) falls back to all scans, as :func:`brainjax.data.dataset.finalize` does, and ``n_train``
    then counts all of them.
    """
    partial = [meta["scan_id"] for meta in dataset.manifest if meta.get("missing_parcels")]
    if partial:  # graph, gradient and network descriptors are defined on the whole parcellation only
        raise DatasetError(f"{dataset.path}: {len(partial)} scans miss parcels (e.g. {partial[0]}; see `brainjax "
                           f"info`), and descriptors need every parcel: prepare the dataset with "
                           f"--max-missing-parcels 0 to leave such scans out")
    train = dataset.indices("train") or dataset.indices()
    reference = fit_gradient_reference(_LazyScans(dataset, train), settings)
    rows = []
    for i, meta in enumerate(dataset.manifest):
        try:
            feats = scan_features(dataset.read(i), meta["tr"], dataset.atlas, reference, settings)
        except ValueError as err:
            raise ValueError(f"scan {meta['scan_id']}: {err}") from None
        rows.append({"scan_id": meta["scan_id"], "subject": meta["subject"], "split": meta["split"],
                     "features": feats})
    stats = cohort_stats([rows[i]["features"] for i in train])
    for row in rows:
        row["z"] = zscores(row["features"], stats)
    config = dataclasses.asdict(settings)
    config["low_band"] = list(settings.low_band)
    cohort = {"stats": {k: [m, s] for k, (m, s) in stats.items()}, "reference": reference.to_json(),
              "settings": config, "n_train": len(train)}
    return rows, cohort
