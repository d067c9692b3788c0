"""BrainLM's ViT-MAE weights (a Hugging Face directory) through brainjax's evaluation commands: embeddings
against transformers run on the padded image by hand, and evaluate / embed end to end on a tiny cohort."""

import json

import numpy as np
import pytest
from _trainer_utils import LENGTH, PARCELS, tiny_dataset

from brainjax.cli import main as cli
from brainjax.data.dataset import Dataset
from brainjax.eval.embeddings import embed_dataset
from brainjax.run import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from test_vitmae import hf_model  # noqa: E402

IMAGE, PATCH = 16, 4  # 8 parcels padded to 16 rows; windows of 16 TRs fill the width


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vitmae")
    model = hf_model(image=IMAGE, patch=PATCH, channels=3, mask_ratio=0.5)
    model.save_pretrained(root / "brainlm", safe_serialization=True)
    return model, root / "brainlm", tiny_dataset(root / "data", subjects=4)


def _hf_cls(model, window: np.ndarray) -> np.ndarray:
    """CLS of transformers' encoder on BrainLM's image of one window [P, T]: -1 padding centred on the parcel
    axis, 3 channels, nothing masked (token order does not change the CLS)."""
    top = (IMAGE - window.shape[0]) // 2
    image = np.full((IMAGE, IMAGE), -1.0, np.float32)
    image[top:top + window.shape[0], :window.shape[1]] = window
    pixels = torch.from_numpy(np.broadcast_to(image, (1, 3, IMAGE, IMAGE)).copy())
    model.config.mask_ratio = 0.0
    model.vit.embeddings.config.mask_ratio = 0.0
    with torch.no_grad():
        return model.vit(pixel_values=pixels).last_hidden_state[0, 0].numpy()


def test_a_vitmae_directory_loads_as_a_model_to_evaluate(setup):
    _, path, _ = setup
    loaded = load_model(path)
    assert type(loaded.backbone).__name__ == "ViTMAEBackbone" and loaded.cfg.objective == "mae"
    assert loaded.cfg.data.window == IMAGE and loaded.cfg.model.patch == 1 and loaded.cfg.mask.ratio == 0.5


def test_embeddings_are_transformers_cls_averaged_per_scan(setup):
    model, path, data = setup
    loaded = load_model(path)
    arrays = embed_dataset(loaded, str(data), ("train", "val"), batch_size=8)
    dataset = Dataset(data)
    index = {row["scan_id"]: i for i, row in enumerate(dataset.manifest)}
    for scan_id, cls in zip(arrays["scan_id"][:3], arrays["cls"][:3]):
        series = dataset.normalize(dataset.read(index[scan_id]))
        windows = [series[:, s:s + IMAGE] for s in range(0, LENGTH - IMAGE + 1, IMAGE)]
        expected = np.mean([_hf_cls(model, w) for w in windows], axis=0)
        np.testing.assert_allclose(cls, expected, atol=1e-4, rtol=1e-4)
    assert arrays["tokcov"].shape == (len(arrays["scan_id"]), PARCELS * (PARCELS - 1) // 2)


@pytest.mark.slow
def test_evaluate_and_embed_a_vitmae_directory(setup, tmp_path, capsys):
    _, path, data = setup
    out = tmp_path / "report.json"
    assert cli(["evaluate", "--workdir", str(path), "--data", str(data), "--split", "val", "--out", str(out),
                "--no-figures"]) == 0
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == ["reconstruct", "probe"]
    recon = report["tasks"]["reconstruct"]
    assert set(recon) - {"windows"} == {"random"} and np.isfinite(recon["random"]["model"]["r2"])
    assert {"regression", "interpolation", "parcel_mean"} <= set(recon["random"])
    capsys.readouterr()
    assert cli(["evaluate", "--workdir", str(path), "--data", str(data), "--tasks", "networks"]) == 2
    assert "supports reconstruct,probe only" in capsys.readouterr().err
    assert cli(["embed", "--workdir", str(path), "--data", str(data), "--out", str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert z["cls"].shape == (len(Dataset(data)), 32)
