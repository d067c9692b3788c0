"""Per-scan embeddings of a dataset: the unmasked encoder's readouts averaged over each scan's windows.

Every scan is cut into non-overlapping windows of the checkpoint's ``data.window`` TRs (the tail shorter than
a window is left out). ``brainjax embed`` writes the result as an npz; the probes read it directly.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from brainjax.data.dataset import Dataset
from brainjax.data.pipeline import eval_batches, to_global
from brainjax.errors import DatasetError
from brainjax.eval.inputs import device_batch_size, split_windows
from brainjax.eval.readouts import ScanMeans, has_time_patches, upper_triangle, window_readouts
from brainjax.models.inputs import WINDOW_KEYS


def embed_dataset(loaded, data: str, splits: tuple[str, ...], batch_size: int, *, tokcov: bool = True) -> dict:
    """Average the unmasked encoder embeddings of every window of each scan in ``splits``.

    tokcov: also average the token covariance readout (Fisher-z, over the dataset's real parcels); it is
    left out when a window holds fewer than 2 time patches (nothing to correlate over).
    Returns, scans in manifest order: scan_id, subject, split str [N]; cls, mean float32 [N, width]; tokcov
    float32 [N, P(P-1)/2] (when computed); factcov float32 [N, r(r+1)/2 + P] (a model with a factor prior:
    :func:`~brainjax.eval.readouts.factor_covariance`'s coupling, then its residual per parcel); windows
    int32 [N] (windows averaged); step int.
    """
    dataset = Dataset(data)
    model = loaded.backbone  # a fine-tuned head model embeds with its backbone
    window = loaded.cfg.data.window
    tokcov = tokcov and has_time_patches(loaded.cfg)
    embed = nnx.jit(lambda model, batch: window_readouts(model, batch, tokcov))
    n_parcels = dataset.atlas.n_parcels  # batches may pad beyond them (mixed atlases): those are dropped
    # float32 sums for tokcov: P(P-1)/2 per scan held until the end, and a scan has only tens of windows
    means = {"cls": ScanMeans(), "mean": ScanMeans(), "tokcov": ScanMeans(np.float32), "factcov": ScanMeans()}
    batch_size = device_batch_size(batch_size, loaded.mesh.size)
    for split in [s for s in splits if dataset.indices(s)]:  # a dataset may lack a split (e.g. no test)
        for batch in eval_batches([data], split, window, batch_size, process_index=0, process_count=1):
            out = jax.device_get(embed(model, to_global({k: batch[k] for k in WINDOW_KEYS}, loaded.mesh)))
            rows = np.flatnonzero(batch["valid"])
            scans = batch["scan"][rows]
            means["cls"].add(scans, out["cls"][rows])
            means["mean"].add(scans, out["mean"][rows])
            if tokcov:
                means["tokcov"].add(scans, upper_triangle(out["tokcov"][rows], n_parcels))
            if "factcov" in out:  # the coupling, then the residual of the dataset's real parcels
                factor = [out["factcov"][rows], out["factres"][rows, :n_parcels]]
                means["factcov"].add(scans, np.concatenate(factor, -1))
    if not means["cls"].counts:
        raise ValueError(f"{data}: no scan of splits {','.join(splits)} has a whole window of {window} TRs")
    rows, cls = means["cls"].means()
    manifest = dataset.manifest
    arrays = {"scan_id": np.array([manifest[i]["scan_id"] for i in rows]),
              "subject": np.array([manifest[i]["subject"] for i in rows]),
              "split": np.array([manifest[i]["split"] for i in rows]),
              "cls": cls.astype(np.float32), "mean": means["mean"].means()[1].astype(np.float32),
              "windows": np.array([means["cls"].counts[s] for s in rows.tolist()], np.int32),
              "step": np.int64(loaded.step)}
    if tokcov:
        arrays["tokcov"] = means["tokcov"].means()[1].astype(np.float32)
    if means["factcov"].counts:
        arrays["factcov"] = means["factcov"].means()[1].astype(np.float32)
    return arrays


def encode_dataset(loaded, data: str, splits: tuple[str, ...], batch_size: int) -> dict:
    """A tokenizer run's codes of every whole window of every scan in ``splits``, concatenated over time per scan
    (the arrays of ``brainjax tokenizer encode``'s npz: see that command)."""
    dataset = Dataset(data)
    encode = nnx.jit(lambda m, b: m.encode(b)[0].codes)
    per_scan: dict[int, list] = {}
    for split in [s for s in splits if dataset.indices(s)]:  # a dataset may lack a split (e.g. no test)
        for host, batch in split_windows(loaded, data, split, batch_size):
            codes = np.asarray(jax.device_get(encode(loaded.model, batch)))
            for row in np.flatnonzero(host["valid"]):
                scan, parcels = int(host["scan"][row]), dataset.manifest[int(host["scan"][row])]["n_parcels"]
                per_scan.setdefault(scan, []).append((int(host["start"][row]), codes[row, :parcels]))
    if not per_scan:
        raise DatasetError(f"{data}: no scan of splits {','.join(splits)} has a whole window")
    rows = sorted(per_scan)
    blocks = [np.concatenate([c for _, c in sorted(per_scan[s], key=lambda x: x[0])], axis=1) for s in rows]
    flat = np.concatenate([b.reshape(-1) for b in blocks]).astype(np.int32)
    size = loaded.model.codebook_size
    counts = np.bincount(flat, minlength=size) / flat.size
    nonzero = counts[counts > 0]
    manifest = dataset.manifest
    return {"scan_id": np.array([manifest[i]["scan_id"] for i in rows]),
            "subject": np.array([manifest[i]["subject"] for i in rows]),
            "split": np.array([manifest[i]["split"] for i in rows]),
            "codes": flat, "offsets": np.concatenate([[0], np.cumsum([b.size for b in blocks])]).astype(np.int64),
            "shape": np.array([b.shape for b in blocks], np.int64), "codebook_size": np.int64(size),
            "step": np.int64(loaded.step), "usage": np.float64((counts > 0).mean()),
            "perplexity": np.float64(np.exp(-(nonzero * np.log(nonzero)).sum()))}
