"""``brainjax pretrain``: train the BrainLM masked autoencoder; rerunning resumes from the latest checkpoint.

Defaults: ``--preset default``, ``--workdir runs/pretrain``, and without ``--data`` the embedded synthetic
dataset (built once and cached). The work dir receives ``checkpoints/``, ``metrics.jsonl``, ``tb/``
(TensorBoard), ``config.json`` and ``reconstruction.png``.

Exit codes: 0 finished, or stopped by SIGTERM after saving a checkpoint (rerun to resume); 2 the work dir's
checkpoint was trained with another model configuration; 3 non-finite loss with ``train.nonfinite=stop``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from brainjax.commands.args import add_distributed_arguments, initialize_distributed

HELP = "pretrain a BrainLM masked autoencoder (rerun to resume from the work dir's latest checkpoint)"
DEFAULT_WORKDIR = "runs/pretrain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset dir(s), comma-separated (default: the embedded synthetic dataset)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="default", help="experiments/NAME.py preset (default: %(default)s)")
    source.add_argument("--config", help="a Python file defining config()")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                        help="checkpoints, logs and figures go here; an existing run here is resumed "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (overrides train.steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.width=512 (repeatable)")
    add_distributed_arguments(parser)


def resolve_config(args: argparse.Namespace):
    """Preset/file + overrides + --steps/--data, with ``data.path`` resolved to absolute directories."""
    from brainjax.config import load_config, override

    cfg = override(load_config(args.config or args.preset), args.overrides)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    path = args.data if args.data else cfg.data.path
    if not path:
        from brainjax.data.synthetic import default_dataset
        path = str(default_dataset())
    path = ",".join(str(Path(p).expanduser().resolve()) for p in path.split(",") if p)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=path))


def main(args: argparse.Namespace, build=None) -> int:
    """Train; ``build(batch) -> batch`` (optional) adds entries to every training and validation batch."""
    import jax

    initialize_distributed(args)  # first: nothing may touch a device before it

    from brainjax.data.pipeline import LoaderSpec, eval_batches, make_loader, to_global
    from brainjax.train.checkpoint import CheckpointMismatchError
    from brainjax.train.finetune import task_for_config
    from brainjax.train.trainer import NonFiniteLossError, Trainer

    cfg = resolve_config(args)
    paths = tuple(cfg.data.path.split(","))
    loader = make_loader(LoaderSpec(
        paths=paths, split="train", window=cfg.data.window, batch_size=cfg.data.batch_size,
        stride=cfg.data.stride, seed=cfg.train.seed, weights=cfg.data.mix_weights, workers=cfg.data.workers,
        max_parcels=cfg.model.max_parcels if len(paths) > 1 else None,  # mixed atlases pad to one size
        process_index=jax.process_index(), process_count=jax.process_count()))
    n_parcels = loader.n_parcels

    def validation():
        return eval_batches(paths, "val", cfg.data.window, cfg.data.batch_size, max_parcels=n_parcels)

    if build is not None:  # e.g. the tokenizer's language-alignment inputs (brainjax.lm.alignment_data)
        from brainjax.data.pipeline import MappedLoader, mapped_passes
        loader, validation = MappedLoader(loader, build), mapped_passes(validation, build)

    if jax.process_index() == 0 and cfg.objective == "mae" and not cfg.finetune.task:
        from brainjax.commands.plan import memory_report
        try:  # the expected memory per device, before anything is compiled
            print(memory_report(cfg, n_parcels, jax.device_count(), jax.devices()[0].platform), flush=True)
        except ValueError:  # a config the trainer refuses: it says why below
            pass
    task = task_for_config(cfg, n_parcels)  # the preset's objective: BrainLM MAE or the neural tokenizer
    trainer = Trainer(cfg, task, args.workdir, loader, validation, to_global)
    try:
        trainer.run()
    except CheckpointMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0
