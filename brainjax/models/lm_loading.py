"""Load a :class:`~brainjax.models.lm.DecoderLM` and its tokenizer from a local Hugging Face directory.

Only local files are read (``config.json``, ``model.safetensors`` or ``model.safetensors.index.json`` plus its
shards, ``tokenizer.json``): no network, no torch, no pickle. HF parameter names are mapped onto the NNX tree
through one explicit table per family, so a checkpoint that does not fit the architecture fails with a list
of the missing, unexpected and mis-shaped tensors instead of loading half a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import SafetensorError
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from brainjax.errors import InputError
from brainjax.models.lm import FAMILIES, DecoderLM, LMConfig
from brainjax.paths import inside
from brainjax.sharding import tree_shardings

NnxPath = tuple[str | int, ...]
# nnx path -> (HF tensor name, transform from the HF array to the NNX array)
Table = dict[NnxPath, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T  # torch Linear stores [out, in]; NNX kernels are [in, out]


def _third(i: int) -> Callable[[np.ndarray], np.ndarray]:
    # GPT-2's fused c_attn (Conv1D, [in, 3 * out]) holds q, k, v side by side along its last axis.
    return lambda a: np.split(a, 3, axis=-1)[i]


def qwen3_table(cfg: LMConfig) -> Table:
    """The Qwen3 HF-name table for ``cfg``."""
    table: Table = {("embed", "embedding"): ("model.embed_tokens.weight", _same),
                    ("norm", "scale"): ("model.norm.weight", _same)}
    if not cfg.tie_word_embeddings:
        table[("lm_head", "kernel")] = ("lm_head.weight", _transpose)
    projections = {("attn", "q"): "self_attn.q_proj", ("attn", "k"): "self_attn.k_proj",
                   ("attn", "v"): "self_attn.v_proj", ("attn", "o"): "self_attn.o_proj",
                   ("mlp", "gate"): "mlp.gate_proj", ("mlp", "up"): "mlp.up_proj", ("mlp", "down"): "mlp.down_proj"}
    norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             ("attn", "q_norm"): "self_attn.q_norm", ("attn", "k_norm"): "self_attn.k_norm"}
    for i in range(cfg.layers):
        hf = f"model.layers.{i}."
        for path, name in projections.items():
            table[("blocks", i, *path, "kernel")] = (hf + name + ".weight", _transpose)
            if cfg.attention_bias and path[0] == "attn":
                table[("blocks", i, *path, "bias")] = (hf + name + ".bias", _same)
        for path, name in norms.items():
            path = path if isinstance(path, tuple) else (path,)
            table[("blocks", i, *path, "scale")] = (hf + name + ".weight", _same)
    return table


def gpt2_table(cfg: LMConfig) -> Table:
    """The GPT-2 HF-name table for ``cfg`` (names without the ``transformer.`` prefix)."""
    table: Table = {("embed", "embedding"): ("wte.weight", _same), ("pos_embed", "embedding"): ("wpe.weight", _same),
                    ("norm", "scale"): ("ln_f.weight", _same), ("norm", "bias"): ("ln_f.bias", _same)}
    for i in range(cfg.layers):
        hf, blk = f"h.{i}.", ("blocks", i)
        for part in ("weight", "bias"):
            leaf = "kernel" if part == "weight" else "bias"
            for j, proj in enumerate("qkv"):
                table[(*blk, "attn", proj, leaf)] = (f"{hf}attn.c_attn.{part}", _third(j))
            # Conv1D weights are already [in, out]: no transpose.
            table[(*blk, "attn", "o", leaf)] = (f"{hf}attn.c_proj.{part}", _same)
            table[(*blk, "mlp", "up", leaf)] = (f"{hf}mlp.c_fc.{part}", _same)
            table[(*blk, "mlp", "down", leaf)] = (f"{hf}mlp.c_proj.{part}", _same)
            table[(*blk, "attn_norm", "scale" if part == "weight" else "bias")] = (f"{hf}ln_1.{part}", _same)
            table[(*blk, "mlp_norm", "scale" if part == "weight" else "bias")] = (f"{hf}ln_2.{part}", _same)
    return table


def _ignorable(name: str, cfg: LMConfig) -> bool:
    # Tensors that carry no parameters of ours: a tied lm_head duplicates the embedding, and old GPT-2
    # checkpoints store the causal-mask buffers.
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return True
    return cfg.family == "gpt2" and (name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"))


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def read_json(path: Path, what: str = "") -> Any:
    """The JSON document in ``path``; an unreadable or invalid file raises InputError naming it."""
    try:
        return json.loads(_need(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON{' ' + what if what else ''} ({err})") from err


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, each floating point and finite; errors name the file and tensor."""
    try:
        tensors = load_file(_need(path))
    except SafetensorError as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from err
    for name, array in tensors.items():
        if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
            raise InputError(f"{path}: tensor {name} has dtype {array.dtype}, expected floating point weights")
        values = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float32)  # bfloat16
        if not np.isfinite(values).all():
            raise InputError(f"{path}: tensor {name} holds NaN or infinite values")
    return tensors


