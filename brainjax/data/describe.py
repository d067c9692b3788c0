"""Describe every scan of a dataset: descriptors (:mod:`brainjax.data.descriptors`) plus generated text
(:mod:`brainjax.data.descriptor_text`), written as the corpus the language stages read.

Writes, atomically::

    OUT/descriptors.jsonl   one JSON object per scan, in manifest order:
                            scan_id, subject, split, features, z, text, facts
    OUT/cohort.json         the cohort statistics (mean, std per feature), reference, settings, n_train

Both are strict JSON: undefined numbers (NaN, e.g. a z-score with no cohort spread) are written as null.
The phrasing of scan ``i`` (its manifest index) is drawn with the integer seed
``SeedSequence([seed, i]).generate_state(1)[0]``, so each scan gets its own phrasing, reproducibly, and
adding scans to a dataset does not change the phrasing of the earlier ones.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from brainjax.data.dataset import Dataset
from brainjax.data.descriptor_text import describe_scan
from brainjax.data.descriptors import DescriptorSettings, describe_dataset
from brainjax.distributed import main_first
from brainjax.errors import UsageError
from brainjax.paths import atomic_write_text, strict_json, write_json

DESCRIPTORS_FILE = "descriptors.jsonl"


def phrasing_seed(seed: int, index: int) -> int:
    """The describe_scan seed of the scan at manifest ``index`` (see the module docstring)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _render(row: dict, seed: int, max_sentences: int, low_band: tuple[float, float]) -> tuple[str, list[dict]]:
    z = {k: math.nan if v is None else v for k, v in row["z"].items()}  # JSON keeps an undefined z as null
    return describe_scan(row["features"], z, seed=seed, max_sentences=max_sentences, low_band=low_band)


def rephrase(record: dict, seed: int, low_band: tuple[float, float] = DescriptorSettings.low_band) -> str:
    """The facts of a descriptors.jsonl ``record`` (same features, sizes and directions, same order) in
    sentence frames drawn with ``seed``: the same content as ``record["text"]``, in another phrasing.

    Raises ValueError when the record's features no longer give its facts (an edited record)."""
    facts = record.get("facts") or []
    text, drawn = _render(record, seed, max(len(facts), 1), low_band)
    if [(f["feature"], f["size"], f["direction"]) for f in drawn] != \
            [(f["feature"], f["size"], f["direction"]) for f in facts]:
        raise ValueError(f"descriptor record {record.get('scan_id')!r}: its features and z give other facts than "
                         "the record lists; re-run `brainjax describe`")
    return text


def descriptor_low_band(descriptors: str | os.PathLike) -> tuple[float, float]:
    """The low-frequency band (Hz) the descriptors at ``descriptors`` (a descriptors.jsonl) were made with, from
    the cohort.json beside it (the default band when there is none)."""
    cohort = Path(descriptors).parent / "cohort.json"
    if not cohort.exists():
        return DescriptorSettings.low_band
    try:
        low, high = json.loads(cohort.read_text())["settings"]["low_band"]
        return float(low), float(high)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{cohort}: no settings.low_band pair ({err})") from None


def describe_rows(rows: list[dict], manifest: list[dict], seed: int, max_sentences: int,
                  low_band: tuple[float, float]) -> list[dict]:
    """Add ``text`` and ``facts`` to each descriptor row (rows carry scan_id, features and z).

    Returns new dicts: scan_id, subject, split, features, z, text, facts.
    """
    index = {row["scan_id"]: i for i, row in enumerate(manifest)}
    out = []
    for row in rows:
        text, facts = _render(row, phrasing_seed(seed, index[row["scan_id"]]), max_sentences, low_band)
        out.append({"scan_id": row["scan_id"], "subject": row["subject"], "split": row["split"],
                    "features": row["features"], "z": row["z"], "text": text, "facts": facts})
    return out


def write_descriptors(data: str | os.PathLike, out: str | os.PathLike | None = None, density: float = 0.10,
                      seed: int = 0, max_sentences: int = 6) -> tuple[Path, list[dict], dict]:
    """Describe every scan of the dataset ``data`` into ``out`` (default ``DATA/descriptors``).

    Returns (output dir, described rows in manifest order, cohort statistics)."""
    if max_sentences < 1:
        raise UsageError(f"max_sentences must be at least 1, got {max_sentences}")
    dataset = Dataset(data)
    settings = DescriptorSettings(density=density, seed=seed)
    rows, cohort = describe_dataset(dataset, settings)
    described = describe_rows(rows, dataset.manifest, settings.seed, max_sentences, tuple(settings.low_band))
    out = Path(out) if out else Path(data) / "descriptors"
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(strict_json(row), allow_nan=False) for row in described]
    atomic_write_text(out / DESCRIPTORS_FILE, "".join(line + "\n" for line in lines))
    write_json(out / "cohort.json", cohort)
    return out, described, cohort


def ensure_descriptors(data: str | os.PathLike) -> Path:
    """``DATA/descriptors/descriptors.jsonl``, described with the default settings first when it is missing
    (by process 0 of a multi-host run; the others wait and read it)."""
    path = Path(data) / "descriptors" / DESCRIPTORS_FILE

    def describe_once() -> Path:
        if not path.exists():
            print(f"no descriptors at {path}: describing the dataset first (as `brainjax describe --data {data}`)")
            write_descriptors(data)
        return path
    return main_first("descriptors", describe_once, lambda: path)
