"""``prepare`` against damage and races: missing or flipped shards (rebuilt, ``info --verify``), two runs of one
shard (a lock), two jobs finalizing at once, participants tables that do not fit, and non-real input dtypes."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
from test_prepare import AFFINE, OPTS, _bids_series, grid_spec, write_series, write_volume

import brainjax.data.prepare as prepare_module
from brainjax.cli import main as cli_main
from brainjax.data.clean import ScanError
from brainjax.data.dataset import Dataset, DatasetError
from brainjax.data.locks import LockedError, acquire_lock, release_lock
from brainjax.data.pipeline import eval_batches
from brainjax.data.prepare import PrepareWarning, prepare
from brainjax.data.records import CorruptRecordError, ShardReader
from brainjax.errors import InputError

CLI_OPTS = ["--atlas", "test-grid", "--no-detrend", "--high-pass", "none", "--standardize", "none",
            "--confounds", "none", "--min-length", "30", "--quiet"]


@pytest.fixture
def grid_atlas(monkeypatch):
    """The prepare command with its atlas swapped for the test grid."""
    monkeypatch.setattr(prepare_module, "load_atlas", lambda *a, **k: grid_spec())


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.array_record"))}


def _arrays(out):
    ds = Dataset(out)
    return {r["scan_id"]: ds.read(i) for i, r in enumerate(ds.manifest)}


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_deleted_shard_is_reported_and_rebuilt_identically(tmp_path, capsys, grid_atlas):
    _bids_series(tmp_path / "bids", n_subjects=4, sessions=1)
    out = tmp_path / "ds"
    argv = ["prepare", str(tmp_path / "bids"), "--out", str(out), *CLI_OPTS]
    assert cli_main(argv) == 0
    capsys.readouterr()
    shards, arrays = _shard_bytes(out), _arrays(out)
    manifest, stats = (out / "manifest.tsv").read_text(), (out / "stats.npz").read_bytes()
    (name,) = shards
    opened = Dataset(out)
    for path in (out / "shards").glob("*.array_record"):
        path.unlink()
    with pytest.raises(DatasetError, match=f"shard file shards/{name} is missing; re-run"):
        opened.read(0)  # deleted after opening
    with pytest.raises(DatasetError, match=f"shard file shards/{name} is missing \\(4 scans: sub-00_ses-0_task-rest"):
        Dataset(out)
    with pytest.raises(DatasetError, match=f"shards/{name} is missing"):
        eval_batches([str(out)], "train", 10, 2)  # pretrain's loader: no FileNotFoundError traceback later
    assert cli_main(["info", str(out)]) == 2
    assert f"shards/{name} is missing" in _one_line_error(capsys)
    assert cli_main(["info", str(out), "--verify"]) == 2
    err = _one_line_error(capsys)
    assert f"4 of 4 scans damaged: shards/{name}: sub-00_ses-0_task-rest, sub-01_ses-0_task-rest" in err
    assert f"shard {name} is missing" in err
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert f"rebuilt shard {name} (missing)" in text and "processed 4, already staged 0" in text
    assert _shard_bytes(out) == shards  # the same records, byte for byte
    assert (out / "manifest.tsv").read_text() == manifest and (out / "stats.npz").read_bytes() == stats
    for scan_id, array in _arrays(out).items():
        np.testing.assert_array_equal(array, arrays[scan_id])
    assert cli_main(["info", str(out), "--verify"]) == 0
    assert "verified: all 4 records in 1 shards read back intact" in capsys.readouterr().out
    again = prepare([tmp_path / "bids"], out, OPTS, spec=grid_spec())  # the options the command line gave
    assert (again.processed, again.repaired, again.part_written, again.finalized) == (0, {}, False, False)


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _unreadable(path, n):
    reader, bad = ShardReader(path), []
    for i in range(n):
        try:
            reader.read(i)
        except CorruptRecordError:
            bad.append(i)
    reader.close()
    return bad


def test_flipped_byte_is_named_by_verify_and_repaired(tmp_path, capsys):
    _bids_series(tmp_path / "bids", n_subjects=4, sessions=1)
    out, spec = tmp_path / "ds", grid_spec()
    prepare([tmp_path / "bids"], out, OPTS, spec=spec)
    shards, arrays = _shard_bytes(out), _arrays(out)
    (name,) = shards
    manifest = Dataset(out).manifest
    _flip(out / "shards" / name, 500)  # inside the first record's (compressed) chunk
    bad = [manifest[i]["scan_id"] for i in _unreadable(out / "shards" / name, len(manifest))]
    assert bad == ["sub-00_ses-0_task-rest"]
    assert len(Dataset(out)) == 4  # opening only checks that shards exist
    assert cli_main(["info", str(out), "--verify"]) == 2
    err = _one_line_error(capsys)
    assert f"1 of 4 scans damaged: shards/{name}: sub-00_ses-0_task-rest (" in err and "sub-01" not in err
    result = prepare([tmp_path / "bids"], out, OPTS, spec=spec)
    assert result.repaired == {name: "size or checksum differs from the part metadata"}
    assert (result.processed, result.skipped) == (1, 3)  # only the unreadable scan is processed again
    assert _shard_bytes(out) == shards
    for scan_id, array in _arrays(out).items():
        np.testing.assert_array_equal(array, arrays[scan_id])
    assert cli_main(["info", str(out), "--verify"]) == 0


def test_parts_without_checksums_still_load_and_repair(tmp_path):
    """Datasets written before parts kept shard checksums (and dataset.json a parts digest)."""
    _bids_series(tmp_path / "bids", n_subjects=3, sessions=1)
    out, spec = tmp_path / "ds", grid_spec()
    prepare([tmp_path / "bids"], out, OPTS, spec=spec)
    shards = _shard_bytes(out)
    part = out / "parts" / "part-0-of-1.jsonl"
    rows = [json.loads(line) for line in part.read_text().splitlines()]
    part.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("shard_")}) + "\n"
                            for r in rows))
    info = json.loads((out / "dataset.json").read_text())
    del info["parts_digest"]
    (out / "dataset.json").write_text(json.dumps(info))
    again = prepare([tmp_path / "bids"], out, OPTS, spec=spec)  # records decoded instead: all intact
    assert (again.processed, again.repaired, again.part_written, again.finalized) == (0, {}, False, False)
    _flip(out / "shards" / next(iter(shards)), 500)
    repaired = prepare([tmp_path / "bids"], out, OPTS, spec=spec)
    assert repaired.processed == 1 and repaired.part_written and repaired.finalized
    assert _shard_bytes(out) == shards and not Dataset(out).verify()


def test_second_prepare_of_the_same_shard_is_refused(tmp_path, capsys, grid_atlas, monkeypatch):
    _bids_series(tmp_path / "bids", n_subjects=3, sessions=1)
    out = tmp_path / "ds"
    argv = ["prepare", str(tmp_path / "bids"), "--out", str(out), *CLI_OPTS]
    started, go = threading.Event(), threading.Event()
    real = prepare_module.prepare_scan

    def slow(scan, *args):
        started.set()
        assert go.wait(60)
        return real(scan, *args)

    monkeypatch.setattr(prepare_module, "prepare_scan", slow)
    codes = []
    first = threading.Thread(target=lambda: codes.append(cli_main(argv)))
    first.start()
    assert started.wait(60)
    assert cli_main(argv) == 2  # the first run holds the lock of part 0/1
    err = _one_line_error(capsys)
    lock = out / ".lock-part-0-of-1"
    assert f"{lock} is held by pid {os.getpid()} on host {socket.gethostname()}" in err
    assert "another `brainjax prepare` (shard 0/1) is running" in err
    go.set()
    first.join(60)
    assert codes == [0] and len(Dataset(out)) == 3 and not Dataset(out).verify()
    assert not list(out.glob("tmp-part-*")) and not list(out.glob(".lock-*"))


def test_lock_of_a_live_process_refuses_a_dead_one_is_taken_over(tmp_path, capsys, grid_atlas):
    _bids_series(tmp_path / "bids", n_subjects=3, sessions=1)
    out = tmp_path / "ds"
    out.mkdir()
    lock = out / ".lock-part-0-of-1"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "since": "earlier"}))
        (out / "tmp-part-0-of-1.999999").mkdir()  # the half-written part of a dead run
        (out / "tmp-part-0-of-1.999999" / "junk").write_text("x")
        argv = ["prepare", str(tmp_path / "bids"), "--out", str(out), *CLI_OPTS]
        assert cli_main(argv) == 2
        assert f"{lock} is held by pid {other.pid} on host {socket.gethostname()} since earlier" in \
            _one_line_error(capsys)
        assert lock.exists() and (out / "tmp-part-0-of-1.999999").exists()
    finally:
        other.kill()
        other.wait()  # reaped: its pid is dead now
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert f"warning: took over the stale lock {lock} of pid {other.pid}" in captured.err
    assert "dataset ready" in captured.out and len(Dataset(out)) == 3
    assert not lock.exists() and not list(out.glob("tmp-part-*")) and not list(out.glob(".lock-*"))
    # another host's lock cannot be judged dead: refused, with the way out
    lock.write_text(json.dumps({"pid": 1, "host": "some-other-node", "since": "earlier"}))
    with pytest.raises(LockedError, match=f"held by pid 1 on host some-other-node.*delete {lock}"):
        prepare([tmp_path / "bids"], out, OPTS, spec=grid_spec())


def test_jobs_finishing_together_finalize_once(tmp_path, monkeypatch):
    _bids_series(tmp_path / "bids", n_subjects=4, sessions=1)
    out, spec = tmp_path / "ds", grid_spec()
    out.mkdir()
    calls = []
    real = prepare_module.finalize
    monkeypatch.setattr(prepare_module, "finalize", lambda *a, **k: calls.append(1) or real(*a, **k))
    held = acquire_lock(out / ".lock-finalize", "test", [].append)  # as if a third job finalized
    results, errors = {}, []

    def job(i):
        try:
            results[i] = prepare([tmp_path / "bids"], out, OPTS, shard=(i, 2), spec=spec)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=job, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all((out / "parts" / f"part-{i}-of-2.jsonl").exists() for i in (0, 1)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    assert any(t.is_alive() for t in threads) and not (out / "dataset.json").exists()  # waiting for the lock
    release_lock(out / ".lock-finalize", held)
    for t in threads:
        t.join(60)
    assert not errors and calls == [1] and sum(r.finalized for r in results.values()) == 1
    assert len(Dataset(out)) == 4 and not list(out.glob(".lock-*"))


def _participants_inputs(tmp_path, table):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    for s in ("01", "02"):
        write_series(d / f"sub-{s}_task-rest_bold.npy", rng.normal(size=(40, 4)))
    (d / "participants.tsv").write_text(table)
    return d


def test_duplicated_participant_is_an_error_naming_the_lines(tmp_path, capsys, grid_atlas):
    d = _participants_inputs(tmp_path, "participant_id\tage\nsub-01\t20\nsub-02\t30\n01\t21\n")
    with pytest.raises(InputError, match=r"1 participants appear on more than one row: 'sub-01' on lines 2, 4"):
        prepare([d], tmp_path / "ds", OPTS, spec=grid_spec())
    assert cli_main(["prepare", str(d), "--out", str(tmp_path / "cli"), *CLI_OPTS]) == 2
    assert "participants.tsv: 1 participants appear on more than one row" in _one_line_error(capsys)


def test_participants_that_match_no_scan_warn_with_counts(tmp_path, capsys, grid_atlas):
    d = _participants_inputs(tmp_path, "participant_id\tage\nsub-A\t20\nsub-B\t30\n")
    with pytest.warns(PrepareWarning, match=r"2 of 2 participants match no scan subject \(e.g. 'A', 'B'\); "
                                            r"2 of 2 scanned subjects have no row"):
        result = prepare([d], tmp_path / "ds", OPTS, spec=grid_spec())
    assert len(result.warnings) == 1 and "participant_id should be sub-<label>" in result.warnings[0]
    (d / "participants.tsv").write_text("participant_id\tage\nsub-01\t20\nsub-03\t30\n")
    assert cli_main(["prepare", str(d), "--out", str(tmp_path / "cli"), *CLI_OPTS]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "1 of 2 participants match no scan subject (e.g. '03')" in err
    assert "1 of 2 scanned subjects have no row, their phenotypes are n/a (e.g. '02')" in err
    ages = {r["subject"]: r["age"] for r in Dataset(tmp_path / "cli").manifest}
    assert ages == {"01": "20", "02": "n/a"}


def _object_npy_header(path, shape) -> None:
    """An .npy whose header declares dtype object (what pickled arrays have), written without pickling: the
    reader must refuse it from the header alone."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": shape})


