"""Work dirs written by an older brainjax keep working: evaluate, embed, encode, fine-tune and resume.

``tests/fixtures/v1_runs`` holds a pretraining run, a classify head fine-tuned from it and a tokenizer run,
written by brainjax before the objectives / runs / lineage redesign (``tests/fixtures/make_v1_runs.py``;
their configs still carry ``finetune.classes`` and ``finetune.init_from``, and their checkpoints have no
``lineage`` item). The cohort they were trained on is rebuilt here from its seed.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from brainjax.cli import main as cli
from brainjax.run import Run, load_model
from brainjax.sharding import abstract_sharded, make_mesh
from brainjax.tasks import task_for
from brainjax.train.step import init_train_state, optimizer_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_v1_runs", FIXTURES / "make_v1_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """(dataset, copy of the v1 runs, the maker module): copies, so no test writes into the fixture."""
    root = tmp_path_factory.mktemp("v1")
    maker = _fixture_module()
    data = maker.fixture_dataset(root / "data")
    shutil.copytree(FIXTURES / "v1_runs", root / "runs")
    return data, root / "runs", maker


def test_fixture_is_the_old_layout(v1):
    _, runs, _ = v1
    saved = json.loads((runs / "finetune-sex" / "config.json").read_text())
    assert saved["finetune"]["classes"] == ["0", "1"] and "init_from" in saved["finetune"]
    assert not (runs / "finetune-sex" / "checkpoints" / "2" / "lineage").exists()


def test_old_runs_load_with_their_lineage(v1):
    _, runs, _ = v1
    head = load_model(runs / "finetune-sex")
    assert type(head.model).__name__ == "BrainLMWithHead" and head.step == 2
    assert head.lineage.classes == ("0", "1") and head.lineage.parent_step == 2
    assert head.lineage.parent.endswith("pretrain") and head.model.head.kernel.shape[-1] == 2
    assert type(load_model(runs / "tokenizer", objective="tokenizer").model).__name__ == "NeuralTokenizer"


def test_parameters_only_restore_equals_the_full_state(v1):
    _, runs, _ = v1
    loaded = load_model(runs / "pretrain")
    with Run(runs / "pretrain") as run:
        cfg, lineage = run.config()
        task = task_for(cfg, lineage)
        abstract = nnx.state(nnx.eval_shape(lambda: task.init_model(nnx.Rngs(0))), nnx.Param)
        tx, _ = optimizer_for(task, cfg, abstract)
        target = abstract_sharded(init_train_state(task, tx, cfg.train.seed), make_mesh(cfg.mesh, jax.devices()[:1]))
        full = run.checkpointer.restore(run.choose(), target).state
    expected = jax.tree.map(np.asarray, nnx.to_pure_dict(full["params"]))
    got = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param)))
    assert jax.tree.structure(expected) == jax.tree.structure(got)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
    moments = [x for x in jax.tree.leaves(full["opt"]) if np.ndim(x) >= 2]
    assert moments and any(np.abs(np.asarray(m)).max() > 0 for m in moments)  # the state had moments to skip


def test_old_runs_evaluate_embed_and_encode(v1, tmp_path):
    data, runs, _ = v1
    report = tmp_path / "report.json"
    assert cli(["evaluate", "--workdir", str(runs / "finetune-sex"), "--data", str(data), "--tasks", "finetuned",
                "--out", str(report), "--no-figures"]) == 0
    head = json.loads(report.read_text())["tasks"]["finetuned"]
    assert head["classes"] == ["0", "1"] and 0.0 <= head["metrics"]["auroc"] <= 1.0
    assert cli(["embed", "--workdir", str(runs / "pretrain"), "--data", str(data), "--out",
                str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert z["cls"].shape == (12, 16) and np.isfinite(z["cls"]).all()
    assert cli(["tokenizer", "encode", "--workdir", str(runs / "tokenizer"), "--data", str(data), "--out",
                str(tmp_path / "codes.npz")]) == 0


@pytest.mark.slow
def test_old_runs_fine_tune_and_resume(v1, tmp_path, capsys):
    data, runs, maker = v1
    out = tmp_path / "ft"
    # the fixture trained 4 windows per step on one device; this process has 8 devices
    assert cli(["finetune", "--workdir", str(runs / "pretrain"), "--data", str(data), "--task", "classify:sex",
                "--steps", "1", "--out", str(out), "--set", "data.batch_size=8"]) == 0
    tuned = load_model(out)
    assert tuned.lineage.parent_step == 2 and tuned.lineage.classes == ("0", "1")
    assert (out / "checkpoints" / "1" / "lineage").exists()

    preset = tmp_path / "mae.py"
    preset.write_text(maker.PRESET.format(objective="mae"))
    capsys.readouterr()
    assert cli(["pretrain", "--config", str(preset), "--data", str(data), "--workdir", str(runs / "pretrain"),
                "--steps", "3", "--set", "mesh.data=4"]) == 0
    assert "resuming from step 2" in capsys.readouterr().out
    assert Run(runs / "pretrain").steps[-1] == 3
    # the old head run resumes too: its saved classes match the lineage derived again from the data
    assert cli(["finetune", "--workdir", str(runs / "pretrain"), "--step", "2", "--data", str(data), "--task",
                "classify:sex", "--steps", "3", "--out", str(runs / "finetune-sex"), "--set", "data.batch_size=8"]) == 0
    assert "resuming from step 2" in capsys.readouterr().out


def test_a_mismatched_model_is_refused_with_one_line(v1, tmp_path, capsys):
    data, runs, maker = v1
    preset = tmp_path / "mae.py"
    preset.write_text(maker.PRESET.format(objective="mae"))
    work = tmp_path / "copy"
    shutil.copytree(runs / "pretrain", work)
    assert cli(["pretrain", "--config", str(preset), "--data", str(data), "--workdir", str(work), "--steps", "3",
                "--set", "mesh.data=4", "--set", "model.width=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.width: checkpoint 16 vs now 32" in err[0]
