"""The Grain input pipeline: window index → seeded shuffle → per-process share → read + normalise → batch.

The pipeline is a Grain ``MapDataset`` (random access) end to end::

    WindowStream per dataset ─ mix by weights ─ map(ReadWindow) ─ batch(host batch) ─ [k:] ─ threads / workers

Because every element is a pure function of its index, the iterator state is one integer, the number of
host batches already delivered: restoring it rebuilds the dataset sliced at that batch, which reproduces an
uninterrupted run exactly, across epoch boundaries and with any number of worker processes (Grain's
``mp_prefetch`` gives worker ``w`` batches ``w, w+W, ...`` and interleaves them back in order). With one
dataset, batch ``k`` of every process together form the one-process run's global batch ``k`` (see
:mod:`brainjax.data.windows`), so the state also carries over to another number of hosts.

Batches are host-local numpy dicts (``B`` = global batch / process count, ``P`` = padded parcel count)::

    signal       float32 [B, P, T]  (x - median) / IQR with the dataset's saved statistics; 0 on padding
                                    and on the scan's missing parcels
    parcel_mask  bool    [B, P]     True on real parcels that the scan has (False on padding and on the
                                    scan's missing parcels: see ``missing_parcels`` in the manifest)
    coords       float32 [B, P, 3]  MNI mm, 0 on padding
    tr           float32 [B]        repetition time in seconds
    scan         int32   [B]        manifest row within its dataset
    dataset      int32   [B]        position of the dataset in ``paths``
    start        int32   [B]        first TR of the window

:func:`to_global` turns such a batch into ``jax.Array``s sharded over the mesh's batch axes.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import grain
import numpy as np

from brainjax.data.dataset import Dataset, DatasetError
from brainjax.data.windows import ScanWindows, WindowStream, WindowTable, scan_windows
from brainjax.errors import DataChangeError

STATE_VERSION = 1


@dataclass(frozen=True)
class LoaderSpec:
    paths: tuple[str, ...]  # dataset directories (already resolved; "" / None is an error)
    split: str  # train | val | test
    window: int  # window length in TRs
    batch_size: int  # GLOBAL batch over all processes
    stride: int = 0  # 0 = one random crop per scan per epoch; >0 = every window at this stride
    seed: int = 0  # crop starts and shuffle order
    weights: tuple[float, ...] = ()  # mixing weights, one per path; () = proportional to windows per epoch
    max_parcels: int | None = None  # pad parcels to this many (needed to mix atlases of different sizes)
    shuffle: bool = True
    num_epochs: int | None = None  # None = infinite
    workers: int = 0  # Grain worker processes (0 = threads in this process)
    process_index: int | None = None  # None = jax.process_index()
    process_count: int | None = None  # None = jax.process_count()
    read_threads: int = 4  # reader threads per process (or per worker)
    prefetch_batches: int = 4  # batches buffered ahead per process (or per worker)
    holdout: float = 0.0  # > 0: read only each scan's head; its tail is validation (windows.holdout_cut)


class ReadWindow(grain.transforms.Map):
    """``(dataset, row, start[, valid])`` → one example dict (see the module docstring; no batch axis)."""

    def __init__(self, datasets: Sequence[Dataset], window: int, n_parcels: int):
        self.datasets, self.window, self.n_parcels = list(datasets), window, n_parcels
        self.masks, self.coords = [], []
        for ds in self.datasets:
            p = ds.atlas.n_parcels
            self.masks.append(np.arange(n_parcels) < p)
            coords = np.zeros((n_parcels, 3), np.float32)
            coords[:p] = ds.atlas.xyz
            self.coords.append(coords)

    def map(self, element: np.ndarray) -> dict[str, np.ndarray]:
        d, row, start = (int(v) for v in element[:3])
        ds = self.datasets[d]
        crop = ds.read(row)[:, start:start + self.window]
        if crop.shape[1] != self.window:
            meta = ds.manifest[row]
            raise DatasetError(f"{ds.path}: scan {meta['scan_id']} holds {crop.shape[1] + start} TRs, the "
                               f"manifest says {meta['length']}")
        signal = np.zeros((self.n_parcels, self.window), np.float32)
        mask = self.masks[d]
        if ds.manifest[row]["missing_parcels"]:  # partial coverage: those parcels are padding for this scan
            present = ds.present(row)
            signal[:crop.shape[0]] = np.where(present[:, None], ds.normalize(crop), 0.0)
            mask = mask.copy()
            mask[:present.size] &= present
        else:
            signal[:crop.shape[0]] = ds.normalize(crop)
        example = {"signal": signal, "parcel_mask": mask, "coords": self.coords[d],
                   "tr": np.float32(ds.manifest[row]["tr"]), "scan": np.int32(row), "dataset": np.int32(d),
                   "start": np.int32(start)}
        if len(element) > 3:
            example["valid"] = np.bool_(element[3])
        return example


def _open_datasets(paths: Sequence[str | os.PathLike | None]) -> list[Dataset]:
    if isinstance(paths, str | os.PathLike) or not paths:
        raise ValueError(f"paths must be a non-empty sequence of dataset directories, got {paths!r}")
    for path in paths:
        if path is None or str(path) == "":
            raise ValueError("empty dataset path: resolve the default dataset directory before building the "
                             f"loader (paths={tuple(paths)!r})")
    return [Dataset(path) for path in paths]  # raises DatasetError naming a missing directory


def _padded_parcels(datasets: Sequence[Dataset], max_parcels: int | None) -> int:
    counts = [ds.atlas.n_parcels for ds in datasets]
    if max_parcels is None:
        if len(set(counts)) > 1:
            detail = ", ".join(f"{ds.path}: {n}" for ds, n in zip(datasets, counts))
            raise ValueError(f"mixing datasets with different parcel counts ({detail}) needs max_parcels "
                             f"(>= {max(counts)}) to pad them to one size")
        return counts[0]
    if max_parcels < max(counts):
        worst = datasets[int(np.argmax(counts))]
        raise ValueError(f"max_parcels={max_parcels} is smaller than the {max(counts)} parcels of "
                         f"{worst.path}")
    return max_parcels


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only the parent needs jax; worker processes never get here

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} out of range for process_count={process_count}")
    return process_index, process_count


def _host_batch(batch_size: int, process_count: int) -> int:
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"global batch_size={batch_size} must be a positive multiple of the process count "
                         f"({process_count}) so every process loads the same host batch")
    return batch_size // process_count


def _index(datasets: Sequence[Dataset], split: str, window: int, stride: int, holdout: float = 0.0,
           part: str = "all") -> list[ScanWindows]:
    if window < 1 or stride < 0 or not 0.0 <= holdout < 1.0:
        raise ValueError(f"window must be >= 1, stride >= 0 and 0 <= holdout < 1, got window={window}, "
                         f"stride={stride}, holdout={holdout}")
    part = part if holdout > 0 else "all"
    windows = [scan_windows(ds, d, split, window, stride, holdout=holdout, part=part)
               for d, ds in enumerate(datasets)]
    for ds, sw in zip(datasets, windows):
        if sw.skipped and part == "tail":
            warnings.warn(f"{ds.path}: {sw.skipped} of {sw.skipped + sw.rows.size} {split!r} scans are too short "
                          f"to hold out a {window}-TR tail and train on the rest; they train whole", stacklevel=3)
        elif sw.skipped:
            total = sw.skipped + sw.rows.size
            warnings.warn(f"{ds.path}: {sw.skipped} of {total} {split!r} scans are shorter than the "
                          f"{window}-TR window and are skipped", stacklevel=3)
    return windows


def _to_iterator(ds: grain.MapDataset, threads: int, prefetch: int, workers: int) -> grain.DatasetIterator:
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads, 1))
    it_ds = ds.to_iter_dataset(options)
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain reads absl flags; outside absl.app they are unparsed
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return iter(it_ds)


class Loader:
    """Iterator of host-local batches (dicts of numpy arrays) with an exact, JSON-serialisable state.

    Attributes:
      datasets: the opened datasets, in ``spec.paths`` order.
      n_parcels: padded parcel count P of every batch.
      windows_per_epoch: windows in one epoch over all processes (sum over datasets).
      skipped_scans: per dataset, scans of the split shorter than the window.
    """

    def __init__(self, spec: LoaderSpec, datasets: list[Dataset], windows: list[ScanWindows],
                 batches: grain.MapDataset, n_parcels: int, process_index: int, process_count: int):
        self.spec, self.datasets, self.n_parcels = spec, datasets, n_parcels
        self.process_index, self.process_count = process_index, process_count
        self.windows_per_epoch = sum(sw.windows_per_epoch for sw in windows)
        self.skipped_scans = [sw.skipped for sw in windows]
        self.host_batch = spec.batch_size // process_count
        self._batches = batches
        self._next_batch = 0
        self._iterator: grain.DatasetIterator | None = None

    @property
    def num_batches(self) -> int | None:
        """Host batches in the whole run; None when the loader repeats forever."""
        return None if self.spec.num_epochs is None else len(self._batches)

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            if self._next_batch >= len(self._batches):
                raise StopIteration
            spec = self.spec
            self._iterator = _to_iterator(self._batches[self._next_batch:], spec.read_threads,
                                          spec.prefetch_batches, spec.workers)
        batch = next(self._iterator)
        self._next_batch += 1
        return batch

    def _fingerprint(self) -> dict:
        spec = self.spec
        fingerprint = {"seed": spec.seed, "window": spec.window, "stride": spec.stride,
                       "batch_size": spec.batch_size, "windows_per_epoch": self.windows_per_epoch,
                       "data": [dataset_identity(ds) for ds in self.datasets]}
        if spec.holdout:  # absent when 0, so the states of runs before this field still match
            fingerprint["holdout"] = spec.holdout
        if len(self.datasets) > 1:  # one dataset: the global batches do not depend on the process count
            fingerprint["process_count"] = self.process_count
        return fingerprint

    def get_state(self) -> dict:
        """JSON-serialisable position: host batches delivered so far plus a fingerprint of the setup."""
        return {"version": STATE_VERSION, "next_batch": self._next_batch, **self._fingerprint()}

    def set_state(self, state: dict) -> None:
        """Continue after the batch recorded in ``state`` (from :meth:`get_state`, possibly via JSON)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a brainjax loader state (version {STATE_VERSION}): {state!r}")
        next_batch = state.get("next_batch")
        if not isinstance(next_batch, int | np.integer) or isinstance(next_batch, bool) or next_batch < 0:
            raise ValueError(f"loader state has an invalid next_batch: {next_batch!r}")
        changed = {k: (state.get(k), v) for k, v in self._fingerprint().items() if state.get(k) != v}
        if "data" in changed and state.get("data") is not None:  # states before this key: setup change only
            raise DataChangeError(f"the checkpoint was trained on other data ({_describe_data(state['data'])}; "
                                  f"now {_describe_data(changed['data'][1])})")
        changed.pop("data", None)
        if changed:  # e.g. resuming on another number of hosts: same position, but a different order
            warnings.warn(f"loader state was saved with a different setup {changed} (saved, now); continuing "
                          f"from batch {next_batch}, but the order will not match the original run",
                          stacklevel=2)
        self.close()
        self._next_batch = int(next_batch)

    def close(self) -> None:
        """Stop reader threads / worker processes (a later ``next`` restarts them at the same position)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_loader(spec: LoaderSpec) -> Loader:
    """Open the datasets of ``spec`` and build the (lazy) pipeline; no data is read until iteration."""
    datasets = _open_datasets(spec.paths)
    if spec.weights and len(spec.weights) != len(datasets):
        raise ValueError(f"{len(spec.weights)} mixing weights for {len(datasets)} datasets "
                         f"{tuple(spec.paths)}")
    if spec.weights and not all(math.isfinite(w) and w > 0 for w in spec.weights):
        raise ValueError(f"mixing weights must be positive and finite, got {spec.weights}")
    if spec.num_epochs is not None and spec.num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (infinite), got {spec.num_epochs}")
    if spec.workers < 0 or spec.read_threads < 0 or spec.prefetch_batches < 1:
        raise ValueError(f"workers and read_threads must be >= 0 and prefetch_batches >= 1 "
                         f"({spec.workers}, {spec.read_threads}, {spec.prefetch_batches})")
    n_parcels = _padded_parcels(datasets, spec.max_parcels)
    process_index, process_count = _resolve_processes(spec.process_index, spec.process_count)
    host_batch = _host_batch(spec.batch_size, process_count)
    windows = _index(datasets, spec.split, spec.window, spec.stride, spec.holdout, "head")
    streams = [WindowStream(sw, spec.seed, spec.shuffle, process_index, process_count, spec.num_epochs, host_batch)
               for sw in windows]
    if len(streams) == 1:
        mixed = streams[0]
    else:  # Grain interleaves deterministically in the given proportions; each stream repeats on its own
        weights = spec.weights or tuple(float(sw.windows_per_epoch) for sw in windows)
        mixed = grain.MapDataset.mix(streams, weights)
    batches = mixed.map(ReadWindow(datasets, spec.window, n_parcels)).batch(host_batch, drop_remainder=True)
    if len(batches) == 0:
        raise ValueError(f"split {spec.split!r} of {tuple(spec.paths)} gives {len(mixed)} windows per "
                         f"process over {spec.num_epochs} epoch(s), fewer than one host batch of "
                         f"{host_batch}")
    return Loader(spec, datasets, windows, batches, n_parcels, process_index, process_count)


def check_windows(paths: Sequence[str], split: str, window: int, holdout: float = 0.0) -> int:
    """Windows of one pass over ``split`` (the held-out tails with ``holdout`` > 0) in all ``paths``, or a
    :class:`DatasetError` saying which dataset has none, before anything is trained."""
    datasets = _open_datasets(paths)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pass itself warns about short scans when it runs
            return sum(sw.windows_per_epoch for sw in _index(datasets, split, window, window, holdout, "tail"))
    except ValueError as err:
        raise DatasetError(str(err)) from err


def eval_batches(paths: Sequence[str], split: str, window: int, batch_size: int,
                 max_parcels: int | None = None, *, process_index: int | None = None,
                 process_count: int | None = None, read_threads: int = 4,
                 holdout: float = 0.0) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over every window (stride = window, no shuffle) of ``split`` in all ``paths``
    (with ``holdout`` > 0: over the held-out tails of its scans, see :func:`~brainjax.data.windows.holdout_cut`).

    Unlike training, nothing is dropped: the last global batch is filled by repeating windows from the start
    of the pass, and the extra key ``valid`` (bool [B]) is False on those repeats. Global batch ``j`` holds
    windows ``j*B .. (j+1)*B-1`` of the pass in order; process ``p`` holds rows ``p*b .. (p+1)*b-1`` of it.
    """
    datasets = _open_datasets(paths)
    n_parcels = _padded_parcels(datasets, max_parcels)
    process_index, process_count = _resolve_processes(process_index, process_count)
    host_batch = _host_batch(batch_size, process_count)
    table = np.concatenate([sw.epoch_windows(0, seed=0)
                            for sw in _index(datasets, split, window, window, holdout, "tail")])
    n_batches = -(-len(table) // batch_size)
    fill = np.arange(n_batches * batch_size) % len(table)
    full = np.column_stack([table[fill], np.arange(len(fill)) < len(table)])
    local = full.reshape(n_batches, process_count, host_batch, 4)[:, process_index].reshape(-1, 4)
    batches = WindowTable(local).map(ReadWindow(datasets, window, n_parcels)).batch(host_batch)
    return _to_iterator(batches, read_threads, prefetch=2, workers=0)


def to_global(batch: dict[str, np.ndarray], mesh, axes: Sequence[str] = ("data", "fsdp")) -> dict:
    """Assemble each process's host batch into global ``jax.Array``s split on the leading dim over ``axes``.

    Every process passes its own host-local arrays ([b, ...]); the result has leading dim
    ``b * process_count`` sharded as ``NamedSharding(mesh, P(axes))``.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    axes = tuple(axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"batch axes {unknown} are not axes of the mesh {dict(mesh.shape)}")
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    ways = math.prod(mesh.shape[a] for a in axes)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % ways:
            raise ValueError(f"batch field {key!r}: global batch {global_rows} is not divisible by the "
                             f"{ways} devices on mesh axes {axes}")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def local_rows(batch: dict, mesh) -> dict:
    """Global ``jax.Array``s from a ``batch`` (dict of [N, ...] arrays, N a multiple of the mesh size) that every
    process holds in full: each process feeds only its own rows (a batch replicated by every process would be
    ``process_count`` times too large)."""
    import jax

    count, index = jax.process_count(), jax.process_index()
    rows = len(next(iter(batch.values())))
    if rows % count:
        raise ValueError(f"batch of {rows} rows cannot be split over {count} processes")
    share = rows // count
    return to_global({k: np.asarray(v)[index * share:(index + 1) * share] for k, v in batch.items()}, mesh)


def gather_rows(out) -> np.ndarray:
    """The full (numpy) value of a global array split on its leading dim, on every process."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return np.asarray(jax.device_get(out))
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))


