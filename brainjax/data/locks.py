"""Lock files for jobs that write into one directory (``brainjax prepare``'s shard jobs and its finalize).

A lock is a file created exclusively (``O_CREAT | O_EXCL``) that holds the owner's pid, host, start time and a
random id. A second job finds it and refuses (or waits); a lock whose pid no longer exists on this host is
stale and is taken over (moved aside first, so two jobs cannot both take it); a lock of another host cannot be
checked and must be deleted by hand, which the error says.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from brainjax.errors import DatasetError


class LockedError(DatasetError):
    """Another live job holds the lock."""


def _lock_holder(path: Path) -> tuple[str | None, dict | None]:
    """(raw text, parsed record or None) of a lock file; (None, None) when it is gone."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    try:
        holder = json.loads(text)
        valid = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and "host" in holder
        return text, holder if valid else None
    except json.JSONDecodeError:
        return text, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the pid exists under another user
        return True
    return True


def _is_stale(holder: dict | None) -> bool:
    """A lock whose holder is a process of this host that no longer exists (another host's cannot be told)."""
    return holder is not None and holder["host"] == socket.gethostname() and not _pid_alive(int(holder["pid"]))


def _take_over(path: Path, stale_text: str) -> bool:
    """Move a stale lock aside; True when what was moved is that stale lock (a live one is put back)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_text() == stale_text:
            return True
        try:  # another process had just replaced the stale lock with its own live one
            os.link(aside, path)
        except FileExistsError:
            pass
        return False
    finally:
        aside.unlink(missing_ok=True)


def acquire_lock(path: Path, what: str, warn: Callable[[str], None], wait_s: float = 0.0) -> str:
    """Create the lock file ``path`` exclusively (O_CREAT | O_EXCL) holding this pid, host and the time.

    A stale lock (dead pid on this host) is taken over, told through ``warn``. A live one raises LockedError, or,
    with ``wait_s``, is waited for up to that many seconds. Returns the text written (for :func:`release_lock`).
    """
    token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                        "since": time.strftime("%Y-%m-%d %H:%M:%S"), "id": uuid.uuid4().hex})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fd = None
        if fd is not None:
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
            return token
        text, holder = _lock_holder(path)
        if text is None:
            continue  # released meanwhile
        if _is_stale(holder):
            if _take_over(path, text):
                warn(f"took over the stale lock {path} of pid {holder['pid']} on {holder['host']} "
                              f"(that process has ended)")
            continue
        if time.monotonic() >= deadline:
            who = (f"pid {holder['pid']} on host {holder['host']} since {holder.get('since', '?')}"
                   if holder else "a process that has not written its pid yet")
            waited = f" (waited {wait_s:.0f} s)" if wait_s else ""
            raise LockedError(f"{path} is held by {who}{waited}: another `brainjax prepare` ({what}) is running "
                              f"in {path.parent}; wait for it to finish, or delete {path} if that process is gone")
        time.sleep(0.2)


def release_lock(path: Path, token: str) -> None:
    if _lock_holder(path)[0] == token:
        path.unlink(missing_ok=True)
