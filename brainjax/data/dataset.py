"""The on-disk dataset: shards of scan records, a manifest, the atlas and normalisation statistics.

::

    DIR/dataset.json          format version, parcel count, split seed and fractions
    DIR/atlas.json            :class:`~brainjax.data.atlas_core.Atlas`
    DIR/manifest.tsv          one row per scan: scan_id subject session site tr length n_parcels split
                              shard index, then phenotype columns (``n/a`` where missing)
    DIR/stats.npz             per-parcel ``median`` and ``iqr`` over the training split
    DIR/failures.tsv          scans that were skipped, with the reason
    DIR/shards/*.array_record one record per scan (see :mod:`brainjax.data.records`)
    DIR/parts/*.jsonl         per-writer metadata that :func:`finalize` merges (several jobs may write parts)

Writers (``synth``, ``prepare``) call :func:`write_part` one or more times and then :func:`finalize`.
Splits are assigned per subject, so a subject's scans all land in one split.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import Atlas
from brainjax.data.records import ScanRecord, ShardReader, write_shard
from brainjax.errors import DatasetError
from brainjax.paths import atomic_path, atomic_write_text

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
BASE_COLUMNS = ("scan_id", "subject", "session", "site", "tr", "length", "n_parcels", "split", "shard", "index")
MISSING = "n/a"
# Above this many float32 values the statistics use an evenly spaced subset of time points per scan.
_STATS_MAX_VALUES = 200_000_000


@dataclass(frozen=True)
class ScanMeta:
    """Metadata of one scan as a writer knows it (split and location are added by the dataset)."""

    scan_id: str
    subject: str
    tr: float
    session: str = ""
    site: str = ""
    phenotypes: dict | None = None  # per-scan phenotypes (synthetic data); participants.tsv adds more


def write_part(out: str | os.PathLike, part: str, items: Iterable[tuple[ScanMeta, np.ndarray]],
               failures: Sequence[dict] = (), scans_per_shard: int = 256) -> int:
    """Write scans ``(meta, float32 [P, T])`` as shards ``shards/PART-NNNNN.array_record`` and ``parts/PART.jsonl``.

    The metadata file is written last, so a part is complete exactly when its jsonl exists.
    Returns the number of scans written.
    """
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    rows, chunk, shard_no = [], [], 0

    def flush():
        nonlocal chunk, shard_no
        if chunk:
            name = f"{part}-{shard_no:05d}.array_record"
            write_shard(out / "shards" / name, [rec for _, rec in chunk])
            for i, (row, _) in enumerate(chunk):
                rows.append({**row, "shard": name, "index": i})
            chunk, shard_no = [], shard_no + 1

    for meta, data in items:
        data = np.asarray(data, np.float32)
        row = {"scan_id": meta.scan_id, "subject": meta.subject, "session": meta.session, "site": meta.site,
               "tr": float(meta.tr), "length": int(data.shape[1]), "n_parcels": int(data.shape[0]),
               "phenotypes": meta.phenotypes or {}}
        chunk.append((row, ScanRecord(meta.scan_id, meta.subject, data)))
        if len(chunk) >= scans_per_shard:
            flush()
    flush()
    body = "".join(json.dumps(r) + "\n" for r in rows)
    if failures:
        atomic_write_text(out / "parts" / f"{part}.failures.jsonl", "".join(json.dumps(f) + "\n" for f in failures))
    atomic_write_text(out / "parts" / f"{part}.jsonl", body)
    return len(rows)


def assign_splits(subjects: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, str]:
    """Map each subject to train/val/test by a seeded permutation of the sorted subject list.

    Every split with a positive fraction gets at least one subject when there are enough subjects.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(unique))
    n = len(unique)
    counts = [int(round(f * n)) for f in fractions]
    for k in (1, 2):  # small cohorts: give val/test a subject if asked for, taken from train
        if fractions[k] > 0 and counts[k] == 0 and n >= 3:
            counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    labels = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    return {unique[i]: labels[j] for j, i in enumerate(order)}


