"""The ``brainjax`` command: one sub-command per module in :mod:`brainjax.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``, and keeps
its heavy imports (jax, nilearn) inside ``main`` so that ``brainjax --help`` stays fast.

Errors are handled here, once for every command: a :class:`brainjax.errors.BrainjaxError` prints one line
``error: ...`` and exits with its code (2 for bad input, 3 for a diverged run); so do the builtin errors of bad
input that library code raises (``ValueError``, missing or unreadable files). ``BRAINJAX_TRACEBACK=1`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from brainjax.errors import BrainjaxError

# builtin errors that mean bad input when they escape a command (a missing file, an unreadable table, a value
# out of range); anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)

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
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except (BrainjaxError, *USER_ERRORS) as err:
        if os.environ.get("BRAINJAX_TRACEBACK"):
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, BrainjaxError | ValueError) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
