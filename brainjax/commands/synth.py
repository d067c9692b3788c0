"""``brainjax synth``: write a synthetic dataset (documented generative model over a real atlas).

The model, its phenotype effects and its variance budget are described in the README ("The synthetic dataset").
"""

from __future__ import annotations

import argparse

from brainjax.commands.args import split_fractions

HELP = "generate a synthetic fMRI dataset (network dynamics + HRF + noise, with age/sex/diagnosis effects)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from brainjax.data.synthetic import DEFAULT_SYNTH as d  # light: numpy only

    parser.add_argument("--out", required=True, help="new dataset directory")
    parser.add_argument("--subjects", type=int, default=d.subjects, help="default: %(default)s")
    parser.add_argument("--scans-per-subject", type=int, default=d.scans_per_subject, help="default: %(default)s")
    parser.add_argument("--timepoints", type=int, default=d.timepoints, help="TRs per scan (default: %(default)s)")
    parser.add_argument("--tr", type=float, default=d.tr, help="repetition time in seconds (default: %(default)s)")
    parser.add_argument("--atlas", default=d.atlas, help="atlas name for load_atlas (default: %(default)s)")
    parser.add_argument("--sites", type=int, default=d.sites, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    parser.add_argument("--split-fractions", type=split_fractions, default=(0.8, 0.1, 0.1),
                        help="train,val,test fractions of subjects (default: 0.8,0.1,0.1)")


def main(args: argparse.Namespace) -> int:
    import time

    from brainjax.data.synthetic import SynthConfig, synthesize

    start = time.perf_counter()
    cfg = SynthConfig(subjects=args.subjects, scans_per_subject=args.scans_per_subject,
                      timepoints=args.timepoints, tr=args.tr, atlas=args.atlas, sites=args.sites, seed=args.seed)
    dataset = synthesize(args.out, cfg, args.split_fractions)
    shares = dataset.atlas.extra["synthetic"]["variance_fractions"]
    counts = {s: len(dataset.indices(s)) for s in ("train", "val", "test")}
    print(f"wrote {len(dataset)} scans ({dataset.atlas.n_parcels} parcels x {cfg.timepoints} TRs) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s; splits {counts}; variance: network "
          f"{shares['network']:.2f}, local {shares['local']:.2f}, noise {shares['noise']:.2f}")
    return 0
