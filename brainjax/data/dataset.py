"""The on-disk dataset: shards of scan records, a manifest, the atlas and normalisation statistics.

::

    DIR/dataset.json          format version, parcel count, split seed and fractions
    DIR/atlas.json            :class:`~brainjax.data.atlas_core.Atlas`
    DIR/manifest.tsv          one row per scan: scan_id subject session site tr length n_parcels split
                              shard index missing_parcels, then phenotype columns (``n/a`` where missing)
    DIR/stats.npz             per-parcel ``median`` and ``iqr`` over the training split (each parcel over
                              the scans where it is present; ``n_present`` counts them)
    DIR/failures.tsv          scans that were skipped, with the reason
    DIR/shards/*.array_record one record per scan (see :mod:`brainjax.data.records`)
    DIR/parts/*.jsonl         per-writer metadata that :func:`finalize` merges (several jobs may write parts);
                              each row also keeps its shard's size and CRC32 (``shard_bytes``, ``shard_crc32``)

``missing_parcels`` lists, comma-separated, the parcel indices (0-based, atlas order) that a scan misses
(empty, non-finite or constant in its input; stored as 0): empty when none. A manifest without the column
(datasets written before it) means no scan misses any parcel. Missing parcels are masked out of the scan's
batches (``parcel_mask``), of the statistics and of FC features (:meth:`Dataset.present`).

Writers (``synth``, ``prepare``) call :func:`write_part` one or more times and then :func:`finalize`.
Splits are assigned per subject, so a subject's scans all land in one split. ``dataset.json`` keeps a digest
of the parts it was finalized from, so a writer can tell whether finalizing again would change anything.
:func:`check_shards` finds missing shards and unreadable records (``brainjax info --verify``, ``prepare``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import Atlas
from brainjax.data.records import CorruptRecordError, ScanRecord, ShardReader, write_shard
from brainjax.errors import DatasetError
from brainjax.paths import atomic_path, atomic_write_text, file_checksum, inside

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
BASE_COLUMNS = ("scan_id", "subject", "session", "site", "tr", "length", "n_parcels", "split", "shard", "index",
                "missing_parcels")
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
    missing_parcels: tuple[int, ...] = ()  # parcels without usable signal in this scan (stored as 0)


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
            size, crc = file_checksum(out / "shards" / name)
            for i, (row, _) in enumerate(chunk):
                rows.append({**row, "shard": name, "index": i, "shard_bytes": size, "shard_crc32": crc})
            chunk, shard_no = [], shard_no + 1

    for meta, data in items:
        data = np.asarray(data, np.float32)
        row = {"scan_id": meta.scan_id, "subject": meta.subject, "session": meta.session, "site": meta.site,
               "tr": float(meta.tr), "length": int(data.shape[1]), "n_parcels": int(data.shape[0]),
               "phenotypes": meta.phenotypes or {}}
        if meta.missing_parcels:
            row["missing_parcels"] = sorted(int(i) for i in meta.missing_parcels)
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


def robust_stats(arrays: Sequence[np.ndarray], present: Sequence[np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-parcel median and interquartile range over the time points of all arrays ([P, T_i] each).

    present: per array, bool [P] (False = the parcel is missing in that scan; None = all present). Each
    parcel's statistics use only the scans where it is present; a parcel present in none gets median 0 and
    IQR 1 (its values are masked out everywhere anyway).
    Returns (median [P], iqr [P], subsampled). Normalisation is ``(x - median) / iqr``.
    """
    if not arrays:
        raise DatasetError("no training scans to compute normalisation statistics from")
    total = sum(a.size for a in arrays)
    step = max(1, int(np.ceil(total / _STATS_MAX_VALUES)))
    parts = [np.asarray(a, np.float32)[:, ::step] for a in arrays]
    values = np.concatenate(parts, axis=1)
    if present is None or all(np.all(m) for m in present):
        q25, median, q75 = np.percentile(values, [25, 50, 75], axis=1)
    else:
        if len(present) != len(arrays):
            raise ValueError(f"robust_stats: {len(present)} presence masks for {len(arrays)} arrays")
        valid = np.concatenate([np.broadcast_to(np.asarray(m, bool)[:, None], p.shape)
                                for m, p in zip(present, parts)], axis=1)
        full = valid.all(axis=1)
        q25, median, q75 = np.zeros(len(values)), np.zeros(len(values)), np.ones(len(values))
        if full.any():
            q25[full], median[full], q75[full] = np.percentile(values[full], [25, 50, 75], axis=1)
        for p in np.flatnonzero(~full):  # few parcels: one at a time over the scans where they are present
            kept = values[p, valid[p]]
            if kept.size:
                q25[p], median[p], q75[p] = np.percentile(kept, [25, 50, 75])
            else:
                q25[p], median[p], q75[p] = -0.5, 0.0, 0.5
    return median.astype(np.float32), (q75 - q25).astype(np.float32), step > 1


