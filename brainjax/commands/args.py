"""Argument types, flags and config resolution shared by several commands."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from brainjax.errors import UsageError
from brainjax.paths import atomic_path


def split_fractions(text: str) -> tuple[float, float, float]:
    """``--split-fractions 0.8,0.1,0.1``: three non-negative train,val,test fractions summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"split fractions must be numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"split fractions need three values (train,val,test), got {text!r}")
    if min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"split fractions must be non-negative and sum to 1, got {text!r}")
    return values


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Write ``arrays`` to ``path`` (.npz, no pickled objects) through a temporary file and a rename."""
    import numpy as np

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return out


def add_training_arguments(parser: argparse.ArgumentParser, preset: str, workdir: str) -> None:
    """The flags of a command that trains from a preset (``pretrain``, ``tokenizer train``)."""
    parser.add_argument("--data", help="dataset dir(s), comma-separated (default: the embedded synthetic dataset)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=preset, help="experiments/NAME.py preset (default: %(default)s)")
    source.add_argument("--config", help="a Python file defining config()")
    parser.add_argument("--workdir", default=workdir,
                        help="checkpoints, logs and figures go here; an existing run here is resumed "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, help="total optimizer steps (overrides train.steps)")
    add_override_argument(parser, "model.width=512")
    add_distributed_arguments(parser)


class _AppendSetting(argparse.Action):
    """``--FLAG VALUE`` as one more ``--set KEY=VALUE`` (``const`` names the key): the value lands in the config
    like any override, so it is saved with the run and checked with it."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, self.dest).append(f"{self.const}={values}")


def add_override_argument(parser: argparse.ArgumentParser, example: str, base: str = "") -> None:
    """``--set KEY=VALUE`` (repeatable), ``--allow-data-change`` and ``--validation``, which every training
    command takes."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override{base}, e.g. --set {example} (repeatable)")
    parser.add_argument("--allow-data-change", dest="overrides", action="append_const",
                        const="train.allow_data_change=true",
                        help="resume this work dir's checkpoint on other training data than it was trained on "
                             "(refused otherwise)")
    parser.add_argument("--validation", dest="overrides", action=_AppendSetting, const="data.validation",
                        choices=("split", "holdout", "none"),
                        help="validation windows: the dataset's val split (default; refused before training when "
                             "it has none), holdout (the last data.holdout = 10%% of every training scan by time, "
                             "at least one window, never trained on), or none")


def resolve_config(args: argparse.Namespace):
    """Preset/file + ``--set`` overrides + ``--steps`` + ``--data``, with ``data.path`` resolved to absolute
    directories (the embedded default dataset when neither ``--data`` nor the preset names one)."""
    from brainjax.config import load_config, override, with_data
    from brainjax.data.synthetic import data_or_default

    cfg = override(load_config(args.config or args.preset), args.overrides)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=args.steps))
    return with_data(cfg, data_or_default(args.data or cfg.data.path))


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags every training command takes (see :func:`initialize_distributed`)."""
    multi = parser.add_argument_group("multi-process (CPU/GPU clusters need the explicit flags; TPU pods, Slurm "
                                      "and Kubernetes jobs auto-detect)")
    multi.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with the cluster's auto-detected coordinator")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address (implies --distributed)")
    multi.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    multi.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (with --coordinator)")


def detected_cluster(env: dict[str, str] | None = None) -> str | None:
    """The multi-host job this process runs in, from the environment, or None for a single host.

    Recognised: Slurm with several tasks, a TPU VM slice with several workers (``TPU_WORKER_HOSTNAMES``
    lists them) and a multi-slice job (``MEGASCALE_NUM_SLICES`` > 1) — the environments where JAX's
    ``jax.distributed.initialize()`` finds the coordinator by itself.
    """
    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return f"Slurm job {env['SLURM_JOB_ID']} with {env['SLURM_NTASKS']} tasks"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return f"TPU slice with {len(hosts)} workers"
    if int(env.get("MEGASCALE_NUM_SLICES", "1") or 1) > 1:
        return f"multi-slice TPU job ({env['MEGASCALE_NUM_SLICES']} slices)"
    return None


def initialize_distributed(args: argparse.Namespace, env: dict[str, str] | None = None) -> bool:
    """Start JAX's multi-controller runtime when asked or detected; True when it was started.

    Must run before anything touches a JAX device. ``--coordinator`` needs ``--num-processes`` and
    ``--process-id`` (CPU and GPU clusters); ``--distributed`` alone or a detected cluster lets JAX find them.
    Raises :class:`UsageError` on an incomplete or inconsistent explicit setup.
    """
    import jax

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if args.coordinator and None in explicit:
        raise UsageError("--coordinator needs --num-processes and --process-id")
    if (args.num_processes is not None or args.process_id is not None) and not args.coordinator:
        raise UsageError("--num-processes/--process-id need --coordinator HOST:PORT")
    if args.coordinator and not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id {args.process_id} is outside 0..{args.num_processes - 1}")
    if jax.distributed.is_initialized():  # e.g. `tokenizer train` started it before reading the LM
        return True
    cluster = detected_cluster(env)
    if not (args.distributed or args.coordinator or cluster):
        return False
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
    return True
