"""LoRA adapters (low-rank updates of frozen Linear layers) for Flax NNX models such as ``DecoderLM``.

Why: fine-tuning a pretrained LM on fMRI-derived text tasks with all weights trainable costs optimizer state
for every parameter and risks forgetting; LoRA trains only ``W + (alpha / r) * A @ B`` with rank-r ``A``
[in, r] and ``B`` [r, out], B starting at zero so the adapted model starts as the base model.

:func:`add_lora` swaps chosen ``nnx.Linear`` attributes (``q``, ``v``, ...) for :class:`LoRALinear` in place.
The wrapper is callable like the Linear it holds, so code that calls ``attn.q(x)`` (the KV-cache decoder in
:mod:`brainjax.models.generate`) keeps working. Adapter weights are :class:`LoRAParam` (a subclass of
``nnx.Param``): the trainer's ``nnx.split(model, nnx.Param, ...)`` still carries them, ``nnx.state(model,
LoRAParam)`` selects them, and :func:`lora_frozen_mask` plugs into ``Trainer``'s ``frozen_mask`` so the base
weights get no updates and no optimizer state. The base kernel also passes through ``stop_gradient``, so its
backward matmul is not even needed. Adapters round-trip through ``adapter_model.safetensors`` +
``adapter_config.json`` (PEFT-like layout, our tensor names); no pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from brainjax.nn.layers import logical
from brainjax.paths import atomic_path, atomic_write_text

FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_ADAPTER_NAMES = ("lora_a", "lora_b")
# PEFT's kaiming_uniform_(a=sqrt(5)) on A: uniform(-1/sqrt(in), 1/sqrt(in)).
_a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0, out_axis=1)
_zeros = nnx.initializers.zeros_init()


class LoRAParam(nnx.Param):
    """Variable type of adapter weights (``nnx.state(model, LoRAParam)`` selects exactly them)."""


class LoRALinear(nnx.Module):
    """``base(x) + (alpha / rank) * dropout(x) @ lora_a @ lora_b`` around a frozen ``nnx.Linear``.

    lora_a: float32 [in, rank] (PEFT's kaiming-uniform); lora_b: float32 [rank, out] (zeros). The logical axis
    names are (kernel in-axis, None) and (None, kernel out-axis), so the sharding rules place them like the base.
    Dropout (rate > 0) follows NNX train/eval mode: call ``model.eval()`` before deterministic inference.
    """

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, dropout: float = 0.0, *, rngs: nnx.Rngs):
        if not isinstance(base, nnx.Linear):
            raise ValueError(f"LoRALinear wraps an nnx.Linear, got {type(base).__name__}")
        if rank < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need rank >= 1, alpha > 0 and 0 <= dropout < 1, got {rank}, {alpha}, {dropout}")
        d_in, d_out = base.kernel.shape
        axes = base.kernel.get_metadata().get("out_sharding") or (None, None)
        self.base, self.rank, self.alpha, self.rate = base, int(rank), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        self.lora_a = LoRAParam(logical(_a_init, (axes[0], None))(rngs.params(), (d_in, rank), jnp.float32))
        self.lora_b = LoRAParam(logical(_zeros, (None, axes[1]))(rngs.params(), (rank, d_out), jnp.float32))
        # A private stream per layer, and none at all without dropout, so a dropout-free model holds no RNG state.
        self.dropout = nnx.Dropout(dropout, rngs=nnx.Rngs(dropout=rngs.dropout())) if dropout > 0 else None
        self.merged = False

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in] -> [..., out] in the base layer's compute dtype."""
        base = self.base
        # nnx.Linear.__call__ spelled out with the weights behind stop_gradient: identical numerics, no grads.
        kernel = jax.lax.stop_gradient(base.kernel[...])
        bias = None if base.bias is None else jax.lax.stop_gradient(base.bias[...])
        x, kernel, bias = base.promote_dtype((x, kernel, bias), dtype=base.dtype)
        extra = {} if base.preferred_element_type is None else {"preferred_element_type": base.preferred_element_type}
        y = base.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=base.precision, **extra)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        if self.merged:
            return y
        h = x if self.dropout is None else self.dropout(x)
        a, b = self.lora_a[...].astype(y.dtype), self.lora_b[...].astype(y.dtype)
        return y + self.scale * ((h @ a) @ b)

    def delta(self) -> jax.Array:
        """The kernel update ``scale * lora_a @ lora_b``, float32 [in, out]."""
        return self.scale * (self.lora_a[...] @ self.lora_b[...])