def parse_parcels(text: str | None, n_parcels: int, where: str = "manifest") -> tuple[int, ...]:
    """``"3,17"`` (a manifest's ``missing_parcels`` cell) -> (3, 17); ``""``/``n/a``/None -> ()."""
    text = "" if text is None else str(text).strip()
    if text.lower() in ("", MISSING):
        return ()
    try:
        parcels = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise DatasetError(f"{where}: missing_parcels {text!r} is not a comma-separated list of parcel "
                           f"indices") from None
    if parcels[0] < 0 or parcels[-1] >= n_parcels:
        raise DatasetError(f"{where}: missing_parcels {text!r} names parcels outside 0..{n_parcels - 1}")
    return parcels


def present_mask(n_parcels: int, missing: Sequence[int]) -> np.ndarray:
    """bool [n_parcels]: False at the ``missing`` parcel indices."""
    mask = np.ones(n_parcels, bool)
    mask[list(missing)] = False
    return mask


def read_parts(out: Path) -> tuple[list[dict], list[dict]]:
    rows, failures = [], []
    for path in sorted((out / "parts").glob("*.jsonl")):
        target = failures if path.name.endswith(".failures.jsonl") else rows
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            try:
                target.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{line_no}: corrupt part metadata ({err})") from None
            if target is rows:
                _check_shard_name(out, rows[-1].get("shard"), f"{path}:{line_no}")
    return rows, failures


