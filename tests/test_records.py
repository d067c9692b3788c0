import numpy as np
import pytest

from brainjax.data.records import CorruptRecordError, ScanRecord, ShardReader, decode, encode, write_shard


def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    recs = [ScanRecord(f"s{i}", f"sub{i // 2}", rng.normal(size=(5, 7 + i)).astype(np.float32)) for i in range(4)]
    assert write_shard(tmp_path / "a.array_record", recs) == 4
    reader = ShardReader(tmp_path / "a.array_record")
    assert len(reader) == 4
    for i, rec in enumerate(recs):
        got = reader.read(i)
        assert got.scan_id == rec.scan_id and got.subject == rec.subject
        np.testing.assert_array_equal(got.data, rec.data)
    assert not list(tmp_path.glob("*.tmp*"))


def test_corruption_is_detected_and_named():
    blob = bytearray(encode(ScanRecord("x", "y", np.ones((2, 3), np.float32))))
    blob[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="shard.array_record#0: checksum mismatch"):
        decode(bytes(blob), where="shard.array_record#0")
    with pytest.raises(CorruptRecordError, match="bad magic"):
        decode(b"PK\x03\x04" + bytes(blob[4:]))
    with pytest.raises(CorruptRecordError, match="payload has"):
        decode(bytes(blob[:-4]))


def test_damaged_shard_file(tmp_path):
    path = tmp_path / "b.array_record"
    write_shard(path, [ScanRecord("x", "y", np.arange(600, dtype=np.float32).reshape(20, 30))])
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[500] ^= 0xFF  # inside the first (compressed) data chunk, before the padding
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptRecordError, match=str(path)):
        ShardReader(path).read(0)
    path.write_bytes(raw[: len(raw) // 2])  # a half-written shard
    with pytest.raises(CorruptRecordError, match=str(path)):
        ShardReader(path).read(0)
    with pytest.raises(FileNotFoundError, match="shard not found"):
        ShardReader(tmp_path / "missing.array_record")


def test_encode_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expected \\[parcels, T\\]"):
        encode(ScanRecord("x", "y", np.ones(3, np.float32)))
