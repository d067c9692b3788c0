"""Text generation and label scoring for :class:`~brainjax.models.lm.DecoderLM` with a key/value cache.

Why a cache: re-running the whole sequence for every new token costs O(L^2) per step; storing each layer's
keys and values once makes a step O(L). The cached forward (:func:`decode`) reuses the model's own
sub-modules (projections, norms, MLPs), so it cannot drift from ``DecoderLM.__call__`` in anything but the
attention bookkeeping, and ``DecoderLM`` itself is left untouched.

Conventions: prompts are LEFT-padded (every row's last slot is a real token, as HF ``generate`` expects),
positions count real tokens only (``cumsum(mask) - 1``, the model's default), and the whole decode loop is one
``jax.jit`` program with static shapes (prefill, then ``lax.fori_loop`` over single-token steps).

For classification by an LM, :func:`sequence_logprobs` scores candidate answers in one batched forward and
:func:`constrained_generate` decodes greedily inside a prefix trie of allowed answers, using the same forward.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.models.lm import DecoderLM
from brainjax.nn.attention import attention


class KVCache(NamedTuple):
    """Per-layer keys/values k, v: tuples of [B, S, KV, D]; mask: bool [B, S] (slot holds a real token);
    index: int32 [] (next slot to write, shared by all rows); lengths: int32 [B] (real tokens seen per row)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    lengths: jax.Array


def init_cache(model: DecoderLM, batch: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache of ``max_length`` slots for ``batch`` rows; dtype defaults to the model's compute dtype."""
    if batch < 1 or max_length < 1:
        raise ValueError(f"batch ({batch}) and max_length ({max_length}) must be positive")
    cfg = model.cfg
    dtype = model.embed.dtype if dtype is None else dtype
    shape = (batch, max_length, cfg.kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.layers))
    return KVCache(zeros, zeros, jnp.zeros((batch, max_length), bool), jnp.zeros((), jnp.int32),
                   jnp.zeros((batch,), jnp.int32))