def lora_layers(model: nnx.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of ``model`` by dotted path (e.g. ``blocks.0.attn.q``), in graph order."""
    return {".".join(map(str, path)): node for path, node in nnx.iter_graph(model) if isinstance(node, LoRALinear)}


def add_lora(model: nnx.Module, targets: Sequence[str] = ("q", "v"), rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, *, rngs: nnx.Rngs) -> list[str]:
    """Replace, in place, every ``nnx.Linear`` whose attribute name is in ``targets`` with a LoRALinear.

    targets: attribute names such as "q", "k", "v", "o", "gate", "up", "down". Returns the dotted paths wrapped.
    A target that names no Linear in the model, or a model that already has adapters, raises ValueError.
    """
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
        raise ValueError("targets is empty; name at least one Linear attribute, e.g. ('q', 'v')")
    if rank < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:  # checked up front: a failed call changes nothing
        raise ValueError(f"need rank >= 1, alpha > 0 and 0 <= dropout < 1, got {rank}, {alpha}, {dropout}")
    if lora_layers(model):
        raise ValueError("model already has LoRA adapters; add_lora may be called once per model")
    linears = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear) and path]
    names = {str(path[-1]) for path, _ in linears}
    unknown = sorted(set(targets) - names)
    if unknown:
        raise ValueError(f"LoRA targets {unknown} match no nnx.Linear in the model; its Linear names are "
                         f"{sorted(names)}")
    wrapped = []
    for path, node in linears:  # collected before mutating: iter_graph must not see the new wrappers
        if str(path[-1]) not in targets:
            continue
        parent = model
        for part in path[:-1]:
            parent = parent[part] if isinstance(part, int) else getattr(parent, part)
        setattr(parent, path[-1], LoRALinear(node, rank, alpha, dropout, rngs=rngs))
        wrapped.append(".".join(map(str, path)))
    return wrapped


def lora_frozen_mask(params: Any) -> Any:
    """``params`` (an ``nnx.State``, or a pure dict) -> same-structure pytree of bool, True = frozen.

    True for every parameter that is not a LoRAParam; for plain arrays (no Variable type to read) the
    leaf name decides (``lora_a`` / ``lora_b`` are trainable). Use as a task's ``frozen_mask``.
    """
    def mark(path, leaf):
        if isinstance(leaf, nnx.Variable):
            return leaf.replace(not isinstance(leaf, LoRAParam))
        last = path[-1] if path else None
        return getattr(last, "key", getattr(last, "name", None)) not in _ADAPTER_NAMES

    return jax.tree_util.tree_map_with_path(mark, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _require_layers(model: nnx.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters (call add_lora first)")
    return layers


def merge_lora(model: nnx.Module) -> None:
    """Fold ``scale * a @ b`` into every wrapped base kernel; the wrappers then skip the adapter path."""
    layers = _require_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("LoRA adapters are already merged")
    for layer in layers.values():
        layer.base.kernel[...] = layer.base.kernel[...] + layer.delta()
        layer.merged = True


def unmerge_lora(model: nnx.Module) -> None:
    """Exact inverse of :func:`merge_lora` (up to float rounding): subtract the update, re-enable adapters."""
    layers = _require_layers(model)
    if not all(layer.merged for layer in layers.values()):
        raise ValueError("LoRA adapters are not merged; nothing to unmerge")
    for layer in layers.values():
        layer.base.kernel[...] = layer.base.kernel[...] - layer.delta()
        layer.merged = False


def _settings(layers: dict[str, LoRALinear]) -> dict[str, Any]:
    first = next(iter(layers.values()))
    return {"rank": first.rank, "alpha": first.alpha, "dropout": first.rate,
            "targets": sorted({path.rsplit(".", 1)[-1] for path in layers})}


def save_adapters(model: nnx.Module, directory: str | os.PathLike, *, base_model: str = "") -> None:
    """Write ``adapter_model.safetensors`` (float32 tensors named ``<path>.lora_a`` / ``<path>.lora_b``) and
    ``adapter_config.json`` (rank, alpha, targets, dropout, base_model, format_version) into ``directory``.

    Each file goes to a temporary name first and is then renamed, so a crash never leaves a half-written file.
    """
    layers = _require_layers(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{path}.{name}": np.asarray(getattr(layer, name)[...], np.float32)
               for path, layer in layers.items() for name in _ADAPTER_NAMES}
    config = {"format_version": FORMAT_VERSION, "base_model": base_model, **_settings(layers)}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "np"})
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``directory`` as a dict (rank, alpha, targets, dropout, base_model, ...)."""
    path = _need(Path(directory) / CONFIG_FILE)
    config = json.loads(path.read_text())
    missing = [k for k in ("format_version", "rank", "alpha", "targets", "dropout") if k not in config]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    if config["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {config['format_version']} (expected {FORMAT_VERSION})")
    return config


def load_adapters(model: nnx.Module, directory: str | os.PathLike) -> None:
    """Read adapters saved by :func:`save_adapters` into ``model``, which must already carry the same adapters
    (``add_lora(model, **{k: cfg[k] for k in ("targets", "rank", "alpha", "dropout")})`` with
    ``cfg = read_adapter_config(directory)``). Missing/unexpected tensors or shape mismatches raise ValueError."""
    config = read_adapter_config(directory)
    layers = _require_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("unmerge the adapters before loading new ones into them")
    path = _need(Path(directory) / WEIGHTS_FILE)
    alpha = _settings(layers)["alpha"]
    if float(config["alpha"]) != alpha:  # the same tensors under another alpha would silently rescale the update
        raise ValueError(f"{path}: saved alpha {config['alpha']} != model alpha {alpha}")
    tensors = load_file(str(path))
    expected = {f"{p}.{name}": getattr(layer, name) for p, layer in layers.items() for name in _ADAPTER_NAMES}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    wrong = [f"{k} {tensors[k].shape} vs model {var.shape}" for k, var in expected.items()
             if tensors[k].shape != var.shape]
    if wrong:
        raise ValueError(f"{path}: shape mismatch: {'; '.join(wrong)}")
    for key, var in expected.items():
        var[...] = jnp.asarray(tensors[key], var.dtype)
