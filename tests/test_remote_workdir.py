"""gs:// work dirs end to end, offline: a local GCS emulator stands in for Google Cloud Storage.

``gcp-storage-emulator`` (a test dependency) serves the GCS JSON API on localhost in this process. Both GCS
clients a run uses are pointed at it: gcsfs (epath's backend for metrics, config, figures, TensorBoard and
Orbax's own files) through ``STORAGE_EMULATOR_HOST``, and tensorstore (the checkpoint arrays) through
``TENSORSTORE_GCS_HTTP_URL``. The emulator omits the ``x-goog-generation`` header that GCS sends with every
object download and tensorstore needs (its OCDBT manifests are generation-checked); the shim below adds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from http import HTTPStatus

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config, tiny_dataset
from etils import epath

from brainjax import paths
from brainjax.config import to_json
from brainjax.train import logging as log_lib
from brainjax.train.checkpoint import Checkpointer
from brainjax.train.logging import MetricsLog, read_metrics

BUCKET = "test-bucket"


def _with_generation(handler):
    def handle(request, response, storage, *args, **kwargs):
        handler(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT) and "object_id" in request.params:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
    return handle


@pytest.fixture(scope="module")
def bucket():
    """``gs://test-bucket`` served by an in-process emulator (module scope: the clients cache the endpoint)."""
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects

    for _, table in emulator.HANDLERS:
        for method, handler in list(table.items()):
            if handler in (objects.get, objects.download):
                table[method] = _with_generation(handler)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # expected 404s on existence checks
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", url)
        env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        env.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # no storage-control gRPC probe per bucket
        yield epath.Path(f"gs://{BUCKET}")
    server.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


# ------------------------------------------------------------------------------------------------ paths
def test_workdir_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert os.fspath(paths.workdir_path("gs://bucket/run")) == "gs://bucket/run"  # pathlib: "gs:/bucket/run"
    assert os.fspath(paths.workdir_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.is_remote("gs://b/x") and paths.is_remote(paths.workdir_path("gs://b/x"))
    assert not paths.is_remote(tmp_path) and not paths.is_remote("runs/gs:/odd")
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.workdir_path("runs/a")) == os.path.join(os.fspath(tmp_path), "runs", "a")
    for bad, match in (("", "empty"), ("file:///tmp/x", "file://"), ("http://host/x", "http://")):
        with pytest.raises(ValueError, match=match):
            paths.workdir_path(bad)
    monkeypatch.setattr(paths, "_installed", lambda module: module not in ("gcsfs", "tensorflow"))
    with pytest.raises(ImportError, match=r"gcsfs package \(pip install 'brainjax\[gcs\]'\)"):
        paths.workdir_path("gs://bucket/run")
    assert os.fspath(paths.workdir_path("S3://b/x")) == "s3://b/x"  # only a missing package is refused


def test_atomic_write_and_move_local(tmp_path):
    target = tmp_path / "a.json"
    paths.atomic_write_text(target, "one")
    paths.atomic_write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_text("x")
    paths.move_tree(tmp_path / "src", tmp_path / "new" / "parent" / "dst")
    assert (tmp_path / "new" / "parent" / "dst" / "sub" / "f").read_text() == "x"
    assert not (tmp_path / "src").exists()
    with pytest.raises(ValueError, match="one is local"):
        paths.move_tree(tmp_path / "new", "gs://b/elsewhere")


def test_atomic_path_keeps_the_old_file_on_error_and_json_is_strict(tmp_path):
    target = tmp_path / "r.json"
    paths.write_json(target, {"a": float("nan"), "b": (np.float32(1.5), np.inf), 3: np.arange(2)})
    assert target.read_text().endswith("}\n")
    assert json.loads(target.read_text()) == {"a": None, "b": [1.5, None], "3": [0, 1]}
    with pytest.raises(RuntimeError, match="half"), paths.atomic_path(target) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("half written")
    assert json.loads(target.read_text())["b"] == [1.5, None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # the temporary file is gone


def test_remote_copy_move_and_figure(bucket, tmp_path):
    local = tmp_path / "tree"
    (local / "a" / "b").mkdir(parents=True)
    (local / "top.txt").write_text("top")
    (local / "a" / "b" / "deep.bin").write_bytes(b"\x00\x01")
    assert paths.copy_tree(local, bucket / "copied") == 2
    paths.move_tree(bucket / "copied", bucket / "aside" / "moved")
    assert not (bucket / "copied").exists()
    assert (bucket / "aside" / "moved" / "top.txt").read_text() == "top"
    assert (bucket / "aside" / "moved" / "a" / "b" / "deep.bin").read_bytes() == b"\x00\x01"

    from brainjax.eval.figures import _pyplot, save_figure

    plt = _pyplot()
    for target in (tmp_path / "fig.png", bucket / "fig.png"):  # the same figure, drawn twice
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1, 4])
        save_figure(fig, target)
    assert (bucket / "fig.png").read_bytes() == (tmp_path / "fig.png").read_bytes()
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths.write_json(bucket / "report.json", {"r2": float("nan")})
    assert json.loads((bucket / "report.json").read_text()) == {"r2": None}


