"""``brainjax embed``: per-scan embeddings from a pretrained checkpoint, as an npz for use outside brainjax.

Every scan is cut into non-overlapping windows of the checkpoint's ``data.window`` TRs (the tail shorter
than a window is left out), each window goes through the encoder with no masking, and the window
embeddings are averaged per scan. The npz (no pickled objects) holds::

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


def embed_dataset(loaded, data: str, splits: tuple[str, ...], batch_size: int, *, tokcov: bool = True) -> dict:
    """Average the unmasked encoder embeddings of every window of each scan in ``splits``.

    tokcov: also average the token covariance readout (Fisher-z, over the dataset's real parcels); it is
    left out when a window holds fewer than 2 time patches (nothing to correlate over).
    Returns the npz arrays described in the module docstring (scans in manifest order).
    """
    import jax
    import numpy as np
    from flax import nnx

    from brainjax.data.dataset import Dataset
    from brainjax.data.pipeline import eval_batches, to_global
    from brainjax.eval.readouts import ScanMeans, upper_triangle
    from brainjax.eval.restore import encoder

    dataset = Dataset(data)
    model = encoder(loaded)  # a fine-tuned head model embeds with its backbone
    keys = ("signal", "parcel_mask", "coords", "tr")
    window = loaded.cfg.data.window
    tokcov = tokcov and window // loaded.cfg.model.patch >= 2
    embed = nnx.jit(lambda model, batch: _window_readouts(model, batch, tokcov))
    width = loaded.cfg.model.width
    sums = {"cls": np.zeros((len(dataset), width)), "mean": np.zeros((len(dataset), width))}
    counts = np.zeros(len(dataset), np.int64)
    n_parcels = dataset.atlas.n_parcels  # batches may pad beyond them (mixed atlases): those are dropped
    covariances = ScanMeans(np.float32)  # P(P-1)/2 per scan: float32 halves the memory of the sums
    devices = loaded.mesh.size
    batch_size = -(-batch_size // devices) * devices  # whole rows per device
    for split in [s for s in splits if dataset.indices(s)]:  # a dataset may lack a split (e.g. no test)
        for batch in eval_batches([data], split, window, batch_size, process_index=0, process_count=1):
            inputs = to_global({k: batch[k] for k in keys}, loaded.mesh)
            out = jax.device_get(embed(model, inputs))
            rows = np.flatnonzero(batch["valid"])
            for row in rows:
                scan = int(batch["scan"][row])
                sums["cls"][scan] += out["cls"][row]
                sums["mean"][scan] += out["mean"][row]
                counts[scan] += 1
            if tokcov:
                covariances.add(batch["scan"][rows], upper_triangle(out["tokcov"][rows], n_parcels))
    rows = np.flatnonzero(counts)
    if rows.size == 0:
        raise ValueError(f"{data}: no scan of splits {','.join(splits)} has a whole window of {window} TRs")
    manifest = dataset.manifest
    arrays = {"scan_id": np.array([manifest[i]["scan_id"] for i in rows]),
              "subject": np.array([manifest[i]["subject"] for i in rows]),
              "split": np.array([manifest[i]["split"] for i in rows]),
              "cls": (sums["cls"][rows] / counts[rows, None]).astype(np.float32),
              "mean": (sums["mean"][rows] / counts[rows, None]).astype(np.float32),
              "windows": counts[rows].astype(np.int32), "step": np.int64(loaded.step)}
    if tokcov:
        scans, means = covariances.means()
        if not np.array_equal(scans, rows):
            raise RuntimeError("embed_dataset: token covariance and embeddings averaged different scans")
        arrays["tokcov"] = means.astype(np.float32)
    return arrays


def _window_readouts(model, batch: dict, tokcov: bool) -> dict:
    """cls, mean [B, width] and optionally tokcov [B, P, P] of one batch (tokens never leave the device)."""
    from brainjax.eval.readouts import token_covariance

    out = model.embed(batch)
    readouts = {"cls": out["cls"], "mean": out["mean"]}
    if tokcov:
        readouts["tokcov"] = token_covariance(out["tokens"], batch["parcel_mask"])
    return readouts


def main(args: argparse.Namespace) -> int:
    import sys

    from brainjax.commands.args import write_npz
    from brainjax.data.dataset import SPLITS
    from brainjax.eval.restore import NoCheckpointError, load_for_eval

    splits = tuple(s for s in args.splits.split(",") if s)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        print(f"error: --splits {args.splits!r}: expected names from {SPLITS}", file=sys.stderr)
        return 2
    try:
        loaded = load_for_eval(args.workdir, args.step)
        arrays = embed_dataset(loaded, str(Path(args.data).resolve()), splits, args.batch,
                               tokcov=not args.no_tokcov)
    except (NoCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = write_npz(args.out, arrays)
    print(f"{len(arrays['scan_id'])} scans (step {loaded.step}, width {arrays['cls'].shape[1]}) -> {out}")
    return 0
