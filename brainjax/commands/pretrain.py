"""``brainjax pretrain``: train the BrainLM masked autoencoder; rerunning resumes from the latest checkpoint.

Defaults: ``--preset default``, ``--workdir runs/pretrain``, and without ``--data`` the embedded synthetic
dataset (built once and cached). The work dir receives ``checkpoints/``, ``metrics.jsonl``, ``tb/``
(TensorBoard), ``config.json`` and ``reconstruction.png``.

Exit codes: 0 finished, or stopped by SIGTERM after saving a checkpoint (rerun to resume); 2 bad input (among
them a work dir whose checkpoint was trained with another model configuration); 3 non-finite loss with
``train.nonfinite=stop``.
"""

from __future__ import annotations

import argparse

from brainjax.commands.args import add_training_arguments, initialize_distributed, resolve_config

HELP = "pretrain a BrainLM masked autoencoder (rerun to resume from the work dir's latest checkpoint)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, preset="default", workdir="runs/pretrain")


def main(args: argparse.Namespace) -> int:
    initialize_distributed(args)  # first: nothing may touch a device before it
    from brainjax.eval.figures import reconstruction_hook
    from brainjax.run import launch

    launch(resolve_config(args), args.workdir, finish=reconstruction_hook)
    return 0
