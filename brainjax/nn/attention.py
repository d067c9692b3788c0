"""The one attention function every model calls, with interchangeable implementations.

Layout is ``[batch, length, heads, head_dim]`` (the ``jax.nn.dot_product_attention`` layout). Keys and values
may have fewer heads than queries (grouped-query attention: query head ``h`` reads key/value head
``h // (H // KV)``, Hugging Face's ``repeat_kv`` order). ``key_mask`` bool ``[batch, key_length]`` removes keys
(padded tokens); ``mask`` bool ``[batch, q_length, key_length]`` (or broadcastable: ``[q_length, key_length]``,
``[1, ...]``) says which key each query may read (causal LMs, fMRI + text layouts). Implementations:

* ``xla``      einsum scores, softmax in float32. Materialises [B, H, L, L] scores.
* ``chunked``  the same maths over blocks of ``chunk`` queries in a ``lax.map``; each block is
               rematerialised in the backward pass, so neither pass holds the full [L, L] scores
               (memory-efficient attention for long sequences on CPU/GPU without a fused kernel).
* ``cudnn``    cuDNN flash attention through ``jax.nn.dot_product_attention`` (GPU; bf16/fp16 inputs; it takes
               grouped heads and any mask, as an additive bias).
* ``splash``   TPU Pallas splash attention (key mask through segment ids; lengths and head dim padded to
               multiples of 128; grouped heads repeated). Its masks are static, so with a ``mask`` it runs
               ``chunked`` instead. Checked against numpy on CPU through the Pallas interpreter.
* ``auto``     cudnn on GPU for half precision, splash on TPU from 1,024 tokens, chunked on CPU when the
               sequence is long, otherwise xla.

``cudnn`` off a GPU and ``splash`` off a TPU run ``chunked`` with a warning, so one preset runs everywhere.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
_MASKED = -1e30  # finite: a row whose keys are all masked gives a uniform (not NaN) softmax


def _allowed(key_mask: jax.Array | None, mask: jax.Array | None) -> jax.Array | None:
    """bool [B|1, Lq|1, Lk] (True = query may read key) from key_mask [B, Lk] and mask [B|1, Lq|1, Lk]."""
    if key_mask is None:
        return mask
    keys = key_mask[:, None, :]
    return keys if mask is None else keys & mask


def _probabilities(q: jax.Array, k: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """Softmax weights float32 [B, H, Lq, Lk] (equal heads) or [B, KV, G, Lq, Lk] (grouped heads)."""
    scale = q.shape[-1] ** -0.5
    if q.shape[2] == k.shape[2]:
        # Kept apart from the grouped einsum: XLA may order the sums differently for the two, and the MAE's
        # numbers stay bit-for-bit what they were.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    else:
        batch, length, heads, dim = q.shape
        grouped = q.reshape(batch, length, k.shape[2], heads // k.shape[2], dim)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, k, preferred_element_type=jnp.float32) * scale
    if allowed is not None:
        scores = jnp.where(allowed.reshape(allowed.shape[:1] + (1,) * (scores.ndim - 3) + allowed.shape[1:]),
                           scores, _MASKED)
    return jax.nn.softmax(scores, axis=-1)


def _xla(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None) -> jax.Array:
    weights = _probabilities(q, k, allowed).astype(v.dtype)
    if weights.ndim == 4:
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(q.shape)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None, chunk: int) -> jax.Array:
    batch, length, heads, dim = q.shape
    chunk = max(1, min(chunk, length))
    n_chunks = -(-length // chunk)
    padded = n_chunks * chunk
    # Pad queries to whole blocks; padded query rows are computed and dropped (keys are never padded).
    q = jnp.pad(q, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
    blocks = q.reshape(batch, n_chunks, chunk, heads, dim).swapaxes(0, 1)
    if allowed is None or allowed.shape[1] == 1:  # the same mask rows for every block
        @jax.checkpoint  # recompute each block's scores in the backward pass instead of storing all of them
        def one_block(q_block):
            return _xla(q_block, k, v, allowed)
    else:  # a mask per query row: cut into the same blocks as the queries
        rows = jnp.pad(allowed, ((0, 0), (0, padded - length), (0, 0)))
        blocks = (blocks, rows.reshape(rows.shape[0], n_chunks, chunk, rows.shape[2]).swapaxes(0, 1))

        @jax.checkpoint
        def one_block(block):
            return _xla(block[0], k, v, block[1])

    out = jax.lax.map(one_block, blocks)
    return out.swapaxes(0, 1).reshape(batch, padded, heads, dim)[:, :length]


def _cudnn(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array | None) -> jax.Array:
    # jax.nn.dot_product_attention groups heads itself (H a multiple of KV) and adds a bool mask as a bias,
    # which cuDNN wants full along the query and key lengths ("Bias must have same seq length as QKV"): a key
    # mask [B, 1, 1, Lk] is refused, so every mask is broadcast to [B|1, 1, Lq, Lk] first.
    if allowed is None:
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    mask = jnp.broadcast_to(allowed, (allowed.shape[0], q.shape[1], k.shape[1]))[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


@functools.cache
def _splash_kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    full = mask_lib.MultiHeadMask([mask_lib.FullMask((q_len, kv_len)) for _ in range(heads)])
    return kernel.make_splash_mha(full, head_shards=1, q_seq_shards=1, interpret=interpret), kernel.SegmentIds


def _round_up(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                     interpret: bool = False) -> jax.Array:
    """TPU Pallas splash attention in brainjax's layout (q: [B, Lq, H, D], k, v: [B, Lk, H, D], key_mask bool
    [B, Lk]); returns [B, Lq, H, D].

    The kernel works on blocks of 128: lengths are padded to multiples of 128 (padded keys masked out, padded
    queries dropped) and the head dimension is zero-padded to one (q is scaled by the true D first, and zero
    channels add nothing to q.k nor to the output). ``interpret=True`` runs the same kernel through the Pallas
    interpreter on any backend (slow; how the tests check it on CPU).
    """
    (batch, q_len, heads, dim), k_len = q.shape, k.shape[1]
    q_pad, k_pad, d_pad = _round_up(q_len) - q_len, _round_up(k_len) - k_len, _round_up(dim) - dim
    keys = jnp.ones((batch, k_len), bool) if key_mask is None else key_mask
    keys = jnp.pad(keys, ((0, 0), (0, k_pad)))
    q = jnp.pad((q * dim ** -0.5).astype(q.dtype), ((0, 0), (0, q_pad), (0, 0), (0, d_pad)))
    k, v = (jnp.pad(x, ((0, 0), (0, k_pad), (0, 0), (0, d_pad))) for x in (k, v))
    kernel, segment_ids = _splash_kernel(heads, q_len + q_pad, k_len + k_pad, interpret)
    # Kernel layout is [heads, length, dim] per sample; masked keys get segment 0, all queries segment 1.
    qh, kh, vh = (x.swapaxes(1, 2) for x in (q, k, v))
    q_ids = jnp.ones(q.shape[:2], jnp.int32)
    out = jax.vmap(lambda a, b, c, qi, ki: kernel(a, b, c, segment_ids=segment_ids(qi, ki)))(
        qh, kh, vh, q_ids, keys.astype(jnp.int32))
    return out.swapaxes(1, 2)[:, :q_len, :, :dim]


def _splash(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, chunk: int) -> jax.Array:
    try:
        _splash_kernel(q.shape[2], _round_up(q.shape[1]), _round_up(k.shape[1]), False)
    except ImportError as err:
        warnings.warn(f"attention impl 'splash': the Pallas kernel is not importable ({err}); using 'chunked'",
                      stacklevel=3)
        return _chunked(q, k, v, _allowed(key_mask, None), chunk)
    groups = q.shape[2] // k.shape[2]
    # The MHA kernel wants one key/value head per query head: repeat each KV head (repeat_kv order).
    k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
    return splash_attention(q, k, v, key_mask)


_NEEDS = {"cudnn": "gpu", "splash": "tpu"}


def resolve_impl(impl: str, length: int, dtype: jnp.dtype, chunk: int = 512, platform: str | None = None, *,
                 masked: bool = False) -> str:
    """The implementation that runs for ``impl`` at ``length`` tokens on ``platform`` (default: this one).

    ``auto``: cudnn on GPU for half precision, splash on TPU from 1,024 tokens, else chunked when the sequence
    is longer than two chunks, else xla. An explicit ``cudnn`` off a GPU or ``splash`` off a TPU becomes
    ``chunked`` (:func:`attention` warns). ``masked``: an arbitrary query-key mask is given; splash becomes
    chunked (its masks are built once, in numpy, with the kernel: a per-batch mask has no form there).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
    platform = platform or jax.devices()[0].platform
    if impl == "auto":
        if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        if platform == "tpu" and length >= 1024 and not masked:
            return "splash"
        return "chunked" if length > 2 * chunk else "xla"
    if impl in _NEEDS and platform != _NEEDS[impl] or impl == "splash" and masked:
        return "chunked"
    return impl


