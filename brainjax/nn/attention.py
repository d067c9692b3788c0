"""The one attention function every model calls, with interchangeable implementations.

Layout is ``[batch, length, heads, head_dim]`` (the ``jax.nn.dot_product_attention`` layout). Attention is
bidirectional; ``key_mask`` bool ``[batch, key_length]`` removes keys (padded tokens). Implementations:

* ``xla``      einsum scores, softmax in float32. Materialises [B, H, L, L] scores.
* ``chunked``  the same maths over blocks of ``chunk`` queries in a ``lax.map``; each block is
               rematerialised in the backward pass, so neither pass holds the full [L, L] scores
               (memory-efficient attention for long sequences on CPU/GPU without a fused kernel).
* ``cudnn``    cuDNN flash attention through ``jax.nn.dot_product_attention`` (GPU; bf16/fp16 inputs).
* ``splash``   TPU Pallas splash attention (key mask through segment ids; lengths and head dim padded to
               multiples of 128). Checked against numpy on CPU through the Pallas interpreter.
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


def _xla(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if key_mask is not None:
        scores = jnp.where(key_mask[:, None, None, :], scores, _MASKED)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)


def _chunked(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, chunk: int) -> jax.Array:
    batch, length, heads, dim = q.shape
    chunk = max(1, min(chunk, length))
    n_chunks = -(-length // chunk)
    padded = n_chunks * chunk
    # Pad queries to whole blocks; padded query rows are computed and dropped (keys are never padded).
    q = jnp.pad(q, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
    blocks = q.reshape(batch, n_chunks, chunk, heads, dim).swapaxes(0, 1)

    @jax.checkpoint  # recompute each block's scores in the backward pass instead of storing all of them
    def one_block(q_block):
        return _xla(q_block, k, v, key_mask)

    out = jax.lax.map(one_block, blocks)
    return out.swapaxes(0, 1).reshape(batch, padded, heads, dim)[:, :length]


def _cudnn(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    mask = None if key_mask is None else key_mask[:, None, None, :]
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
        return _chunked(q, k, v, key_mask, chunk)
    return splash_attention(q, k, v, key_mask)


_NEEDS = {"cudnn": "gpu", "splash": "tpu"}


def resolve_impl(impl: str, length: int, dtype: jnp.dtype, chunk: int = 512, platform: str | None = None) -> str:
    """The implementation that runs for ``impl`` at ``length`` tokens on ``platform`` (default: this one).

    ``auto``: cudnn on GPU for half precision, splash on TPU from 1,024 tokens, else chunked when the sequence
    is longer than two chunks, else xla. An explicit ``cudnn`` off a GPU or ``splash`` off a TPU becomes
    ``chunked`` (:func:`attention` warns).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
    platform = platform or jax.devices()[0].platform
    if impl == "auto":
        if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        if platform == "tpu" and length >= 1024:
            return "splash"
        return "chunked" if length > 2 * chunk else "xla"
    if impl in _NEEDS and platform != _NEEDS[impl]:
        return "chunked"
    return impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
              impl: str = "auto", chunk: int = 512) -> jax.Array:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` over unmasked keys.

    q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; key_mask: bool [B, Lk] or None (True = attend).
    Returns [B, Lq, H, D] in v's dtype. Scores and softmax are float32 for every input dtype (xla/chunked).
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention expects q [B,Lq,H,D] and k, v [B,Lk,H,D]; got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    if key_mask is not None and key_mask.shape != k.shape[:2]:
        raise ValueError(f"key_mask shape {key_mask.shape} does not match keys {k.shape[:2]}")
    resolved = resolve_impl(impl, q.shape[1], q.dtype, chunk)
    if resolved != impl and impl != "auto":
        warnings.warn(f"attention impl {impl!r} needs a {_NEEDS[impl].upper()}; using {resolved!r}", stacklevel=2)
    impl = resolved
    if impl == "xla":
        return _xla(q, k, v, key_mask)
    if impl == "chunked":
        return _chunked(q, k, v, key_mask, chunk)
    if impl == "cudnn":
        return _cudnn(q, k, v, key_mask)
    return _splash(q, k, v, key_mask, chunk)
