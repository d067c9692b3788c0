"""``brainjax finetune``: heads on a pretrained encoder, frozen or not, forecasting, and their evaluation."""

import json

import jax
import numpy as np
import optax
import pytest
from _trainer_utils import pretrained_synthetic

from brainjax.cli import main as cli
from brainjax.config import FinetuneConfig, Lineage, ModelConfig
from brainjax.data.dataset import Dataset
from brainjax.run import load_model
from brainjax.tasks.head import HeadTask, describe_target, label_table


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrained_synthetic(tmp_path_factory.mktemp("finetune"))


def _params(model):
    from flax import nnx
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.slow
def test_frozen_classifier_trains_the_head_only(pretrained, tmp_path):
    data, workdir = pretrained
    out = tmp_path / "sex"
    assert cli(["finetune", "--workdir", str(workdir), "--data", str(data), "--task", "classify:sex",
                "--freeze-backbone", "--steps", "3", "--out", str(out)]) == 0
    tuned, base = load_model(out), load_model(workdir)
    assert tuned.cfg.finetune.task == "classify" and tuned.lineage.classes == ("0", "1")
    assert tuned.lineage.parent_step == base.step
    jax.tree.map(np.testing.assert_array_equal, _params(tuned.model.backbone), _params(base.model))
    assert np.abs(_params(tuned.model)["head"]["kernel"]).max() > 0  # zero-initialised, then trained

    report = tmp_path / "report.json"
    assert cli(["evaluate", "--workdir", str(out), "--data", str(data), "--tasks", "finetuned",
                "--out", str(report), "--no-figures"]) == 0
    head = json.loads(report.read_text())["tasks"]["finetuned"]
    ds = Dataset(data)
    test_sex = [r["sex"] for r in ds.manifest if r["split"] == "test"]
    assert head["n_scans"] == len(test_sex)
    majority = max(test_sex.count("0"), test_sex.count("1")) / len(test_sex)
    assert head["chance"]["accuracy"] == pytest.approx(majority)
    assert 0.0 <= head["metrics"]["auroc"] <= 1.0


@pytest.mark.slow
def test_warm_start_and_regression_target(pretrained, tmp_path):
    data, workdir = pretrained
    out = tmp_path / "age"
    assert cli(["finetune", "--workdir", str(workdir), "--data", str(data), "--task", "regress:age",
                "--steps", "2", "--out", str(out), "--set", "optim.base_lr=0"]) == 0
    tuned, base = load_model(out), load_model(workdir)
    ages = np.array([float(r["age"]) for r in Dataset(data).manifest if r["split"] == "train"])
    assert tuned.lineage.target_mean == pytest.approx(ages.mean())
    assert tuned.lineage.target_std == pytest.approx(ages.std())
    # lr 0: two updates leave the warm-started backbone exactly at the pretrained weights
    jax.tree.map(np.testing.assert_array_equal, _params(tuned.model.backbone), _params(base.model))


@pytest.mark.slow
def test_forecast_finetuning_continues_the_autoencoder(pretrained, tmp_path):
    data, workdir = pretrained
    out = tmp_path / "forecast"
    assert cli(["finetune", "--workdir", str(workdir), "--data", str(data), "--task", "forecast",
                "--steps", "2", "--out", str(out)]) == 0
    tuned, base = load_model(out), load_model(workdir)
    assert tuned.cfg.mask.strategy == "future" and tuned.cfg.mask.future_patches == 1
    assert jax.tree.structure(_params(tuned.model)) == jax.tree.structure(_params(base.model))
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), _params(tuned.model),
                                           _params(base.model)))
    assert any(changed)


@pytest.mark.slow
def test_bad_finetune_requests_fail_clearly(pretrained, tmp_path, capsys):
    data, workdir = pretrained
    assert cli(["finetune", "--workdir", str(workdir), "--data", str(data), "--task", "regress:height"]) == 2
    assert "no phenotype 'height'" in capsys.readouterr().err
    assert cli(["finetune", "--workdir", str(workdir), "--data", str(data), "--task", "classify"]) == 2
    assert "expected regress:PHENO" in capsys.readouterr().err
    assert cli(["finetune", "--workdir", str(tmp_path / "none"), "--data", str(data), "--task", "forecast"]) == 2


@pytest.mark.slow
def test_labels_and_target_description(pretrained):
    data, _ = pretrained
    ds = Dataset(data)
    lineage = Lineage(**describe_target(ds, "regress", "age"))
    labels, valid = label_table(ds, FinetuneConfig(task="regress", target="age"), lineage)
    ages = np.array([float(r["age"]) for r in ds.manifest])
    np.testing.assert_allclose(labels, (ages - lineage.target_mean) / lineage.target_std, rtol=1e-5)
    assert valid.all()
    classes = describe_target(ds, "classify", "diagnosis")["classes"]
    labels, _ = label_table(ds, FinetuneConfig(task="classify", target="diagnosis"), Lineage(classes=classes))
    np.testing.assert_array_equal(labels, [classes.index(r["diagnosis"]) for r in ds.manifest])


def test_head_loss_sums_against_numpy():
    from flax import nnx

    model_cfg = ModelConfig(patch=4, max_parcels=5, width=8, depth=1, heads=2, mlp=16, dec_width=8, dec_depth=1,
                            dec_heads=2, dec_mlp=16, attention="xla")
    rng = np.random.default_rng(0)
    batch = {"signal": rng.normal(size=(4, 5, 8)).astype(np.float32), "parcel_mask": np.ones((4, 5), bool),
             "coords": rng.uniform(-50, 50, (4, 5, 3)).astype(np.float32), "tr": np.full(4, 2.0, np.float32),
             "label_valid": np.array([True, True, False, True])}
    task = HeadTask(model_cfg, FinetuneConfig(task="classify", target="x"), Lineage(classes=("a", "b", "c")), 5, 8)
    model = task.init_model(nnx.Rngs(0))
    model.head.kernel[...] = rng.normal(size=model.head.kernel.shape)  # non-trivial logits
    batch["label"] = np.array([0, 2, 1, 1], np.float32)
    # jitted: op-by-op execution of even a tiny model is slow on 8 simulated devices
    loss, sums = nnx.jit(lambda m, b: task.loss(m, b, jax.random.key(0), deterministic=True))(model, batch)
    logits = np.asarray(nnx.jit(lambda m, b: m(b))(model, batch))
    nll = -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(4), [0, 2, 1, 1]]
    keep = batch["label_valid"]
    assert float(sums["nll"]) == pytest.approx(nll[keep].sum(), rel=1e-5)
    assert float(loss) == pytest.approx(nll[keep].mean(), rel=1e-5)
    assert float(sums["correct"]) == (logits.argmax(-1) == [0, 2, 1, 1])[keep].sum()
    frozen = task.frozen_mask(nnx.state(model, nnx.Param))
    assert not any(jax.tree.leaves(frozen))  # not frozen: everything trains
    assert optax.tree.norm(nnx.state(model, nnx.Param)) > 0
