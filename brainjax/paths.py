"""Work-dir paths that may live on an object store (``gs://bucket/run``) as well as on a local disk.

``pathlib.Path("gs://bucket/run")`` silently becomes ``gs:/bucket/run`` (a local relative path), so everything
that writes into a run's work dir goes through :func:`workdir_path`, which returns an ``etils.epath.Path``:
a plain local path for local directories, a URI-aware path for ``gs://``, ``s3://``, ``az://`` and ``hf://``
that Orbax (which uses epath itself) and tensorstore both understand.

Remote access goes through fsspec: ``gs://`` needs ``gcsfs`` (``pip install 'brainjax[gcs]'``); tensorstore,
which writes the checkpoint arrays, has its own GCS client. Credentials are Google's application-default
ones for both (``gcloud auth application-default login``, or the VM's service account on a TPU VM).

Atomic writes: locally a file is written under a temporary name and renamed (``os.replace``), so a reader
never sees half a file. Object stores need no such dance: an object only becomes visible once its upload
finishes (when the file handle is closed), and it replaces the previous version whole; there is no rename
to do atomically anyway (a GCS "rename" is a copy plus a delete). A file that a reader may
open while it is being replaced is written through :func:`atomic_path` (or its shorthands
:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`write_json`); whole-directory swaps (a saved
model, a cache entry, a dataset part) rename by themselves.

JSON reports are strict (:func:`strict_json`): NaN and infinities become null, so any JSON parser reads them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils import epath

from brainjax.errors import InputError

REMOTE_SCHEMES = ("gs", "s3", "az", "hf")  # the URI schemes epath routes to fsspec
_FSSPEC_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(path: str | os.PathLike) -> bool:
    """True when ``path`` is a URI on an object store (``gs://...``), False for a local path."""
    return _URI.match(os.fspath(path)) is not None


def inside(base: str | os.PathLike, relative: str, source: str | os.PathLike) -> Path:
    """``base / relative`` for a path read from the file ``source`` (an index, a manifest), refused when it
    would resolve outside ``base`` (absolute, ``..``, or a symlink out): a file must not make brainjax read
    or write elsewhere. Raises :class:`brainjax.errors.InputError` naming the file and the path."""
    root = Path(base).resolve()
    target = (root / relative).resolve()
    if Path(relative).is_absolute() or not target.is_relative_to(root):
        raise InputError(f"{source}: path {relative!r} points outside {root}; refusing to read it")
    return target


def workdir_path(value: str | os.PathLike) -> epath.Path:
    """``value`` as an epath.Path: local paths made absolute (not symlink-resolved), URIs kept as they are.

    Raises ValueError for an empty value or a URI scheme epath cannot open (e.g. ``file://`` or ``http://``),
    and ImportError (naming the package) when the scheme's filesystem is not installed, before any training.
    """
    text = os.fspath(value)
    if not text:
        raise ValueError("empty work dir path")
    found = _URI.match(text)
    if found is None:
        return epath.Path(os.path.abspath(text))
    scheme = found.group(1).lower()
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{text}: unsupported URI scheme {scheme}:// (use a local path or one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    package = _FSSPEC_PACKAGES[scheme]
    # epath uses TensorFlow's gfile instead of fsspec when TensorFlow is installed
    if not (_installed(package) or _installed("tensorflow")):
        extra = " (pip install 'brainjax[gcs]')" if scheme == "gs" else ""
        raise ImportError(f"{text}: {scheme}:// work dirs need the {package} package{extra}")
    return epath.Path(scheme + text[found.end(1):])


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace the file at ``path`` with ``text`` (UTF-8) so that readers see the old or the new content, never
    a mix (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` atomically.

    Local: a temporary sibling renamed over the target. Remote: one object upload (atomic on close).
    """
    target = workdir_path(path)
    if is_remote(target):
        target.write_bytes(data)
        return
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary local file to write in place of ``path``: when the block ends without an error it replaces
    ``path`` whole; when the block raises it is removed. Readers see the old file or the new one, never a part.

    Local: the sibling ``<name>.tmp<pid>``, renamed over ``path`` (``os.replace``, atomic on one file system).
    Remote: a local temporary file, uploaded as one object. The temporary name has no extension of ``path``'s:
    writers that pick a format from the name (``np.save`` appends ``.npy``, matplotlib) need a file object or
    an explicit format.
    """
    target = workdir_path(path)
    remote = is_remote(target)
    if remote:
        handle, name = tempfile.mkstemp(prefix="brainjax-upload-")
        os.close(handle)
        tmp = Path(name)
    else:
        tmp = Path(os.fspath(target.with_name(target.name + f".tmp{os.getpid()}")))
    try:
        yield tmp
        if remote:
            target.write_bytes(tmp.read_bytes())
        else:
            os.replace(tmp, target)
    except OSError as err:
        if err.filename is None and err.errno is not None:  # a full disk mid-write names no file: name the target
            raise OSError(err.errno, err.strerror, os.fspath(target)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)  # left only when the block (or the upload) failed


def strict_json(value: Any) -> Any:
    """``value`` as plain JSON data: keys as strings, tuples as lists, numpy/JAX scalars and arrays as Python
    numbers and lists, and every NaN or infinity as None, so ``json.dumps(..., allow_nan=False)`` holds."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if hasattr(value, "tolist"):
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> None:
    """Write ``value`` to ``path`` as strict JSON (:func:`strict_json`) and a final newline, atomically."""
    atomic_write_text(path, json.dumps(strict_json(value), allow_nan=False, indent=indent) + "\n")


def move_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the directory ``src`` to ``dst`` (which must not exist), creating ``dst``'s parents.

    Local: one ``os.replace`` (atomic on one file system). Remote: every object is copied, then ``src`` is
    deleted, because object stores have no directory rename (and epath's rename refuses a destination whose
    "parent folder" has no object yet, which is always the case for a fresh prefix).
    """
    source, target = workdir_path(src), workdir_path(dst)
    if is_remote(source) != is_remote(target):
        raise ValueError(f"cannot move {source} to {target}: one is local, the other remote")
    if target.exists():
        raise FileExistsError(f"{target} already exists; not moving {source} onto it")
    if not is_remote(source):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    for name in relative_files(source):
        (source / name).copy(target / name, overwrite=False)
    source.rmtree()


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Copy every file under the directory ``src`` to the same relative path under ``dst`` (overwriting).

    Used to mirror a local scratch directory (TensorBoard events) to a remote work dir. Returns the number
    of files copied.
    """
    source, target = workdir_path(src), workdir_path(dst)
    names = relative_files(source)
    for name in names:
        out = target / name
        if not is_remote(out):
            out.parent.mkdir(parents=True, exist_ok=True)
        (source / name).copy(out, overwrite=True)
    return len(names)


def file_checksum(path: str | os.PathLike, block: int = 1 << 20) -> tuple[int, int]:
    """(size in bytes, CRC-32 of the bytes) of a local or remote file, read in ``block``-byte pieces (constant
    memory; zlib releases the GIL on each, so several files can be read at once from threads)."""
    size, crc = 0, 0
    with epath.Path(path).open("rb") as fh:
        while piece := fh.read(block):
            size, crc = size + len(piece), zlib.crc32(piece, crc)
    return size, crc


def relative_files(root: epath.Path) -> list[str]:
    """Paths (relative to ``root``, "/"-separated) of every file under the directory ``root``, sorted.

    Walks with iterdir: epath refuses recursive globs on remote paths, and fsspec's walk drops the URI scheme.
    """
    found, pending = [], [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for item in folder.iterdir():
            name = prefix + item.name
            if item.is_dir():
                pending.append((name + "/", item))
            else:
                found.append(name)
    return sorted(found)
