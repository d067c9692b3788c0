"""The window index: which ``(dataset, scan, start)`` crops one process reads in each epoch.

Everything here is a pure function of (seed, epoch, dataset id, process, host batch), so an epoch's windows can be
recomputed anywhere (another worker process, a resumed run) without state. Two modes:

* random crops (``stride=0``): one window per scan per epoch, its start drawn uniformly from
  ``[0, length - window]`` by a generator seeded with (seed, dataset, epoch);
* fixed stride (``stride>0``): every window ``start = 0, stride, 2*stride, ...`` that fits in the scan.

Process sharding reproduces the one-process run. Every process computes the same stream: epoch after epoch,
each epoch's N windows in its shuffled order. That stream is cut into global batches of ``B = host_batch x n``
windows, and process p of n reads rows ``[p * host_batch, (p + 1) * host_batch)`` of every global batch. The
global array assembled from the host batches (process 0's rows first, see ``pipeline.to_global``) is then the
very batch a single process would read, whatever N is: the same losses on 1 x 8 and 2 x 4 devices, every
window of an epoch read exactly once across processes, and a checkpoint resumed on another number of
processes continues the same sequence. (For a mixture of datasets each dataset's stream is split this way;
the interleaving then depends on the host batch, so mixtures match the one-process run as a set, not in order.)
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import grain
import numpy as np

from brainjax.data.dataset import Dataset

# Salts keep the crop-start and shuffle generators independent for the same (seed, dataset, epoch).
_CROP_SALT = 0x0C50
_SHUFFLE_SALT = 0x5F1E
_CACHED_EPOCHS = 3  # prefetch threads may straddle an epoch boundary; keep a few epochs' tables


@dataclass(frozen=True)
class ScanWindows:
    """The scans of one dataset split that can hold a window, and how to cut windows from them.

    Attributes:
      dataset_id: position of the dataset in the loader's path list (the ``dataset`` batch field).
      rows: int64 [S] manifest row indices of the eligible scans, ascending.
      lengths: int64 [S] their lengths in TRs.
      window: window length in TRs.
      stride: 0 for one random crop per scan per epoch, else the step between fixed windows.
      skipped: scans of the split that are shorter than the window (not in ``rows``).
      offsets: int64 [S] first TR of each scan's usable part (None = 0); with ``lengths`` the part's length,
        so a time hold-out can cut windows from the head or the tail of a scan only.
    """

    dataset_id: int
    rows: np.ndarray
    lengths: np.ndarray
    window: int
    stride: int
    skipped: int
    offsets: np.ndarray | None = None

    @property
    def windows_per_epoch(self) -> int:
        if self.stride == 0:
            return int(self.rows.size)
        return int(((self.lengths - self.window) // self.stride + 1).sum())

    def epoch_windows(self, epoch: int, seed: int) -> np.ndarray:
        """All windows of ``epoch`` in (scan, start) order: int64 [N, 3] rows of (dataset, row, start)."""
        if self.stride == 0:
            rng = np.random.default_rng([seed, self.dataset_id, epoch, _CROP_SALT])
            starts = rng.integers(0, self.lengths - self.window + 1)
            rows = self.rows
        else:
            counts = (self.lengths - self.window) // self.stride + 1
            rows = np.repeat(self.rows, counts)
            # position of each window within its scan, times the stride
            first = np.repeat(np.cumsum(counts) - counts, counts)
            starts = (np.arange(rows.size) - first) * self.stride
        if self.offsets is not None:
            counts = np.ones(self.rows.size, np.int64) if self.stride == 0 else counts
            starts = starts + np.repeat(self.offsets, counts)
        table = np.empty((rows.size, 3), np.int64)
        table[:, 0], table[:, 1], table[:, 2] = self.dataset_id, rows, starts
        return table


def holdout_cut(lengths: np.ndarray, window: int, fraction: float) -> np.ndarray:
    """First held-out TR of each scan (int64 [S]) for a time hold-out of ``fraction`` of every scan.

    The tail ``[cut, length)`` holds at least one window (``max(ceil(fraction * length), window)`` TRs) and the
    head ``[0, cut)`` at least one more; a scan too short for both keeps ``cut = length`` (all of it trains, none
    of it validates). Head and tail never overlap, so no validation window shares a TR with a training window.
    """
    lengths = np.asarray(lengths, np.int64)
    tail = np.maximum(np.ceil(fraction * lengths).astype(np.int64), window)
    return np.where(lengths - tail >= window, lengths - tail, lengths)


def scan_windows(dataset: Dataset, dataset_id: int, split: str, window: int, stride: int, *,
                 holdout: float = 0.0, part: str = "all") -> ScanWindows:
    """Select the scans of ``split`` in ``dataset`` long enough for ``window`` TRs.

    holdout, part: with ``holdout`` > 0, ``part="head"`` keeps each scan's first TRs and ``part="tail"`` its
    held-out last ones (see :func:`holdout_cut`); ``"all"`` the whole scan.
    Raises ValueError naming the dataset and split when the split is empty or no scan is long enough.
    """
    if part not in ("all", "head", "tail"):
        raise ValueError(f"part must be all, head or tail, got {part!r}")
    rows = np.asarray(dataset.indices(split), np.int64)
    if rows.size == 0:
        raise ValueError(f"{dataset.path}: split {split!r} has no scans "
                         f"(splits present: {sorted({r['split'] for r in dataset.manifest})})")
    lengths = np.array([dataset.manifest[i]["length"] for i in rows], np.int64)
    offsets = None
    if part != "all":
        cut = holdout_cut(lengths, window, holdout)
        offsets = np.zeros_like(lengths) if part == "head" else cut
        lengths = cut if part == "head" else lengths - cut
    keep = lengths >= window
    if not keep.any():
        where = f"split {split!r}" if part == "all" else f"the held-out tails ({holdout:g}) of split {split!r}"
        raise ValueError(f"{dataset.path}: window of {window} TRs is longer than every scan of {where} "
                         f"(longest has {int(lengths.max())} TRs)")
    return ScanWindows(dataset_id, rows[keep], lengths[keep], window, stride, int((~keep).sum()),
                       None if offsets is None else offsets[keep])


def epoch_order(n_windows: int, epoch: int, seed: int, dataset_id: int, shuffle: bool) -> np.ndarray:
    """Reading order of an epoch's windows (positions into its canonical table): int64 [n_windows]."""
    if not shuffle:
        return np.arange(n_windows)
    return np.random.default_rng([seed, dataset_id, epoch, _SHUFFLE_SALT]).permutation(n_windows)


