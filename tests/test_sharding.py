import jax
import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config, tiny_dataset
from flax import nnx
from jax.sharding import AxisType

from brainjax.config import MeshConfig
from brainjax.sharding import create_sharded, logical_to_spec, make_mesh
from brainjax.train.logging import read_metrics

# tests/conftest.py simulates 8 CPU devices; fail loudly (not skip) if that did not take effect
assert jax.device_count() >= 8, f"needs 8 simulated devices (tests/conftest.py), found {jax.device_count()}"


def test_mesh_shapes_axis_types_and_errors():
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(make_mesh(MeshConfig(data=8, fsdp=1)).shape) == {"data": 8, "fsdp": 1}
    with pytest.warns(UserWarning, match="uses 2 of 8 devices"):
        assert make_mesh(MeshConfig(data=1, fsdp=2)).size == 2
    with pytest.raises(ValueError, match="needs more than the 8"):
        make_mesh(MeshConfig(data=4, fsdp=4))


def test_logical_rules_shard_embed_dims_only_when_divisible():
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2))
    assert logical_to_spec(("embed", "mlp"), (16, 32), mesh) == jax.P("fsdp", None)
    assert logical_to_spec(("mlp", "dec_embed"), (32, 16), mesh) == jax.P(None, "fsdp")
    assert logical_to_spec(("embed",), (15,), mesh) == jax.P(None)  # 15 does not split in two
    assert logical_to_spec(("embed", "embed"), (16, 16), mesh) == jax.P("fsdp", None)  # one axis once
    assert logical_to_spec(None, (3, 3), mesh) == jax.P()
    with pytest.raises(ValueError, match="do not match"):
        logical_to_spec(("embed",), (4, 4), mesh)


def test_model_is_created_sharded_over_fsdp():
    from brainjax.models.brainlm import BrainLM

    cfg = tiny_config()
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2))
    _, params, _ = create_sharded(lambda: BrainLM(cfg.model, rngs=nnx.Rngs(0)), mesh)
    sharded = 0
    for var in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        array, names = var.get_value(), var.get_metadata().get("out_sharding") or ()
        spec = tuple(array.sharding.spec) + (None,) * (array.ndim - len(array.sharding.spec))
        for dim, name in enumerate(names):
            if name in ("embed", "dec_embed") and array.shape[dim] % 2 == 0 and "fsdp" not in spec[:dim]:
                assert spec[dim] == "fsdp", (names, array.sharding.spec)
                # each device holds half of that dimension
                assert array.addressable_shards[0].data.shape[dim] == array.shape[dim] // 2
                sharded += 1
                break
    assert sharded >= 4  # patch embedding, attention and MLP kernels of encoder and decoder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_sharded_training_matches_one_device(data, tmp_path):
    cfg = tiny_config(steps=3, train={"eval_every": 0, "checkpoint_every": 100})
    meshes = {"one": make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1]),
              "fsdp": make_mesh(MeshConfig(data=4, fsdp=2)), "data": make_mesh(MeshConfig(data=8, fsdp=1))}
    results = {}
    for name, mesh in meshes.items():
        result = make_trainer(cfg, data, tmp_path / name, mesh=mesh).run()
        losses = [r["loss"] for r in read_metrics(tmp_path / name)]
        results[name] = (losses, jax.tree.map(np.asarray, result.params))
    assert len(results["one"][0]) == 3 and np.all(np.isfinite(results["one"][0]))
    for name in ("fsdp", "data"):
        np.testing.assert_allclose(results[name][0], results["one"][0], rtol=2e-5)
        for a, b in zip(jax.tree.leaves(results[name][1]), jax.tree.leaves(results["one"][1])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
