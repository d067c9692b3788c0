"""A decoder-only language model (Flax NNX) covering the Qwen3 and GPT-2 families.

One :class:`DecoderLM` is written once; the families differ only through :class:`LMConfig`:

* Qwen3: token embedding, RoPE (HF "rotate half" convention), grouped-query attention with an RMSNorm on
  every head's q and k before RoPE, RMSNorm pre-norms, SwiGLU MLP, final RMSNorm, tied or untied lm_head.
* GPT-2: token + learned position embeddings, LayerNorm, GELU (tanh approximation, HF "gelu_new"), biases,
  lm_head tied to the token embedding. HF's fused ``c_attn`` is split into q/k/v at load time, so both
  families share one attention path.

The aim is logits parity with Hugging Face ``transformers`` on checkpoints loaded by
:mod:`brainjax.models.lm_loading`. Parameters are float32 and carry logical axis names ("vocab", "embed",
"qkv", "mlp") like :mod:`brainjax.nn.layers`; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.nn.attention import attention
from brainjax.nn.layers import DTYPES, linear, logical

FAMILIES = ("qwen3", "gpt2")
_embed_init = nnx.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Architecture of a decoder LM, in the family-neutral names this module uses."""

    family: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    activation: str = "silu"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown LM family {self.family!r}; expected one of {FAMILIES}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.activation not in ("silu", "gelu_new"):
            raise ValueError(f"unsupported activation {self.activation!r}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> LMConfig:
        """Build from a Hugging Face ``config.json`` dict; an unknown ``model_type`` raises ValueError."""
        kind = hf.get("model_type")
        if kind == "qwen3":
            return _qwen3_config(hf)
        if kind == "gpt2":
            return _gpt2_config(hf)
        raise ValueError(f"unsupported model_type {kind!r}; expected one of {FAMILIES}")


def _qwen3_config(hf: Mapping[str, Any]) -> LMConfig:
    # Newer transformers keep RoPE settings in ``rope_parameters``, older ones in rope_theta/rope_scaling.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"unsupported RoPE scaling {rope!r}; only the default RoPE is implemented")
    heads = hf["num_attention_heads"]
    return LMConfig(
        family="qwen3", vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
        heads=heads, kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, intermediate=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 32768), norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        tie_word_embeddings=hf.get("tie_word_embeddings", False), attention_bias=hf.get("attention_bias", False),
        activation=hf.get("hidden_act", "silu"))


def _gpt2_config(hf: Mapping[str, Any]) -> LMConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 attention scaling variants (scale_attn_by_inverse_layer_idx, "
                         "scale_attn_weights=False) are not supported")
    hidden, heads = hf["n_embd"], hf["n_head"]
    return LMConfig(
        family="gpt2", vocab_size=hf["vocab_size"], hidden=hidden, layers=hf["n_layer"], heads=heads,
        kv_heads=heads, head_dim=hidden // heads, intermediate=hf.get("n_inner") or 4 * hidden,
        max_positions=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=True, attention_bias=True, activation=hf.get("activation_function", "gelu_new"))


def _norm(width: int, cfg: LMConfig, axis: str | None, dtype) -> nnx.Module:
    ones = logical(nnx.initializers.ones_init(), (axis,))
    if cfg.family == "gpt2":
        return nnx.LayerNorm(width, epsilon=cfg.norm_eps, dtype=dtype, scale_init=ones,
                             bias_init=logical(nnx.initializers.zeros_init(), (axis,)), rngs=nnx.Rngs(0))
    return nnx.RMSNorm(width, epsilon=cfg.norm_eps, dtype=dtype, scale_init=ones, rngs=nnx.Rngs(0))


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF rotate-half layout. x: [B, L, H, D]; positions: int [B, L] -> [B, L, H, D]."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def causal_mask(key_mask: jax.Array) -> jax.Array:
    """bool [B, L] (False = padding) -> bool [B, L, L]: query i may read key j when j <= i and j is real."""
    length = key_mask.shape[1]
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None] & key_mask[:, None, :]


