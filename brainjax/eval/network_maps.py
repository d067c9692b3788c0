"""Functional networks from the model: parcel embeddings and encoder attention, against the atlas's labels.

Per parcel, the unmasked encoder's token embeddings are averaged over patches and windows ([P, width]); the
parcel-to-parcel attention (:meth:`BrainLM.attention_maps`) is averaged over windows, for the last layer
and over all layers ([P, P]); the token covariance readout (:mod:`brainjax.eval.readouts`, Fisher-z [P, P])
is averaged over each scan's windows, then over the split's scans; a model with a factor prior
(``model.factor_prior``) adds the correlation its learnt loadings imply (no data needed). Each is clustered
into as many groups as the atlas has networks and also used to classify parcels into networks
(:mod:`brainjax.eval.networks`).
The baselines are the split's group functional connectivity, spectrally clustered as an affinity
("fc_baseline") and k-means clustered on its rows ("fc_rows", as the token covariance). The best
model-derived source (by ARI) is compared with the best FC one by a parcel bootstrap of the ARI difference.
A parcel that a scan misses (manifest ``missing_parcels``; masked out of its windows) is left out of every
average for that scan: each parcel (pair) is averaged over the windows and scans that have it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from brainjax.data.dataset import Dataset
from brainjax.eval import networks as nw
from brainjax.eval.inputs import normalized_scans, split_windows
from brainjax.eval.readouts import ScanMeans, has_time_patches, pair_present, square, upper_triangle, window_readouts
from brainjax.models.inputs import WINDOW_KEYS


def parcel_representations(loaded, data: str, split: str, *, batch_size: int = 16, max_windows: int = 0,
                           attention_batch: int = 2) -> dict:
    """Window-averaged parcel features: embedding [P, width], attention_last / attention_mean [P, P],
    cls_attention [P] (float64), and the number of windows; tokcov [P, P] (float64, Fisher-z) is the mean over
    scans of each scan's window mean, absent when a window holds a single time patch."""
    model = loaded.backbone
    tokcov = has_time_patches(loaded.cfg)
    embed = nnx.jit(lambda m, b: window_readouts(m, b, tokcov))
    attend = nnx.jit(lambda m, b: m.attention_maps(b))
    sums, windows, covariances = {}, 0, ScanMeans(np.float32)  # float32: P(P-1)/2 per scan held until the end
    counts = {}  # windows that have each parcel ([P]) / parcel pair ([P, P]): missing parcels are left out
    present = {}  # scan -> bool [P] (windows of a scan share its missing parcels)
    for host, batch in split_windows(loaded, data, split, batch_size, max_windows):
        rows = np.flatnonzero(host["valid"])
        windows += rows.size
        out = jax.device_get(embed(model, batch))
        real = np.asarray(host["parcel_mask"], np.float64)
        present.update(zip(host["scan"][rows].tolist(), np.asarray(host["parcel_mask"], bool)[rows]))
        tokens = np.asarray(out["parcel"], np.float64)[rows] * real[rows][:, :, None]
        sums["embedding"] = sums.get("embedding", 0.0) + tokens.sum(0)
        counts["embedding"] = counts.get("embedding", 0.0) + real[rows].sum(0)[:, None]
        if tokcov:
            covariances.add(host["scan"][rows], upper_triangle(out["tokcov"][rows]))
        # dense [L, L] attention: a few windows at a time keeps memory at a few hundred MB at BrainLM sizes
        for start in range(0, rows.size, attention_batch):
            part = rows[start:start + attention_batch]
            maps = jax.device_get(attend(model, {k: v[part] for k, v in _host_inputs(host).items()}))
            parcel, cls = np.asarray(maps["parcel"], np.float64), np.asarray(maps["cls"], np.float64)
            sums["attention_last"] = sums.get("attention_last", 0.0) + parcel[:, -1].sum(0)
            sums["attention_mean"] = sums.get("attention_mean", 0.0) + parcel.mean(1).sum(0)
            sums["cls_attention"] = sums.get("cls_attention", 0.0) + cls.mean(1).sum(0)
        pairs = (real[rows][:, :, None] * real[rows][:, None, :]).sum(0)  # maps are 0 off the real pairs
        for name in ("attention_last", "attention_mean"):
            counts[name] = counts.get(name, 0.0) + pairs
        counts["cls_attention"] = counts.get("cls_attention", 0.0) + real[rows].sum(0)
    if windows == 0:
        raise ValueError(f"{data}: split {split!r} has no whole window of {loaded.cfg.data.window} TRs")
    reps = {**{k: v / np.maximum(counts[k], 1.0) for k, v in sums.items()}, "windows": windows}
    if tokcov:
        scans, per_scan = covariances.means()
        have = pair_present(np.stack([present[s] for s in scans.tolist()])).astype(np.float64)
        mean = (per_scan.astype(np.float64) * have).sum(0) / np.maximum(have.sum(0), 1.0)
        reps["tokcov"] = square(mean, len(sums["embedding"]))
    return reps


