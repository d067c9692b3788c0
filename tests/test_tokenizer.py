"""The neural tokenizer through the shared trainer: learning, codebook statistics, checkpoints, encoding."""

import dataclasses

import jax
import numpy as np
import pytest
from _trainer_utils import WINDOW, make_trainer, tiny_config, tiny_dataset
from flax import nnx

from brainjax.cli import main as cli
from brainjax.config import QuantizerConfig
from brainjax.data.dataset import Dataset
from brainjax.run import load_model
from brainjax.train.logging import read_metrics


def _tokenizer_config(steps, kind="vq"):
    cfg = tiny_config(steps=steps, train={"eval_every": steps, "checkpoint_every": steps, "log_every": 5},
                      optim={"base_lr": 3e-3})
    return dataclasses.replace(cfg, objective="tokenizer",
                               quantizer=QuantizerConfig(kind=kind, codebook_size=16, code_dim=8, fsq_levels=(3, 3, 2)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    data = tiny_dataset(root / "data")
    result = make_trainer(_tokenizer_config(40), data, root / "vq").run()
    return data, root / "vq", result


@pytest.mark.slow
def test_vq_tokenizer_learns_and_reports_codebook_statistics(trained):
    _, workdir, result = trained
    logs = [m for m in read_metrics(workdir) if "train_r2" in m]
    assert logs[-1]["train_mse"] < 0.7 * logs[0]["train_mse"]
    assert result.eval["val_r2"] > 0.2
    assert 0 < result.eval["val_usage"] <= 1 and 1 <= result.eval["val_perplexity"] <= 16


@pytest.mark.slow
def test_checkpoint_restores_the_codebook_state(trained):
    _, workdir, result = trained
    loaded = load_model(workdir)
    assert loaded.cfg.objective == "tokenizer" and loaded.model.codebook_size == 16
    restored = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param)))
    final = jax.tree.map(np.asarray, nnx.to_pure_dict(result.params))
    jax.tree.map(np.testing.assert_array_equal, restored, final)
    rest = nnx.state(loaded.model, nnx.Not(nnx.Param))
    flags = [np.asarray(v) for v in jax.tree.leaves(rest) if np.asarray(v).dtype == bool]
    assert flags and all(f.all() for f in flags)  # k-means initialisation happened and was saved


@pytest.mark.slow
def test_encode_writes_every_window_in_time_order(trained, tmp_path):
    data, workdir, _ = trained
    out = tmp_path / "codes.npz"
    assert cli(["tokenizer", "encode", "--workdir", str(workdir), "--data", str(data), "--out", str(out),
                "--batch", "8"]) == 0
    ds, loaded = Dataset(data), load_model(workdir)
    with np.load(out, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert list(arrays["scan_id"]) == [r["scan_id"] for r in ds.manifest]
    n_patches = WINDOW // loaded.cfg.model.patch
    for s in (0, len(ds) - 1):
        parcels, tokens = arrays["shape"][s]
        windows = ds.manifest[s]["length"] // WINDOW
        assert (parcels, tokens) == (8, windows * n_patches)
        codes = arrays["codes"][arrays["offsets"][s]:arrays["offsets"][s + 1]].reshape(parcels, tokens)
        signal = ds.normalize(ds.read(s))
        batch = {"signal": np.stack([signal[:, k * WINDOW:(k + 1) * WINDOW] for k in range(windows)]),
                 "parcel_mask": np.ones((windows, 8), bool), "coords": np.repeat(ds.atlas.xyz[None], windows, 0),
                 "tr": np.full(windows, ds.manifest[s]["tr"], np.float32)}
        by_hand = np.asarray(loaded.model.encode(batch)[0].codes)  # [windows, P, N]
        np.testing.assert_array_equal(codes, by_hand.transpose(1, 0, 2).reshape(8, -1))
    assert 0 < arrays["usage"] <= 1


@pytest.mark.slow
def test_fsq_tokenizer_trains_through_the_same_path(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    result = make_trainer(_tokenizer_config(3, kind="fsq"), data, tmp_path / "fsq").run()
    assert np.isfinite(result.eval["val_mse"]) and result.eval["val_usage"] > 0


@pytest.mark.slow
def test_objective_change_in_a_work_dir_is_refused(trained, tmp_path, capsys):
    data, workdir, _ = trained
    assert cli(["pretrain", "--workdir", str(workdir), "--data", str(data), "--preset", "tiny"]) == 2
    assert "objective" in capsys.readouterr().err
    assert cli(["tokenizer", "encode", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2


def test_spectrum_term_is_the_amplitude_spectrum_mse():
    from brainjax.config import ModelConfig
    from brainjax.models.tokenizer import NeuralTokenizer, tokenizer_loss

    model_cfg = ModelConfig(patch=8, max_parcels=5, width=8, depth=1, heads=2, mlp=16, dec_width=8, dec_depth=1,
                            dec_heads=2, dec_mlp=16, attention="xla")
    rng = np.random.default_rng(0)
    batch = {"signal": rng.normal(size=(2, 5, 16)).astype(np.float32),
             "parcel_mask": np.array([[True] * 5, [True, True, True, False, False]]),
             "coords": rng.uniform(-50, 50, (2, 5, 3)).astype(np.float32), "tr": np.full(2, 2.0, np.float32)}
    losses = {}
    for weight in (0.0, 0.5):
        model = NeuralTokenizer(model_cfg, QuantizerConfig(kind="fsq", fsq_levels=(3, 3), spectrum_weight=weight),
                                rngs=nnx.Rngs(0))
        losses[weight] = float(nnx.jit(lambda m, b: tokenizer_loss(m, b, jax.random.key(0), train=False)[0])(
            model, batch))
    out = nnx.jit(lambda m, b: m(b))(model, batch)
    real = np.asarray(out["real"])
    amp = [np.abs(np.fft.rfft(np.asarray(out[k]), axis=-1))[real] for k in ("pred", "target")]
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * ((amp[0] - amp[1]) ** 2).mean(), rel=1e-4)
