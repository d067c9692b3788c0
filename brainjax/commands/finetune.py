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

from brainjax.commands.args import add_distributed_arguments, add_override_argument, initialize_distributed
from brainjax.errors import UsageError

HELP = "fine-tune a pretrained checkpoint: a phenotype head (regress/classify) or forecasting"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the pretraining work dir to start from")
    parser.add_argument("--task", required=True, metavar="regress:PHENO|classify:PHENO|forecast")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--out", help="fine-tuning work dir (default: WORKDIR/finetune-TASK[-PHENO]; required when "
                                      "--workdir is an export directory)")
    parser.add_argument("--step", type=int, help="pretrained checkpoint step (default: the latest)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="embedding the head reads")
    parser.add_argument("--forecast-patches", type=int, default=1,
                        help="patches forecast at the end of each window (forecast task; default: %(default)s)")
    add_override_argument(parser, "optim.base_lr=1e-4", " on top of the pretrained run's config")
    add_distributed_arguments(parser)


def parse_task(text: str) -> tuple[str, str]:
    """``"regress:age"`` -> ("regress", "age"); ``"forecast"`` -> ("forecast", "")."""
    from brainjax.tasks.head import FINETUNE_TASKS, HEAD_TASKS

    kind, _, target = text.partition(":")
    if kind not in FINETUNE_TASKS or (kind in HEAD_TASKS) != bool(target):
        raise UsageError(f"--task {text!r}: expected regress:PHENO, classify:PHENO or forecast")
    return kind, target


def finetune_config(pretrained, args: argparse.Namespace, data: str):
    """The fine-tuning run's Config: the pretrained one + finetune section, steps, data, mask for forecasting."""
    from brainjax.config import FinetuneConfig, MaskConfig, override, with_data, with_steps

    kind, target = parse_task(args.task)
    cfg = pretrained.cfg
    finetune = FinetuneConfig(task=kind, target=target, pool=args.pool, freeze_backbone=args.freeze_backbone)
    cfg = dataclasses.replace(cfg, name=f"{cfg.name}-finetune-{kind}{'-' + target if target else ''}",
                              finetune=finetune)
    if kind == "forecast":
        cfg = dataclasses.replace(cfg, mask=MaskConfig(strategy="future", future_patches=args.forecast_patches))
    return override(with_steps(with_data(cfg, data), args.steps), args.overrides)


def main(args: argparse.Namespace) -> int:
    initialize_distributed(args)  # first: nothing may touch a device before it
    from brainjax.config import Lineage
    from brainjax.data.dataset import Dataset
    from brainjax.data.synthetic import data_or_default
    from brainjax.distributed import is_main
    from brainjax.paths import workdir_path
    from brainjax.run import is_export, launch, load_model, warm_start_from
    from brainjax.tasks.head import HEAD_TASKS, describe_target, label_table, with_labels

    kind, target = parse_task(args.task)
    if is_export(args.workdir) and not args.out:
        raise UsageError(f"{args.workdir} is an exported model, not a work dir: pass --out for the fine-tuning run")
    data = data_or_default(args.data)
    dataset = Dataset(data)
    pretrained = load_model(args.workdir, args.step, objective="mae")
    if pretrained.cfg.finetune.task:
        raise UsageError(f"{args.workdir} is itself a fine-tuning run ({pretrained.cfg.finetune.task}); "
                         f"start from a pretraining work dir")
    cfg = finetune_config(pretrained, args, data)
    lineage = Lineage(parent=str(workdir_path(args.workdir)), parent_step=pretrained.step,
                      **(describe_target(dataset, kind, target) if kind in HEAD_TASKS else {}))
    name = f"finetune-{kind}{'-' + target if target else ''}"
    out = workdir_path(args.out) if args.out else workdir_path(args.workdir) / name  # local or gs://
    build = None
    if kind in HEAD_TASKS:
        labels, valid = label_table(dataset, cfg.finetune, lineage)
        build = functools.partial(with_labels, labels=labels, valid=valid)
    # load_model put the backbone on every local device (data axis): the run uses that mesh
    launch(cfg, out, lineage=lineage, build=build, warm_start=warm_start_from(pretrained), mesh=pretrained.mesh)
    if is_main():
        print(f"fine-tuned {args.task} from {args.workdir} (step {pretrained.step}) -> {out}; "
              f"evaluate with `brainjax evaluate --workdir {out}`")
    return 0