def factor_correlation(model, xyz: np.ndarray) -> np.ndarray | None:
    """The correlation matrix [P, P] (float64) implied by a model's learnt factor prior, Σ = L Lᵀ + Ψ for the
    parcels at ``xyz`` [P, 3]; None for a model without one (``model.factor_prior`` = 0)."""
    if getattr(model, "factor_loadings", None) is None:
        return None
    coords = np.asarray(xyz, np.float32)[None]
    loadings, noise = jax.device_get(model.factor_model(coords, np.ones(coords.shape[:2], bool)))
    loadings = np.asarray(loadings[0], np.float64)
    sigma = loadings @ loadings.T + np.diag(np.asarray(noise[0], np.float64))
    scale = np.sqrt(np.diag(sigma))
    return sigma / scale[:, None] / scale[None, :]


def _host_inputs(host: dict) -> dict:
    return {k: host[k] for k in WINDOW_KEYS}


def evaluate_networks(loaded, data: str, split: str, *, batch_size: int = 16, max_windows: int = 0,
                      seed: int = 0, max_scans: int = 200, figure_dir: Path | None = None) -> dict:
    """Network identification per source (embedding, attention_last, attention_mean, tokcov (k-means on its
    rows), tokcov_spectral, with a factor prior factor (k-means) / factor_spectral; fc_baseline (spectral)
    and fc_rows (k-means)) and the bootstrap of the best model source's ARI minus the best FC source's.

    Returns {"n_networks", "networks", "windows", "sources": {name: identify() result}, "comparison":
    {"source", "baseline", "metric": "ari", "diff", "low", "high", ..., "verdict"}}; ``skipped`` when the
    atlas has no network labels.
    """
    dataset = Dataset(data)
    truth, names = dataset.atlas.network_ids()
    if len(names) < 2:
        return {"skipped": f"atlas {dataset.atlas.name} has no network labels (need at least 2 networks)"}
    n_parcels = dataset.atlas.n_parcels
    reps = parcel_representations(loaded, data, split, batch_size=batch_size, max_windows=max_windows)
    scans, rows = normalized_scans(dataset, split, max_scans)
    fc = nw.group_fc(scans, [dataset.present(i) for i in rows])
    sources = {"embedding": ("features", reps["embedding"][:n_parcels]),
               "attention_last": ("affinity", reps["attention_last"][:n_parcels, :n_parcels]),
               "attention_mean": ("affinity", reps["attention_mean"][:n_parcels, :n_parcels])}
    if "tokcov" in reps:  # clustered both ways FC is: k-means on its rows and spectral on the matrix
        sources["tokcov"] = ("features", reps["tokcov"][:n_parcels, :n_parcels])
        sources["tokcov_spectral"] = ("affinity", reps["tokcov"][:n_parcels, :n_parcels])
    factor = factor_correlation(loaded.backbone, dataset.atlas.xyz)
    if factor is not None:  # the learnt factor prior's implied correlation, both ways again
        sources["factor"] = ("features", factor)
        sources["factor_spectral"] = ("affinity", factor)
    model_sources = list(sources)
    sources.update(fc_baseline=("affinity", fc), fc_rows=("features", fc))
    results = {name: nw.identify(values, truth, names, kind=kind, seed=seed)
               for name, (kind, values) in sources.items()}
    report = {"n_networks": len(names), "networks": names, "windows": reps["windows"], "sources": results,
              "comparison": _compare(results, model_sources, ["fc_baseline", "fc_rows"], truth, seed)}
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
        best = report["comparison"]["source"]
        paths = {"atlas": figure_dir / "networks_atlas.png", best: figure_dir / f"networks_{best}.png"}
        nw.save_network_figure(paths["atlas"], dataset.atlas.xyz, truth, names, "atlas networks")
        assigned = np.asarray(results[best]["assignment"])
        nw.save_network_figure(paths[best], dataset.atlas.xyz, assigned,
                               [f"cluster {k}" for k in range(int(assigned.max()) + 1)],
                               f"clusters of {best} (ARI {results[best]['clustering']['ari']:.2f})")
        report["figures"] = {k: str(v) for k, v in paths.items()}
    return report


def _compare(results: dict, model_sources: list[str], fc_sources: list[str], truth: np.ndarray, seed: int) -> dict:
    """Parcel bootstrap of ARI(best model source) - ARI(best FC source), each picked by its ARI.

    Picking the better FC clustering too keeps the comparison from flattering the model by choosing its
    best source against a weaker baseline.
    """
    def best(names: list[str]) -> str:
        return max(names, key=lambda k: results[k]["clustering"]["ari"])

    source, baseline = best(model_sources), best(fc_sources)
    interval = nw.ari_difference(truth, np.asarray(results[source]["assignment"]),
                                 np.asarray(results[baseline]["assignment"]), seed=seed)
    return {"source": source, "baseline": baseline, "metric": "ari", **interval}