# ------------------------------------------------------------------------------------------------ logs
def test_remote_metrics_log_uploads_on_sync_and_truncates(bucket):
    run = bucket / "metrics-run"
    log = MetricsLog(run, sync_seconds=1e9)  # only explicit syncs upload
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step, "bad": float("nan")})
    assert read_metrics(run) == []  # nothing uploaded between syncs
    log.sync()
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert read_metrics(run)[1] == {"step": 2, "loss": 0.5, "bad": "nan"}
    log.write(4, {"loss": 0.25})
    log.close()  # uploads the pending record and the TensorBoard events
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 5, "lo')  # torn line
    resumed = MetricsLog(run, tensorboard=False)
    resumed.truncate_after(2)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    resumed.write(3, {"loss": 0.1})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == [(1, 1.0), (2, 0.5), (3, 0.1)]


def test_peak_flops_uses_local_device_and_only_process_0_caches(bucket, monkeypatch):
    seen = []
    real = jax.local_devices
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: seen.append(1) or real(*a, **k))
    cache = bucket / "peak"
    peak = log_lib.measure_peak_flops("float32", cache, size=64, repeats=1)
    assert seen and peak > 0
    stored = json.loads((cache / "peak_flops.json").read_text())
    assert list(stored.values()) == [peak]
    assert log_lib.measure_peak_flops("float32", cache, size=64, repeats=1) == peak  # read back, not remeasured

    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    other = bucket / "peak-other"
    assert log_lib.measure_peak_flops("float32", other, size=64, repeats=1) > 0
    assert not (other / "peak_flops.json").exists()


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.slow
def test_trainer_on_gs_resumes_exactly_and_non_main_writes_no_logs(data, bucket, tmp_path, monkeypatch):
    """A gs:// run stopped at step 2 and resumed ends with the parameters of an uninterrupted local run.

    The local run plays process 1 of a multi-process job: no logs, config, figure or peak measurement.
    """
    cfg = tiny_config(4, train={"eval_every": 4, "peak_flops": 0.0, "figure": True})
    measured = []
    real_measure = log_lib.measure_peak_flops
    monkeypatch.setattr(log_lib, "measure_peak_flops", lambda *a, **k: measured.append(a) or real_measure(
        "float32", a[1], size=64, repeats=1))
    local = make_trainer(cfg, data, tmp_path / "local")
    local.is_main = False  # as on process 1 of a multi-process run
    reference = local.run()
    assert measured == []
    written = ("peak_flops.json", "metrics.jsonl", "config.json", "reconstruction.png", "tb")
    assert not any((tmp_path / "local" / name).exists() for name in written)
    local_ckpt = Checkpointer(tmp_path / "local" / "checkpoints")
    assert local_ckpt.steps() == [2, 4]  # every process takes part in checkpoints
    local_ckpt.close()

    run = bucket / "resume"
    first = make_trainer(cfg, data, os.fspath(run)).run(until=2)
    assert first.preempted and first.final_step == 2
    second = make_trainer(cfg, data, os.fspath(run)).run()
    assert second.start_step == 2 and second.final_step == 4
    for a, b in zip(jax.tree.leaves(second.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise, as a local resume
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4] and "val_r2" in read_metrics(run)[-1]
    expected = json.loads(to_json(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))))
    assert json.loads((run / "config.json").read_text()) == expected
    assert [os.fspath(a[1]) for a in measured] == [os.fspath(run)] * 2  # main measures, into the gs:// dir
    assert json.loads((run / "peak_flops.json").read_text())
    assert (run / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([p for p in (run / "tb").iterdir() if p.name.startswith("events.out.tfevents")]) == 2  # one a run
    ckpt = Checkpointer(run / "checkpoints")
    assert ckpt.steps() == [2, 4]
    ckpt.close()
    assert not os.path.exists("gs:")  # pathlib would have made ./gs:/test-bucket/resume


def test_corrupt_remote_step_is_moved_aside(bucket):
    directory = bucket / "corrupt" / "checkpoints"
    ckpt = Checkpointer(directory, async_save=False)
    for step in (1, 2):
        ckpt.save(step, {"x": jnp.full((6,), float(step))}, {"pos": step}, {"cfg": 1}, {})
    data_files = [p for p in paths.relative_files(directory / "2" / "state") if "/d/" in "/" + p]
    assert data_files, paths.relative_files(directory / "2" / "state")
    for name in data_files:  # cut every array object in half, as a bad upload would
        blob = (directory / "2" / "state" / name).read_bytes()
        (directory / "2" / "state" / name).write_bytes(blob[: len(blob) // 2])
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"x": jax.ShapeDtypeStruct((6,), jnp.float32, sharding=one_device)}
    with pytest.warns(UserWarning, match="checkpoint step 2 .* unreadable"):
        restored = ckpt.restore_latest(abstract)
    assert restored.step == 1 and restored.data == {"pos": 1}
    np.testing.assert_array_equal(restored.state["x"], np.ones(6))
    assert ckpt.steps() == [1] and not (directory / "2").exists()
    aside = list((bucket / "corrupt" / "corrupt_checkpoints").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("2-") and (aside[0] / "state").exists()
    ckpt.close()
