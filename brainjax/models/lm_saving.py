"""Save a :class:`~brainjax.models.lm.DecoderLM` and its tokenizer as a local Hugging Face directory.

The inverse of :mod:`brainjax.models.lm_loading`: the same per-family name tables are walked backwards
(transposes undone, GPT-2's q/k/v re-fused into ``c_attn``), so a model brainjax trains itself goes through
exactly the loading path of a downloaded Qwen3 or GPT-2, and ``transformers`` can read it too. Every
re-built HF tensor is checked by running the loading transform on it again, so a table change that the
inversion does not follow fails here instead of writing a silently wrong checkpoint.

The directory is written into a temporary sibling and renamed at the end, so a crash never leaves a
half-written model behind. No torch, no pickle: weights go through ``safetensors.numpy``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file
from tokenizers import Tokenizer

from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.models.lm_loading import NnxPath, _same, _transpose, gpt2_table, qwen3_table

_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def hf_config(cfg: LMConfig) -> dict[str, Any]:
    """The ``config.json`` dict of ``cfg`` (every field ``LMConfig.from_hf`` reads, float32 weights).

    Raises ValueError for a configuration the HF family cannot express (e.g. GPT-2 with grouped kv heads).
    """
    if cfg.family == "qwen3":
        return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
                "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate,
                "max_position_embeddings": cfg.max_positions, "rms_norm_eps": cfg.norm_eps,
                # Older transformers read rope_theta, newer ones rope_parameters: write both.
                "rope_theta": cfg.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
                "hidden_act": cfg.activation, "attention_dropout": 0.0, "use_sliding_window": False,
                "torch_dtype": "float32"}
    problems = []
    if cfg.kv_heads != cfg.heads:
        problems.append(f"kv_heads {cfg.kv_heads} != heads {cfg.heads}")
    if cfg.head_dim * cfg.heads != cfg.hidden:
        problems.append(f"heads * head_dim = {cfg.heads * cfg.head_dim} != hidden {cfg.hidden}")
    if not cfg.tie_word_embeddings or not cfg.attention_bias:
        problems.append("GPT-2 always ties the lm_head and uses biases")
    if problems:
        raise ValueError(f"config cannot be saved as GPT-2: {'; '.join(problems)}")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_embd": cfg.hidden, "n_layer": cfg.layers, "n_head": cfg.heads, "n_inner": cfg.intermediate,
            "n_positions": cfg.max_positions, "n_ctx": cfg.max_positions, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": cfg.activation, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32"}


def hf_tensors(model: DecoderLM) -> dict[str, np.ndarray]:
    """The model's parameters under their HF names: {name: contiguous float32 array in HF layout}."""
    cfg = model.cfg
    params = {path: np.asarray(var.get_value(), np.float32)
              for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    table = gpt2_table(cfg) if cfg.family == "gpt2" else qwen3_table(cfg)
    if set(table) != set(params):
        raise RuntimeError(f"name table does not cover the model: {sorted(set(table) ^ set(params), key=str)}")
    groups: dict[str, list[NnxPath]] = defaultdict(list)
    for path, (name, _) in table.items():
        groups[name].append(path)  # table order within a group is q, k, v for GPT-2's c_attn
    tensors = {}
    for name, paths in groups.items():
        if len(paths) > 1:
            hf = np.concatenate([params[p] for p in paths], axis=-1)  # undo the split along the last axis
        elif table[paths[0]][1] is _transpose:
            hf = params[paths[0]].T
        elif table[paths[0]][1] is _same:
            hf = params[paths[0]]
        else:
            raise RuntimeError(f"{name}: no inverse known for its loading transform")
        for path in paths:  # the loader must give back exactly what we hold
            if not np.array_equal(table[path][1](hf), params[path]):
                raise RuntimeError(f"{name}: re-applying the loading transform does not restore {path}")
        prefix = "transformer." if cfg.family == "gpt2" else ""
        tensors[prefix + name] = np.ascontiguousarray(hf, dtype=np.float32)
    return tensors


def _tokenizer_config(tokenizer: Tokenizer, config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                           "model_max_length": config.get("max_position_embeddings", config.get("n_positions"))}
    for field in _TOKEN_FIELDS:
        token_id = config.get(field)
        if token_id is not None:
            token = tokenizer.id_to_token(int(token_id))
            if token is None:
                raise ValueError(f"{field}={token_id} is not a token of the tokenizer "
                                 f"(vocabulary size {tokenizer.get_vocab_size()})")
            out[field.removesuffix("_id")] = token
    return out


def _check_target(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True to replace it")


def save_pretrained(model: DecoderLM, tokenizer: Tokenizer, directory: str | os.PathLike, *,
                    extra_config: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``.

    extra_config: more ``config.json`` fields (e.g. bos/eos/pad token ids); it may not change an architecture
    field. A non-empty ``directory`` is refused unless ``overwrite``. Returns the directory.
    """
    directory = Path(directory)
    config = hf_config(model.cfg)
    for key, value in (extra_config or {}).items():
        if key in config and config[key] != value:
            raise ValueError(f"extra_config[{key!r}]={value!r} contradicts the model's {key}={config[key]!r}")
        config[key] = value
    for field in _TOKEN_FIELDS:
        token_id = config.get(field)
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < model.cfg.vocab_size):
            raise ValueError(f"{field} must be an int in [0, {model.cfg.vocab_size}), got {token_id!r}")
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{model.cfg.vocab_size} embeddings")
    tokenizer_config = _tokenizer_config(tokenizer, config)
    _check_target(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = directory.parent / f".{directory.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
        tokenizer.save(str(tmp / "tokenizer.json"))
        # transformers rejects safetensors files without a "format" entry in their metadata.
        save_file(hf_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _check_target(directory, overwrite)  # something may have appeared while we were writing
        if directory.exists():
            os.rename(directory, old)  # keep the old model until the new one is in place
        try:
            os.rename(tmp, directory)
        except OSError:
            if old.exists():
                os.rename(old, directory)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return directory
