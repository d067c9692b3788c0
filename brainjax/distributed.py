"""Small helpers for multi-process runs: who writes shared files, and waiting for them.

Every process of a multi-host job runs the same command. Files that several processes would otherwise write
at once (a dataset's descriptors, a run's copy of the LM files, a final report) are written by process 0 while
the others wait at a barrier, then everyone reads them. With one process these are plain calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax

T = TypeVar("T")


def is_main() -> bool:
    """True on process 0, the one that logs and writes shared files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"brainjax_{name}")


def main_first(name: str, make: Callable[[], T], read: Callable[[], T]) -> T:
    """``make()`` on process 0, then ``read()`` on the others once it is done; the value of either.

    An error in ``make`` on process 0 propagates there; the other processes would wait at the barrier, so
    ``make`` should validate its inputs before doing work (errors before any write are the common case).
    """
    if jax.process_count() == 1:
        return make()
    value = make() if is_main() else None
    barrier(name)
    return value if is_main() else read()
