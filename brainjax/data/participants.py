"""BIDS ``participants.tsv``: phenotypes per subject, checked for repeated subjects and for rows that match no
scan."""

from __future__ import annotations

import csv
import os

from brainjax.data.scans import ScanInput
from brainjax.errors import InputError


def load_participants(path: str | os.PathLike) -> dict[str, dict]:
    """BIDS ``participants.tsv`` → {subject label (without ``sub-``): {column: value}}; ``n/a`` dropped.

    A subject on two rows is an error naming the lines (which row should win is not ours to guess).
    """
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = [(reader.line_num, row) for row in reader]
    if not rows or "participant_id" not in rows[0][1]:
        raise InputError(f"{path}: expected a tab-separated table with a participant_id column")
    table, lines = {}, {}
    for line, row in rows:
        written = (row.pop("participant_id") or "").strip()
        subject = written[4:] if written.startswith("sub-") else written
        lines.setdefault(subject, []).append((line, written))
        table[subject] = {k: v.strip() for k, v in row.items() if k and v is not None and v.strip() not in ("n/a", "")}
    repeated = [found for found in lines.values() if len(found) > 1]
    if repeated:
        shown = "; ".join(f"{found[0][1]!r} on lines {', '.join(str(n) for n, _ in found)}" for found in repeated[:5])
        more = f"; and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise InputError(f"{path}: {len(repeated)} participants appear on more than one row: {shown}{more}; "
                         f"keep one row per participant")
    return table


def participants_mismatch(table: dict[str, dict], scans: list[ScanInput], path) -> str | None:
    """A warning when participants of ``table`` match no scan subject (their rows would be ignored), else None."""
    subjects = {s.subject for s in scans}
    unmatched = sorted(set(table) - subjects)
    if not unmatched:
        return None
    missing = sorted(subjects - set(table))
    text = (f"{path}: {len(unmatched)} of {len(table)} participants match no scan subject "
            f"({_examples(unmatched)})")
    if missing:
        text += (f"; {len(missing)} of {len(subjects)} scanned subjects have no row, their phenotypes are n/a "
                 f"({_examples(missing)})")
    if len(unmatched) == len(table):
        text += "; participant_id should be sub-<label> with the subject label of the scan file names"
    return text


def _examples(items: list[str], limit: int = 3) -> str:
    return "e.g. " + ", ".join(repr(i) for i in items[:limit]) + (" ..." if len(items) > limit else "")
