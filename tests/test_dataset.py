import numpy as np
import pytest

from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import Dataset, DatasetError, ScanMeta, assign_splits, finalize, write_part


def _atlas(p):
    return Atlas(name="toy", kind="coordinates", names=tuple(f"p{i}" for i in range(p)),
                 xyz=np.random.default_rng(1).normal(size=(p, 3)) * 40, networks=("a", "b") * (p // 2))


def _scans(n_subjects, p=4, t=30, seed=0):
    rng = np.random.default_rng(seed)
    for s in range(n_subjects):
        for k in range(2):
            data = rng.normal(loc=s, scale=1 + k, size=(p, t)).astype(np.float32)
            yield ScanMeta(f"sub{s:02d}_run{k}", f"sub{s:02d}", tr=2.0, session=str(k),
                           phenotypes={"age": 20 + s}), data


def test_splits_are_by_subject_seeded_and_cover_all():
    subjects = [f"s{i}" for i in range(50)]
    a = assign_splits(subjects, (0.8, 0.1, 0.1), seed=3)
    assert set(a) == set(subjects)
    assert [sum(v == s for v in a.values()) for s in ("train", "val", "test")] == [40, 5, 5]
    assert a == assign_splits(list(reversed(subjects)), (0.8, 0.1, 0.1), seed=3)
    assert a != assign_splits(subjects, (0.8, 0.1, 0.1), seed=4)
    small = assign_splits(["x", "y", "z"], (0.8, 0.1, 0.1))
    assert sorted(small.values()) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="sum"):
        assign_splits(subjects, (0.5, 0.1, 0.1))


def test_finalize_two_parts_stats_and_manifest(tmp_path):
    items = list(_scans(10))
    write_part(tmp_path, "part-0-of-2", items[::2], scans_per_shard=3)
    write_part(tmp_path, "part-1-of-2", items[1::2], failures=[{"file": "bad.nii", "reason": "NaN"}])
    ds = finalize(tmp_path, _atlas(4), seed=0, participants={"sub03": {"sex": "F"}})
    assert len(ds) == 20 and ds.failures == [{"file": "bad.nii", "reason": "NaN"}]
    by_subject = {}
    for row in ds.manifest:
        by_subject.setdefault(row["subject"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_subject.values())
    rows = {r["scan_id"]: i for i, r in enumerate(ds.manifest)}
    for meta, data in items:
        np.testing.assert_array_equal(ds.read(rows[meta.scan_id]), data)
    assert ds.manifest[rows["sub03_run1"]]["sex"] == "F" and ds.manifest[rows["sub04_run1"]]["sex"] == "n/a"
    assert ds.manifest[rows["sub04_run1"]]["age"] == "24"
    # stats: robust statistics over the training scans only, computed here independently
    train = np.concatenate([d for m, d in items if ds.manifest[rows[m.scan_id]]["split"] == "train"], axis=1)
    q1, med, q3 = np.percentile(train, [25, 50, 75], axis=1)
    np.testing.assert_allclose(ds.median, med, rtol=1e-6)
    np.testing.assert_allclose(ds.iqr, q3 - q1, rtol=1e-6)
    x = items[0][1]
    np.testing.assert_allclose(ds.normalize(x), (x - med[:, None]) / (q3 - q1)[:, None], rtol=1e-5)


def test_finalize_rejects_duplicates_and_parcel_mismatch(tmp_path):
    items = list(_scans(2))
    write_part(tmp_path / "a", "p0", items)
    write_part(tmp_path / "a", "p1", items[:1])
    with pytest.raises(DatasetError, match="appears in two parts"):
        finalize(tmp_path / "a", _atlas(4))
    write_part(tmp_path / "b", "p0", items)
    with pytest.raises(DatasetError, match="has 4 parcels, atlas toy has 6"):
        finalize(tmp_path / "b", _atlas(6))


def test_open_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        Dataset(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetError, match="missing dataset.json"):
        Dataset(tmp_path / "half")


def test_a_shard_name_pointing_out_of_the_dataset_is_refused(tmp_path):
    from brainjax.errors import InputError

    write_part(tmp_path, "part-0-of-1", list(_scans(4)))
    finalize(tmp_path, _atlas(4), seed=0)
    manifest = tmp_path / "manifest.tsv"
    lines = manifest.read_text().splitlines()
    header = lines[0].split("\t")
    cells = lines[2].split("\t")
    cells[header.index("shard")] = "../../elsewhere.array_record"
    manifest.write_text("\n".join([lines[0], lines[1], "\t".join(cells), *lines[3:]]) + "\n")
    with pytest.raises(InputError, match=r"manifest.tsv:3: path '../../elsewhere.array_record' points outside"):
        Dataset(tmp_path)


def test_tables_are_written_with_lf_line_endings(tmp_path):
    write_part(tmp_path, "part-0-of-1", list(_scans(2)), failures=[{"file": "bad.nii", "reason": "NaN"}])
    finalize(tmp_path, _atlas(4), seed=0)
    for name in ("manifest.tsv", "failures.tsv"):
        raw = (tmp_path / name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n") and raw.count(b"\n") >= 2, name
