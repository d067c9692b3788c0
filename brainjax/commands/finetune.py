"""``brainjax finetune``: train a head for one phenotype, or the decoder for forecasting, from a pretrained run.

``--task regress:PHENO`` / ``classify:PHENO``: a head on the encoder's CLS (or mean) embedding predicts the
manifest column PHENO from each window (``--freeze-backbone`` trains the head only). ``--task forecast``:
the masked autoencoder keeps training with future masking (the last ``--forecast-patches`` patches of every
parcel hidden), so its decoder learns to forecast. Both start from the pretrained checkpoint, run through the
same Trainer (sharding, checkpoints, resume, logs) and write a separate work dir that ``brainjax evaluate``
reads. The pretrained run's model, window and optimizer settings are kept; ``--set`` changes others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

from brainjax.commands.args import add_distributed_arguments, initialize_distributed
from brainjax.paths import workdir_path

HELP = "fine-tune a pretrained checkpoint: a phenotype head (regress/classify) or forecasting"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the pretraining work dir to start from")
    parser.add_argument("--task", required=True, metavar="regress:PHENO|classify:PHENO|forecast")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--out", help="fine-tuning work dir (default: WORKDIR/finetune-TASK[-PHENO])")
    parser.add_argument("--step", type=int, help="pretrained checkpoint step (default: the latest)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="embedding the head reads")
    parser.add_argument("--forecast-patches", type=int, default=1,
                        help="patches forecast at the end of each window (forecast task; default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of the pretrained run's config (repeatable)")
    add_distributed_arguments(parser)


def parse_task(text: str) -> tuple[str, str]:
    """``"regress:age"`` -> ("regress", "age"); ``"forecast"`` -> ("forecast", "")."""
    from brainjax.train.finetune import FINETUNE_TASKS, HEAD_TASKS

    kind, _, target = text.partition(":")
    if kind not in FINETUNE_TASKS or (kind in HEAD_TASKS) != bool(target):
        raise ValueError(f"--task {text!r}: expected regress:PHENO, classify:PHENO or forecast")
    return kind, target


def finetune_config(pretrained, args: argparse.Namespace, data: str, dataset) -> object:
    """The fine-tuning run's Config: the pretrained one + finetune section, steps, data, mask for forecasting."""
    from brainjax.config import FinetuneConfig, MaskConfig, override
    from brainjax.train.finetune import describe_target

    cfg = pretrained.cfg
    kind, target = parse_task(args.task)
    extra = describe_target(dataset, kind, target) if kind != "forecast" else {}
    finetune = FinetuneConfig(task=kind, target=target, pool=args.pool, freeze_backbone=args.freeze_backbone,
                              init_from=str(workdir_path(args.workdir)), init_step=pretrained.step, **extra)
    cfg = dataclasses.replace(
        cfg, name=f"{cfg.name}-finetune-{kind}{'-' + target if target else ''}", finetune=finetune,
        data=dataclasses.replace(cfg.data, path=data),
        train=dataclasses.replace(cfg.train, steps=args.steps, eval_every=max(1, min(cfg.train.eval_every,
                                                                                       args.steps)),
                                  checkpoint_every=max(1, min(cfg.train.checkpoint_every, args.steps))))
    if kind == "forecast":
        cfg = dataclasses.replace(cfg, mask=MaskConfig(strategy="future", future_patches=args.forecast_patches))
    return override(cfg, args.overrides)


def main(args: argparse.Namespace) -> int:
    initialize_distributed(args)  # first: nothing may touch a device before it
    import jax

    from brainjax.config import ConfigError
    from brainjax.data.dataset import Dataset, DatasetError
    from brainjax.data.pipeline import LoaderSpec, MappedLoader, eval_batches, make_loader, mapped_passes, to_global
    from brainjax.data.synthetic import default_dataset
    from brainjax.eval.restore import NoCheckpointError, load_for_eval, warm_start_from
    from brainjax.train.checkpoint import CheckpointMismatchError
    from brainjax.train.finetune import HEAD_TASKS, label_table, task_for_config, with_labels
    from brainjax.train.trainer import NonFiniteLossError, Trainer

    data = str(Path(args.data).expanduser().resolve()) if args.data else str(default_dataset())
    try:
        kind, target = parse_task(args.task)
        dataset = Dataset(data)
        pretrained = load_for_eval(args.workdir, args.step)
        if pretrained.cfg.finetune.task:
            raise ValueError(f"{args.workdir} is itself a fine-tuning run ({pretrained.cfg.finetune.task}); "
                             f"start from a pretraining work dir")
        cfg = finetune_config(pretrained, args, data, dataset)
    except (ValueError, NoCheckpointError, DatasetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = f"finetune-{kind}{'-' + target if target else ''}"
    out = workdir_path(args.out) if args.out else workdir_path(args.workdir) / name  # local or gs://
    window = cfg.data.window
    loader = make_loader(LoaderSpec(paths=(data,), split="train", window=window, batch_size=cfg.data.batch_size,
                                    stride=cfg.data.stride, seed=cfg.train.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count()))

    def validation():
        return eval_batches((data,), "val", window, cfg.data.batch_size)

    task = task_for_config(cfg, loader.n_parcels)
    if kind in HEAD_TASKS:
        labels, valid = label_table(dataset, cfg.finetune)
        label = functools.partial(with_labels, labels=labels, valid=valid)
        loader, validation = MappedLoader(loader, label), mapped_passes(validation, label)
    # load_for_eval put the backbone on every local device (cfg.mesh = data -1): the run uses that mesh
    trainer = Trainer(cfg, task, out, loader, validation, to_global, mesh=pretrained.mesh,
                      warm_start=warm_start_from(pretrained))
    try:
        trainer.run()
    except (CheckpointMismatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if jax.process_index() == 0:
        print(f"fine-tuned {args.task} from {args.workdir} (step {pretrained.step}) -> {out}; "
              f"evaluate with `brainjax evaluate --workdir {out}`")
    return 0
