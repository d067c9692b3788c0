"""``brainjax export`` / ``brainjax.load_pretrained``: a run as a self-contained directory that loads without
the optimizer state or pickle, equals the work dir's model bit for bit, and is accepted wherever a command
loads a model. Runs: the v1 fixtures (pretraining, a classify head, a tokenizer), exported with --data since
their cohort is rebuilt here."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import brainjax
from brainjax.cli import main as cli
from brainjax.errors import CheckpointMismatchError, InputError, UsageError
from brainjax.run import export_run, is_export, load_model, load_pretrained

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = FIXTURES.parent.parent


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    spec = importlib.util.spec_from_file_location("make_v1_runs", FIXTURES / "make_v1_runs.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    data = maker.fixture_dataset(root / "data")
    shutil.copytree(FIXTURES / "v1_runs", root / "runs")
    return data, root / "runs"


def _variables(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


@pytest.mark.parametrize("run, objective", [("pretrain", "mae"), ("finetune-sex", "mae"),
                                            ("tokenizer", "tokenizer")])
def test_export_loads_the_same_model(v1, tmp_path, run, objective):
    data, runs = v1
    out = export_run(runs / run, tmp_path / "model", data=str(data))
    assert is_export(out) and not is_export(runs / run)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "atlas.json", "config.json", "model.safetensors",
                                                     "preprocessing.json", "stats.npz"]
    original, exported = load_model(runs / run), load_pretrained(out, objective=objective)
    assert type(exported.model) is type(original.model) and exported.step == original.step
    assert exported.lineage == original.lineage and exported.cfg.model == original.cfg.model
    expected, got = _variables(original.model), _variables(exported.model)
    assert jax.tree.structure(expected) == jax.tree.structure(got)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
    # what went in: the training data's atlas and statistics, byte for byte; config.json names the format
    assert (out / "atlas.json").read_bytes() == (data / "atlas.json").read_bytes()
    with np.load(out / "stats.npz", allow_pickle=False) as ours, np.load(data / "stats.npz") as theirs:
        np.testing.assert_array_equal(ours["median"], theirs["median"])
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == original.cfg.objective and config["training_data"][0]["path"] == str(data)
    parameters = sum(np.size(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(original.model, nnx.Param))))
    assert config["parameters"] == parameters


def test_exported_embeddings_equal_the_work_dirs_bit_for_bit(v1, tmp_path):
    data, runs = v1
    out = export_run(runs / "pretrain", tmp_path / "model", data=str(data))
    for source, name in ((runs / "pretrain", "a.npz"), (out, "b.npz")):
        assert cli(["embed", "--workdir", str(source), "--data", str(data), "--out", str(tmp_path / name)]) == 0
    with np.load(tmp_path / "a.npz", allow_pickle=False) as a, np.load(tmp_path / "b.npz", allow_pickle=False) as b:
        assert set(a.files) == set(b.files)
        for key in ("cls", "mean", "tokcov"):
            assert a[key].tobytes() == b[key].tobytes()
    assert cli(["tokenizer", "encode", "--workdir", str(export_run(runs / "tokenizer", tmp_path / "tok",
                                                                     data=str(data))),
                "--data", str(data), "--out", str(tmp_path / "codes.npz")]) == 0


def test_the_package_attribute_loads_lazily(v1, tmp_path):
    data, runs = v1
    out = export_run(runs / "pretrain", tmp_path / "model", data=str(data))
    assert type(brainjax.load_pretrained(out).backbone).__name__ == "BrainLM"
    code = "import sys, brainjax; assert 'jax' not in sys.modules; print(callable(brainjax.load_pretrained))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "True"


def test_export_refuses_an_existing_directory_and_a_missing_dataset(v1, tmp_path):
    data, runs = v1
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        export_run(runs / "pretrain", taken, data=str(data))
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(InputError, match=r"directory was not found.*--data"):
        export_run(runs / "pretrain", tmp_path / "m", data=str(tmp_path / "nowhere"))
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))


def test_damaged_weights_are_named(v1, tmp_path):
    data, runs = v1
    out = export_run(runs / "pretrain", tmp_path / "model", data=str(data))
    tensors = load_file(str(out / "model.safetensors"))
    name = sorted(k for k in tensors if k.startswith("params/"))[0]
    save_file({k: v for k, v in tensors.items() if k != name}, str(out / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=f"missing \\['{name}'"):
        load_pretrained(out)
    tensors[name] = np.zeros((3, *tensors[name].shape), tensors[name].dtype)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=f"tensor {name} is float32\\[3,"):
        load_pretrained(out)
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot read the weights"):
        load_pretrained(out)
    with pytest.raises(CheckpointMismatchError, match="'mae' model, not a tokenizer model"):
        load_pretrained(export_run(runs / "pretrain", tmp_path / "again", data=str(data)), objective="tokenizer")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(InputError, match="format version 99"):
        load_pretrained(out)


@pytest.mark.slow
def test_export_command_writes_a_model_card_and_evaluate_accepts_it(v1, tmp_path, capsys):
    data, runs = v1
    work = tmp_path / "pretrain"
    shutil.copytree(runs / "pretrain", work)
    evaluate = ["evaluate", "--data", str(data), "--tasks", "reconstruct", "--no-figures", "--max-windows", "8"]
    assert cli([*evaluate, "--workdir", str(work)]) == 0
    out = tmp_path / "model"
    assert cli(["export", "--workdir", str(work), "--out", str(out), "--data", str(data)]) == 0
    card = (out / "README.md").read_text()
    assert "brainjax.load_pretrained" in card and "regression" in card and "step 2" in card
    assert cli([*evaluate, "--workdir", str(out), "--out", str(tmp_path / "again.json")]) == 0
    first = json.loads((work / "eval" / "report.json").read_text())["tasks"]["reconstruct"]
    again = json.loads((tmp_path / "again.json").read_text())["tasks"]["reconstruct"]
    assert first["random"]["model"] == again["random"]["model"]
    capsys.readouterr()
    assert cli(["export", "--workdir", str(work), "--out", str(out), "--data", str(data)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["evaluate", "--workdir", str(out), "--data", str(data), "--step", "1"]) == 2


@pytest.mark.slow
def test_finetune_starts_from_an_export(v1, tmp_path, capsys):
    data, runs = v1
    model = export_run(runs / "pretrain", tmp_path / "model", data=str(data))
    common = ["finetune", "--workdir", str(model), "--data", str(data), "--task", "classify:sex", "--steps", "1",
              "--set", "data.batch_size=8"]
    assert cli(common) == 2
    assert "pass --out" in capsys.readouterr().err and sorted(p.name for p in model.iterdir())[0] == "README.md"
    assert cli([*common, "--out", str(tmp_path / "ft")]) == 0
    tuned = load_model(tmp_path / "ft")
    assert tuned.lineage.parent == str(model) and tuned.lineage.parent_step == 2
