"""The window index: which ``(dataset, scan, start)`` crops one process reads in each epoch.

Everything here is a pure function of (seed, epoch, dataset id, process), so an epoch's windows can be
recomputed anywhere (another worker process, a resumed run) without state. Two modes:

* random crops (``stride=0``): one window per scan per epoch, its start drawn uniformly from
  ``[0, length - window]`` by a generator seeded with (seed, dataset, epoch);
* fixed stride (``stride>0``): every window ``start = 0, stride, 2*stride, ...`` that fits in the scan.

Process sharding uses drop-remainder semantics: an epoch of N windows is shuffled, then process p of n
takes shuffled positions ``p, p+n, p+2n, ...`` below ``n * (N // n)``. The processes' shares are disjoint,
equally long (so hosts stay in lockstep), and together hold all but the ``N % n`` windows at the end of
that epoch's shuffled order (a different few each epoch when shuffling).
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
    """

    dataset_id: int
    rows: np.ndarray
    lengths: np.ndarray
    window: int
    stride: int
    skipped: int

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
        table = np.empty((rows.size, 3), np.int64)
        table[:, 0], table[:, 1], table[:, 2] = self.dataset_id, rows, starts
        return table


def scan_windows(dataset: Dataset, dataset_id: int, split: str, window: int, stride: int) -> ScanWindows:
    """Select the scans of ``split`` in ``dataset`` long enough for ``window`` TRs.

    Raises ValueError naming the dataset and split when the split is empty or no scan is long enough.
    """
    rows = np.asarray(dataset.indices(split), np.int64)
    if rows.size == 0:
        raise ValueError(f"{dataset.path}: split {split!r} has no scans "
                         f"(splits present: {sorted({r['split'] for r in dataset.manifest})})")
    lengths = np.array([dataset.manifest[i]["length"] for i in rows], np.int64)
    keep = lengths >= window
    if not keep.any():
        raise ValueError(f"{dataset.path}: window of {window} TRs is longer than every scan of split "
                         f"{split!r} (longest has {int(lengths.max())} TRs)")
    return ScanWindows(dataset_id, rows[keep], lengths[keep], window, stride, int((~keep).sum()))


def process_share(n_windows: int, epoch: int, seed: int, dataset_id: int, shuffle: bool,
                  process_index: int, process_count: int) -> np.ndarray:
    """Positions (into the epoch's canonical window table) that process ``process_index`` reads, in order.

    Returns int64 [n_windows // process_count].
    """
    if shuffle:
        order = np.random.default_rng([seed, dataset_id, epoch, _SHUFFLE_SALT]).permutation(n_windows)
    else:
        order = np.arange(n_windows)
    per_process = n_windows // process_count
    return order[process_index:per_process * process_count:process_count]


class WindowStream(grain.MapDataset):
    """Random-access stream of one process's windows of one dataset, epoch after epoch.

    Element ``k`` is int64 [3] ``(dataset, row, start)``: window ``k % per_epoch`` of this process's share of
    epoch ``k // per_epoch``. ``num_epochs=None`` makes the stream infinite, each epoch with new crops and
    a new order.
    """

    def __init__(self, windows: ScanWindows, seed: int, shuffle: bool, process_index: int, process_count: int,
                 num_epochs: int | None):
        super().__init__()
        self.windows, self.seed, self.shuffle = windows, seed, shuffle
        self.process_index, self.process_count, self.num_epochs = process_index, process_count, num_epochs
        self.per_epoch = windows.windows_per_epoch // process_count
        if self.per_epoch == 0:
            raise ValueError(f"dataset #{windows.dataset_id}: {windows.windows_per_epoch} windows per epoch "
                             f"cannot be shared by {process_count} processes")
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize if self.num_epochs is None else self.per_epoch * self.num_epochs

    def epoch_table(self, epoch: int) -> np.ndarray:
        """int64 [per_epoch, 3]: this process's windows of ``epoch`` in reading order."""
        with self._lock:
            table = self._cache.get(epoch)
        if table is None:
            all_windows = self.windows.epoch_windows(epoch, self.seed)
            share = process_share(len(all_windows), epoch, self.seed, self.windows.dataset_id, self.shuffle,
                                  self.process_index, self.process_count)
            table = all_windows[share]
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
        epoch, position = divmod(int(index), self.per_epoch)
        return self.epoch_table(epoch)[position]

    def __getstate__(self):  # the lock cannot cross into worker processes; the cache is cheap to rebuild
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __str__(self):
        return f"WindowStream(dataset={self.windows.dataset_id}, per_epoch={self.per_epoch})"


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
