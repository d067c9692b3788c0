"""``brainjax prepare``: scans → parcel series → cleaning → QC → dataset, resumable and shardable over jobs.

Layout added to a dataset directory (see :mod:`brainjax.data.dataset` for the rest)::

    DIR/prepare.json           preprocessing options; a re-run with other options is refused
    DIR/staging/SCAN.json      per-scan status (ok or failed + reason, missing parcels, input fingerprints),
                               written last
    DIR/staging/SCAN.npy       float32 [P, T] of an ok scan until its job's part is written

A job (``--shard I/N``) takes every N-th scan of the scan list sorted by id, stages each scan atomically,
writes ``part-I-of-N`` once all of its scans are staged (then drops the staged arrays: the part's shards hold
them; the status files stay as the resume record), and the job that sees all N parts runs ``finalize``.
Re-running skips scans whose status matches the current input files (size and mtime); a changed input is
processed again. Adding inputs later processes only the new scans: a rebuilt part takes the other scans'
arrays from the part it replaces (written to a temporary directory first, so the old part stays readable).
A re-run also checks the part's shards (present, size and CRC32 as recorded; older parts: every record
decoded) and rebuilds a missing or damaged one, processing its unreadable scans again.

Partial coverage: a parcel that is empty (no voxel/vertex inside the data), non-finite or constant in one
scan is *missing* there. Up to ``--max-missing-parcels`` (a fraction of the atlas, default 0.05) a scan is
kept: its missing parcels are stored as 0, listed in the manifest (``missing_parcels``) and masked out of
that scan's batches, statistics and FC features; beyond it the scan fails naming them. ``--strict`` stops at
the first scan with any missing parcel, as it stops at any failed scan.

Concurrency: a job holds ``DIR/.lock-part-I-of-N`` (pid, host, start time; created exclusively) while it
runs, so a second prepare of the same shard refuses instead of racing; a lock left by a dead process on
this host is taken over with a warning, and the temporary part directories of dead runs are removed.
Finalizing holds ``DIR/.lock-finalize``; a job that finds it held waits, then finalizes only if the parts
changed since (``dataset.json`` records the digest of the parts it was made from).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from brainjax.data import clean as qc
from brainjax.data.atlas import load_atlas
from brainjax.data.clean import CleanOptions, ScanError
from brainjax.data.dataset import ScanMeta, check_shards, finalize, parts_digest, read_parts, write_part
from brainjax.data.locks import acquire_lock, release_lock
from brainjax.data.participants import load_participants, participants_mismatch
from brainjax.data.readers import brain_mask_for, probe_tr, read_scan, read_table, select_confounds, sidecar_tr
from brainjax.data.records import ShardReader
from brainjax.data.scans import (
    DiscoveryError,
    ScanInput,
    discover_scans,
    find_confounds,
    find_participants,
    split_name,
    stage_name,
)
from brainjax.errors import DatasetError
from brainjax.paths import atomic_path, atomic_write_text

PREPARE_VERSION = 1
# A job that finds another finalizing waits this long for it (finalize reads every training scan once).
FINALIZE_WAIT_S = 6 * 3600.0


class OptionsMismatchError(DatasetError):
    """The output directory was prepared with other preprocessing options."""


class PrepareWarning(UserWarning):
    """Something ``prepare`` did or found that the user should hear about (also in PrepareResult.warnings)."""


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that changes the prepared data; recorded in ``prepare.json``."""

    atlas: str = "seitzman300"  # built-in name or path (see brainjax.data.atlas.load_atlas)
    labels: str | None = None  # label table for an atlas image
    mesh: str | None = None  # surface mesh for a surface atlas
    tr: float | None = None  # seconds; overrides sidecars and headers for every scan
    clean: CleanOptions = field(default_factory=CleanOptions)
    confounds: str = "auto"  # auto | none | comma-separated column names
    min_length: int = 100  # TRs after resampling; shorter scans fail QC
    # A scan may miss (empty, non-finite or constant parcels) at most this fraction of the atlas's parcels:
    # they are stored as 0, listed in the manifest's missing_parcels column and masked out for that scan.
    max_missing_parcels: float = 0.05

    def __post_init__(self):
        if not 0.0 <= self.max_missing_parcels <= 1.0:
            raise ValueError(f"max_missing_parcels must be a fraction in [0, 1], got {self.max_missing_parcels}")

    def record(self) -> dict:
        return {"version": PREPARE_VERSION, **asdict(self)}