def robust_stats(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-parcel median and interquartile range over the time points of all arrays ([P, T_i] each).

    Returns (median [P], iqr [P], subsampled). Normalisation is ``(x - median) / iqr``.
    """
    if not arrays:
        raise DatasetError("no training scans to compute normalisation statistics from")
    total = sum(a.size for a in arrays)
    step = max(1, int(np.ceil(total / _STATS_MAX_VALUES)))
    values = np.concatenate([np.asarray(a, np.float32)[:, ::step] for a in arrays], axis=1)
    q25, median, q75 = np.percentile(values, [25, 50, 75], axis=1)
    return median.astype(np.float32), (q75 - q25).astype(np.float32), step > 1


def read_parts(out: Path) -> tuple[list[dict], list[dict]]:
    rows, failures = [], []
    for path in sorted((out / "parts").glob("*.jsonl")):
        target = failures if path.name.endswith(".failures.jsonl") else rows
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            try:
                target.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{line_no}: corrupt part metadata ({err})") from None
    return rows, failures


def finalize(out: str | os.PathLike, atlas: Atlas, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
             participants: dict[str, dict] | None = None) -> Dataset:
    """Merge all parts into the manifest, assign subject-level splits, compute statistics on train only."""
    out = Path(out)
    rows, failures = read_parts(out)
    if not rows:
        raise DatasetError(f"{out}: no scans were written (failures: {len(failures)})")
    seen = {}
    for row in rows:
        if row["scan_id"] in seen:
            raise DatasetError(f"{out}: scan id {row['scan_id']!r} appears in two parts "
                               f"({seen[row['scan_id']]} and {row['shard']})")
        seen[row["scan_id"]] = row["shard"]
        if row["n_parcels"] != atlas.n_parcels:
            raise DatasetError(f"{out}: scan {row['scan_id']} has {row['n_parcels']} parcels, atlas "
                               f"{atlas.name} has {atlas.n_parcels}")
    splits = assign_splits([r["subject"] for r in rows], fractions, seed)
    participants = participants or {}
    # a participants "site" column fills the manifest's site; other base names cannot be phenotypes
    pheno_keys = sorted(({k for r in rows for k in r.get("phenotypes", {})}
                         | {k for p in participants.values() for k in p}) - set(BASE_COLUMNS))
    manifest = []
    for r in sorted(rows, key=lambda r: r["scan_id"]):
        phen = {**participants.get(r["subject"], {}), **r.get("phenotypes", {})}
        row = {k: r[k] for k in BASE_COLUMNS if k != "split"}
        row["site"] = row["site"] or phen.get("site", "")
        row["split"] = splits[r["subject"]]
        row.update({k: phen.get(k, MISSING) for k in pheno_keys})
        manifest.append(row)
    readers: dict[str, ShardReader] = {}
    train = []
    for row in manifest:
        if row["split"] == "train":
            reader = readers.setdefault(row["shard"], ShardReader(out / "shards" / row["shard"]))
            train.append(reader.read(int(row["index"])).data)
    if not train:  # tiny cohorts: fall back to every scan rather than refuse
        train = [readers.setdefault(r["shard"], ShardReader(out / "shards" / r["shard"])).read(int(r["index"])).data
                 for r in manifest]
    median, iqr, subsampled = robust_stats(train)
    with atomic_path(out / "stats.npz") as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no ".npz"
        np.savez(fh, median=median, iqr=iqr, n_scans=np.int64(len(train)), subsampled=np.bool_(subsampled))
    atlas.save(out / "atlas.json")
    _write_tsv(out / "failures.tsv", ["file", "reason"], failures)
    _write_tsv(out / "manifest.tsv", list(BASE_COLUMNS) + pheno_keys, manifest)
    atomic_write_text(out / "dataset.json", json.dumps({
        "format_version": FORMAT_VERSION, "n_parcels": atlas.n_parcels, "n_scans": len(manifest),
        "split_seed": seed, "split_fractions": list(fractions), "phenotypes": pheno_keys,
    }, indent=2))
    return Dataset(out)


def _write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, MISSING) for c in columns})


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


class Dataset:
    """A finished dataset directory opened for reading.

    ``manifest`` is a list of dicts (strings from the TSV; ``tr``/``length``/``index`` converted).
    ``read(i)`` returns the raw float32 [P, T] scan; ``normalize`` applies the saved statistics.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"dataset directory not found: {self.path}")
        for name in ("dataset.json", "atlas.json", "manifest.tsv", "stats.npz"):
            if not (self.path / name).exists():
                raise DatasetError(f"{self.path}: missing {name} (not a finished brainjax dataset; run "
                                   f"`brainjax prepare` or `brainjax synth` to completion)")
        self.info = json.loads((self.path / "dataset.json").read_text())
        if self.info.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{self.path}/dataset.json: format version {self.info.get('format_version')}, "
                               f"this brainjax reads {FORMAT_VERSION}")
        self.atlas = Atlas.load(self.path / "atlas.json")
        self.manifest = _read_tsv(self.path / "manifest.tsv")
        for row in self.manifest:
            row["tr"], row["length"], row["index"] = float(row["tr"]), int(row["length"]), int(row["index"])
            row["n_parcels"] = int(row["n_parcels"])
        with np.load(self.path / "stats.npz", allow_pickle=False) as stats:
            self.median = stats["median"].astype(np.float32)
            self.iqr = stats["iqr"].astype(np.float32)
        if self.median.shape != (self.atlas.n_parcels,) or self.iqr.shape != (self.atlas.n_parcels,):
            raise DatasetError(f"{self.path}/stats.npz: statistics for {self.median.shape} parcels, atlas has "
                               f"{self.atlas.n_parcels}")
        # A parcel with zero spread would divide by zero; it is excluded by QC, this is a last guard.
        self.scale = np.where(self.iqr > 1e-8, self.iqr, 1.0).astype(np.float32)
        self.failures = _read_tsv(self.path / "failures.tsv") if (self.path / "failures.tsv").exists() else []
        self._readers: dict[str, ShardReader] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def phenotypes(self) -> list[str]:
        return list(self.info.get("phenotypes", []))

    def indices(self, split: str | None = None) -> list[int]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [i for i, r in enumerate(self.manifest) if split is None or r["split"] == split]

    def read(self, i: int) -> np.ndarray:
        row = self.manifest[i]
        reader = self._readers.get(row["shard"])
        if reader is None:
            reader = self._readers[row["shard"]] = ShardReader(self.path / "shards" / row["shard"])
        record = reader.read(row["index"])
        if record.scan_id != row["scan_id"]:
            raise DatasetError(f"{reader.path}#{row['index']}: holds scan {record.scan_id!r}, manifest expects "
                               f"{row['scan_id']!r}")
        return record.data

    def normalize(self, data: np.ndarray) -> np.ndarray:
        """``(x - median) / iqr`` per parcel; ``data`` is [P, T] (or [..., P, T])."""
        return (data - self.median[:, None]) / self.scale[:, None]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state
