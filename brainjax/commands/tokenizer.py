"""``brainjax tokenizer``: train the fMRI-LM stage-1 neural tokenizer, and encode scans into its codes.

``brainjax tokenizer train`` is ``brainjax pretrain`` with the tokenizer's objective (default preset
``tokenizer``, work dir ``runs/tokenizer``): same trainer, sharding, checkpoints and resume.
Language alignment (:mod:`brainjax.nn.alignment`) is on when ``quantizer.domain_weight`` or
``quantizer.text_weight`` is > 0. ``--lm DIR`` names the language model (default: the embedded one) and sets
``quantizer.lm_width``; ``--lm`` alone turns on both terms at weight 0.1, except a weight given with ``--set``
(``--set quantizer.text_weight=0`` keeps the domain term only). The text term reads ``--descriptors``
(default DATA/descriptors/descriptors.jsonl, from ``brainjax describe``), which must exist.
``brainjax tokenizer encode`` writes every scan's codes (non-overlapping windows, tail left out) as an npz
(no pickled objects)::

    scan_id, subject, split   str [S]
    codes                     int32 [sum_s P_s x N_s]  all scans' codes, flattened one after another
    offsets                   int64 [S + 1]            scan s is codes[offsets[s]:offsets[s+1]]
    shape                     int64 [S, 2]             (parcels, tokens over time) of scan s
    codebook_size, step       int
    usage, perplexity         float                    over every code written
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train the neural tokenizer (fMRI-LM stage 1) or encode scans into its discrete codes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from brainjax.commands import pretrain

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train a tokenizer (rerun to resume)")
    pretrain.add_arguments(train)
    train.add_argument("--lm", help="local Hugging Face LM directory to align with; turns on both alignment losses "
                                    "at weight 0.1 unless --set quantizer.domain_weight/text_weight say otherwise")
    train.add_argument("--descriptors", help="descriptors.jsonl for the text alignment loss "
                                             "(default: DATA/descriptors/descriptors.jsonl)")
    train.set_defaults(preset="tokenizer", workdir="runs/tokenizer")
    encode = sub.add_parser("encode", help="write the codes of every scan as an npz")
    encode.add_argument("--workdir", required=True, help="the tokenizer work dir")
    encode.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    encode.add_argument("--out", required=True, help="output .npz")
    encode.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    encode.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: %(default)s)")
    encode.add_argument("--batch", type=int, default=16, help="windows per forward pass (default: %(default)s)")


def encode_dataset(loaded, data: str, splits: tuple[str, ...], batch_size: int) -> dict:
    """Codes of every whole window of every scan in ``splits``, concatenated over time per scan."""
    import jax
    import numpy as np
    from flax import nnx

    from brainjax.data.dataset import Dataset
    from brainjax.eval.inputs import split_windows

    dataset = Dataset(data)
    encode = nnx.jit(lambda m, b: m.encode(b)[0].codes)
    per_scan: dict[int, list] = {}
    for split in [s for s in splits if dataset.indices(s)]:  # a dataset may lack a split (e.g. no test)
        for host, batch in split_windows(loaded, data, split, batch_size):
            codes = np.asarray(jax.device_get(encode(loaded.model, batch)))
            for row in np.flatnonzero(host["valid"]):
                scan, parcels = int(host["scan"][row]), dataset.manifest[int(host["scan"][row])]["n_parcels"]
                per_scan.setdefault(scan, []).append((int(host["start"][row]), codes[row, :parcels]))
    if not per_scan:
        raise ValueError(f"{data}: no scan of splits {','.join(splits)} has a whole window")
    rows = sorted(per_scan)
    blocks = [np.concatenate([c for _, c in sorted(per_scan[s], key=lambda x: x[0])], axis=1) for s in rows]
    flat = np.concatenate([b.reshape(-1) for b in blocks]).astype(np.int32)
    size = loaded.model.codebook_size
    counts = np.bincount(flat, minlength=size) / flat.size
    nonzero = counts[counts > 0]
    manifest = dataset.manifest
    return {"scan_id": np.array([manifest[i]["scan_id"] for i in rows]),
            "subject": np.array([manifest[i]["subject"] for i in rows]),
            "split": np.array([manifest[i]["split"] for i in rows]),
            "codes": flat, "offsets": np.concatenate([[0], np.cumsum([b.size for b in blocks])]).astype(np.int64),
            "shape": np.array([b.shape for b in blocks], np.int64), "codebook_size": np.int64(size),
            "step": np.int64(loaded.step), "usage": np.float64((counts > 0).mean()),
            "perplexity": np.float64(np.exp(-(nonzero * np.log(nonzero)).sum()))}


DEFAULT_ALIGN_WEIGHT = 0.1  # of each alignment term that --lm turns on


def alignment_batches(args: argparse.Namespace):
    """The batch builder of the alignment inputs (:class:`~brainjax.lm.alignment_data.AlignmentBatches`), or None
    when alignment is off; appends the weights --lm implies and ``quantizer.lm_width`` to ``args.overrides``."""
    from brainjax.commands.pretrain import resolve_config
    from brainjax.data.dataset import Dataset
    from brainjax.lm.alignment_data import AlignmentBatches, lm_embedding, text_vectors
    from brainjax.lm.batches import load_descriptor_texts
    from brainjax.lm.runs import lm_dir_or_default

    named = {item.split("=", 1)[0].strip() for item in args.overrides}
    cfg = resolve_config(args)
    if args.lm:
        args.overrides = [*args.overrides, *(f"quantizer.{w}={DEFAULT_ALIGN_WEIGHT}"
                                             for w in ("domain_weight", "text_weight")
                                             if f"quantizer.{w}" not in named and getattr(cfg.quantizer, w) == 0)]
        cfg = resolve_config(args)
    domain, text = cfg.quantizer.domain_weight > 0, cfg.quantizer.text_weight > 0
    if not (domain or text):
        return None
    if domain and cfg.quantizer.word_samples < 1:
        raise ValueError(f"quantizer.word_samples must be >= 1 with the domain loss, got {cfg.quantizer.word_samples}")
    texts, paths = None, cfg.data.path.split(",")
    if text:  # checked before the LM loads: a missing file should fail fast
        if len(paths) > 1:
            raise ValueError("quantizer.text_weight > 0 reads one dataset's descriptors; --data lists several")
        descriptors = Path(args.descriptors or Path(paths[0]) / "descriptors" / "descriptors.jsonl")
        if not descriptors.exists():
            raise FileNotFoundError(f"quantizer.text_weight > 0 needs descriptor texts, but {descriptors} does not "
                                    f"exist: run `brainjax describe --data {paths[0]}`, pass --descriptors PATH, "
                                    f"or --set quantizer.text_weight=0")
        raw, _ = load_descriptor_texts(descriptors, Dataset(paths[0]).manifest)
    embedding, tokenizer = lm_embedding(lm_dir_or_default(args.lm))
    args.overrides = [*args.overrides, f"quantizer.lm_width={embedding.shape[1]}"]
    cfg = resolve_config(args)
    if text:
        texts = text_vectors(raw, tokenizer, embedding)
    return AlignmentBatches(embedding, texts, cfg.quantizer.word_samples if domain else 0, cfg.train.seed)


def main(args: argparse.Namespace) -> int:
    if args.action == "train":
        from brainjax.commands import pretrain
        from brainjax.commands.args import initialize_distributed
        from brainjax.config import ConfigError
        from brainjax.data.dataset import DatasetError

        initialize_distributed(args)  # before the alignment inputs touch a device
        try:
            build = alignment_batches(args)
        except (ValueError, FileNotFoundError, ConfigError, DatasetError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return pretrain.main(args, build)

    from brainjax.commands.args import write_npz
    from brainjax.data.dataset import SPLITS, DatasetError
    from brainjax.data.synthetic import default_dataset
    from brainjax.eval.restore import NoCheckpointError, load_for_eval

    splits = tuple(s for s in args.splits.split(",") if s)
    if not splits or any(s not in SPLITS for s in splits):
        print(f"error: --splits {args.splits!r}: expected names from {SPLITS}", file=sys.stderr)
        return 2
    data = str(Path(args.data).expanduser().resolve()) if args.data else str(default_dataset())
    try:
        loaded = load_for_eval(args.workdir, args.step)
        if loaded.cfg.objective != "tokenizer":
            raise ValueError(f"{args.workdir} holds a {loaded.cfg.objective} checkpoint, not a tokenizer")
        arrays = encode_dataset(loaded, data, splits, args.batch)
    except (NoCheckpointError, ValueError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = write_npz(args.out, arrays)
    print(f"{len(arrays['scan_id'])} scans, {arrays['codes'].size:,} codes (step {loaded.step}); codebook usage "
          f"{float(arrays['usage']):.1%} of {int(arrays['codebook_size'])}, perplexity "
          f"{float(arrays['perplexity']):.1f} -> {out}")
    return 0