def process_positions(elements: np.ndarray, host_batch: int, process_index: int, process_count: int) -> np.ndarray:
    """Positions in the one-process stream of elements ``k`` of process ``process_index``'s stream.

    elements: int64 [K]. Returns int64 [K]: ``(k // host_batch) * host_batch * process_count
    + process_index * host_batch + k % host_batch``.
    """
    block, offset = np.divmod(np.asarray(elements, np.int64), host_batch)
    return block * host_batch * process_count + process_index * host_batch + offset


class WindowStream(grain.MapDataset):
    """Random-access stream of one process's windows of one dataset, epoch after epoch.

    Element ``k`` is int64 [3] ``(dataset, row, start)``: the one-process stream's window at
    :func:`process_positions` ``(k)``. ``num_epochs=None`` makes the stream infinite, each epoch with new
    crops and a new order; with ``num_epochs`` the stream ends after the last whole global batch.
    """

    def __init__(self, windows: ScanWindows, seed: int, shuffle: bool, process_index: int, process_count: int,
                 num_epochs: int | None, host_batch: int = 1):
        super().__init__()
        if host_batch < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"host_batch={host_batch}, process {process_index} of {process_count} is invalid")
        self.windows, self.seed, self.shuffle = windows, seed, shuffle
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self.host_batch = host_batch
        self.n_windows = windows.windows_per_epoch
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize
        global_batch = self.host_batch * self.process_count
        return self.n_windows * self.num_epochs // global_batch * self.host_batch

    def epoch_table(self, epoch: int) -> np.ndarray:
        """int64 [N, 3]: all windows of ``epoch`` in reading order (the same on every process)."""
        with self._lock:
            table = self._cache.get(epoch)
        if table is None:
            all_windows = self.windows.epoch_windows(epoch, self.seed)
            table = all_windows[epoch_order(len(all_windows), epoch, self.seed, self.windows.dataset_id,
                                            self.shuffle)]
            with self._lock:
                self._cache[epoch] = table
                for old in sorted(self._cache)[:-_CACHED_EPOCHS]:
                    del self._cache[old]
        return table

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if self.num_epochs is not None and index >= len(self):
            raise IndexError(f"window {index} past the end of {self.num_epochs} epoch(s)")
        position = int(process_positions(np.int64(index), self.host_batch, self.process_index,
                                         self.process_count))
        epoch, offset = divmod(position, self.n_windows)
        return self.epoch_table(epoch)[offset]

    def __getstate__(self):  # the lock cannot cross into worker processes; the cache is cheap to rebuild
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __str__(self):
        return (f"WindowStream(dataset={self.windows.dataset_id}, process={self.process_index}/"
                f"{self.process_count}, host_batch={self.host_batch})")


class WindowTable(grain.MapDataset):
    """A fixed table of windows (int64 [N, 3]) as a MapDataset; used for the single evaluation pass."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = np.asarray(table, np.int64)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self.table[index]

    def __str__(self):
        return f"WindowTable({len(self.table)} windows)"
