"""``brainjax embed``: per-scan embeddings from a pretrained checkpoint, as an npz for use outside brainjax.

Every scan is cut into non-overlapping windows of the checkpoint's ``data.window`` TRs (the tail shorter
than a window is left out), each window goes through the encoder with no masking, and the window
embeddings are averaged per scan (:func:`brainjax.eval.embeddings.embed_dataset`). The npz (no pickled objects) holds::

    scan_id, subject, split   str [N]
    cls                       float32 [N, width]  CLS token
    mean                      float32 [N, width]  mean over the scan's tokens
    tokcov                    float32 [N, P(P-1)/2]  token covariance readout (Fisher-z correlation of the
                                                  parcels' token trajectories, upper triangle; see
                                                  brainjax.eval.readouts), absent with --no-tokcov or
                                                  when a window holds a single time patch
    windows                   int32 [N]           windows averaged
    step                      int                 checkpoint step
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("per-scan embeddings (CLS, mean-pooled, token covariance) from a pretrained checkpoint, "
        "written as an npz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the pretraining work dir (its checkpoints/)")
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--no-tokcov", action="store_true",
                        help="leave out the token covariance readout (P(P-1)/2 floats per scan)")


def main(args: argparse.Namespace) -> int:
    from brainjax.commands.args import write_npz
    from brainjax.data.dataset import SPLITS
    from brainjax.errors import UsageError
    from brainjax.eval.embeddings import embed_dataset
    from brainjax.run import load_model

    splits = tuple(s for s in args.splits.split(",") if s)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UsageError(f"--splits {args.splits!r}: expected names from {SPLITS}")
    loaded = load_model(args.workdir, args.step, objective="mae")  # BrainLM runs and their heads
    arrays = embed_dataset(loaded, str(Path(args.data).resolve()), splits, args.batch, tokcov=not args.no_tokcov)
    out = write_npz(args.out, arrays)
    print(f"{len(arrays['scan_id'])} scans (step {loaded.step}, width {arrays['cls'].shape[1]}) -> {out}")
    return 0
