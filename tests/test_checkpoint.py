import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config, tiny_dataset
from flax import nnx

from brainjax.cli import main as cli
from brainjax.config import MeshConfig
from brainjax.errors import CheckpointMismatchError, CorruptCheckpointError
from brainjax.run import load_model
from brainjax.sharding import make_mesh
from brainjax.train.checkpoint import CHECKSUMS, Checkpointer, verify_step
from brainjax.train.logging import read_metrics

# tests/conftest.py simulates 8 CPU devices; fail loudly (not skip) if that did not take effect
assert jax.device_count() >= 8, f"needs 8 simulated devices (tests/conftest.py), found {jax.device_count()}"
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run of STEPS steps: (workdir, metrics records, final params as numpy)."""
    workdir = tmp_path_factory.mktemp("reference")
    result = make_trainer(tiny_config(STEPS), data, workdir).run()
    return workdir, read_metrics(workdir), jax.tree.map(np.asarray, result.params)


def _losses(records):
    return [r["loss"] for r in records]


def test_retention_keeps_latest_and_every_kth(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", keep_last=2, keep_every=4, async_save=True)
    for step in range(1, 10):
        ckpt.save(step, {"x": jnp.full((3,), float(step))}, {"pos": step}, {"cfg": 1}, {"loss": 0.5})
    ckpt.wait()
    assert ckpt.steps() == [4, 8, 9]
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"x": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=one_device)}
    restored = ckpt.restore(8, abstract)
    np.testing.assert_array_equal(restored.state["x"], [8.0, 8.0, 8.0])
    assert restored.data == {"pos": 8} and restored.metrics == {"loss": 0.5}
    ckpt.close()
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(tmp_path / "other", keep_last=0)


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run_bitwise(data, reference, tmp_path):
    _, ref_records, ref_params = reference
    first = make_trainer(tiny_config(STEPS), data, tmp_path).run(until=3)
    assert first.final_step == 3 and first.preempted
    second = make_trainer(tiny_config(STEPS), data, tmp_path).run()
    assert second.start_step == 3 and second.final_step == STEPS
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert _losses(records) == _losses(ref_records)  # exact equality, not a tolerance
    assert records[-1]["val_r2"] == ref_records[-1]["val_r2"]
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, second.params)), jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_previous(data, reference, tmp_path):
    make_trainer(tiny_config(STEPS), data, tmp_path).run(until=4)  # checkpoints at 2 and 4
    state_dir = tmp_path / "checkpoints" / "4" / "state"
    files = [os.path.join(root, f) for root, _, names in os.walk(state_dir) for f in names
             if os.path.basename(root) == "d"]  # the array chunk files
    assert files, f"no data files found under {state_dir}"
    for path in files:  # cut every array file in half, as a crash mid-copy would
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    with pytest.warns(UserWarning, match="checkpoint step 4 .* unreadable"):
        result = make_trainer(tiny_config(STEPS), data, tmp_path).run()
    assert result.start_step == 2 and result.final_step == STEPS
    assert (tmp_path / "corrupt_checkpoints").is_dir()
    assert _losses(read_metrics(tmp_path)) == _losses(reference[1])


@pytest.mark.slow
def test_restore_onto_another_mesh(data, reference, tmp_path):
    """A checkpoint written on data=4 x fsdp=2 restores onto 1 device, and one from 1 device onto 8."""
    workdir, _, ref_params = reference
    one = make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    single = make_trainer(tiny_config(STEPS), data, workdir, mesh=one)
    ckpt = Checkpointer(workdir / "checkpoints")
    state, step = single.restore_or_init(ckpt)
    ckpt.close()
    assert step == STEPS
    leaves = jax.tree.leaves(state["params"])
    assert all(leaf.sharding.device_set == {jax.devices()[0]} for leaf in leaves)
    for a, b in zip(leaves, jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), b)

    # and back: save from the single-device state, restore onto the 8-device fsdp mesh
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(STEPS, state, {}, {}, {})
    ckpt.close()
    eight = make_trainer(tiny_config(STEPS), data, tmp_path)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    restored = ckpt.restore(STEPS, eight.abstract_state)
    ckpt.close()
    fsdp_leaves = [v.get_value() for v in jax.tree.leaves(restored.state["params"],
                                                         is_leaf=lambda x: isinstance(x, nnx.Variable))]
    assert any("fsdp" in tuple(x.sharding.spec) for x in fsdp_leaves)
    assert all(len(x.sharding.device_set) == 8 for x in fsdp_leaves)
    for a, b in zip(fsdp_leaves, jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.slow
def test_changed_model_config_is_refused(data, reference):
    workdir = reference[0]
    cfg = tiny_config(STEPS + 2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, width=32, dec_width=32))
    with pytest.raises(CheckpointMismatchError, match=r"model\.width: checkpoint 16 vs now 32"):
        make_trainer(cfg, data, workdir).run()


# ------------------------------------------------------------------------------------------- integrity
def _flip_largest(directory: Path) -> Path:
    """XOR 64 bytes in the middle of the largest file under ``directory`` (bit rot, a bad copy); that file."""
    target = max((p for p in Path(directory).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(target.read_bytes())
    middle = max(0, len(blob) // 2 - 32)
    for i in range(middle, min(len(blob), middle + 64)):
        blob[i] ^= 0x5A
    target.write_bytes(bytes(blob))
    return target


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its content hash."""
    return {os.fspath(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _random_state(step: int) -> dict:
    # random values: tensorstore compresses the chunks, and constant arrays would shrink to a few bytes
    return {"x": jnp.asarray(np.random.default_rng(step).normal(size=(4096,)), jnp.float32)}


def _abstract():
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"x": jax.ShapeDtypeStruct((4096,), jnp.float32, sharding=one_device)}


def test_checksums_are_recorded_once_a_save_finishes_and_catch_flipped_bytes(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", keep_last=3)
    for step in (1, 2):
        ckpt.save(step, _random_state(step), {"pos": step}, {"cfg": 1}, {})
    ckpt.wait()
    for step in (1, 2):
        saved = json.loads((tmp_path / "ck" / str(step) / CHECKSUMS).read_text())
        assert saved["algorithm"] == "crc32" and any(name.startswith("state/") for name in saved["files"])
        assert verify_step(ckpt.directory / str(step)) is True
    damaged = _flip_largest(tmp_path / "ck" / "2" / "state")
    with pytest.raises(CorruptCheckpointError, match=rf"step 2 .*{damaged.name} has CRC-32 [0-9a-f]{{8}} where"):
        ckpt.restore(2, _abstract())
    assert ckpt.steps() == [1, 2]  # a plain restore moves nothing
    with pytest.warns(UserWarning, match=rf"checkpoint step 2 is damaged: .*{damaged.name} .* unreadable"):
        restored = ckpt.restore_latest(_abstract())
    assert restored.step == 1 and ckpt.steps() == [1]
    np.testing.assert_array_equal(restored.state["x"], _random_state(1)["x"])
    aside = list((tmp_path / "corrupt_checkpoints").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("2-") and (aside[0] / CHECKSUMS).exists()
    ckpt.close()


def test_a_step_without_checksums_loads_as_before(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", async_save=False)
    ckpt.save(1, _random_state(1), {}, {}, {})
    (tmp_path / "ck" / "1" / CHECKSUMS).unlink()  # as written by an older brainjax, or killed before the record
    assert verify_step(ckpt.directory / "1") is False
    np.testing.assert_array_equal(ckpt.restore_latest(_abstract()).state["x"], _random_state(1)["x"])
    ckpt.close()
    unchecked = Checkpointer(tmp_path / "off", async_save=False, checksums=False)
    unchecked.save(1, _random_state(1), {}, {}, {})
    assert not (tmp_path / "off" / "1" / CHECKSUMS).exists()
    unchecked.close()


def test_a_damaged_checksum_record_or_missing_file_is_damage(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", async_save=False)
    ckpt.save(1, _random_state(1), {}, {}, {})
    ckpt.save(2, _random_state(2), {}, {}, {})
    (tmp_path / "ck" / "1" / CHECKSUMS).write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match=r"step 1 .*checksums\.json is unreadable"):
        verify_step(ckpt.directory / "1")
    (tmp_path / "ck" / "2" / "state" / "_METADATA").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"step 2 .*_METADATA is missing"):
        verify_step(ckpt.directory / "2")
    ckpt.close()


@pytest.mark.slow
def test_flipped_bytes_in_the_latest_step_fall_back_to_the_previous_one(data, reference, tmp_path):
    make_trainer(tiny_config(STEPS), data, tmp_path).run(until=4)  # checkpoints at 2 and 4
    damaged = _flip_largest(tmp_path / "checkpoints" / "4" / "state")
    with pytest.warns(UserWarning, match=rf"checkpoint step 4 is damaged: .*{damaged.name} .* unreadable"):
        result = make_trainer(tiny_config(STEPS), data, tmp_path).run()
    assert result.start_step == 2 and result.final_step == STEPS
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == ["4"]
    assert _losses(read_metrics(tmp_path)) == _losses(reference[1])


@pytest.mark.slow
def test_evaluation_refuses_a_damaged_step_and_leaves_the_work_dir_alone(data, reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    damaged = _flip_largest(workdir / "checkpoints" / str(STEPS) / "state")
    before = _snapshot(workdir)
    with pytest.raises(CorruptCheckpointError, match=rf"checkpoint step {STEPS} .*{damaged.name}"):
        load_model(workdir)
    assert load_model(workdir, step=4).step == 4  # the other steps stay usable
    assert cli(["evaluate", "--workdir", str(workdir), "--data", str(data), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and damaged.name in err[0], err
    assert "load another step ([2, 4])" in err[0]
    assert _snapshot(workdir) == before and not (tmp_path / "corrupt_checkpoints").exists()