def spec_dict(spec: LoaderSpec) -> dict:
    """The spec as a JSON-able dict (for logs and benchmark output)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


def dataset_identity(dataset: Dataset) -> str:
    """A short digest of which scans a dataset holds (scan ids, their lengths and the atlas), recorded in the
    loader state so that a run resumed on other data is noticed."""
    rows = [f"{r['scan_id']}:{r['length']}:{r['n_parcels']}" for r in dataset.manifest]
    text = f"{dataset.atlas.name}|{len(rows)}|" + ",".join(rows)
    return f"{len(rows)} scans/{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def _describe_data(identities: list[str]) -> str:
    return "; ".join(identities)


class MappedLoader:
    """A Loader whose batches go through ``fn(batch) -> batch`` (labels, text sequences, alignment inputs...);
    ``get_state``/``set_state`` are the wrapped Loader's, so checkpoints and resume are unchanged."""

    def __init__(self, loader, fn: Callable[[dict], dict]):
        self.loader, self.fn = loader, fn

    def __iter__(self) -> MappedLoader:
        return self

    def __next__(self) -> dict:
        return self.fn(next(self.loader))

    def get_state(self) -> dict:
        return self.loader.get_state()

    def set_state(self, state: dict) -> None:
        self.loader.set_state(state)

    def close(self) -> None:
        self.loader.close()


def mapped_passes(make: Callable[[], Iterable[dict]], fn: Callable[[dict], dict]) -> Callable[[], Iterator[dict]]:
    """``make`` (a fresh pass of evaluation batches) with ``fn`` applied to every batch."""
    return lambda: (fn(b) for b in make())