def _attend(attn, x: jax.Array, keys: jax.Array, values: jax.Array, allowed: jax.Array, positions: jax.Array,
            start: jax.Array, query_chunk: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, length, _ = x.shape
    q, k, v = attn.project(x, positions)
    keys = jax.lax.dynamic_update_slice(keys, k.astype(keys.dtype), (0, start, 0, 0))
    values = jax.lax.dynamic_update_slice(values, v.astype(values.dtype), (0, start, 0, 0))
    if query_chunk and length > query_chunk:  # bound the [B, H, T, S] scores of a long chunk over a long cache
        out = attention(q, keys, values, mask=allowed, impl="chunked", chunk=query_chunk)
    else:
        out = attention(q, keys, values, mask=allowed, impl=attn.attn_impl)
    return attn.o(out.reshape(batch, length, -1)), keys, values


def cached_hidden(model: DecoderLM, x: jax.Array, positions: jax.Array, allowed: jax.Array,
                  keys: tuple[jax.Array, ...], values: tuple[jax.Array, ...], start: jax.Array, query_chunk: int = 0
                  ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """``DecoderLM.hidden`` for T new positions after the S cache slots, writing their keys/values at ``start``.

    x: input embeddings [B, T, W]; positions: int [B, T]; allowed: bool [B, T, S] (which cache slots, the new
    ones included, each new position reads); keys, values: per layer [B, S, KV, D]. Returns the final-norm hidden
    states [B, T, W] and the updated per-layer keys and values. Shared by :func:`decode` (text) and the fMRI + text
    cache of :mod:`brainjax.models.fmri_lm`, so neither can drift from the model's own sub-modules. ``query_chunk``
    > 0: chunks longer than it attend in blocks of that many queries (same maths, bounded memory).
    """
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)
    new_keys, new_values = [], []
    for block, k, v in zip(model.blocks, keys, values):
        h, k, v = _attend(block.attn, block.attn_norm(x), k, v, allowed, positions, start, query_chunk)
        x = x + h
        x = x + block.mlp(block.mlp_norm(x))
        new_keys.append(k)
        new_values.append(v)
    return model.norm(x), tuple(new_keys), tuple(new_values)


def decode(model: DecoderLM, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache
           ) -> tuple[jax.Array, KVCache]:
    """Run ``input_ids`` int [B, T] (mask bool [B, T]) after what ``cache`` holds; T = prompt (prefill) or 1.

    Returns logits float32 [B, T, vocab] and the cache with T more slots filled. Traceable (use under jit).
    """
    mask = jnp.asarray(attention_mask).astype(bool)
    length = input_ids.shape[1]
    positions = jnp.maximum(cache.lengths[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)
    key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
    # Query t sits in slot index + t: it sees filled slots up to and including its own.
    causal = jnp.arange(key_mask.shape[1])[None, :] <= (cache.index + jnp.arange(length))[:, None]
    hidden, keys, values = cached_hidden(model, model.embed(input_ids), positions,
                                         key_mask[:, None, :] & causal[None], cache.k, cache.v, cache.index)
    new = KVCache(keys, values, key_mask, cache.index + length, cache.lengths + mask.sum(axis=1, dtype=jnp.int32))
    return model.logits(hidden), new


def filter_logits(logits: jax.Array, top_k=0, top_p=1.0) -> jax.Array:
    """Set tokens outside the top-k, then outside the nucleus, to -inf. logits: float [..., V] -> [..., V].

    top_k=0 keeps all; the nucleus is the smallest set of most likely tokens whose probability mass (after the
    top-k cut) reaches ``top_p``, always at least the most likely token; top_p=1 keeps all. Ties at a cut-off
    are kept. top_k / top_p may be traced scalars, so one compiled sampler serves every setting.
    """
    if isinstance(top_k, int) and top_k < 0 or isinstance(top_p, float | int) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    logits = jnp.asarray(logits, jnp.float32)
    vocab = logits.shape[-1]
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    kth = jnp.take(ranked, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)[..., None]
    logits = jnp.where((top_k <= 0) | (logits >= kth), logits, -jnp.inf)
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ranked, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    cut = jnp.min(jnp.where(before < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
    # top_p = 1 is tested apart: rounding could push ``before`` of far-tail tokens to 1.0 and drop them.
    return jnp.where((top_p >= 1.0) | (logits >= cut), logits, -jnp.inf)


def _check_prompts(input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an integer [batch, length] array, got {ids.dtype} {ids.shape}")
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    mask = mask.astype(bool)
    if not mask[:, -1].all() or (np.diff(mask.astype(np.int8), axis=1) < 0).any():
        raise ValueError("prompts must be LEFT-padded: each row's mask is 0...0 1...1 with a real last token")
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "greedy"))
def _generate(graphdef, state, ids, mask, rng, temperature, top_k, top_p, eos_id, pad_id, *, steps, greedy):
    model = nnx.merge(graphdef, state)
    batch = ids.shape[0]

    def pick(logits, step, done):
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            scaled = filter_logits(logits / temperature, top_k, top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, step), scaled, axis=-1)
        token = jnp.where(done, pad_id, token).astype(jnp.int32)
        return token, done | (token == eos_id)

    logits, cache = decode(model, ids, mask, init_cache(model, batch, ids.shape[1] + steps))
    token, done = pick(logits[:, -1], 0, jnp.zeros((batch,), bool))
    out = jnp.full((batch, steps), pad_id, jnp.int32).at[:, 0].set(token)

    def step(i, carry):
        out, token, done, cache = carry
        logits, cache = decode(model, token[:, None], jnp.ones((batch, 1), bool), cache)
        token, done = pick(logits[:, -1], i, done)
        return out.at[:, i].set(token), token, done, cache

    # The last emitted token never needs a forward, hence steps - 1 iterations after the prefill.
    return jax.lax.fori_loop(1, steps, step, (out, token, done, cache))[0]


def generate(model: DecoderLM, input_ids, attention_mask, *, max_new_tokens: int, rng: jax.Array | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             pad_id: int = 0) -> jax.Array:
    """Continue LEFT-padded prompts input_ids int [B, L] (attention_mask [B, L], 0 = padding).

    temperature 0 is greedy; otherwise tokens are sampled from ``filter_logits(logits / temperature, top_k,
    top_p)`` with step-wise keys folded from ``rng``. After a row emits ``eos_id`` it emits ``pad_id``.
    Returns int32 [B, max_new_tokens].
    """
    ids, mask = _check_prompts(input_ids, attention_mask)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key")
    if model.pos_embed is not None and ids.shape[1] + max_new_tokens > model.cfg.max_positions:
        raise ValueError(f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_positions {model.cfg.max_positions}")
    graphdef, state = nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng  # unused when greedy, but jit needs an array
    # Sampling settings and eos/pad are traced, so changing them reuses the compiled program.
    eos_id = -1 if eos_id is None else eos_id  # -1 never matches a token
    return _generate(graphdef, state, ids, mask, rng, jnp.float32(max(temperature, 1e-6)), jnp.int32(top_k),
                     jnp.float32(top_p), jnp.int32(eos_id), jnp.int32(pad_id), steps=int(max_new_tokens),
                     greedy=temperature == 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "start", "width"))
def _window(graphdef, state, ids, mask, tokens, *, start, width):
    logits = nnx.merge(graphdef, state)(ids, mask)[:, start:start + width]
    return jax.nn.log_softmax(logits, axis=-1)[..., tokens]  # [N, width, U]: only the vocab rows we need


def _candidate_logprobs(model: DecoderLM, prompt_ids, prompt_mask, candidates: list[list[int]]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One forward of every prompt + candidate. Returns (logprobs [B, C, M, U] of the U distinct candidate
    tokens at each candidate step, index [C, M] of each candidate's own token within U, valid bool [C, M])."""
    ids, mask = _check_prompts(prompt_ids, prompt_mask)
    if not candidates or any(len(c) == 0 for c in candidates):
        raise ValueError("candidates must be a non-empty list of non-empty token lists")
    vocab = model.cfg.vocab_size
    if any(not 0 <= t < vocab for c in candidates for t in c):
        raise ValueError(f"candidate token ids must lie in [0, {vocab})")
    tokens, flat = np.unique(np.concatenate([np.asarray(c, np.int64) for c in candidates]), return_inverse=True)
    count, width = len(candidates), max(len(c) for c in candidates)
    cand, index, valid = (np.zeros((count, width), np.int32), np.zeros((count, width), np.int32),
                          np.zeros((count, width), bool))
    offset = 0
    for i, c in enumerate(candidates):
        cand[i, :len(c)], index[i, :len(c)], valid[i, :len(c)] = c, flat[offset:offset + len(c)], True
        offset += len(c)
    batch, length = ids.shape
    # Candidates are right-padded after the prompt: causal attention keeps that padding out of real positions.
    rows = jnp.concatenate([jnp.repeat(ids, count, 0), jnp.tile(jnp.asarray(cand), (batch, 1))], axis=1)
    masks = jnp.concatenate([jnp.repeat(mask, count, 0), jnp.tile(jnp.asarray(valid), (batch, 1))], axis=1)
    if model.pos_embed is not None and rows.shape[1] > model.cfg.max_positions:
        raise ValueError(f"prompt + candidate length {rows.shape[1]} exceeds max_positions {model.cfg.max_positions}")
    graphdef, state = nnx.split(model)
    logprobs = _window(graphdef, state, rows, masks, jnp.asarray(tokens, jnp.int32), start=length - 1, width=width)
    return np.asarray(logprobs).reshape(batch, count, width, len(tokens)), index, valid


def sequence_logprobs(model: DecoderLM, prompt_ids, prompt_mask, candidates: list[list[int]]) -> np.ndarray:
    """Summed log p(candidate | prompt) for LEFT-padded prompts int [B, L] and C token lists -> float32 [B, C]."""
    logprobs, index, valid = _candidate_logprobs(model, prompt_ids, prompt_mask, candidates)
    own = np.take_along_axis(logprobs, np.broadcast_to(index[None, :, :, None], logprobs.shape[:3] + (1,)), -1)
    return np.where(valid, own[..., 0], 0.0).sum(axis=-1).astype(np.float32)


def constrained_generate(model: DecoderLM, input_ids, attention_mask, allowed: list[list[int]]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding restricted to the token sequences in ``allowed`` (walked as a prefix trie).

    At each trie node the most likely allowed next token is taken. No allowed sequence may repeat or be a
    prefix of another (the end of an answer would then be ambiguous). Returns (choice int [B], index into
    ``allowed``; logprobs float32 [B, C], :func:`sequence_logprobs` of every allowed sequence).
    """
    seqs = [tuple(s) for s in allowed]
    for i, a in enumerate(seqs):
        for j, b in enumerate(seqs):
            if i != j and b[:len(a)] == a:
                raise ValueError(f"allowed sequence {list(a)} repeats or is a prefix of {list(b)}")
    logprobs, index, valid = _candidate_logprobs(model, input_ids, attention_mask, [list(s) for s in seqs])
    own = np.take_along_axis(logprobs, np.broadcast_to(index[None, :, :, None], logprobs.shape[:3] + (1,)), -1)
    totals = np.where(valid, own[..., 0], 0.0).sum(axis=-1).astype(np.float32)
    choice = np.zeros(logprobs.shape[0], np.int64)
    for row in range(logprobs.shape[0]):
        alive, depth = list(range(len(seqs))), 0
        while len(alive) > 1:
            # All alive candidates share the prefix, so any of them carries this node's next-token scores.
            scores = logprobs[row, alive[0], depth]
            best = max(alive, key=lambda c: scores[index[c, depth]])
            alive = [c for c in alive if seqs[c][depth] == seqs[best][depth]]
            depth += 1
        choice[row] = alive[0]
    return choice, totals
