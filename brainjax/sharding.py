"""Device mesh, the logical-axis rules table, and creating a model already sharded over the mesh.

Parameters carry logical axis names in their NNX metadata (``out_sharding``, set with
``nnx.with_partitioning``). :data:`LOGICAL_RULES` is the only place that maps those names to mesh axes.
Fully-sharded data parallelism (FSDP) splits every matrix along its model-width dimension (``embed`` /
``dec_embed``): every large kernel (attention, MLP, patch embedding) has exactly one such dimension, so all
of them are split while the activations' batch dimension is split over ``("data", "fsdp")``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from brainjax.config import MeshConfig

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device

# logical name -> mesh axis (None = replicated). Names not listed are replicated.
LOGICAL_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "dec_embed": "fsdp",
    "mlp": None,
    "qkv": None,
    "patch": None,
    "fourier": None,
    "dec_mlp": None,
    "dec_qkv": None,
}


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) of the mesh ``cfg`` gives on ``n_devices`` devices (``data = -1``: every device the fsdp
    axis leaves); ValueError when it needs more devices than there are."""
    if cfg.fsdp < 1:
        raise ValueError(f"mesh.fsdp must be >= 1, got {cfg.fsdp}")
    data = cfg.data if cfg.data > 0 else n_devices // cfg.fsdp
    if data < 1 or data * cfg.fsdp > n_devices:
        raise ValueError(f"mesh data={cfg.data} x fsdp={cfg.fsdp} needs more than the {n_devices} available "
                         f"devices")
    return data, cfg.fsdp


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh with Auto axis types over ``devices`` (default: all devices).

    ``cfg.data = -1`` takes every device the fsdp axis leaves. A mesh smaller than the device list uses the
    first ``data * fsdp`` devices (useful for comparisons); a larger one is an error.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, _ = mesh_shape(cfg, len(devices))
    if data * cfg.fsdp < len(devices):
        warnings.warn(f"mesh data={data} x fsdp={cfg.fsdp} uses {data * cfg.fsdp} of {len(devices)} devices",
                      stacklevel=2)
    # Auto axes: explicit axes (the make_mesh default) raise ShardingTypeError on FSDP-sharded kernels.
    return jax.make_mesh((data, cfg.fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices[: data * cfg.fsdp])


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, str | None] = LOGICAL_RULES) -> P:
    """The PartitionSpec of an array of ``shape`` whose dimensions have logical ``names``.

    A dimension that does not divide evenly over its mesh axis, or a mesh axis already used by an earlier
    dimension, stays replicated (small or odd-sized parameters are cheap to replicate).
    """
    if not names:
        return P()
    if len(names) != len(shape):
        raise ValueError(f"logical axis names {tuple(names)} do not match an array of shape {tuple(shape)}")
    used, spec = set(), []
    for name, size in zip(names, shape):
        axis = rules.get(name) if name is not None else None
        if axis is None or axis in used or size % mesh.shape[axis] != 0:
            spec.append(None)
        else:
            used.add(axis)
            spec.append(axis)
    return P(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(abstract: Any, mesh: Mesh, rules: Mapping[str, str | None] = LOGICAL_RULES) -> Any:
    """NamedShardings for every array in ``abstract`` (a pytree that may contain NNX Variables).

    Arrays inside a Variable with ``out_sharding`` metadata follow the rules (this covers parameters and the
    optimizer moments, which keep the parameters' Variable wrappers); every other array is replicated.
    """
    def for_leaf(x):
        if _is_variable(x):
            value = x.get_value()
            if not hasattr(value, "shape"):  # e.g. optax's MaskedNode: a frozen parameter keeps no moments
                return x
            names = x.get_metadata().get("out_sharding")
            return x.replace(NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules)))
        return NamedSharding(mesh, P())
    return jax.tree.map(for_leaf, abstract, is_leaf=_is_variable)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """``abstract`` with each ShapeDtypeStruct carrying its sharding (an Orbax restore target)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device; other dimensions replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def devices_per_batch(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def _no_eager_sharding(fn: Callable[[], Any]) -> Callable[[], Any]:
    # Variables shard themselves eagerly when created with annotations; we shard through jit instead, so
    # creation must not depend on a mesh or rules context.
    def wrapped():
        with nnx.use_eager_sharding(False):
            return fn()
    return wrapped


def abstract_model(init_fn: Callable[[], nnx.Module]) -> nnx.Module:
    """Shapes-only model (no FLOPs, no memory)."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(init_fn)


def abstract_sharded(fn: Callable[[], Any], mesh: Mesh, rules: Mapping[str, str | None] = LOGICAL_RULES) -> Any:
    """``jax.eval_shape(fn)`` with every ShapeDtypeStruct carrying its sharding on ``mesh``."""
    abstract = jax.eval_shape(_no_eager_sharding(fn))
    return with_shardings(abstract, tree_shardings(abstract, mesh, rules))


def init_sharded(fn: Callable[[], Any], mesh: Mesh, rules: Mapping[str, str | None] = LOGICAL_RULES) -> Any:
    """Run ``fn`` (which builds a pytree such as a model state) under jit, output already sharded.

    No device ever holds the whole unsharded tree: each one computes only its own shards.
    """
    fn = _no_eager_sharding(fn)
    shardings = tree_shardings(jax.eval_shape(fn), mesh, rules)
    with jax.set_mesh(mesh):
        return jax.jit(fn, out_shardings=shardings)()


def create_sharded(init_fn: Callable[[], nnx.Module], mesh: Mesh,
                   rules: Mapping[str, str | None] = LOGICAL_RULES) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Create a model directly in its sharded layout: ``(graphdef, params, rest)``.

    ``params`` are the ``nnx.Param`` variables, ``rest`` everything else (e.g. RNG stream counters).
    """
    graphdef = nnx.split(abstract_model(init_fn), nnx.Param, ...)[0]

    def split_init():
        return nnx.split(init_fn(), nnx.Param, ...)[1:]

    params, rest = init_sharded(split_init, mesh, rules)
    return graphdef, params, rest
