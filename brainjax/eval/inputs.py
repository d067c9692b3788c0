"""What every evaluation task reads: the checkpoint's windows of one split, normalised whole scans, and the
dataset whose training split fits the baselines (the evaluated one, or for an external cohort without a
training split the checkpoint's own training data or one the user names).

Windows come from :func:`brainjax.data.pipeline.eval_batches` (stride = window, deterministic order), moved
onto the loaded model's mesh; rows that only pad the last batch are dropped on the host side.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from brainjax.data.dataset import Dataset
from brainjax.data.pipeline import eval_batches, to_global
from brainjax.errors import DatasetError
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


def normalized_scans(dataset: Dataset, split: str, max_scans: int = 0, *,
                     complete: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """Normalised series float32 [P, T_i] of the scans of ``split`` (evenly subsampled to ``max_scans``).

    complete: leave out scans that miss a parcel (stored as zeros, which would bias what a baseline fits from
    them: moments, AR and VAR coefficients), unless every scan of the split misses one."""
    rows = dataset.indices(split)
    whole = [i for i in rows if dataset.present(i).all()] if complete else []
    if whole:
        rows = whole
    if max_scans and len(rows) > max_scans:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, max_scans).round().astype(int)]
    return [dataset.normalize(dataset.read(i)).astype(np.float32) for i in rows], rows


def baseline_data(loaded, data: str, override: str | None = None) -> dict:
    """Which dataset's training (and validation) scans fit the baselines of evaluating ``data``.

    ``override`` (``--baseline-data``) wins; else ``data`` itself when it has training scans; else, for an
    external cohort that is all test data, the checkpoint's own training data (``data.path`` recorded in the
    run; the first of a mixture with ``data``'s parcel count). Baselines then see only data the model was
    trained on, so the comparison stays fair and leak-free. Returns {"path", "source"} (source says which
    rule chose it); raises :class:`DatasetError` when no such dataset exists or its atlas has another parcel
    count than ``data``'s.
    """
    evaluated = Dataset(data)
    n_parcels = evaluated.atlas.n_parcels
    if override:
        chosen, source = [override], "--baseline-data"
    elif evaluated.indices("train"):
        return {"path": data, "source": "the evaluated dataset's training split"}
    else:
        chosen = [p for p in loaded.cfg.data.path.split(",") if p]
        source = "the checkpoint's training data (no training split in the evaluated dataset)"
    problems = []
    for path in chosen:
        try:
            candidate = Dataset(path)
        except DatasetError as err:
            problems.append(str(err))
            continue
        if candidate.atlas.n_parcels != n_parcels:
            problems.append(f"{path}: {candidate.atlas.n_parcels} parcels, the evaluated data has {n_parcels}")
        elif not candidate.indices("train"):
            problems.append(f"{path}: no training scans")
        else:
            return {"path": str(path), "source": source}
    raise DatasetError(f"{data} has no training split to fit the baselines on, and {source.split(' (')[0]} "
                       f"cannot serve: {'; '.join(problems) or 'none recorded'}. Pass --baseline-data DIR (a "
                       f"dataset with a training split, same atlas)")