# What a ``prepare.json`` written before an option existed means for that option (the behaviour then).
_OPTION_DEFAULTS_BEFORE = {"max_missing_parcels": 0.0}  # any missing parcel failed the scan


@dataclass
class PrepareResult:
    """What one ``prepare`` call did (counts are for this job's shard)."""

    n_scans: int  # scans in the whole input list
    n_mine: int  # scans of this shard
    processed: int = 0
    skipped: int = 0  # already staged by an earlier run
    failures: list[dict] = field(default_factory=list)  # {"file", "reason", "scan_id"} of this shard
    # scans of this shard kept with missing parcels: {"file", "scan_id", "missing_parcels", "reason"}
    partial: list[dict] = field(default_factory=list)
    part_written: bool = False
    finalized: bool = False
    missing_parts: list[int] = field(default_factory=list)
    repaired: dict[str, str] = field(default_factory=dict)  # shard name -> what was wrong with it
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _warn(result: PrepareResult, text: str) -> None:
    result.warnings.append(text)
    warnings.warn(text, PrepareWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- one scan

def scan_dependencies(scan: ScanInput) -> list[Path]:
    """Every file a scan's result depends on: its data, and a sidecar/confounds/mask beside it if present."""
    first = Path(scan.files[0])
    extra = [find_confounds(first), first.with_name(split_name(first.name)[0] + ".json"), brain_mask_for(first)]
    return [Path(f) for f in scan.files] + [p for p in extra if p is not None and p.exists()]


def fingerprint(scan: ScanInput) -> list[list]:
    out = []
    for path in scan_dependencies(scan):
        try:
            st = path.stat()
            out.append([str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(path), -1, -1])
    return out


def _confounds_for(scan: ScanInput, raw, columns: str) -> tuple[np.ndarray | None, str]:
    """Confound regressors for a scan: the table beside it, else extra columns of a ready series."""
    if columns == "none":
        return None, ""
    wanted = "auto" if columns == "auto" else tuple(c.strip() for c in columns.split(",") if c.strip())
    path = find_confounds(scan.files[0])
    if path is not None:
        try:
            names, values = read_table(path)
        except ScanError as err:
            raise ScanError(f"confounds file {path}: {err}") from None
        return select_confounds(names, values, wanted, str(path))[0], str(path)
    if raw.extra is not None:
        return select_confounds(raw.extra_names, raw.extra, wanted, f"columns of {scan.files[0]}")[0], "in-file"
    if wanted != "auto":
        raise ScanError(f"--confounds {columns}: no confounds file beside {scan.files[0]} "
                        f"(looked for *_desc-confounds_timeseries.tsv, *_confounds.tsv, *_confounds.txt)")
    return None, ""


def prepare_scan(scan: ScanInput, spec, options: PrepareOptions,
                 dataset_tr: tuple[float | None, int, int] = (None, 0, 0)) -> tuple[np.ndarray, dict]:
    """Read, check and clean one scan. Returns (float32 [P, T], info) or raises ScanError with the reason.

    Parcels that are empty, non-finite or constant in this scan are *missing*: up to
    ``options.max_missing_parcels`` of the atlas, they are left out of cleaning and stored as 0 (the mean of
    a standardised parcel), and ``info["missing_parcels"]`` lists them (``info["missing_reason"]`` says why);
    more fail the scan with a reason naming them.
    ``dataset_tr`` = (reference TR, scans with it, all scans) when scans must share a TR, else (None, 0, 0).
    """
    names = spec.atlas.names
    raw = read_scan(scan, spec)
    tr = options.tr or sidecar_tr(scan.files[0]) or raw.tr
    tr = qc.check_tr(tr, f"{scan.files[0]} (header/sidecar)")
    qc.check_same_tr(tr, dataset_tr[0], dataset_tr[2], dataset_tr[1])
    missing = qc.find_missing(raw.series, raw.empty_parcels, raw.nonfinite_what)
    qc.check_missing(missing, names, options.max_missing_parcels)
    present = np.ones(len(names), bool)
    present[missing.indices] = False
    target = options.clean.target_tr
    out_length = raw.series.shape[0] if target is None else int(np.ceil(raw.series.shape[0] * tr / target))
    qc.check_length(out_length, options.min_length, "" if target is None else f" at TR {target:g} s")
    confounds, confounds_from = _confounds_for(scan, raw, options.confounds)
    series = qc.clean_series(raw.series[:, present], tr, options.clean, confounds)
    if target is not None:
        series = qc.resample_tr(series, tr, target)
    qc.check_finite(series, [n for n, keep in zip(names, present) if keep], " after cleaning")
    data = np.zeros((len(names), series.shape[0]), np.float32)
    data[present] = series.T
    info = {"tr": float(target or tr), "source_tr": tr, "length": int(series.shape[0]),
            "confounds": confounds_from, "n_confounds": 0 if confounds is None else int(confounds.shape[1]),
            "missing_parcels": missing.indices, "missing_reason": missing.describe(names)}
    return data, info


def stage_scan(scan: ScanInput, spec, options: PrepareOptions, staging: Path,
               dataset_tr: tuple[float | None, int, int]) -> dict:
    """Process one scan and stage its result (array first, status JSON last); returns the status."""
    start = time.perf_counter()
    status = {"scan_id": scan.scan_id, "subject": scan.subject, "session": scan.session,
              "file": scan.files[0], "fingerprint": fingerprint(scan)}
    try:
        if scan.kind == "invalid":
            raise ScanError(scan.error)
        data, info = prepare_scan(scan, spec, options, dataset_tr)
        with atomic_path(staging / f"{scan.stage_name}.npy") as tmp, open(tmp, "wb") as fh:  # np.save adds no .npy
            np.save(fh, data, allow_pickle=False)
        status.update(status="ok", reason="", n_parcels=int(data.shape[0]), **info)
    except ScanError as err:
        status.update(status="failed", reason=str(err))
    except Exception as err:  # noqa: BLE001 - one odd file must not stop a 40,000-scan run
        status.update(status="failed", reason=f"processing error: {type(err).__name__}: {err}")
    status["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_text(staging / f"{scan.stage_name}.json", json.dumps(status, indent=1))
    return status


_WORKER: dict = {}


def _init_worker(spec, options, staging, dataset_tr):
    _WORKER.update(spec=spec, options=options, staging=staging, dataset_tr=dataset_tr)


def _worker_stage(scan: ScanInput) -> dict:
    return stage_scan(scan, _WORKER["spec"], _WORKER["options"], _WORKER["staging"], _WORKER["dataset_tr"])


# ---------------------------------------------------------------------------------------------- one job

def _check_options(out: Path, record: dict) -> None:
    """Create ``prepare.json`` (exclusively, jobs may race) or refuse options that differ from it."""
    path = out / "prepare.json"
    if not path.exists():
        tmp = out / f"prepare.json.tmp{uuid.uuid4().hex}"  # unique: jobs (or threads) may race here
        tmp.write_text(json.dumps(record, indent=1))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    previous = json.loads(path.read_text())
    before = [key for key in _OPTION_DEFAULTS_BEFORE if key not in previous]
    previous = {**_OPTION_DEFAULTS_BEFORE, **previous}  # older records: the behaviour of their time
    if previous != json.loads(json.dumps(record)):
        diffs = _differences(previous, json.loads(json.dumps(record)))
        hint = "".join(f"; {path.name} predates --{k.replace('_', '-')} (its value then: {previous[k]!r})"
                       for k in before if previous[k] != record.get(k))
        raise OptionsMismatchError(f"{out} was prepared with other options ({'; '.join(diffs)}{hint}); mixing "
                                   f"preprocessing in one dataset is refused: use another --out directory, "
                                   f"or delete {out} to start over")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} before, {b!r} now")
    return diffs


def _load_status(staging: Path, scan: ScanInput) -> dict | None:
    path = staging / f"{scan.stage_name}.json"
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return status if status.get("fingerprint") == fingerprint(scan) else None


def _accepted_kinds(spec) -> set[str]:
    kinds = {"series"}
    if spec.label_image is not None or spec.radius is not None:
        kinds.add("volume")
    if spec.vertex_labels is not None:
        kinds.add("surface")
    return kinds


def _dataset_tr(scans: list[ScanInput], options: PrepareOptions) -> tuple[float | None, int, int]:
    if options.tr is not None or options.clean.target_tr is not None:
        return None, 0, 0
    trs = [probe_tr(s) for s in scans if s.kind != "invalid"]
    ref = qc.reference_tr(trs)
    known = [t for t in trs if t is not None]
    agree = sum(1 for t in known if np.isclose(t, ref, rtol=qc.TR_RTOL))
    return ref, agree, len(known)


def _write_part_atomically(out: Path, part: str, statuses: list[dict], staging: Path,
                           old_rows: dict[str, dict]) -> None:
    """Write the part into a temporary directory, then move it in (old part metadata removed first).

    A scan's array comes from staging, else from the part being replaced (its shards are only read here).
    """
    tmp = out / f"tmp-{part}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    readers: dict[str, ShardReader] = {}

    def array(status: dict) -> np.ndarray:
        staged = staging / f"{stage_name(status['scan_id'])}.npy"
        if staged.exists():
            return np.load(staged, allow_pickle=False)
        row = old_rows[status["scan_id"]]
        reader = readers.setdefault(row["shard"], ShardReader(out / "shards" / row["shard"]))
        record = reader.read(int(row["index"]))
        if record.scan_id != status["scan_id"]:
            raise DatasetError(f"{reader.path}#{row['index']} holds {record.scan_id!r}, expected {status['scan_id']!r}")
        return record.data

    failures = [{"file": s["file"], "reason": s["reason"], "scan_id": s["scan_id"]}
                for s in statuses if s["status"] != "ok"]
    items = ((ScanMeta(s["scan_id"], s["subject"], s["tr"], s["session"],
                       missing_parcels=tuple(s.get("missing_parcels", ()))), array(s))
             for s in statuses if s["status"] == "ok")
    write_part(tmp, part, items, failures)
    (out / "parts" / f"{part}.jsonl").unlink(missing_ok=True)  # the part is incomplete until moved back in
    (out / "shards").mkdir(exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    new_shards = {p.name for p in (tmp / "shards").glob("*.array_record")}
    for old in (out / "shards").glob(f"{part}-*.array_record"):
        if old.name not in new_shards:
            old.unlink()
    for name in new_shards:
        os.replace(tmp / "shards" / name, out / "shards" / name)
    if (tmp / "parts" / f"{part}.failures.jsonl").exists():
        os.replace(tmp / "parts" / f"{part}.failures.jsonl", out / "parts" / f"{part}.failures.jsonl")
    else:
        (out / "parts" / f"{part}.failures.jsonl").unlink(missing_ok=True)
    os.replace(tmp / "parts" / f"{part}.jsonl", out / "parts" / f"{part}.jsonl")
    shutil.rmtree(tmp, ignore_errors=True)


def _part_rows(path: Path) -> dict[str, dict] | None:
    if not path.exists():
        return None
    return {row["scan_id"]: row for row in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def prepare(inputs: list[str | os.PathLike], out: str | os.PathLike, options: PrepareOptions = PrepareOptions(),
            shard: tuple[int, int] = (0, 1), workers: int = 1, strict: bool = False, force_finalize: bool = False,
            split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
            participants: str | os.PathLike | None = None, progress: bool = False, spec=None) -> PrepareResult:
    """Prepare this job's shard of the scans in ``inputs`` into the dataset directory ``out``.

    Args:
      shard: (I, N): this job takes scans I, I+N, I+2N... of the sorted scan list.
      workers: processes for scans (<= 1: in this process).
      strict: raise ScanError on the first failed scan or scan with any missing parcel (including those
        staged by earlier runs); without it such scans are skipped, or kept with their missing parcels masked
        up to ``options.max_missing_parcels``.
      force_finalize: finalize even if this job wrote nothing new (all N parts must exist).
      spec: an already loaded AtlasSpec (else ``load_atlas(options.atlas, options.labels, options.mesh)``).
    Raises LockedError when another live prepare of the same shard runs into ``out``.
    """
    start = time.perf_counter()
    index, n_shards = shard
    if not (n_shards >= 1 and 0 <= index < n_shards):
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {index}/{n_shards}")
    out = Path(out)
    if spec is None:
        spec = load_atlas(options.atlas, options.labels, options.mesh)
    scans = discover_scans(list(inputs), _accepted_kinds(spec), spec.mesh, exclude=out)
    if not scans:
        raise DiscoveryError(f"no supported inputs found in {', '.join(map(str, inputs))}")
    result = PrepareResult(n_scans=len(scans), n_mine=len(scans[index::n_shards]))
    table_path = participants if participants is not None else find_participants(list(inputs))
    table = load_participants(table_path) if table_path is not None else {}
    if (mismatch := participants_mismatch(table, scans, table_path)) is not None:
        _warn(result, mismatch)
    out.mkdir(parents=True, exist_ok=True)
    part = f"part-{index}-of-{n_shards}"
    lock = out / f".lock-{part}"
    token = acquire_lock(lock, f"shard {index}/{n_shards}", functools.partial(_warn, result))
    try:
        for leftover in out.glob(f"tmp-{part}.*"):  # a dead run's half-written part (this job owns the part now)
            shutil.rmtree(leftover, ignore_errors=True)
        _run_job(scans, out, part, (index, n_shards), options, spec, workers, strict, progress, result)
        result.missing_parts = [i for i in range(n_shards)
                                if not (out / "parts" / f"part-{i}-of-{n_shards}.jsonl").exists()]
        if force_finalize and result.missing_parts:
            raise DiscoveryError(f"cannot finalize {out}: parts {result.missing_parts} of {n_shards} are missing "
                                 f"(run those --shard jobs first)")
        if not result.missing_parts and (force_finalize or _finalize_due(out, result.part_written)):
            result.finalized = _finalize_once(out, spec.atlas, split_fractions, seed, table, force_finalize, result)
    finally:
        release_lock(lock, token)
    result.seconds = time.perf_counter() - start
    return result


def _run_job(scans: list[ScanInput], out: Path, part: str, shard: tuple[int, int], options: PrepareOptions, spec,
             workers: int, strict: bool, progress: bool, result: PrepareResult) -> None:
    """Stage this job's scans (those not staged yet, or lost from a damaged part) and (re)write its part."""
    from tqdm import tqdm

    index, n_shards = shard
    staging = out / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    _check_options(out, {**options.record(), "atlas_parcels": spec.atlas.n_parcels})
    other = [p.name for p in (out / "parts").glob("part-*-of-*.jsonl") if not p.name.endswith(f"-of-{n_shards}.jsonl")
             and not p.name.endswith(".failures.jsonl")]
    if other:
        raise OptionsMismatchError(f"{out} holds parts of a run with another shard count ({other[0]}); "
                                   f"use --shard I/N with the same N")
    mine = scans[index::n_shards]
    statuses = {s.scan_id: _load_status(staging, s) for s in mine}
    ok_ids = {k for k, s in statuses.items() if s is not None and s["status"] == "ok"}
    old_rows = _part_rows(out / "parts" / f"{part}.jsonl")
    if old_rows:
        # a missing or damaged shard: its unreadable scans are processed again, the part is rewritten
        damaged, result.repaired = check_shards(out, old_rows.values(), quick=True)
        for scan_id in damaged:
            del old_rows[scan_id]
    part_current = (None not in statuses.values() and old_rows is not None and set(old_rows) == ok_ids
                    and not result.repaired)
    old_rows = old_rows or {}
    # an ok scan needs its array again only when the part is rebuilt and neither staging nor the old part has it
    lost = lambda s: not (staging / f"{s.stage_name}.npy").exists() and s.scan_id not in old_rows
    todo = [s for s in mine if statuses[s.scan_id] is None
            or (not part_current and statuses[s.scan_id]["status"] == "ok" and lost(s))]
    result.skipped = len(mine) - len(todo)
    _raise_if_strict(strict, [s for s in statuses.values() if s is not None])
    dataset_tr = _dataset_tr(scans, options) if todo else (None, 0, 0)
    bar = tqdm(total=len(todo), desc=f"prepare {part}", unit="scan", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for scan in todo:
            statuses[scan.scan_id] = stage_scan(scan, spec, options, staging, dataset_tr)
            bar.update()
            _raise_if_strict(strict, [statuses[scan.scan_id]])
    else:
        _run_pool(todo, workers, (spec, options, staging, dataset_tr), statuses, bar, strict)
    bar.close()
    result.processed = len(todo)
    ordered = [statuses[s.scan_id] for s in mine]
    result.failures = [{"file": s["file"], "reason": s["reason"], "scan_id": s["scan_id"]}
                       for s in ordered if s["status"] != "ok"]
    result.partial = [{"file": s["file"], "scan_id": s["scan_id"], "missing_parcels": s["missing_parcels"],
                       "reason": s.get("missing_reason", "")}
                      for s in ordered if s["status"] == "ok" and s.get("missing_parcels")]
    if not part_current:
        _write_part_atomically(out, part, ordered, staging, old_rows)
        result.part_written = True
        for scan in mine:
            (staging / f"{scan.stage_name}.npy").unlink(missing_ok=True)


def _recorded_digest(out: Path) -> str | None:
    try:
        return json.loads((out / "dataset.json").read_text()).get("parts_digest")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _finalize_due(out: Path, part_written: bool) -> bool:
    """Whether the dataset lags its parts (datasets finalized before digests were kept: after a new part)."""
    if not (out / "dataset.json").exists():
        return True
    recorded = _recorded_digest(out)
    return part_written if recorded is None else recorded != parts_digest(out)


def _finalize_once(out: Path, atlas, split_fractions, seed, table, force: bool, result: PrepareResult) -> bool:
    """Finalize under ``.lock-finalize``; a job that waited for another's finalize skips it when it saw these
    very parts. Returns whether this job finalized."""
    lock = out / ".lock-finalize"
    token = acquire_lock(lock, "finalize", functools.partial(_warn, result), wait_s=FINALIZE_WAIT_S)
    try:
        if not force and (out / "dataset.json").exists() and _recorded_digest(out) == parts_digest(out):
            return False
        _require_some_scan(out)
        finalize(out, atlas, split_fractions, seed, table)
        return True
    finally:
        release_lock(lock, token)


def _require_some_scan(out: Path) -> None:
    rows, failures = read_parts(out)
    if not rows:
        listed = "; ".join(f"{Path(f['file']).name}: {f['reason']}" for f in failures[:5])
        raise DatasetError(f"{out}: no scan passed QC ({len(failures)} failed: {listed}"
                           f"{' ...' if len(failures) > 5 else ''})")


def _raise_if_strict(strict: bool, statuses: list[dict]) -> None:
    """Under ``--strict``: stop at a failed scan, or at a scan with any missing parcel (as before partial
    coverage). Such a scan stays staged as ok, so a run without --strict keeps it (parcels masked)."""
    if not strict:
        return
    for status in statuses:
        if status["status"] != "ok":
            raise ScanError(f"{status['file']}: {status['reason']} (--strict)")
        if status.get("missing_parcels"):
            raise ScanError(f"{status['file']}: {status.get('missing_reason') or 'missing parcels'} (--strict: a "
                            f"scan with any missing parcel stops the run; without --strict it is kept with "
                            f"those parcels masked, up to --max-missing-parcels)")


def _run_pool(todo, workers, init_args, statuses, bar, strict) -> None:
    # spawn, not fork: the parent may hold JAX/XLA threads, which a forked child would deadlock on
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=init_args) as pool:
        pending = {pool.submit(_worker_stage, scan) for scan in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    status = future.result()
                    statuses[status["scan_id"]] = status
                    bar.update()
                    _raise_if_strict(strict, [status])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
