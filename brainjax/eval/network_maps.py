"""Functional networks from the model: parcel embeddings and encoder attention, against the atlas's labels.

Per parcel, the unmasked encoder's token embeddings are averaged over patches and windows ([P, width]); the
parcel-to-parcel attention (:meth:`BrainLM.attention_maps`) is averaged over windows, for the last layer
and over all layers ([P, P]). Each is clustered into as many groups as the atlas has networks and also used
to classify parcels into networks (:mod:`brainjax.eval.networks`); the baseline is the same on the rows
of the split's group functional connectivity.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from brainjax.data.dataset import Dataset
from brainjax.eval import networks as nw
from brainjax.eval.inputs import normalized_scans, split_windows
from brainjax.eval.restore import encoder


def parcel_representations(loaded, data: str, split: str, *, batch_size: int = 16, max_windows: int = 0,
                           attention_batch: int = 2) -> dict:
    """Window-averaged parcel features: embedding [P, width], attention_last / attention_mean [P, P],
    cls_attention [P] (float64), and the number of windows."""
    model = encoder(loaded)
    embed = nnx.jit(lambda m, b: m.embed(b)["tokens"].mean(2))
    attend = nnx.jit(lambda m, b: m.attention_maps(b))
    sums, windows = {}, 0
    for host, batch in split_windows(loaded, data, split, batch_size, max_windows):
        rows = np.flatnonzero(host["valid"])
        windows += rows.size
        tokens = np.asarray(jax.device_get(embed(model, batch)), np.float64)[rows]
        sums["embedding"] = sums.get("embedding", 0.0) + tokens.sum(0)
        # dense [L, L] attention: a few windows at a time keeps memory at a few hundred MB at BrainLM sizes
        for start in range(0, rows.size, attention_batch):
            part = rows[start:start + attention_batch]
            maps = jax.device_get(attend(model, {k: v[part] for k, v in _host_inputs(host).items()}))
            parcel, cls = np.asarray(maps["parcel"], np.float64), np.asarray(maps["cls"], np.float64)
            sums["attention_last"] = sums.get("attention_last", 0.0) + parcel[:, -1].sum(0)
            sums["attention_mean"] = sums.get("attention_mean", 0.0) + parcel.mean(1).sum(0)
            sums["cls_attention"] = sums.get("cls_attention", 0.0) + cls.mean(1).sum(0)
    if windows == 0:
        raise ValueError(f"{data}: split {split!r} has no whole window of {loaded.cfg.data.window} TRs")
    return {**{k: v / windows for k, v in sums.items()}, "windows": windows}


def _host_inputs(host: dict) -> dict:
    return {k: host[k] for k in ("signal", "parcel_mask", "coords", "tr")}


def evaluate_networks(loaded, data: str, split: str, *, batch_size: int = 16, max_windows: int = 0,
                      seed: int = 0, max_scans: int = 200, figure_dir: Path | None = None) -> dict:
    """Network identification per source (embedding, attention_last, attention_mean, fc baseline).

    Returns {"n_networks", "networks", "windows", "sources": {name: identify() result}}; ``skipped`` when the
    atlas has no network labels.
    """
    dataset = Dataset(data)
    truth, names = dataset.atlas.network_ids()
    if len(names) < 2:
        return {"skipped": f"atlas {dataset.atlas.name} has no network labels (need at least 2 networks)"}
    n_parcels = dataset.atlas.n_parcels
    reps = parcel_representations(loaded, data, split, batch_size=batch_size, max_windows=max_windows)
    scans, _ = normalized_scans(dataset, split, max_scans)
    sources = {"embedding": ("features", reps["embedding"][:n_parcels]),
               "attention_last": ("affinity", reps["attention_last"][:n_parcels, :n_parcels]),
               "attention_mean": ("affinity", reps["attention_mean"][:n_parcels, :n_parcels]),
               "fc_baseline": ("affinity", nw.group_fc(scans))}
    results = {name: nw.identify(values, truth, names, kind=kind, seed=seed)
               for name, (kind, values) in sources.items()}
    report = {"n_networks": len(names), "networks": names, "windows": reps["windows"], "sources": results}
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
        best = max(("embedding", "attention_last", "attention_mean"),
                   key=lambda k: results[k]["clustering"]["ari"])
        paths = {"atlas": figure_dir / "networks_atlas.png", best: figure_dir / f"networks_{best}.png"}
        nw.save_network_figure(paths["atlas"], dataset.atlas.xyz, truth, names, "atlas networks")
        assigned = np.asarray(results[best]["assignment"])
        nw.save_network_figure(paths[best], dataset.atlas.xyz, assigned,
                               [f"cluster {k}" for k in range(int(assigned.max()) + 1)],
                               f"clusters of {best} (ARI {results[best]['clustering']['ari']:.2f})")
        report["figures"] = {k: str(v) for k, v in paths.items()}
    return report
