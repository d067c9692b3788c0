"""The user cache of built defaults (synthetic dataset, default LM): build once, atomically, reuse after.

Root: ``cache_dir``, else ``$BRAINJAX_CACHE``, else ``~/.cache/brainjax``. An entry is built in a private
temporary directory and renamed into place, so concurrent callers never see a half-written entry; the loser
of a race discards its copy and returns the winner's. A file named ``marker`` inside says the entry is done.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

STALE_SECONDS = 3600.0  # a temporary build dir older than this was left by a killed builder


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get("BRAINJAX_CACHE") or Path.home() / ".cache" / "brainjax")


def cached(name: str, marker: str, build: Callable[[Path], None], cache_dir: str | os.PathLike | None = None,
           what: str = "entry") -> Path:
    """``root/name``, running ``build(tmp_dir)`` first when it does not hold ``marker`` yet.

    Raises FileExistsError when ``root/name`` exists without its marker (a broken entry: delete it to rebuild).
    """
    root = cache_root(cache_dir)
    target = root / name
    if (target / marker).exists():
        return target
    if target.exists():
        raise FileExistsError(f"{target}: exists but is not a finished {what} (no {marker}); delete it and rerun "
                              f"to rebuild it")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".tmp-{name}-*"):
        if time.time() - stale.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another caller renamed its copy first: use that one
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
