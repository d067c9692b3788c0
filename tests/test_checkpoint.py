import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config, tiny_dataset
from flax import nnx

from brainjax.config import MeshConfig
from brainjax.errors import CheckpointMismatchError
from brainjax.sharding import make_mesh
from brainjax.train.checkpoint import Checkpointer
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
