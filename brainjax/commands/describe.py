"""``brainjax describe``: imaging descriptors and a plain-English description of every scan of a dataset.

fMRI-LM style language alignment needs text about each scan; none exists, so it is generated from the
scan's descriptors (:mod:`brainjax.data.descriptors`: connectivity, graph, gradient and spectral numbers
with z-scores against the training cohort) by :mod:`brainjax.data.descriptor_text`; :mod:`brainjax.data.describe`
writes ``OUT/descriptors.jsonl`` and ``OUT/cohort.json`` (strict JSON, atomically; see its docstring for the
format and the per-scan phrasing seeds).
"""

from __future__ import annotations

import argparse

HELP = "per-scan imaging descriptors and generated text describing each scan, written as JSON lines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--out", help="output directory (default: DATA/descriptors)")
    parser.add_argument("--density", type=float, default=0.10,
                        help="share of strongest connections kept for the graph measures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="descriptor and phrasing seed (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=6, help="sentences per scan (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from brainjax.data.describe import write_descriptors
    from brainjax.data.synthetic import data_or_default

    out, described, cohort = write_descriptors(data_or_default(args.data), args.out, density=args.density,
                                               seed=args.seed, max_sentences=args.max_sentences)
    n_features = len(described[0]["features"]) if described else 0
    print(f"{len(described)} scans, {n_features} features each (cohort of {cohort.get('n_train')} training scans) "
          f"-> {out}")
    if described:
        print(f"{described[0]['scan_id']}: {described[0]['text']}")
    return 0
