"""Transformer building blocks (Flax NNX) whose parameters carry logical axis names.

Logical names (mapped to mesh axes only in :data:`brainjax.sharding.LOGICAL_RULES`) are given per
block through :class:`AxisNames`, so the encoder (``embed/mlp/qkv``) and the decoder
(``dec_embed/dec_mlp/dec_qkv``) can be sharded differently. Parameters are float32; ``dtype`` is the
compute dtype (bfloat16 for mixed precision). Dropout takes an explicit PRNG key instead of an ``nnx.Rngs``
stream: the model then holds no RNG state, so ``jax.value_and_grad`` over a split/merged model (the trainer's
pure step) needs no care about mutated stream counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from brainjax.config import REMAT_POLICIES
from brainjax.nn.attention import attention, attention_weights

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # compute dtypes by config name; params stay float32
_kernel_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
# What a rematerialised block keeps for the backward pass: "full" keeps only its input and recomputes everything,
# the attention included; "attention" also keeps each attention's output, so the backward pass recomputes the
# norms, projections and MLP (cheap, and most of the activation memory) and only the part of the attention its own
# gradient needs (the scores and softmax, which the chunked path recomputes for its backward in any case), never
# the weighted sum over values: at BrainLM's lengths the attention is the costliest part of a block.
_ATTENTION_OUT = "attention_out"


def _checked_policy(policy: str | None) -> str | None:
    if policy and policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be one of {REMAT_POLICIES}, got {policy!r}")
    return policy or None


def rematerialise(fn: Callable, policy: str | None) -> Callable:
    """``fn(*modules, *arrays)`` rematerialised in the backward pass under ``policy`` (one of
    :data:`REMAT_POLICIES`), layer after layer; ``fn`` itself when ``policy`` is None or empty (no remat).

    The leading arguments that are NNX modules are the layer's weights (read, never mutated: blocks hold no RNG
    or other state); the rest are arrays, masks, keys or None. Values and gradients are those of
    ``nnx.remat(fn)``. The difference is the order XLA may run the backward pass in: a layer's recomputation
    waits for the cotangent of its output, and all of a layer's gradients (weights, biases and input) become
    available together. Without that, XLA:CPU's scheduler recomputed the next layer's forward while the
    previous layer's weight and bias gradients were still pending, and kept both layers' MLP internals alive
    (jax 0.12.1, ``ref_small`` batch 32: XLA's peak 10.04 -> 7.72 GiB, the same gradients; jax 0.10.2's
    scheduler ignores the order: 10.10 GiB either way).
    """
    if not _checked_policy(policy):
        return fn
    saved = jax.checkpoint_policies.save_only_these_names(_ATTENTION_OUT) if policy == "attention" else None

    def layer(*args):
        n_modules = next((i for i, a in enumerate(args) if not isinstance(a, nnx.Module)), len(args))
        graphdef, weights = nnx.split(args[:n_modules])

        def pure(weights, *rest):
            return fn(*nnx.merge(graphdef, weights), *rest)
        return _layer_in_order(jax.checkpoint(pure, policy=saved))(weights, *args[n_modules:])
    return layer


def _layer_in_order(checkpointed: Callable) -> Callable:
    """``checkpointed`` with a backward pass that starts only once its output's cotangent exists and hands out
    every gradient at once (``optimization_barrier`` orders without computing anything)."""
    @jax.custom_vjp
    def run(*args):
        return checkpointed(*args)

    def forward(*args):
        return jax.vjp(checkpointed, *args)  # the residuals: what the remat policy saves

    def backward(pullback, cotangent):
        residuals, tree = jax.tree.flatten(pullback)
        residuals, cotangent = jax.lax.optimization_barrier((residuals, cotangent))
        return jax.lax.optimization_barrier(jax.tree.unflatten(tree, residuals)(cotangent))

    run.defvjp(forward, backward)
    return run


class AxisNames(NamedTuple):
    embed: str = "embed"
    mlp: str = "mlp"
    qkv: str = "qkv"


ENCODER_AXES = AxisNames()
DECODER_AXES = AxisNames("dec_embed", "dec_mlp", "dec_qkv")


def logical(init: Callable, axes: tuple[str | None, ...]) -> Callable:
    """``init`` annotated with logical axis names (``out_sharding`` metadata, read by train/sharding.py).

    Eager sharding is off: logical names are not mesh axes, and the trainer places parameters itself
    (``sharding.create_sharded``), so building a model needs no mesh context.
    """
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def linear(d_in: int, d_out: int, axes: tuple[str | None, str | None], *, dtype, rngs: nnx.Rngs,
           init: Callable = _kernel_init, use_bias: bool = True) -> nnx.Linear:
    """A Linear layer with float32 params annotated ``axes`` (kernel) / ``axes[1]`` (bias)."""
    return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=logical(init, axes),
                      bias_init=logical(_zeros, (axes[1],)), rngs=rngs)


def layer_norm(width: int, axis: str, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                         scale_init=logical(nnx.initializers.ones_init(), (axis,)),
                         bias_init=logical(_zeros, (axis,)), rngs=rngs)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``rate == 0`` or ``key`` is None (deterministic)."""
    if rate <= 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class SelfAttention(nnx.Module):
    def __init__(self, width: int, heads: int, axes: AxisNames, *, attn_impl: str, chunk: int, dtype,
                 rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.attn_impl, self.chunk = heads, attn_impl, chunk
        # No qkv bias: a key bias has an exactly-zero gradient (softmax is shift invariant), and Adam turns
        # that float noise into full-size random updates.
        self.qkv = linear(width, 3 * width, (axes.embed, axes.qkv), dtype=dtype, rngs=rngs, use_bias=False)
        self.out = linear(width, width, (axes.qkv, axes.embed), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x: [B, L, W]; key_mask: bool [B, L] -> [B, L, W]."""
        batch, length, width = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads), 3, axis=2)
        out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], key_mask=key_mask, impl=self.attn_impl,
                        chunk=self.chunk)
        return self.out(checkpoint_name(out, _ATTENTION_OUT).reshape(batch, length, width))

    def weights(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """Attention probabilities float32 [B, H, L, L] (query rows) for inspection, e.g. network maps.

        Always the dense maths (the probabilities are the output here), so use it on modest batches.
        """
        batch, length, width = x.shape
        q, k, _ = jnp.split(self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads), 3, axis=2)
        return attention_weights(q[:, :, 0], k[:, :, 0], key_mask=key_mask)


class Block(nnx.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, dtype, rngs: nnx.Rngs):
        self.dropout_rate = dropout_rate
        self.norm1 = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(width, heads, axes, attn_impl=attn_impl, chunk=chunk, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)
        self.fc1 = linear(width, mlp, (axes.embed, axes.mlp), dtype=dtype, rngs=rngs)
        self.fc2 = linear(mlp, width, (axes.mlp, axes.embed), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, dropout_key: jax.Array | None = None):
        """x: [B, L, W]; key_mask: bool [B, L]; dropout_key: PRNG key or None (no dropout)."""
        keys = (None,) * 3 if dropout_key is None else tuple(jax.random.split(dropout_key, 3))
        x = x + dropout(self.attn(self.norm1(x), key_mask), self.dropout_rate, keys[0])
        hidden = dropout(jax.nn.gelu(self.fc1(self.norm2(x))), self.dropout_rate, keys[1])
        return x + dropout(self.fc2(hidden), self.dropout_rate, keys[2])

    def attention_weights(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """This block's attention probabilities [B, H, L, L] for the block input ``x`` [B, L, W]."""
        return self.attn.weights(self.norm1(x), key_mask)


class Transformer(nnx.Module):
    """A stack of :class:`Block` s and a final LayerNorm; ``remat`` (a policy of :func:`rematerialise`, or None)
    recomputes each block in the backward pass."""

    def __init__(self, depth: int, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, remat: str | None, dtype, rngs: nnx.Rngs):
        self.remat = _checked_policy(remat)
        self.blocks = nnx.List([Block(width, heads, mlp, axes, dropout_rate=dropout_rate, attn_impl=attn_impl,
                                      chunk=chunk, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.norm = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, dropout_key: jax.Array | None = None):
        def run(block, x, key_mask, key):
            return block(x, key_mask, key)

        run = rematerialise(run, self.remat)
        for i, block in enumerate(self.blocks):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            x = run(block, x, key_mask, key)
        return self.norm(x)

    def attention_weights(self, x: jax.Array, key_mask: jax.Array | None) -> list[jax.Array]:
        """Attention probabilities of every block, ``depth`` arrays [B, H, L, L] (no dropout)."""
        maps = []
        for block in self.blocks:
            maps.append(block.attention_weights(x, key_mask))
            x = block(x, key_mask)
        return maps


class CrossBlock(nnx.Module):
    """Pre-LN cross-attention block (CrossMAE, Fu et al. 2024): queries attend to a fixed memory and do not
    attend to each other: ``q + Attn(LN(q), LN(memory))`` then ``q + MLP(LN(q))``.

    With memory = the encoder's visible tokens, decoding L queries costs O(L * V) instead of the O(L^2) of a
    self-attention decoder over every token.
    """

    def __init__(self, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.attn_impl, self.chunk, self.dropout_rate = heads, attn_impl, chunk, dropout_rate
        self.norm_q = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)
        self.norm_kv = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)
        self.q = linear(width, width, (axes.embed, axes.qkv), dtype=dtype, rngs=rngs, use_bias=False)
        self.kv = linear(width, 2 * width, (axes.embed, axes.qkv), dtype=dtype, rngs=rngs, use_bias=False)
        self.out = linear(width, width, (axes.qkv, axes.embed), dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)
        self.fc1 = linear(width, mlp, (axes.embed, axes.mlp), dtype=dtype, rngs=rngs)
        self.fc2 = linear(mlp, width, (axes.mlp, axes.embed), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array | None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: queries [B, L, W]; memory: [B, M, W]; memory_mask: bool [B, M] -> [B, L, W]."""
        keys = (None,) * 3 if dropout_key is None else tuple(jax.random.split(dropout_key, 3))
        batch, length, width = x.shape
        head_dim = width // self.heads
        q = self.q(self.norm_q(x)).reshape(batch, length, self.heads, head_dim)
        k, v = jnp.split(self.kv(self.norm_kv(memory)).reshape(batch, memory.shape[1], 2, self.heads, head_dim),
                         2, axis=2)
        attended = checkpoint_name(attention(q, k[:, :, 0], v[:, :, 0], key_mask=memory_mask, impl=self.attn_impl,
                                             chunk=self.chunk), _ATTENTION_OUT)
        x = x + dropout(self.out(attended.reshape(batch, length, width)), self.dropout_rate, keys[0])
        hidden = dropout(jax.nn.gelu(self.fc1(self.norm2(x))), self.dropout_rate, keys[1])
        return x + dropout(self.fc2(hidden), self.dropout_rate, keys[2])


class CrossDecoder(nnx.Module):
    """A stack of :class:`CrossBlock` s over one memory and a final LayerNorm (``remat`` as Transformer)."""

    def __init__(self, depth: int, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, remat: str | None, dtype, rngs: nnx.Rngs):
        self.remat = _checked_policy(remat)
        self.blocks = nnx.List([CrossBlock(width, heads, mlp, axes, dropout_rate=dropout_rate,
                                           attn_impl=attn_impl, chunk=chunk, dtype=dtype, rngs=rngs)
                                for _ in range(depth)])
        self.norm = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array | None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [B, L, W] queries; memory: [B, M, W]; memory_mask: bool [B, M] -> [B, L, W]."""
        def run(block, x, memory, memory_mask, key):
            return block(x, memory, memory_mask, key)

        run = rematerialise(run, self.remat)
        for i, block in enumerate(self.blocks):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            x = run(block, x, memory, memory_mask, key)
        return self.norm(x)


def _paired_layers(layer: Callable, remat: str | None, pairs, x: jax.Array, dropout_key: jax.Array | None,
                   *args) -> jax.Array:
    """x through ``layer(first, second, x, *args, key)`` for each (first, second) block pair in order, each layer
    rematerialised under ``remat`` and given its own dropout key (None: no dropout)."""
    layer = rematerialise(layer, remat)
    for i, (first, second) in enumerate(pairs):
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        x = layer(first, second, x, *args, key)
    return x


class FactorisedDecoder(nnx.Module):
    """Decoder layers that alternate attention over time within each parcel and cross-attention to a memory.

    Layer i: a :class:`Block` over the N time patches of each parcel (every token, visible or not: a hidden
    patch reads its own parcel's neighbours in time directly), then a :class:`CrossBlock` from every token to
    the memory (the encoder's visible tokens: the other parcels). Cost O(P N^2 + P N V) per layer instead of
    the O((P N)^2) of full self-attention.
    """

    def __init__(self, depth: int, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, remat: str | None, dtype, rngs: nnx.Rngs):
        self.remat = _checked_policy(remat)
        common = dict(dropout_rate=dropout_rate, attn_impl=attn_impl, chunk=chunk, dtype=dtype, rngs=rngs)
        self.time_blocks = nnx.List([Block(width, heads, mlp, axes, **common) for _ in range(depth)])
        self.cross_blocks = nnx.List([CrossBlock(width, heads, mlp, axes, **common) for _ in range(depth)])
        self.norm = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array | None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [B, P, N, W] tokens; memory: [B, M, W]; memory_mask: bool [B, M] -> [B, P, N, W]."""
        batch, parcels, patches, width = x.shape

        def layer(time_block, cross_block, x, memory, memory_mask, key):
            keys = (None, None) if key is None else tuple(jax.random.split(key))
            x = time_block(x.reshape(batch * parcels, patches, width), None, keys[0])
            return cross_block(x.reshape(batch, parcels * patches, width), memory, memory_mask, keys[1])

        x = _paired_layers(layer, self.remat, zip(self.time_blocks, self.cross_blocks), x, dropout_key,
                           memory, memory_mask)
        return self.norm(x).reshape(batch, parcels, patches, width)


class AxialDecoder(nnx.Module):
    """Decoder layers that alternate attention across parcels within each time patch and over time within each
    parcel (axial attention on the parcel x time grid).

    Layer i: a :class:`Block` over CLS + the P parcels of each time patch (a hidden token reads the visible
    parcels of its own moment: the regression-from-visible-parcels path), then a :class:`Block` over the N time
    patches of each parcel (its own past and future: the autoregressive path). CLS joins every spatial row as a
    key and query but is not updated (each row would update its own copy). Cost O(N P^2 + P N^2) per layer
    instead of the O((P N)^2) of full self-attention; two hops reach any token.
    """

    def __init__(self, depth: int, width: int, heads: int, mlp: int, axes: AxisNames, *, dropout_rate: float,
                 attn_impl: str, chunk: int, remat: str | None, dtype, rngs: nnx.Rngs):
        self.remat = _checked_policy(remat)
        common = dict(dropout_rate=dropout_rate, attn_impl=attn_impl, chunk=chunk, dtype=dtype, rngs=rngs)
        self.space_blocks = nnx.List([Block(width, heads, mlp, axes, **common) for _ in range(depth)])
        self.time_blocks = nnx.List([Block(width, heads, mlp, axes, **common) for _ in range(depth)])
        self.norm = layer_norm(width, axes.embed, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cls: jax.Array, parcel_mask: jax.Array | None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """x: [B, P, N, W] tokens; cls: [B, W]; parcel_mask: bool [B, P] (padded parcels are never keys) ->
        [B, P, N, W]."""
        batch, parcels, patches, width = x.shape
        keys = jnp.ones((batch, parcels), bool) if parcel_mask is None else parcel_mask
        space_mask = jnp.repeat(jnp.concatenate([jnp.ones((batch, 1), bool), keys], 1), patches, axis=0)
        rows_cls = jnp.repeat(cls[:, None, :], patches, axis=0)  # [B*N, 1, W], row b*N + n

        def layer(space_block, time_block, x, rows_cls, space_mask, key):
            keys = (None, None) if key is None else tuple(jax.random.split(key))
            rows = jnp.swapaxes(x, 1, 2).reshape(batch * patches, parcels, width)  # [B*N, P, W]
            rows = space_block(jnp.concatenate([rows_cls, rows], 1), space_mask, keys[0])[:, 1:]
            columns = jnp.swapaxes(rows.reshape(batch, patches, parcels, width), 1, 2)
            columns = time_block(columns.reshape(batch * parcels, patches, width), None, keys[1])
            return columns.reshape(batch, parcels, patches, width)

        x = _paired_layers(layer, self.remat, zip(self.space_blocks, self.time_blocks), x, dropout_key,
                           rows_cls.astype(x.dtype), space_mask)
        return self.norm(x)