def load_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded (indexed) safetensors checkpoint in ``directory``.

    The shards an index names must lie inside ``directory``; every tensor must be finite floating point."""
    directory = Path(directory)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        return _safetensors(single)
    if not index.exists():
        raise FileNotFoundError(f"no weights in {directory}: neither {single.name} nor {index.name} exists")
    weight_map = read_json(index, "(a safetensors index)").get("weight_map")
    if not isinstance(weight_map, dict):
        raise InputError(f"{index}: no weight_map object")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_safetensors(inside(directory, shard, index)))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise InputError(f"{index} lists tensors absent from its shards: {missing}")
    return tensors


def assign(cfg: LMConfig, tensors: dict[str, np.ndarray], expected: dict[NnxPath, tuple[int, ...]]
           ) -> dict[NnxPath, np.ndarray]:
    """Map HF ``tensors`` onto NNX paths with ``expected`` shapes; ValueError lists every mismatch."""
    if cfg.family == "gpt2":
        tensors = {name.removeprefix("transformer."): a for name, a in tensors.items()}
    table = gpt2_table(cfg) if cfg.family == "gpt2" else qwen3_table(cfg)
    if set(table) != set(expected):  # a bug in the table, not in the checkpoint
        raise RuntimeError(f"name table does not cover the model: {sorted(set(table) ^ set(expected), key=str)}")
    out, missing, misshaped = {}, set(), []
    for path, (name, transform) in table.items():
        if name not in tensors:
            missing.add(name)
            continue
        array = transform(np.asarray(tensors[name], dtype=np.float32))
        if array.shape != tuple(expected[path]):
            misshaped.append(f"{name}: got {tensors[name].shape}, expected {expected[path]} after mapping")
        out[path] = array
    used = {name for name, _ in table.values()}
    unexpected = sorted(n for n in tensors if n not in used and not _ignorable(n, cfg))
    if missing or unexpected or misshaped:
        raise ValueError(f"checkpoint does not match the {cfg.family} architecture: missing={sorted(missing)} "
                         f"unexpected={unexpected} mis-shaped={misshaped}")
    return out


def from_pretrained(path: str | Path, *, dtype: str = "float32", mesh: Mesh | None = None
                    ) -> tuple[DecoderLM, Tokenizer]:
    """Load ``(model, tokenizer)`` from a local HF directory; params float32, compute in ``dtype``.

    With ``mesh`` every parameter is placed by the logical-axis rules of :mod:`brainjax.sharding`.
    """
    directory = _need(Path(path))
    config = directory / "config.json"
    try:
        cfg = LMConfig.from_hf(read_json(config))
    except KeyError as err:
        raise InputError(f"{config}: missing {err} (not a {FAMILIES} Hugging Face config)") from err
    except ValueError as err:
        raise InputError(f"{config}: {err}") from err
    tensors = load_tensors(directory)
    try:
        tokenizer = Tokenizer.from_file(str(_need(directory / "tokenizer.json")))
    except Exception as err:  # the tokenizers library raises its own exception type for any bad file
        if isinstance(err, FileNotFoundError):
            raise
        raise InputError(f"{directory / 'tokenizer.json'}: not a readable tokenizer ({err})") from err
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: DecoderLM(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    arrays = assign(cfg, tensors, {p: v.get_value().shape for p, v in flat.items()})
    shardings = dict(nnx.to_flat_state(tree_shardings(state, mesh))) if mesh is not None else {}
    loaded = []
    for p, var in flat.items():
        value = jnp.asarray(arrays[p]) if mesh is None else jax.device_put(arrays[p], shardings[p].get_value())
        loaded.append((p, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded)), tokenizer
