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
import errno
import importlib
import os
import sys
import traceback

from brainjax.errors import BrainjaxError

# builtin errors that mean bad input when they escape a command (a missing file, an unreadable table, a value
# out of range); anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
# and the OS errors of the place a run writes to: a full disk or quota, a read-only file system
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)

COMMANDS = ("synth", "prepare", "info", "pretrain", "plan", "embed", "finetune", "evaluate", "tokenizer", "describe",
            "adapt", "instruct", "ask", "export", "convert-brainlm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainjax", description="fMRI foundation models in JAX")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"brainjax.commands.{name.partition('-')[0]}")  # x-y lives in x
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("BRAINJAX_TRACEBACK"):
            raise
        if is_user_error(err):
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return getattr(err, "exit_code", 2)
        traceback.print_exc()  # a bug: the traceback, then how to report it
        print(f"brainjax {args.command}: unexpected error (a bug, not your input): please report it with the command "
              f"line and the traceback above", file=sys.stderr)
        return 1


def is_user_error(err: BaseException) -> bool:
    """Bad input or a full / read-only place to write, as opposed to a bug."""
    return (isinstance(err, (BrainjaxError, *USER_ERRORS))
            or (isinstance(err, OSError) and err.errno in USER_ERRNOS))


def _one_line(err: BaseException) -> str:
    """The message on one line; an OS error keeps its strerror and file name ("No space left on device: 'x'")."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename!r}" if err.filename else ""
        return f"{err.strerror}{where}"
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, BrainjaxError | ValueError) else f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
