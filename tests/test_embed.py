"""``brainjax embed`` and eval-only checkpoint loading: a checkpoint trained on a 2 x 4 mesh loads onto 8
devices on the data axis, and per-scan embeddings (and the token covariance readout) equal the encoder run
window by window by hand."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from _trainer_utils import PARCELS, WINDOW, cli_env, make_trainer, tiny_config, tiny_dataset
from jax.sharding import NamedSharding, PartitionSpec

from brainjax.data.dataset import Dataset
from brainjax.errors import NoCheckpointError
from brainjax.eval.embeddings import embed_dataset
from brainjax.run import load_model

pytestmark = pytest.mark.slow  # trains a model, then embeds through the API and the CLI

assert jax.device_count() >= 8, f"needs 8 simulated devices (tests/conftest.py), found {jax.device_count()}"


def _tokcov_by_hand(tokens: np.ndarray) -> np.ndarray:
    """Window mean of the Fisher-z correlations of parcels' tokens centred over patches, upper triangle.

    tokens: [windows, P, N, W]. Once each dimension is centred over patches, Pearson correlation of the
    flattened [P, N * W] rows (np.corrcoef) is the readout's mean-over-n-and-w covariance normalised.
    """
    centred = tokens - tokens.mean(2, keepdims=True)
    z = [np.arctanh(np.clip(np.corrcoef(c.reshape(c.shape[0], -1)), -0.999999, 0.999999)) for c in centred]
    return np.mean(z, 0)[np.triu_indices(tokens.shape[1], k=1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    data = tiny_dataset(root / "data")
    make_trainer(tiny_config(steps=2), data, root / "run").run()
    return data, root / "run"


def test_embeddings_equal_windowwise_encoder_means(trained):
    data, workdir = trained
    loaded = load_model(workdir)
    assert loaded.step == 2 and dict(loaded.mesh.shape) == {"data": 8, "fsdp": 1}
    arrays = embed_dataset(loaded, str(data), ("train", "val"), batch_size=3)
    ds = Dataset(data)
    assert list(arrays["scan_id"]) == [r["scan_id"] for r in ds.manifest if r["split"] in ("train", "val")]
    assert list(arrays["split"]) == [r["split"] for r in ds.manifest if r["split"] in ("train", "val")]
    for i in (0, len(ds) - 1):
        row = ds.manifest[i]
        signal = ds.normalize(ds.read(i))
        n = signal.shape[1] // WINDOW
        windows = np.stack([signal[:, j * WINDOW:(j + 1) * WINDOW] for j in range(n)])
        batch = {"signal": windows, "parcel_mask": np.ones(windows.shape[:2], bool),
                 "coords": np.broadcast_to(ds.atlas.xyz, (n, *ds.atlas.xyz.shape)).astype(np.float32),
                 "tr": np.full(n, row["tr"], np.float32)}
        replicated = NamedSharding(loaded.mesh, PartitionSpec())  # the parameters' devices; no jit
        params = jax.device_get(loaded.model.embed(jax.device_put(batch, replicated)))
        k = list(arrays["scan_id"]).index(row["scan_id"])
        assert arrays["windows"][k] == n
        np.testing.assert_allclose(arrays["cls"][k], params["cls"].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(arrays["mean"][k], params["mean"].mean(0), rtol=1e-4, atol=1e-5)
        want = _tokcov_by_hand(np.asarray(params["tokens"], np.float64))
        assert arrays["tokcov"].dtype == np.float32 and arrays["tokcov"].shape[1] == PARCELS * (PARCELS - 1) // 2
        np.testing.assert_allclose(arrays["tokcov"][k], want, rtol=1e-3, atol=1e-3)
    without = embed_dataset(loaded, str(data), ("val",), batch_size=3, tokcov=False)
    assert "tokcov" not in without
    np.testing.assert_allclose(without["cls"], arrays["cls"][arrays["split"] == "val"], rtol=1e-5, atol=1e-6)


def test_cli_writes_npz_and_reports_missing_checkpoints(trained, tmp_path):
    data, workdir = trained
    out = tmp_path / "emb" / "e.npz"
    cmd = [sys.executable, "-m", "brainjax.cli", "embed", "--workdir", str(workdir), "--data", str(data),
           "--out", str(out), "--splits", "val"]
    proc = subprocess.run(cmd, env=cli_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out, allow_pickle=False) as npz:
        assert set(npz["split"]) == {"val"} and npz["cls"].shape[0] == npz["scan_id"].shape[0] > 0
        assert int(npz["step"]) == 2 and npz["cls"].dtype == np.float32
        assert npz["tokcov"].shape == (npz["scan_id"].shape[0], PARCELS * (PARCELS - 1) // 2)
    with pytest.raises(NoCheckpointError, match="no checkpoints"):
        load_model(tmp_path)
    with pytest.raises(NoCheckpointError, match="no step 7"):
        load_model(workdir, step=7)
    bad = subprocess.run(cmd[:-2] + ["--splits", "dev"], env=cli_env(1), capture_output=True, text=True)
    assert bad.returncode == 2 and "--splits" in bad.stderr
