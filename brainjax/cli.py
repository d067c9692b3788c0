"""The ``brainjax`` command: one sub-command per module in :mod:`brainjax.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``, and keeps
its heavy imports (jax, nilearn) inside ``main`` so that ``brainjax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("synth", "prepare", "info", "pretrain", "plan", "embed", "finetune", "evaluate", "tokenizer", "describe",
            "adapt", "instruct", "ask")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainjax", description="fMRI foundation models in JAX")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"brainjax.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from brainjax.commands.args import UsageError

    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
