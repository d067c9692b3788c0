"""One record per scan in ArrayRecord shards: a small JSON header plus raw float32 bytes, checksummed.

Layout of a record::

    b"BJX1" | uint32 little-endian header length | header (UTF-8 JSON) | payload

The header holds ``scan_id``, ``subject``, ``shape`` ([parcels, T]), ``dtype`` and the payload's ``crc32``.
Nothing here unpickles; a truncated or altered record raises :class:`CorruptRecordError` naming the shard
and the record index. A whole shard's size and CRC32 (:func:`brainjax.paths.file_checksum`) are kept in the
part metadata, so that a re-run of ``prepare`` can tell an intact shard without decoding it.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from brainjax.errors import InputError
from brainjax.paths import atomic_path

MAGIC = b"BJX1"


class CorruptRecordError(InputError):
    """A shard or record that cannot be decoded."""


@dataclass(frozen=True)
class ScanRecord:
    """A preprocessed scan: ``data`` is float32 [parcels, T]."""

    scan_id: str
    subject: str
    data: np.ndarray


def encode(record: ScanRecord) -> bytes:
    data = np.ascontiguousarray(record.data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"scan {record.scan_id}: expected [parcels, T], got shape {data.shape}")
    payload = data.tobytes()
    header = json.dumps({
        "scan_id": record.scan_id, "subject": record.subject, "shape": list(data.shape),
        "dtype": "float32", "crc32": zlib.crc32(payload),
    }).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def decode(blob: bytes, where: str = "record") -> ScanRecord:
    """Decode and verify one record; ``where`` names it in errors (e.g. ``shard.array_record#3``)."""
    if len(blob) < 8 or blob[:4] != MAGIC:
        raise CorruptRecordError(f"{where}: not a brainjax scan record (bad magic)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    try:
        header = json.loads(blob[8:8 + hlen].decode())
        shape = tuple(int(s) for s in header["shape"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptRecordError(f"{where}: unreadable header ({err})") from None
    payload = blob[8 + hlen:]
    if len(payload) != 4 * int(np.prod(shape)):
        raise CorruptRecordError(f"{where}: payload has {len(payload)} bytes, header shape {shape} needs "
                                 f"{4 * int(np.prod(shape))}")
    if zlib.crc32(payload) != header.get("crc32"):
        raise CorruptRecordError(f"{where}: checksum mismatch (the shard is damaged)")
    data = np.frombuffer(payload, dtype=np.float32).reshape(shape)
    return ScanRecord(scan_id=header["scan_id"], subject=header["subject"], data=data)


def write_shard(path: str | os.PathLike, records: Iterable[ScanRecord]) -> int:
    """Write records to ``path`` atomically (temp file, then rename). Returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_path(path) as tmp:
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        try:
            for record in records:
                writer.write(encode(record))
                count += 1
        finally:
            writer.close()
    return count


class ShardReader:
    """Random access to the records of one shard; opened lazily so it can cross process boundaries."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"shard not found: {self.path}")
        self._reader = None

    def _open(self) -> ArrayRecordReader:
        if self._reader is None:
            try:
                self._reader = ArrayRecordReader(str(self.path))
            except Exception as err:  # array_record raises plain RuntimeError / status errors
                raise CorruptRecordError(f"{self.path}: cannot open ArrayRecord shard ({err})") from None
        return self._reader

    def __len__(self) -> int:
        return int(self._open().num_records())

    def read(self, index: int) -> ScanRecord:
        try:
            blob = self._open().read([index])[0]
        except CorruptRecordError:
            raise
        except Exception as err:
            raise CorruptRecordError(f"{self.path}#{index}: cannot read record ({err})") from None
        return decode(blob, where=f"{self.path}#{index}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self):  # the native reader does not cross process boundaries; reopen there
        return {"path": self.path, "_reader": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
