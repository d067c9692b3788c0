"""A key/value cache for :class:`~brainjax.models.fmri_lm.FMRILM`: extend a mixed fMRI + text sequence chunk by chunk.

Why: a k-shot prompt is mostly its support scans (k examples per class, 300 fMRI tokens each on the default
data), and every query of a target shares them. Without a cache every query x label recomputes that whole
prefix; with it the prefix is computed once, each query's scan and question once, and each label answer or
generated token reads the cached keys and values.

The attention rule is the model's: a position reads a key iff ``group[key] <= group[query]`` and the key is
valid (and, with block-local scan attention, an fMRI position only keys of its own block). Because a chunk's
groups continue where the cached ones stop (the host lays out one prompt and cuts it into chunks,
:func:`brainjax.models.sequences.layout` with ``first_group``), extending chunk by chunk gives the hidden states
of the whole sequence in one forward (tested within 1e-5). Padding anywhere stays invalid, so a
chunk may be padded at its end and the next chunk still continues each row's own groups.

Chunks are batches in :class:`FMRILM`'s layout (ids, slot, group, valid, plus the window arrays of the
chunk's own fMRI blocks; a text-only chunk has no ``signal``). Slots are written at one shared ``index``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from brainjax.models.fmri_lm import FMRILM, allowed_mask
from brainjax.models.generate import cached_hidden
from brainjax.models.lm import rope


class FMRICache(NamedTuple):
    """Per-layer keys/values k, v: tuples of [B, S, KV, D]; group int32 [B, S] and valid bool [B, S] of every slot
    (False for slots not yet written and for padding); index int32 [] (next slot to write, shared by all rows)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    group: jax.Array
    valid: jax.Array
    index: jax.Array


def init_cache(model: FMRILM, batch: int, length: int) -> FMRICache:
    """An empty cache of ``length`` slots for ``batch`` rows, in the LM's compute dtype."""
    if batch < 1 or length < 1:
        raise ValueError(f"batch ({batch}) and length ({length}) must be positive")
    cfg = model.lm.cfg
    shape = (batch, length, cfg.kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, model.lm.embed.dtype) for _ in range(cfg.layers))
    return FMRICache(zeros, zeros, jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch, length), bool),
                     jnp.zeros((), jnp.int32))


def extend(model: FMRILM, chunk: dict, cache: FMRICache, query_chunk: int = 128) -> tuple[jax.Array, FMRICache]:
    """Run a chunk of T positions after what ``cache`` holds. Returns hidden [B, T, W] and the cache with T more
    slots. A chunk longer than ``query_chunk`` attends in blocks of that many positions (a scan's 300 tokens over a
    k-shot cache of thousands of slots would otherwise hold [B, H, 300, S] scores; 0 = one block). Traceable;
    raises ValueError when the chunk does not fit (shapes are static)."""
    group, valid = jnp.asarray(chunk["group"]), jnp.asarray(chunk["valid"]).astype(bool)
    rows, length = group.shape
    slots = cache.group.shape[1]
    if cache.group.shape[0] != rows:
        raise ValueError(f"chunk of {rows} rows for a cache of {cache.group.shape[0]} rows")
    if length > slots:
        raise ValueError(f"chunk of {length} positions exceeds the cache's {slots} slots")
    x, _, _ = model.embed_inputs(chunk)
    keys_group = jax.lax.dynamic_update_slice(cache.group, group.astype(jnp.int32), (0, cache.index))
    keys_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
    allowed = allowed_mask(group, keys_valid, model.floor(chunk), key_group=keys_group)
    hidden, k, v = cached_hidden(model.lm, x, group, allowed, cache.k, cache.v, cache.index, query_chunk)
    return hidden, FMRICache(k, v, keys_group, keys_valid, cache.index + length)


def repeat_rows(cache: FMRICache, times: int) -> FMRICache:
    """Each row of ``cache`` repeated ``times`` times along the batch (a shared prefix for a batch of queries)."""
    def grow(x):
        return x if x.ndim == 0 else jnp.repeat(x, times, axis=0)
    return jax.tree.map(grow, cache)


def insert_block(model: FMRILM, cache: FMRICache, keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...],
                 group: jax.Array, valid: jax.Array, offset: jax.Array) -> FMRICache:
    """Write one scan block per row, computed on its own from group 0, at the cache's index, moved to start at
    group ``offset`` int [B].

    Only for block-local scan attention (the block's states do not depend on what precedes it) and a RoPE LM:
    there attention reads relative positions only, and a key rotated for position g then by ``offset`` is the
    key rotated for g + offset, so the moved block equals the block computed in place. keys, values: per layer
    [B, T, KV, D] (keys rotated for groups ``group``); group int [B, T] (from 0), valid bool [B, T]. Traceable."""
    lm_cfg = model.lm.cfg
    if model.scan_attention != "block" or lm_cfg.family != "qwen3":
        raise ValueError("a scan block can be moved only with language.scan_attention='block' and a RoPE LM")
    shift = jnp.broadcast_to(offset[:, None], group.shape)

    def put(into, new):
        return jax.lax.dynamic_update_slice(into, new.astype(into.dtype), (0, cache.index) + (0,) * (into.ndim - 2))

    k = tuple(put(old, rope(new, shift, lm_cfg.rope_theta)) for old, new in zip(cache.k, keys))
    v = tuple(put(old, new) for old, new in zip(cache.v, values))
    return FMRICache(k, v, put(cache.group, group + shift), put(cache.valid, valid), cache.index + group.shape[1])