def _check_shard_name(out: Path, name: object, source: str) -> None:
    """A shard name read from a file must be a file inside ``out/shards`` (no path out of the dataset)."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{source}: no shard name")
    inside(Path(out) / "shards", name, source)


def parts_digest(out: str | os.PathLike) -> str:
    """SHA-256 over the names and contents of ``parts/*.jsonl``: equal digests, equal finalized dataset."""
    digest = hashlib.sha256()
    for path in sorted((Path(out) / "parts").glob("*.jsonl")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def check_shards(out: str | os.PathLike, rows: Iterable[dict], quick: bool = False) -> tuple[dict, dict]:
    """Find what is wrong with the records of ``rows`` (dicts with scan_id, shard, index) under ``out/shards``.

    Returns ({scan_id: reason} for scans whose record is missing or unreadable, {shard name: reason} for
    shards that are missing or differ from the size/CRC32 their rows recorded). ``quick``: a shard whose
    size and CRC32 match is taken as intact without decoding its records (rows without a recorded
    checksum, from older writers, are always decoded).
    """
    by_shard: dict[str, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)
    damaged, shards = {}, {}
    for name, members in sorted(by_shard.items()):
        path = Path(out) / "shards" / name
        if not path.exists():
            shards[name] = "missing"
            damaged.update({r["scan_id"]: f"shard {name} is missing" for r in members})
            continue
        recorded = (members[0].get("shard_bytes"), members[0].get("shard_crc32"))
        if None not in recorded:
            if file_checksum(path) == tuple(int(v) for v in recorded):
                if quick:
                    continue
            else:
                shards[name] = "size or checksum differs from the part metadata"
        reader = ShardReader(path)
        try:
            for row in members:
                where = f"{name}#{row['index']}"
                try:
                    record = reader.read(int(row["index"]))
                except CorruptRecordError as err:
                    damaged[row["scan_id"]] = where + ": " + str(err).split(": ", 1)[-1]
                    continue
                expected = (int(row.get("n_parcels", -1)), int(row.get("length", -1)))
                if record.scan_id != row["scan_id"]:
                    damaged[row["scan_id"]] = f"{where}: holds scan {record.scan_id!r}"
                elif -1 not in expected and record.data.shape != expected:
                    damaged[row["scan_id"]] = f"{where}: shape {record.data.shape}, expected {expected}"
        finally:
            reader.close()
        if any(r["scan_id"] in damaged for r in members):
            shards.setdefault(name, "unreadable records")
    return damaged, shards


def finalize(out: str | os.PathLike, atlas: Atlas, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
             participants: dict[str, dict] | None = None) -> Dataset:
    """Merge all parts into the manifest, assign subject-level splits, compute statistics on train only."""
    out = Path(out)
    digest = parts_digest(out)  # before reading: parts changed meanwhile make the recorded digest stale, not wrong
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
        if any(not 0 <= int(i) < atlas.n_parcels for i in row.get("missing_parcels", ())):
            raise DatasetError(f"{out}: scan {row['scan_id']} lists missing parcels {row['missing_parcels']} "
                               f"outside the atlas's {atlas.n_parcels}")
    splits = assign_splits([r["subject"] for r in rows], fractions, seed)
    participants = participants or {}
    # a participants "site" column fills the manifest's site; other base names cannot be phenotypes
    pheno_keys = sorted(({k for r in rows for k in r.get("phenotypes", {})}
                         | {k for p in participants.values() for k in p}) - set(BASE_COLUMNS))
    manifest = []
    for r in sorted(rows, key=lambda r: r["scan_id"]):
        phen = {**participants.get(r["subject"], {}), **r.get("phenotypes", {})}
        row = {k: r[k] for k in BASE_COLUMNS if k not in ("split", "missing_parcels")}
        row["missing_parcels"] = ",".join(str(int(i)) for i in sorted(r.get("missing_parcels", ())))
        row["site"] = row["site"] or phen.get("site", "")
        row["split"] = splits[r["subject"]]
        row.update({k: phen.get(k, MISSING) for k in pheno_keys})
        manifest.append(row)
    readers: dict[str, ShardReader] = {}
    # tiny cohorts without a training scan: every scan, rather than refuse
    used = [row for row in manifest if row["split"] == "train"] or manifest
    train = [readers.setdefault(r["shard"], ShardReader(out / "shards" / r["shard"])).read(int(r["index"])).data
             for r in used]
    present = [present_mask(atlas.n_parcels, parse_parcels(r["missing_parcels"], atlas.n_parcels)) for r in used]
    median, iqr, subsampled = robust_stats(train, present)
    with atomic_path(out / "stats.npz") as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no ".npz"
        np.savez(fh, median=median, iqr=iqr, n_scans=np.int64(len(train)), subsampled=np.bool_(subsampled),
                 n_present=np.sum(present, axis=0, dtype=np.int64))
    atlas.save(out / "atlas.json")
    _write_tsv(out / "failures.tsv", ["file", "reason"], failures)
    _write_tsv(out / "manifest.tsv", list(BASE_COLUMNS) + pheno_keys, manifest)
    atomic_write_text(out / "dataset.json", json.dumps({
        "format_version": FORMAT_VERSION, "n_parcels": atlas.n_parcels, "n_scans": len(manifest),
        "split_seed": seed, "split_fractions": list(fractions), "phenotypes": pheno_keys, "parts_digest": digest,
    }, indent=2))
    return Dataset(out)


def _write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, MISSING) for c in columns})


def _short_list(items: Sequence[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


class Dataset:
    """A finished dataset directory opened for reading.

    ``manifest`` is a list of dicts (strings from the TSV; ``tr``/``length``/``index`` converted,
    ``missing_parcels`` a tuple of parcel indices, () when none or when the manifest predates the column).
    ``read(i)`` returns the raw float32 [P, T] scan; ``normalize`` applies the saved statistics;
    ``present(i)`` says which parcels scan ``i`` has (bool [P]).
    Opening checks that every shard file exists (``require_shards``); :meth:`verify` reads every record.
    """

    def __init__(self, path: str | os.PathLike, require_shards: bool = True):
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
        for line_no, row in enumerate(self.manifest, 2):
            _check_shard_name(self.path, row.get("shard"), f"{self.path / 'manifest.tsv'}:{line_no}")
            row["tr"], row["length"], row["index"] = float(row["tr"]), int(row["length"]), int(row["index"])
            row["n_parcels"] = int(row["n_parcels"])
            row["missing_parcels"] = parse_parcels(row.get("missing_parcels"), self.atlas.n_parcels,
                                                   f"{self.path / 'manifest.tsv'}:{line_no}")
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
        if require_shards:
            self._require_shards()

    def _require_shards(self) -> None:
        scans: dict[str, list[str]] = {}
        for row in self.manifest:
            scans.setdefault(row["shard"], []).append(row["scan_id"])
        missing = [name for name in scans if not (self.path / "shards" / name).exists()]
        if missing:
            name, ids = missing[0], scans[missing[0]]
            more = f" (and {len(missing) - 1} more missing shards)" if len(missing) > 1 else ""
            raise DatasetError(f"{self.path}: shard file shards/{name} is missing ({len(ids)} scans: "
                               f"{_short_list(ids)}){more}; re-run the `brainjax prepare` command that made this "
                               f"dataset to rebuild it")

    def verify(self) -> dict[str, str]:
        """Read every record: {scan_id: what is wrong} for the missing or damaged ones (empty when intact)."""
        return check_shards(self.path, self.manifest)[0]

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def phenotypes(self) -> list[str]:
        return list(self.info.get("phenotypes", []))

    def indices(self, split: str | None = None) -> list[int]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [i for i, r in enumerate(self.manifest) if split is None or r["split"] == split]

    def _reader(self, shard: str) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            try:
                reader = self._readers[shard] = ShardReader(self.path / "shards" / shard)
            except FileNotFoundError:
                raise DatasetError(f"{self.path}: shard file shards/{shard} is missing; re-run the `brainjax "
                                   f"prepare` command that made this dataset to rebuild it") from None
        return reader

    def read(self, i: int) -> np.ndarray:
        row = self.manifest[i]
        reader = self._reader(row["shard"])
        record = reader.read(row["index"])
        if record.scan_id != row["scan_id"]:
            raise DatasetError(f"{reader.path}#{row['index']}: holds scan {record.scan_id!r}, manifest expects "
                               f"{row['scan_id']!r}")
        return record.data

    def present(self, i: int) -> np.ndarray:
        """bool [P]: the parcels scan ``i`` has (False where its manifest row lists a missing parcel)."""
        return present_mask(self.atlas.n_parcels, self.manifest[i]["missing_parcels"])

    def normalize(self, data: np.ndarray) -> np.ndarray:
        """``(x - median) / iqr`` per parcel; ``data`` is [P, T] (or [..., P, T])."""
        return (data - self.median[:, None]) / self.scale[:, None]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state
