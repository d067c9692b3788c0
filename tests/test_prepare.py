"""``brainjax prepare`` / ``info`` on small synthetic inputs: QC failures, resume, shards, splits, workers, CLI."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from brainjax.cli import main as cli_main
from brainjax.commands import info as info_cmd
from brainjax.commands import prepare as prepare_cmd
from brainjax.data.atlas import AtlasSpec
from brainjax.data.atlas_core import Atlas
from brainjax.data.clean import CleanOptions, ScanError
from brainjax.data.dataset import Dataset
from brainjax.data.prepare import OptionsMismatchError, PrepareOptions, prepare
from brainjax.errors import DatasetError

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
RAW = CleanOptions(detrend=False, high_pass=None, standardize="none")
OPTS = PrepareOptions(atlas="test-grid", clean=RAW, confounds="none", min_length=30)


def grid_spec(shape=(6, 6, 4)):
    """4 parcels = the 4 (x, y) quadrants of the grid, stored with label values 10, 20, 30, 40."""
    labels = np.zeros(shape, np.int32)
    half_x, half_y = shape[0] // 2, shape[1] // 2
    for k, (xs, ys) in enumerate([(slice(0, half_x), slice(0, half_y)), (slice(half_x, None), slice(0, half_y)),
                                  (slice(0, half_x), slice(half_y, None)), (slice(half_x, None), slice(half_y, None))]):
        labels[xs, ys, :] = 10 * (k + 1)
    xyz = [nib.affines.apply_affine(AFFINE, np.argwhere(labels == v).mean(0)) for v in (10, 20, 30, 40)]
    atlas = Atlas("test-grid", "volume", ("a", "b", "c", "d"), np.array(xyz), ("n1", "n1", "n2", "n2"))
    return AtlasSpec(atlas=atlas, label_image=nib.Nifti1Image(labels, AFFINE), label_values=np.array([10, 20, 30, 40]),
                     radius=None, vertex_labels=None, mesh=None)


def parcel_means(data, spec):
    labels = np.asarray(spec.label_image.dataobj)
    return np.stack([data[labels == v].mean(0) for v in spec.label_values])  # [P, T]


def write_volume(path, data, tr=2.0):
    img = nib.Nifti1Image(data.astype(np.float32), AFFINE)
    img.header.set_zooms((2.0, 2.0, 2.0, tr))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def write_series(path, series, tr=2.0):
    np.save(path, series.astype(np.float32))
    path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": tr}))


def random_volume(seed, length=60):
    return 100 + np.random.default_rng(seed).normal(size=(6, 6, 4, length))


@pytest.fixture
def bad_inputs(tmp_path):
    """Two good volumes, a good series, and one scan for each QC failure."""
    d = tmp_path / "in"
    d.mkdir()
    data = {f"sub-0{i}": random_volume(i) for i in (1, 2)}
    for name, vol in data.items():
        write_volume(d / f"{name}_task-rest_bold.nii.gz", vol)
    nan = random_volume(3)
    nan[1, 1, 1, 5] = np.nan
    write_volume(d / "sub-03_task-rest_bold.nii.gz", nan)
    flat = random_volume(4)
    flat[3:, :3] = 5.0  # parcel "b" constant
    write_volume(d / "sub-04_task-rest_bold.nii.gz", flat)
    write_volume(d / "sub-05_task-rest_bold.nii.gz", random_volume(5, length=20))
    (d / "sub-06_task-rest_bold.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_volume(d / "sub-07_task-rest_bold.nii.gz", random_volume(7), tr=1.0)
    write_series(d / "sub-08_task-rest_bold.npy", np.random.default_rng(8).normal(size=(60, 5)))
    series = np.random.default_rng(9).normal(size=(60, 4))
    write_series(d / "sub-09_task-rest_bold.npy", series)
    return d, {"vol": data, "series": series}


def test_qc_failures_are_recorded_and_good_scans_land(bad_inputs, tmp_path):
    d, truth = bad_inputs
    spec = grid_spec()
    result = prepare([d], tmp_path / "ds", OPTS, spec=spec)
    ds = Dataset(tmp_path / "ds")
    assert [r["scan_id"] for r in ds.manifest] == ["sub-01_task-rest", "sub-02_task-rest", "sub-09_task-rest"]
    for i, name in enumerate(("sub-01", "sub-02")):
        np.testing.assert_allclose(ds.read(i), parcel_means(truth["vol"][name], spec), rtol=1e-6)
        assert ds.manifest[i]["tr"] == 2.0 and ds.manifest[i]["subject"] == name[4:]
    np.testing.assert_allclose(ds.read(2), truth["series"].T, rtol=1e-6)
    reasons = {os.path.basename(f["file"]).split("_")[0]: f["reason"] for f in ds.failures}
    assert reasons.keys() == {"sub-03", "sub-04", "sub-05", "sub-06", "sub-07", "sub-08"}
    # one missing parcel of 4 is over --max-missing-parcels 0.05 (see test_partial_coverage.py for kept ones)
    beyond = " (1 of 4 parcels missing; --max-missing-parcels 0.05 allows 0)"
    assert reasons["sub-03"] == "NaN/Inf values in 1 voxels (1 values), inside 1 parcels: a" + beyond
    assert "zero-variance parcels (1; constant over time" in reasons["sub-04"] and reasons["sub-04"].endswith(
        ": b" + beyond)
    assert reasons["sub-05"] == "too short: 20 TRs < --min-length 30"
    assert reasons["sub-06"].startswith("unreadable: ")
    assert reasons["sub-07"].startswith("TR mismatch: 1 s, while the dataset's TR is 2 s (7 of 8 scans)")
    assert reasons["sub-08"] == "parcel count mismatch: 5 columns, atlas test-grid has 4 parcels"
    assert len(result.failures) == 6 and result.processed == 9 and result.finalized
    # --target-tr lifts the TR rule: the 1 s scan is resampled instead of rejected
    resampled = prepare([d / "sub-07_task-rest_bold.nii.gz"], tmp_path / "rs",
                        PrepareOptions(atlas="test-grid", clean=CleanOptions(target_tr=2.0), min_length=30), spec=spec)
    assert not resampled.failures and Dataset(tmp_path / "rs").manifest[0]["length"] == 30


def test_strict_raises_and_nothing_is_lost(bad_inputs, tmp_path, monkeypatch):
    d, _ = bad_inputs
    spec, out = grid_spec(), tmp_path / "ds"
    with pytest.raises(ScanError, match=r"sub-03_task-rest_bold.nii.gz: NaN/Inf values.*\(--strict\)"):
        prepare([d], out, OPTS, strict=True, spec=spec)
    assert sorted(p.name for p in (out / "staging").glob("*.json")) == [
        "sub-01_task-rest.json", "sub-02_task-rest.json", "sub-03_task-rest.json"]
    first = prepare([d], out, OPTS, spec=spec)
    assert first.skipped == 3 and first.processed == 6  # the strict run's staged scans were kept
    with pytest.raises(ScanError, match="sub-03_task-rest_bold.nii.gz: NaN"):  # staged failures count too
        prepare([d], out, OPTS, strict=True, spec=spec)
    before = Dataset(out)
    arrays = [before.read(i) for i in range(len(before))]
    prepare_json = (out / "prepare.json").read_text()
    with pytest.raises(OptionsMismatchError, match=r"clean.high_pass: None before, 0.01 now"):
        prepare([d], out, PrepareOptions(atlas="test-grid", min_length=30, confounds="none"), spec=spec)
    assert (out / "prepare.json").read_text() == prepare_json
    # a run killed midway (here: interrupted on the second new scan) leaves the finished dataset intact
    new = {name: random_volume(seed) for seed, name in ((10, "sub-10"), (11, "sub-11"))}
    for name, vol in new.items():
        write_volume(d / f"{name}_task-rest_bold.nii.gz", vol)
    import brainjax.data.prepare as prepare_module

    real = prepare_module.prepare_scan

    def interrupted(scan, *args):
        if scan.subject == "11":
            raise KeyboardInterrupt
        return real(scan, *args)

    monkeypatch.setattr(prepare_module, "prepare_scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare([d], out, OPTS, spec=spec)
    after = Dataset(out)
    assert after.manifest == before.manifest
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(after.read(i), array)
    monkeypatch.setattr(prepare_module, "prepare_scan", real)
    resumed = prepare([d], out, OPTS, spec=spec)
    assert (resumed.processed, resumed.skipped, resumed.finalized) == (1, 10, True)
    ds = Dataset(out)
    rows = {r["scan_id"]: i for i, r in enumerate(ds.manifest)}
    assert len(ds) == 5
    for name, vol in new.items():
        np.testing.assert_allclose(ds.read(rows[f"{name}_task-rest"]), parcel_means(vol, spec), rtol=1e-6)
    for row, array in zip(before.manifest, arrays):  # old scans came back from the replaced part unchanged
        np.testing.assert_array_equal(ds.read(rows[row["scan_id"]]), array)


def test_rerun_skips_finished_scans_and_redoes_changed_ones(bad_inputs, tmp_path):
    d, _ = bad_inputs
    spec, out = grid_spec(), tmp_path / "ds"
    prepare([d], out, OPTS, spec=spec)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "staging").glob("*.json")}
    again = prepare([d], out, OPTS, spec=spec)
    assert (again.processed, again.skipped, again.part_written, again.finalized) == (0, 9, False, False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "staging").glob("*.json")} == stamps
    assert not list((out / "staging").glob("*.npy"))  # arrays live in the part's shards now
    fixed = random_volume(5, length=45)
    write_volume(d / "sub-05_task-rest_bold.nii.gz", fixed)  # the too-short scan is replaced
    third = prepare([d], out, OPTS, spec=spec)
    assert (third.processed, third.skipped, third.finalized) == (1, 8, True)  # only the changed scan
    assert "sub-05_task-rest" not in {f["scan_id"] for f in third.failures}
    ds = Dataset(out)
    row = [r["scan_id"] for r in ds.manifest].index("sub-05_task-rest")
    np.testing.assert_allclose(ds.read(row), parcel_means(fixed, spec), rtol=1e-6)
    assert len(ds) == 4 and len(ds.failures) == 5


def _bids_series(root, n_subjects=8, sessions=2, length=50):
    rng = np.random.default_rng(0)
    truth = {}
    for s in range(n_subjects):
        for k in range(sessions):
            path = root / f"sub-{s:02d}" / f"sub-{s:02d}_ses-{k}_task-rest_bold.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            truth[f"sub-{s:02d}_ses-{k}_task-rest"] = x = rng.normal(loc=s, scale=1 + k, size=(length, 4))
            write_series(path, x)
    (root / "participants.tsv").write_text("participant_id\tage\tsite\n" + "".join(
        f"sub-{s:02d}\t{20 + s}\t{'AB'[s % 2]}\n" for s in range(n_subjects - 1)))
    return truth


def test_shards_merge_like_one_job_with_subject_splits_and_train_stats(tmp_path):
    truth = _bids_series(tmp_path / "bids")
    spec = grid_spec()
    kw = dict(spec=spec, split_fractions=(0.5, 0.25, 0.25), seed=3)
    first = prepare([tmp_path / "bids"], tmp_path / "sharded", OPTS, shard=(0, 2), **kw)
    assert not first.finalized and first.missing_parts == [1] and first.n_mine == 8
    with pytest.raises(ValueError, match="parts \\[1\\] of 2 are missing"):
        prepare([tmp_path / "bids"], tmp_path / "sharded", OPTS, shard=(0, 2), force_finalize=True, **kw)
    assert prepare([tmp_path / "bids"], tmp_path / "sharded", OPTS, shard=(1, 2), **kw).finalized
    prepare([tmp_path / "bids"], tmp_path / "single", OPTS, **kw)
    sharded, single = Dataset(tmp_path / "sharded"), Dataset(tmp_path / "single")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("shard", "index")} for r in rows]
    assert strip(sharded.manifest) == strip(single.manifest) and len(single) == 16
    for i, row in enumerate(sharded.manifest):
        np.testing.assert_array_equal(sharded.read(i), single.read(i))
        np.testing.assert_allclose(sharded.read(i), truth[row["scan_id"]].T, rtol=1e-6)
    splits = {}
    for row in single.manifest:
        splits.setdefault(row["subject"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values()) and {min(s) for s in splits.values()} == {"train", "val", "test"}
    train = np.concatenate([truth[r["scan_id"]] for r in single.manifest if r["split"] == "train"], axis=0)
    q1, median, q3 = np.percentile(train, [25, 50, 75], axis=0)
    np.testing.assert_allclose(single.median, median, rtol=1e-5)
    np.testing.assert_allclose(single.iqr, q3 - q1, rtol=1e-5)
    by_subject = {r["subject"]: r for r in single.manifest}
    assert by_subject["03"]["age"] == "23" and by_subject["03"]["site"] == "B" and by_subject["02"]["site"] == "A"
    assert by_subject["07"]["age"] == "n/a" and by_subject["07"]["site"] == ""
    with pytest.raises(OptionsMismatchError, match="another shard count"):
        prepare([tmp_path / "bids"], tmp_path / "sharded", OPTS, shard=(0, 3), **kw)


def test_workers_pool_matches_in_process(tmp_path):
    _bids_series(tmp_path / "bids", n_subjects=3, sessions=1)
    spec = grid_spec()
    pooled = prepare([tmp_path / "bids"], tmp_path / "pool", OPTS, workers=2, spec=spec)
    prepare([tmp_path / "bids"], tmp_path / "serial", OPTS, workers=0, spec=spec)
    assert pooled.processed == 3 and pooled.finalized
    a, b = Dataset(tmp_path / "pool"), Dataset(tmp_path / "serial")
    assert a.manifest == b.manifest
    for i in range(len(a)):
        np.testing.assert_array_equal(a.read(i), b.read(i))


def _run_cli(module, argv):
    """The command through ``brainjax.cli.main``, which turns its errors into one line and an exit code."""
    return cli_main([module.__name__.rsplit(".", 1)[-1], *argv])


def test_info_cli_and_errors(bad_inputs, tmp_path, capsys, monkeypatch):
    d, _ = bad_inputs
    out = tmp_path / "ds"
    assert _run_cli(info_cmd, [str(tmp_path)]) == 2
    assert "missing dataset.json (not a finished brainjax dataset" in capsys.readouterr().err
    prepare([d], out, OPTS, shard=(0, 2), spec=grid_spec())
    assert _run_cli(info_cmd, [str(out)]) == 2
    assert "prepare has not finished: 5 scans staged" in capsys.readouterr().err
    prepare([d], out, OPTS, shard=(1, 2), spec=grid_spec())
    assert _run_cli(info_cmd, [str(out), "--failures", "2"]) == 0
    text = capsys.readouterr().out
    assert "scans 3, subjects 3" in text and "atlas test-grid (volume): 4 parcels, 2 networks" in text
    assert "TR (s): 2 (3 scans)" in text and "length (TRs): min 60, median 60, max 60" in text
    assert "failed scans: 6" in text and "... 4 more in" in text
    # the prepare command (its atlas swapped for the test grid): bad inputs exit 2 with the reason
    import brainjax.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "load_atlas", lambda *a, **k: grid_spec())
    assert _run_cli(prepare_cmd, [str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "input not found" in capsys.readouterr().err
    argv = [str(d), "--out", str(tmp_path / "cli"), "--no-detrend", "--high-pass", "none", "--standardize", "none",
            "--confounds", "none", "--min-length", "30", "--quiet"]
    assert _run_cli(prepare_cmd, argv + ["--strict"]) == 1
    assert "NaN/Inf" in capsys.readouterr().err
    assert _run_cli(prepare_cmd, argv) == 0
    assert "dataset ready" in capsys.readouterr().out
    assert [r["scan_id"] for r in Dataset(tmp_path / "cli").manifest] == [r["scan_id"] for r in Dataset(out).manifest]


def _write_gifti(path, data, time_step_ms=None):
    """[V, T] as one GIfTI data array per time point (FreeSurfer writes TimeStep in ms on the first)."""
    meta = {"TimeStep": str(time_step_ms)} if time_step_ms is not None else {}
    arrays = [nib.gifti.GiftiDataArray(np.ascontiguousarray(col, np.float32), meta=meta if t == 0 else {},
                                       intent="NIFTI_INTENT_TIME_SERIES") for t, col in enumerate(data.T)]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), path)


def test_gifti_pairs_tr_metadata_and_empty_parcels(tmp_path):
    rng = np.random.default_rng(5)
    labels = {"lh": np.array([0, 0, 1, -1, 1, 2]), "rh": np.array([2, 2, 1, 0, -1, 0])}
    atlas = Atlas("tiny-surface", "surface", ("p0", "p1", "p2"), np.zeros((3, 3)))
    spec = AtlasSpec(atlas=atlas, label_image=None, label_values=None, radius=None, vertex_labels=labels, mesh="toy")
    d = tmp_path / "surf"
    d.mkdir()
    hemis = {h: rng.normal(size=(6, 40)).astype(np.float32) for h in ("lh", "rh")}  # GIfTI stores float32
    for h, side in (("lh", "L"), ("rh", "R")):
        _write_gifti(d / f"sub-01_task-rest_hemi-{side}_space-toy_bold.func.gii", hemis[h], time_step_ms=800)
    _write_gifti(d / "sub-02_task-rest_hemi-L_space-toy_bold.func.gii", hemis["lh"][:5], time_step_ms=800)
    _write_gifti(d / "sub-02_task-rest_hemi-R_space-toy_bold.func.gii", hemis["rh"][:5], time_step_ms=800)
    _write_gifti(d / "sub-03_task-rest_hemi-L_space-toy_bold.func.gii", hemis["lh"])
    result = prepare([d], tmp_path / "ds", OPTS, spec=spec)
    ds = Dataset(tmp_path / "ds")
    assert [(r["scan_id"], r["tr"]) for r in ds.manifest] == [("sub-01_task-rest", 0.8)]
    expected = [np.concatenate([hemis["lh"][labels["lh"] == p], hemis["rh"][labels["rh"] == p]]).mean(0)
                for p in range(3)]
    np.testing.assert_allclose(ds.read(0), np.stack(expected), rtol=1e-6, atol=1e-7)
    reasons = {f["scan_id"]: f["reason"] for f in result.failures}
    lh_file = d / "sub-02_task-rest_hemi-L_space-toy_bold.func.gii"
    assert reasons["sub-02_task-rest"].startswith(f"{lh_file}: 5 vertices, but the atlas's lh mesh has 6")
    assert reasons["sub-03_task-rest"] == "surface series has no rh hemisphere partner" and len(reasons) == 2
    # a parcel without any vertex in the atlas is named, not averaged as zeros
    empty = {"lh": np.where(labels["lh"] == 1, -1, labels["lh"]), "rh": np.where(labels["rh"] == 1, -1, labels["rh"])}
    spec_empty = AtlasSpec(atlas=atlas, label_image=None, label_values=None, radius=None, vertex_labels=empty,
                           mesh="toy")
    with pytest.raises(ScanError, match="1 parcels have no voxels/vertices inside the data: p1"):
        prepare([d / f"sub-01_task-rest_hemi-{s}_space-toy_bold.func.gii" for s in "LR"], tmp_path / "empty", OPTS,
                spec=spec_empty, strict=True)


def test_an_atlas_off_the_data_grid_is_named_as_such(tmp_path):
    import dataclasses

    src = tmp_path / "in"
    src.mkdir()
    write_volume(src / "sub-01_task-rest_bold.nii.gz", np.random.default_rng(0).normal(size=(6, 6, 4, 60)))
    spec = grid_spec()
    far = AFFINE.copy()
    far[:3, 3] += 1000.0  # the labels sit a metre away from the data
    spec = dataclasses.replace(spec, label_image=nib.Nifti1Image(np.asarray(spec.label_image.dataobj), far))
    with pytest.raises(DatasetError, match="could not be applied to this image's grid .*No label left"):
        prepare([src], tmp_path / "out", OPTS, spec=spec)


def test_a_full_disk_names_the_file_being_written(tmp_path):
    import errno

    from brainjax.paths import atomic_path

    target = tmp_path / "manifest.tsv"
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() reports it: no file name
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
