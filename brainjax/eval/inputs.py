"""What every evaluation task reads: the checkpoint's windows of one split, and normalised whole scans.

Windows come from :func:`brainjax.data.pipeline.eval_batches` (stride = window, deterministic order), moved
onto the loaded model's mesh; rows that only pad the last batch are dropped on the host side.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from brainjax.data.dataset import Dataset
from brainjax.data.pipeline import eval_batches, to_global
from brainjax.models.inputs import WINDOW_KEYS


def device_batch_size(batch_size: int, devices: int) -> int:
    """``batch_size`` rounded up to whole rows per device."""
    return -(-batch_size // devices) * devices


def split_windows(loaded, data: str, split: str, batch_size: int, max_windows: int = 0
                  ) -> Iterator[tuple[dict, dict]]:
    """Yield ``(host_batch, device_batch)`` over the windows of ``split`` (at most ``max_windows``; 0 = all).

    host_batch: numpy arrays of the pipeline (signal [B, P, T], parcel_mask [B, P], scan [B], valid [B], ...)
    with ``parcel_mask`` False on padding rows; device_batch: the model's inputs on ``loaded.mesh``.
    """
    window = loaded.cfg.data.window
    batch_size = device_batch_size(batch_size, loaded.mesh.size)
    seen = 0
    for batch in eval_batches([data], split, window, batch_size, process_index=0, process_count=1):
        valid = batch["valid"].copy()
        if max_windows:
            valid &= np.arange(len(valid)) < max_windows - seen
        if not valid.any():
            break
        seen += int(valid.sum())
        batch = dict(batch, valid=valid, parcel_mask=batch["parcel_mask"] & valid[:, None])
        yield batch, to_global({k: batch[k] for k in WINDOW_KEYS}, loaded.mesh)


def normalized_scans(dataset: Dataset, split: str, max_scans: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Normalised series float32 [P, T_i] of the scans of ``split`` (evenly subsampled to ``max_scans``)."""
    rows = dataset.indices(split)
    if max_scans and len(rows) > max_scans:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, max_scans).round().astype(int)]
    return [dataset.normalize(dataset.read(i)).astype(np.float32) for i in rows], rows
