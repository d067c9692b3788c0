"""A language-model directory that is not what it claims: every error names the file (and the tensor)."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from brainjax.errors import InputError
from brainjax.models.lm_loading import from_pretrained, load_tensors
from brainjax.paths import inside


@pytest.fixture
def lm_dir(tmp_path):
    """A copy of the embedded default LM's files (built once per machine, cached)."""
    from brainjax.lm.default_lm import default_lm

    out = tmp_path / "lm"
    shutil.copytree(default_lm(), out)
    return out


def _shard_layout(lm_dir, outside_name=None):
    """Split model.safetensors into an index + one shard (optionally written outside the directory)."""
    tensors = load_tensors(lm_dir)
    (lm_dir / "model.safetensors").unlink()
    shard = outside_name or "model-00001-of-00001.safetensors"
    save_file(tensors, str(lm_dir / shard))
    index = {"metadata": {}, "weight_map": {name: shard for name in tensors}}
    (lm_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return tensors


def test_an_index_pointing_outside_the_directory_is_refused(lm_dir, tmp_path):
    tensors = _shard_layout(lm_dir)
    assert set(load_tensors(lm_dir)) == set(tensors)  # the sharded layout loads
    shutil.move(lm_dir / "model-00001-of-00001.safetensors", tmp_path / "outside.safetensors")
    index = json.loads((lm_dir / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../outside.safetensors" for k in index["weight_map"]}
    (lm_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match=r"model.safetensors.index.json: path '../outside.safetensors' points outside"):
        load_tensors(lm_dir)


def test_inside_refuses_absolute_dotdot_and_symlinks(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "ok.txt").write_text("x")
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "base", "ok.txt", "f") == (tmp_path / "base" / "ok.txt").resolve()
    assert inside(tmp_path / "base", "link/base/ok.txt", "f") == (tmp_path / "base" / "ok.txt").resolve()
    for bad in ("/etc/passwd", "../x", "link/outside.txt", "a/../../x"):
        with pytest.raises(InputError, match="points outside"):
            inside(tmp_path / "base", bad, "index.json")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), r"config.json: not valid JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({k: v for k, v in json.loads(
        (d / "config.json").read_text()).items() if k != "hidden_size"})), r"config.json: missing 'hidden_size'"),
    (lambda d: (d / "tokenizer.json").write_text("garbage"), r"tokenizer.json: not a readable tokenizer"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken"),
     r"model.safetensors: not a readable safetensors file"),
])
def test_broken_files_are_named(lm_dir, damage, message):
    damage(lm_dir)
    with pytest.raises(InputError, match=message):
        from_pretrained(lm_dir)


@pytest.mark.parametrize("bad, message", [(np.int32, "dtype int32"), (np.nan, "NaN or infinite")])
def test_weights_must_be_finite_floats(lm_dir, bad, message):
    tensors = load_tensors(lm_dir)
    name = sorted(tensors)[0]
    if bad is np.int32:
        tensors[name] = tensors[name].astype(np.int32)
    else:
        tensors[name] = tensors[name].copy()
        tensors[name].flat[0] = bad
    save_file(tensors, str(lm_dir / "model.safetensors"))
    with pytest.raises(InputError, match=f"tensor {name} .*{message}|tensor {name} holds {message}"):
        load_tensors(lm_dir)