def _check(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None,
           mask: jax.Array | None) -> jax.Array | None:
    """Raise ValueError on inconsistent shapes; returns ``mask`` as bool [B|1, Lq|1, Lk] (or None)."""
    if (q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]
            or q.shape[2] % k.shape[2]):
        raise ValueError(f"attention expects q [B,Lq,H,D] and k, v [B,Lk,KV,D] with H a multiple of KV; got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if key_mask is not None and key_mask.shape != k.shape[:2]:
        raise ValueError(f"key_mask shape {key_mask.shape} does not match keys {k.shape[:2]}")
    if mask is None:
        return None
    mask = jnp.asarray(mask, bool)
    mask = mask[None] if mask.ndim == 2 else mask
    full = (q.shape[0], q.shape[1], k.shape[1])
    if mask.ndim != 3 or mask.shape[2] != full[2] or any(m not in (1, f) for m, f in zip(mask.shape, full)):
        raise ValueError(f"mask shape {mask.shape} does not broadcast to [B, Lq, Lk] = {list(full)}")
    return mask


def attention_weights(q: jax.Array, k: jax.Array, *, key_mask: jax.Array | None = None,
                      mask: jax.Array | None = None) -> jax.Array:
    """The softmax weights :func:`attention` applies (dense maths), float32 [B, H, Lq, Lk], for inspection.

    q: [B, Lq, H, D]; k: [B, Lk, KV, D]; key_mask, mask as in :func:`attention`. Materialises every score, so
    use it on modest batches.
    """
    weights = _probabilities(q, k, _allowed(key_mask, _check(q, k, k, key_mask, mask)))
    return weights.reshape(weights.shape[0], q.shape[2], *weights.shape[-2:])


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
              mask: jax.Array | None = None, impl: str = "auto", chunk: int = 512) -> jax.Array:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` over the keys each query may read.

    q: [B, Lq, H, D]; k, v: [B, Lk, KV, D] with H a multiple of KV (query head h reads KV head h // (H // KV));
    key_mask: bool [B, Lk] or None (True = attend); mask: bool [B, Lq, Lk] or broadcastable ([Lq, Lk],
    [1, Lq, Lk], [B, 1, Lk]) or None (True = query may read key). A query with no readable key gets uniform
    weights (not NaN). Returns [B, Lq, H, D] in v's dtype. Scores and softmax are float32 for every input
    dtype (xla/chunked).
    """
    mask = _check(q, k, v, key_mask, mask)
    resolved = resolve_impl(impl, q.shape[1], q.dtype, chunk, masked=mask is not None)
    if resolved != impl and impl != "auto":
        elsewhere = resolve_impl(impl, q.shape[1], q.dtype, chunk) != impl
        why = f"needs a {_NEEDS[impl].upper()}" if elsewhere else "takes no query-key mask (its masks are static)"
        warnings.warn(f"attention impl {impl!r} {why}; using {resolved!r}", stacklevel=2)
    impl = resolved
    if impl == "splash":
        return _splash(q, k, v, key_mask, chunk)
    allowed = _allowed(key_mask, mask)
    if impl == "xla":
        return _xla(q, k, v, allowed)
    if impl == "chunked":
        return _chunked(q, k, v, allowed, chunk)
    return _cudnn(q, k, v, allowed)
