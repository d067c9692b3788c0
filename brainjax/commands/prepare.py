"""``brainjax prepare``: turn fMRI scans into a brainjax dataset (parcel series, manifest, splits, statistics).

Inputs are files or directories (searched recursively): 4-D NIfTI volumes, left/right surface series
(GIfTI ``.func.gii`` or MGZ, paired by ``hemi-L``/``hemi-R`` or ``.lh.``/``.rh.``), CIFTI-2 dense series
(``.dtseries.nii``, with an fs_LR atlas such as ``schaefer400``) and ready parcel tables (.npy/.csv/.tsv,
T x P). BIDS/fMRIPrep names and HCP folders (``SUBJECT/MNINonLinear/Results/...``) give subject, session and
the scan id.

Defaults, chosen for BrainLM-style pretraining (see :mod:`brainjax.data.clean` for the reasoning): atlas
``seitzman300`` spheres; linear detrend; 0.01 Hz high-pass, no low-pass; 9-parameter confounds (6 motion, WM,
CSF, global signal) from an fMRIPrep/brainspace confounds table beside the scan when there is one; per-scan
z-scoring; scans shorter than 100 TRs fail QC; every scan must share one TR unless ``--target-tr`` resamples.

Partial coverage: a parcel that is empty (no voxel/vertex inside the data), non-finite or constant in a scan
is missing there. A scan missing at most ``--max-missing-parcels`` of the parcels (default 5 %) is kept: the
parcels are stored as 0, listed in manifest.tsv (``missing_parcels``, shown by ``brainjax info``) and masked
out of that scan's training batches, losses, statistics and FC features; a scan missing more fails, naming
them. ``--strict`` stops at the first failed scan and at the first scan with any missing parcel.

Re-running the same command resumes (finished scans are skipped) and rebuilds missing or damaged shards;
cluster jobs split the work with ``--shard I/N`` and the job that completes the last part finalizes the
dataset. Two runs of the same shard at once are refused (``OUT/.lock-part-I-of-N``). Exit codes: 0 done (or
waiting for other shards), 1 a scan failed (or missed a parcel) under ``--strict``, 2 bad arguments or inputs,
or the shard is being prepared by another run.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from brainjax.commands.args import split_fractions

HELP = "prepare a dataset from NIfTI / surface / parcel-series scans (resumable, shardable over jobs)"


def _optional_float(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "0", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'none', got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.05 = 5 %), got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"need 0 <= I < N in I/N, got {text!r}")
    return index, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="scan files or directories (searched recursively)")
    parser.add_argument("--out", required=True, help="dataset directory to create or resume")
    atlas = parser.add_argument_group("atlas")
    atlas.add_argument("--atlas", default="seitzman300",
                       help="seitzman300 | dosenbach160 | power264 | fsaverage5-N | schaeferN | vosdewaelN "
                            "(fs_LR 32k: CIFTI, GIfTI; NAME+subcortex with --mesh REF.dtseries.nii) | a file "
                            "(default: %(default)s)")
    atlas.add_argument("--labels", help="label table for an atlas image (names, networks)")
    atlas.add_argument("--mesh", help="surface mesh of a surface atlas; for NAME+subcortex a CIFTI dense file "
                                      "whose subcortical structures become parcels")
    clean = parser.add_argument_group("cleaning")
    clean.add_argument("--tr", type=float, help="repetition time in seconds for every scan (overrides headers)")
    clean.add_argument("--target-tr", type=_optional_float, help="resample every scan to this TR (seconds)")
    clean.add_argument("--detrend", action=argparse.BooleanOptionalAction, default=True,
                       help="remove mean and linear trend (default: on)")
    clean.add_argument("--high-pass", type=_optional_float, default=0.01,
                       help="high-pass cut-off in Hz, 'none' = off (default: %(default)s)")
    clean.add_argument("--low-pass", type=_optional_float, default=None,
                       help="low-pass cut-off in Hz, e.g. 0.1 (default: off)")
    clean.add_argument("--confounds", default="auto",
                       help="auto (9 parameters where named, else every column) | none | COL1,COL2,... "
                            "(default: %(default)s)")
    clean.add_argument("--standardize", choices=("zscore", "psc", "none"), default="zscore",
                       help="per-scan scaling of each parcel (default: %(default)s)")
    clean.add_argument("--min-length", type=int, default=100, help="minimum TRs after resampling (default: 100)")
    clean.add_argument("--max-missing-parcels", type=_fraction, default=0.05, metavar="FRACTION",
                       help="a scan may miss (empty, NaN or constant) at most this fraction of the parcels: they "
                            "are stored as 0, listed in manifest.tsv and masked out for that scan; more fails the "
                            "scan; 0 = any missing parcel fails it (default: %(default)s)")
    data = parser.add_argument_group("dataset")
    data.add_argument("--participants", help="BIDS participants.tsv (default: one at the top of an INPUT dir)")
    data.add_argument("--split-fractions", type=split_fractions, default=(0.8, 0.1, 0.1),
                      help="train,val,test fractions of subjects (default: 0.8,0.1,0.1)")
    data.add_argument("--seed", type=int, default=0, help="seed of the subject split (default: 0)")
    run = parser.add_argument_group("execution")
    run.add_argument("--workers", type=int, default=1, help="processes (default: 1 = this process)")
    run.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                     help="process every N-th scan starting at I (cluster jobs; default: 0/1)")
    run.add_argument("--strict", action="store_true",
                     help="stop (exit 1) at the first failed scan instead of skipping it, and at the first scan "
                          "with any missing parcel instead of keeping it masked (as before partial coverage)")
    run.add_argument("--finalize", action="store_true",
                     help="rewrite manifest, splits and statistics even if nothing changed (needs all parts; "
                          "after a sharded run give the same N: --shard 0/N --finalize)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _print_scans(label: str, scans: list[dict], where: str, limit: int = 20) -> None:
    """One line per scan (file: reason), the first ``limit``; ``where`` tells where the rest are listed."""
    for scan in scans[:limit]:
        print(f"  {label} {scan['file']}: {scan['reason']}")
    if len(scans) > limit:
        print(f"  ... {len(scans) - limit} more (see {where} once finalized)")


def main(args: argparse.Namespace) -> int:
    from brainjax.data.clean import CleanOptions, ScanError
    from brainjax.data.prepare import PrepareOptions, PrepareWarning, prepare

    caught: list = []
    try:
        options = PrepareOptions(
            atlas=args.atlas, labels=args.labels, mesh=args.mesh, tr=args.tr, confounds=args.confounds,
            min_length=args.min_length, max_missing_parcels=args.max_missing_parcels,
            clean=CleanOptions(detrend=args.detrend, high_pass=args.high_pass, low_pass=args.low_pass,
                               standardize=args.standardize, target_tr=args.target_tr))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrepareWarning)
            result = prepare(args.inputs, args.out, options, shard=args.shard, workers=args.workers,
                             strict=args.strict, force_finalize=args.finalize, split_fractions=args.split_fractions,
                             seed=args.seed, participants=args.participants, progress=not args.quiet)
    except ScanError as err:  # --strict: a scan failed (exit 1, as documented); other bad input exits 2
        print(f"brainjax prepare: {err}", file=sys.stderr)
        return 1
    finally:  # prepare's own warnings as one line each, also when it stops with an error
        for item in caught:
            if issubclass(item.category, PrepareWarning):
                print(f"warning: {item.message}", file=sys.stderr)
            else:
                warnings.showwarning(item.message, item.category, item.filename, item.lineno)
    index, count = args.shard
    for shard, reason in result.repaired.items():
        print(f"rebuilt shard {shard} ({reason})")
    print(f"shard {index}/{count}: {result.n_mine} of {result.n_scans} scans; processed {result.processed}, "
          f"already staged {result.skipped}, failed {len(result.failures)} ({result.seconds:.1f} s)")
    _print_scans("FAILED", result.failures, f"{args.out}/failures.tsv")
    if result.partial:
        print(f"kept {len(result.partial)} scans with missing parcels (masked for those scans; manifest.tsv "
              f"column missing_parcels):")
        _print_scans("PARTIAL", result.partial, f"`brainjax info {args.out}`")
    if result.finalized:
        print(f"dataset ready: {args.out} (inspect with `brainjax info {args.out}`)")
    elif not result.missing_parts:
        print(f"dataset ready: {args.out} (already finalized from these parts)")
    elif result.missing_parts:
        print(f"waiting for parts {result.missing_parts} of {count}; the last job to finish finalizes")
    return 0
