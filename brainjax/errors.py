"""Every error brainjax raises for bad input, with the exit status the ``brainjax`` command gives it.

``brainjax.cli.main`` handles them once for every command: one line ``error: ...`` on stderr and the class's
``exit_code``. Each class still derives from the builtin a caller would expect (``ValueError`` for bad values,
``FileNotFoundError`` for missing files, ``FloatingPointError`` for a diverged run), so library users can
catch either.
"""

from __future__ import annotations


class BrainjaxError(Exception):
    """Base of brainjax's user-facing errors: the message names the file or setting and the problem."""

    exit_code = 2


class UsageError(BrainjaxError, ValueError):
    """A command-line mistake (a flag, a combination of flags)."""


class ConfigError(BrainjaxError, ValueError):
    """A preset, file or override that does not fit the config schema."""


class DatasetError(BrainjaxError, ValueError):
    """A dataset directory that is missing, incomplete or inconsistent."""


class InputError(BrainjaxError, ValueError):
    """An input file (scan, atlas, table, record) that cannot be read as what it should be."""


class CheckpointMismatchError(BrainjaxError, ValueError):
    """The checkpoint cannot be used by this run (e.g. a different model configuration or objective)."""


class DataChangeError(CheckpointMismatchError):
    """A run resumed on other training data than its checkpoint's (refused unless asked for)."""


class NoCheckpointError(BrainjaxError, FileNotFoundError):
    """The work dir holds no (readable) checkpoint."""


class NonFiniteLossError(BrainjaxError, FloatingPointError):
    """Training produced a non-finite loss with ``train.nonfinite=stop``."""

    exit_code = 3


class CorruptCheckpointError(BrainjaxError, ValueError):
    """A checkpoint step whose files no longer match the checksums recorded when it was saved."""