def test_non_real_dtypes_are_refused_naming_type_and_file(tmp_path, capsys, grid_atlas):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    good = rng.normal(size=(40, 4))
    write_series(d / "sub-01_task-rest_bold.npy", good)
    np.save(d / "sub-02_task-rest_bold.npy", good + 1j * good)
    np.save(d / "sub-03_task-rest_bold.npy", good > 0)
    np.save(d / "sub-04_task-rest_bold.npy", good.astype(str))
    _object_npy_header(d / "sub-05_task-rest_bold.npy", good.shape)
    np.savetxt(d / "sub-06_task-rest_bold.csv", good + 1j, delimiter=",")
    np.savetxt(d / "sub-07_task-rest_bold.tsv", good > 0, delimiter="\t", fmt="%s")
    np.save(d / "sub-08_task-rest_bold.npy", (good * 100).astype(np.int16))  # integers are real numbers
    img = nib.Nifti1Image(rng.normal(size=(6, 6, 4, 40)).astype(np.complex64), AFFINE)
    img.header.set_zooms((2.0, 2.0, 2.0, 2.0))
    nib.save(img, d / "sub-09_task-rest_bold.nii.gz")
    write_volume(d / "sub-10_task-rest_bold.nii.gz", 100 + rng.normal(size=(6, 6, 4, 40)))
    for k in range(2, 10):  # sidecars give the TR
        (d / f"sub-{k:02d}_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    result = prepare([d], tmp_path / "ds", OPTS, spec=grid_spec())
    reasons = {f["scan_id"][:6]: f["reason"] for f in result.failures}
    assert reasons == {
        "sub-02": "sub-02_task-rest_bold.npy: data type complex128 (complex: the imaginary part would be dropped) "
                  "is refused; a series must hold real numbers (integer or float)",
        "sub-03": "sub-03_task-rest_bold.npy: data type bool (boolean: 0/1 flags, not a signal) is refused; a series "
                  "must hold real numbers (integer or float)",
        "sub-04": "sub-04_task-rest_bold.npy: data type <U32 (text) is refused; a series must hold real numbers "
                  "(integer or float)",
        "sub-05": "sub-05_task-rest_bold.npy: data type object (Python objects) is refused; a series must hold real "
                  "numbers (integer or float)",
        "sub-06": f"sub-06_task-rest_bold.csv: complex value '({good[0, 0]:.18e}+1.000000000000000000e+00j)' "
                  f"on line 1, column 1 is refused; a table must hold real numbers",
        "sub-07": f"sub-07_task-rest_bold.tsv: bool value '{good[0, 0] > 0}' on line 1, column 1 is refused; a table "
                  f"must hold real numbers",
        "sub-09": "sub-09_task-rest_bold.nii.gz: data type complex64 (complex: the imaginary part would be dropped) "
                  "is refused; a series must hold real numbers (integer or float)",
    }
    assert [r["scan_id"] for r in Dataset(tmp_path / "ds").manifest] == [
        "sub-01_task-rest", "sub-08_task-rest", "sub-10_task-rest"]
    assert cli_main(["prepare", str(d / "sub-02_task-rest_bold.npy"), "--out", str(tmp_path / "strict"),
                     *CLI_OPTS, "--strict"]) == 1
    assert "data type complex128 (complex" in capsys.readouterr().err


def test_complex_gifti_is_refused(tmp_path):
    from brainjax.data.readers import load_hemisphere

    path = tmp_path / "sub-01_task-rest_hemi-L_space-toy_bold.func.gii"
    darray = nib.gifti.GiftiDataArray(np.ones((6, 30), np.complex64), datatype="NIFTI_TYPE_COMPLEX64",
                                      intent="NIFTI_INTENT_TIME_SERIES")
    nib.save(nib.gifti.GiftiImage(darrays=[darray]), path, mode="force")
    with pytest.raises(ScanError, match=f"{path.name}: data type complex64 \\(complex"):
        load_hemisphere(path)


def test_readme_cluster_commands(tmp_path, capsys, grid_atlas):
    """README: N shard jobs, then ``--shard 0/N --finalize`` to merge again (a bare --finalize means N = 1)."""
    _bids_series(tmp_path / "bids", n_subjects=3, sessions=1)
    argv = ["prepare", str(tmp_path / "bids"), "--out", str(tmp_path / "ds"), *CLI_OPTS]
    assert [cli_main(argv + ["--shard", f"{i}/2"]) for i in (0, 1)] == [0, 0]
    assert "dataset ready" in capsys.readouterr().out
    assert cli_main(argv + ["--finalize"]) == 2
    assert "another shard count (part-0-of-2.jsonl); use --shard I/N with the same N" in _one_line_error(capsys)
    assert cli_main(argv + ["--shard", "0/2", "--finalize"]) == 0
    assert "processed 0, already staged 2" in capsys.readouterr().out and len(Dataset(tmp_path / "ds")) == 3
