"""``brainjax describe``: imaging descriptors and a plain-English description of every scan of a dataset.

fMRI-LM style language alignment needs text about each scan; none exists, so it is generated from the
scan's descriptors (:mod:`brainjax.data.descriptors`: connectivity, graph, gradient and spectral numbers
with z-scores against the training cohort) by :mod:`brainjax.data.descriptor_text`. Writes, atomically::

    OUT/descriptors.jsonl   one JSON object per scan, in manifest order:
                            scan_id, subject, split, features, z, text, facts
    OUT/cohort.json         the cohort statistics (mean, std per feature), reference, settings, n_train

Both are strict JSON: undefined numbers (NaN, e.g. a z-score with no cohort spread) are written as null.
The phrasing of scan ``i`` (its manifest index) is drawn with the integer seed
``SeedSequence([seed, i]).generate_state(1)[0]``, so each scan gets its own phrasing, reproducibly, and
adding scans to a dataset does not change the phrasing of the earlier ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

HELP = "per-scan imaging descriptors and generated text describing each scan, written as JSON lines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--out", help="output directory (default: DATA/descriptors)")
    parser.add_argument("--density", type=float, default=0.10,
                        help="share of strongest connections kept for the graph measures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="descriptor and phrasing seed (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=6, help="sentences per scan (default: %(default)s)")


def strict(value):
    """``value`` with every non-finite float replaced by None and tuples by lists, so ``allow_nan=False`` holds."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def phrasing_seed(seed: int, index: int) -> int:
    """The describe_scan seed of the scan at manifest ``index`` (see the module docstring)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def describe_rows(rows: list[dict], manifest: list[dict], seed: int, max_sentences: int,
                  low_band: tuple[float, float]) -> list[dict]:
    """Add ``text`` and ``facts`` to each descriptor row (rows carry scan_id, features and z).

    Returns new dicts: scan_id, subject, split, features, z, text, facts.
    """
    from brainjax.data.descriptor_text import describe_scan

    index = {row["scan_id"]: i for i, row in enumerate(manifest)}
    out = []
    for row in rows:
        z = {k: math.nan if v is None else v for k, v in row["z"].items()}
        text, facts = describe_scan(row["features"], z, seed=phrasing_seed(seed, index[row["scan_id"]]),
                                    max_sentences=max_sentences, low_band=low_band)
        out.append({"scan_id": row["scan_id"], "subject": row["subject"], "split": row["split"],
                    "features": row["features"], "z": row["z"], "text": text, "facts": facts})
    return out


def main(args: argparse.Namespace) -> int:
    from brainjax.data.dataset import Dataset
    from brainjax.data.descriptors import DescriptorSettings, describe_dataset
    from brainjax.data.synthetic import default_dataset

    if args.max_sentences < 1:
        print(f"error: --max-sentences must be at least 1, got {args.max_sentences}", file=sys.stderr)
        return 2
    try:
        data = Path(args.data) if args.data else default_dataset()
        dataset = Dataset(data)
        settings = DescriptorSettings(density=args.density, seed=args.seed)
        rows, cohort = describe_dataset(dataset, settings)
        described = describe_rows(rows, dataset.manifest, settings.seed, args.max_sentences,
                                  tuple(settings.low_band))
    except (ValueError, FileExistsError) as err:  # DatasetError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else data / "descriptors"
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(strict(row), allow_nan=False) for row in described]
    _write_atomic(out / "descriptors.jsonl", "".join(line + "\n" for line in lines))
    _write_atomic(out / "cohort.json", json.dumps(strict(cohort), allow_nan=False, indent=1) + "\n")
    n_features = len(described[0]["features"]) if described else 0
    print(f"{len(described)} scans, {n_features} features each (cohort of {cohort.get('n_train')} training scans) "
          f"-> {out}")
    if described:
        print(f"{described[0]['scan_id']}: {described[0]['text']}")
    return 0
