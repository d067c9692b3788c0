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
from pathlib import Path

from brainjax.commands.args import add_training_arguments, initialize_distributed, resolve_config, write_npz
from brainjax.errors import ConfigError

HELP = "train the neural tokenizer (fMRI-LM stage 1) or encode scans into its discrete codes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train a tokenizer (rerun to resume)")
    add_training_arguments(train, preset="tokenizer", workdir="runs/tokenizer")
    train.add_argument("--lm", help="local Hugging Face LM directory to align with; turns on both alignment losses "
                                    "at weight 0.1 unless --set quantizer.domain_weight/text_weight say otherwise")
    train.add_argument("--descriptors", help="descriptors.jsonl for the text alignment loss "
                                             "(default: DATA/descriptors/descriptors.jsonl)")
    encode = sub.add_parser("encode", help="write the codes of every scan as an npz")
    encode.add_argument("--workdir", required=True, help="the tokenizer work dir")
    encode.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    encode.add_argument("--out", required=True, help="output .npz")
    encode.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    encode.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: %(default)s)")
    encode.add_argument("--batch", type=int, default=16, help="windows per forward pass (default: %(default)s)")


DEFAULT_ALIGN_WEIGHT = 0.1  # of each alignment term that --lm turns on


def alignment_batches(args: argparse.Namespace):
    """The batch builder of the alignment inputs (:class:`~brainjax.lm.alignment_data.AlignmentBatches`), or None
    when alignment is off; appends the weights --lm implies and ``quantizer.lm_width`` to ``args.overrides``."""
    from brainjax.data.dataset import Dataset
    from brainjax.lm.alignment_data import AlignmentBatches, lm_embedding, text_vectors
    from brainjax.lm.batches import load_descriptor_texts
    from brainjax.lm.stages import lm_dir_or_default

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
        raise ConfigError(f"quantizer.word_samples must be >= 1 with the domain loss, got {cfg.quantizer.word_samples}")
    texts, paths = None, cfg.data.path.split(",")
    if text:  # checked before the LM loads: a missing file should fail fast
        if len(paths) > 1:
            raise ConfigError("quantizer.text_weight > 0 reads one dataset's descriptors; --data lists several")
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
        initialize_distributed(args)  # before anything touches a device (the alignment inputs do)
    from brainjax.data.dataset import SPLITS
    from brainjax.data.synthetic import data_or_default
    from brainjax.errors import UsageError
    from brainjax.eval.embeddings import encode_dataset
    from brainjax.eval.figures import reconstruction_hook
    from brainjax.run import launch, load_model

    if args.action == "train":
        build = alignment_batches(args)  # may add the alignment weights and lm_width to args.overrides
        launch(resolve_config(args), args.workdir, build=build, finish=reconstruction_hook)
        return 0
    splits = tuple(s for s in args.splits.split(",") if s)
    if not splits or any(s not in SPLITS for s in splits):
        raise UsageError(f"--splits {args.splits!r}: expected names from {SPLITS}")
    loaded = load_model(args.workdir, args.step, objective="tokenizer")
    arrays = encode_dataset(loaded, data_or_default(args.data), splits, args.batch)
    out = write_npz(args.out, arrays)
    print(f"{len(arrays['scan_id'])} scans, {arrays['codes'].size:,} codes (step {loaded.step}); codebook usage "
          f"{float(arrays['usage']):.1%} of {int(arrays['codebook_size'])}, perplexity "
          f"{float(arrays['perplexity']):.1f} -> {out}")
    return 0
