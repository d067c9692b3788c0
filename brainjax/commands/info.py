"""``brainjax info DIR``: summarise a prepared dataset.

Prints scans and subjects per split, the atlas (name, parcels, networks), TRs and scan lengths, phenotype
columns (numeric: count, mean, range; categorical: the most common values), the scans kept with missing
parcels (partial coverage: which parcels, masked for that scan), the preprocessing options from
``prepare.json`` and the failed scans with their reasons. A directory where ``prepare`` has not
finished gets a short progress note instead of the summary. ``--verify`` reads every record back (checksums,
scan ids, shapes) and exits 2 naming the damaged scans and their shards.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

HELP = "summarise a prepared dataset (splits, atlas, TRs, lengths, missing parcels, phenotypes, failed scans)"
_MISSING = ("n/a", "", "nan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="dataset directory")
    parser.add_argument("--failures", type=int, default=20,
                        help="failed scans, and scans with missing parcels, to list (default: %(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="read every record back and check it (exit 2 naming damaged scans and shards)")


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def phenotype_summary(column: str, values: list[str]) -> str:
    """One line: ``age: 12 values (3 missing), mean 31.2, range 20-45`` or the most common categories."""
    present = [v for v in values if v.strip().lower() not in _MISSING]
    head = f"{column}: {len(present)} values" + (f" ({len(values) - len(present)} missing)" if
                                                  len(present) < len(values) else "")
    numbers = _numbers(present)
    if numbers and len(set(numbers)) > 5:
        return f"{head}, mean {sum(numbers) / len(numbers):.4g}, range {min(numbers):g} to {max(numbers):g}"
    counts = Counter(present).most_common(6)
    return f"{head}: " + ", ".join(f"{v} ({n})" for v, n in counts[:5]) + (" ..." if len(counts) > 5 else "")


def _describe(lengths: list[int]) -> str:
    ordered = sorted(lengths)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else 0.5 * (ordered[len(ordered) // 2 - 1]
                                                                        + ordered[len(ordered) // 2])
    return f"min {ordered[0]}, median {median:g}, max {ordered[-1]}, total {sum(ordered)}"


def missing_summary(ds, max_scans: int = 20) -> list[str]:
    """Lines on the scans kept with missing parcels (none: one line saying so)."""
    from brainjax.data.clean import name_list

    names = ds.atlas.names
    partial = [row for row in ds.manifest if row["missing_parcels"]]
    if not partial:
        return ["missing parcels: none (every scan has every parcel)"]
    counts = Counter(p for row in partial for p in row["missing_parcels"])
    worst = max(len(row["missing_parcels"]) for row in partial)
    common = ", ".join(f"{names[p]} ({n})" for p, n in counts.most_common(5))
    lines = [f"missing parcels: {len(partial)} of {len(ds.manifest)} scans miss some (masked for those scans; at "
             f"most {worst} of {ds.atlas.n_parcels}); most often: {common}"]
    for row in partial[:max_scans]:
        lines.append(f"  {row['scan_id']}: {len(row['missing_parcels'])} missing: "
                     f"{name_list(names, row['missing_parcels'])} (indices "
                     f"{','.join(map(str, row['missing_parcels']))})")
    if len(partial) > max_scans:
        lines.append(f"  ... {len(partial) - max_scans} more (manifest.tsv column missing_parcels)")
    return lines


def _in_progress(path: Path) -> str | None:
    """A note about an unfinished ``prepare`` in ``path``, or None when it holds none."""
    staging, parts = path / "staging", path / "parts"
    if not (path / "prepare.json").exists() or not staging.is_dir():
        return None
    statuses = [json.loads(p.read_text()) for p in staging.glob("*.json")]
    failed = sum(1 for s in statuses if s.get("status") != "ok")
    done = sorted(p.name for p in parts.glob("*.jsonl") if not p.name.endswith(".failures.jsonl")) \
        if parts.is_dir() else []
    return (f"{path}: prepare has not finished: {len(statuses)} scans staged ({failed} failed), parts written: "
            f"{', '.join(done) or 'none'}; re-run the same `brainjax prepare` command(s) to finish")


def summary(path: str | Path, max_failures: int = 20) -> str:
    """The text ``brainjax info`` prints for the dataset at ``path`` (raises DatasetError if it is none)."""
    from brainjax.data.dataset import SPLITS, Dataset

    ds = Dataset(path)
    rows = ds.manifest
    lines = [f"dataset {ds.path}", f"scans {len(rows)}, subjects {len({r['subject'] for r in rows})}"]
    for split in SPLITS:
        picked = [r for r in rows if r["split"] == split]
        lines.append(f"  {split:<5} {len(picked):>6} scans {len({r['subject'] for r in picked}):>6} subjects")
    sites = Counter(r["site"] for r in rows if r["site"] not in _MISSING)
    if sites:
        lines.append("sites: " + ", ".join(f"{s} ({n})" for s, n in sorted(sites.items())))
    atlas = ds.atlas
    _, networks = atlas.network_ids()
    lines.append(f"atlas {atlas.name} ({atlas.kind}): {atlas.n_parcels} parcels, {len(networks)} networks")
    if networks:
        counts = Counter(n for n in atlas.networks if n)
        lines.append("  networks: " + ", ".join(f"{n} ({counts[n]})" for n in networks))
    elif isinstance(atlas.extra.get("networks"), str):  # why an atlas has none, e.g. schaefer400
        lines.append(f"  networks: {atlas.extra['networks']}")
    trs = Counter(round(r["tr"], 4) for r in rows)
    lines.append("TR (s): " + ", ".join(f"{t:g} ({n} scans)" for t, n in sorted(trs.items())))
    lines.append("length (TRs): " + _describe([r["length"] for r in rows]))
    lines += missing_summary(ds, max_failures)
    if ds.phenotypes:
        lines.append("phenotypes:")
        lines += [f"  {phenotype_summary(c, [str(r.get(c, 'n/a')) for r in rows])}" for c in ds.phenotypes]
    options = ds.path / "prepare.json"
    if options.exists():
        record = json.loads(options.read_text())
        cleaning = ", ".join(f"{k}={v}" for k, v in record.get("clean", {}).items())
        lines.append(f"preprocessing: confounds={record.get('confounds')}, min_length={record.get('min_length')}, "
                     f"max_missing_parcels={record.get('max_missing_parcels', 0.0)}, tr={record.get('tr')}, "
                     f"{cleaning}")
    lines.append(f"failed scans: {len(ds.failures)}")
    for failure in ds.failures[:max_failures]:
        lines.append(f"  {failure.get('file')}: {failure.get('reason')}")
    if len(ds.failures) > max_failures:
        lines.append(f"  ... {len(ds.failures) - max_failures} more in {ds.path / 'failures.tsv'}")
    return "\n".join(lines)


def verify(path: str | Path) -> str:
    """Read every record of the dataset at ``path``: one line when all are intact, else DatasetError naming
    the damaged scans grouped by shard."""
    from brainjax.data.dataset import Dataset, DatasetError

    ds = Dataset(path, require_shards=False)
    damaged = ds.verify()
    n_shards = len({r["shard"] for r in ds.manifest})
    if not damaged:
        return f"verified: all {len(ds)} records in {n_shards} shards read back intact"
    by_shard: dict[str, list[str]] = {}
    for row in ds.manifest:
        if row["scan_id"] in damaged:
            by_shard.setdefault(row["shard"], []).append(row["scan_id"])
    parts = []
    for shard, scans in by_shard.items():
        reasons = sorted({damaged[s].split(": ", 1)[-1] for s in scans})
        shown = ", ".join(scans[:5]) + (f" and {len(scans) - 5} more" if len(scans) > 5 else "")
        parts.append(f"shards/{shard}: {shown} ({'; '.join(reasons[:2])})")
    raise DatasetError(f"{ds.path}: {len(damaged)} of {len(ds)} scans damaged: {' | '.join(parts)}; re-run the "
                       f"`brainjax prepare` command that made this dataset to rebuild them")


def main(args: argparse.Namespace) -> int:
    from brainjax.data.dataset import DatasetError

    try:
        report = verify(args.dir) if args.verify else None  # raises on damage, before any summary
        print(summary(args.dir, args.failures))
        if report:
            print(report)
    except DatasetError as err:  # a dataset still being prepared says so instead
        path = Path(args.dir)
        note = _in_progress(path) if path.is_dir() and not (path / "dataset.json").exists() else None
        if note:
            raise DatasetError(note) from err
        raise
    return 0