class Attention(nnx.Module):
    """Grouped-query self-attention under any [B, L, L] mask through :func:`brainjax.nn.attention.attention`.

    ``attn_impl`` defaults to the dense ``xla`` maths: LM sequences are short, their masks arbitrary (fMRI +
    text layouts), and it is the path checked for logits parity with Hugging Face.
    """

    def __init__(self, cfg: LMConfig, *, dtype, rngs: nnx.Rngs, attn_impl: str = "xla"):
        self.cfg, self.attn_impl = cfg, attn_impl
        q_width, kv_width = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        bias = cfg.attention_bias
        self.q = linear(cfg.hidden, q_width, ("embed", "qkv"), dtype=dtype, rngs=rngs, use_bias=bias)
        self.k = linear(cfg.hidden, kv_width, ("embed", "qkv"), dtype=dtype, rngs=rngs, use_bias=bias)
        self.v = linear(cfg.hidden, kv_width, ("embed", "qkv"), dtype=dtype, rngs=rngs, use_bias=bias)
        self.o = linear(q_width, cfg.hidden, ("qkv", "embed"), dtype=dtype, rngs=rngs, use_bias=bias)
        qk_norm = cfg.family == "qwen3"
        self.q_norm = _norm(cfg.head_dim, cfg, None, dtype) if qk_norm else None
        self.k_norm = _norm(cfg.head_dim, cfg, None, dtype) if qk_norm else None

    def project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [B, L, H, D], k and v [B, L, KV, D] for x [B, L, W] (q/k norms and RoPE applied where the family
        has them); shared with the KV-cache decoder in :mod:`brainjax.models.generate`."""
        batch, length, _ = x.shape
        cfg = self.cfg
        q = self.q(x).reshape(batch, length, cfg.heads, cfg.head_dim)
        k = self.k(x).reshape(batch, length, cfg.kv_heads, cfg.head_dim)
        v = self.v(x).reshape(batch, length, cfg.kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.family == "qwen3":
            q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        return q, k, v

    def __call__(self, x: jax.Array, allowed: jax.Array, positions: jax.Array) -> jax.Array:
        """x: [B, L, W]; allowed: bool [B, L, L] (query, key); positions: int [B, L] -> [B, L, W]."""
        batch, length, _ = x.shape
        q, k, v = self.project(x, positions)
        out = attention(q, k, v, mask=allowed, impl=self.attn_impl)
        return self.o(out.reshape(batch, length, self.cfg.heads * self.cfg.head_dim))


class MLP(nnx.Module):
    """SwiGLU (``down(act(gate(x)) * up(x))``) when the family is gated, else ``down(act(up(x)))``."""

    def __init__(self, cfg: LMConfig, *, dtype, rngs: nnx.Rngs):
        bias = cfg.family == "gpt2"
        self.activation = cfg.activation
        gated = cfg.family == "qwen3"
        self.gate = linear(cfg.hidden, cfg.intermediate, ("embed", "mlp"), dtype=dtype, rngs=rngs,
                           use_bias=bias) if gated else None
        self.up = linear(cfg.hidden, cfg.intermediate, ("embed", "mlp"), dtype=dtype, rngs=rngs, use_bias=bias)
        self.down = linear(cfg.intermediate, cfg.hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs, use_bias=bias)

    def act(self, h: jax.Array) -> jax.Array:
        return jax.nn.gelu(h, approximate=True) if self.activation == "gelu_new" else jax.nn.silu(h)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))


class DecoderBlock(nnx.Module):
    """Pre-norm block: ``x + Attn(norm(x))`` then ``x + MLP(norm(x))``."""

    def __init__(self, cfg: LMConfig, *, dtype, rngs: nnx.Rngs, attn_impl: str = "xla"):
        self.attn_norm = _norm(cfg.hidden, cfg, "embed", dtype)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs, attn_impl=attn_impl)
        self.mlp_norm = _norm(cfg.hidden, cfg, "embed", dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, allowed: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), allowed, positions)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nnx.Module):
    """Causal LM returning next-token logits; see the module docstring for the family differences."""

    def __init__(self, cfg: LMConfig, *, dtype: str = "float32", rngs: nnx.Rngs, attn_impl: str = "xla"):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported compute dtype {dtype!r}; expected one of {tuple(DTYPES)}")
        self.cfg, compute = cfg, DTYPES[dtype]
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden, dtype=compute,
                               embedding_init=logical(_embed_init, ("vocab", "embed")), rngs=rngs)
        self.pos_embed = nnx.Embed(cfg.max_positions, cfg.hidden, dtype=compute,
                                   embedding_init=logical(_embed_init, (None, "embed")),
                                   rngs=rngs) if cfg.family == "gpt2" else None
        self.blocks = nnx.List([DecoderBlock(cfg, dtype=compute, rngs=rngs, attn_impl=attn_impl)
                                for _ in range(cfg.layers)])
        self.norm = _norm(cfg.hidden, cfg, "embed", compute)
        self.lm_head = None if cfg.tie_word_embeddings else linear(
            cfg.hidden, cfg.vocab_size, ("embed", "vocab"), dtype=compute, rngs=rngs, use_bias=False,
            init=_embed_init)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """input_ids: int [B, L]; attention_mask: bool/int [B, L] (0 = padding) or None; positions: int [B, L].

        Positions default to ``cumsum(mask) - 1`` clipped at 0, so left-padded rows see their real tokens at
        0, 1, ... as HF ``generate`` does. Returns logits float32 [B, L, vocab].
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if attention_mask is None:
            key_mask = jnp.ones(input_ids.shape, dtype=bool)
        else:
            key_mask = jnp.asarray(attention_mask).astype(bool)
            if key_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask shape {key_mask.shape} != input_ids shape {input_ids.shape}")
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0)
        else:
            positions = jnp.asarray(positions)
            if positions.shape != input_ids.shape:
                raise ValueError(f"positions shape {positions.shape} != input_ids shape {input_ids.shape}")
        if self.pos_embed is not None and input_ids.shape[1] > self.cfg.max_positions:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_positions {self.cfg.max_positions}")
        return self.logits(self.hidden(self.embed(input_ids), causal_mask(key_mask), positions))

    def hidden(self, x: jax.Array, allowed: jax.Array, positions: jax.Array) -> jax.Array:
        """Final-norm hidden states of input embeddings under any attention mask (fMRI + text sequences).

        x: [B, L, W] (e.g. ``self.embed(ids)`` mixed with projected fMRI features); allowed: bool [B, L, L];
        positions: int [B, L] -> [B, L, W].
        """
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x, allowed, positions)
        return self.norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., W] -> next-token logits float32 [..., vocab] (tied or separate output matrix)."""
        out = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)
