"""Prediction heads on a pretrained BrainLM encoder, for ``brainjax finetune --task regress|classify``.

The head reads the encoder's CLS token or its mean over real tokens (no masking: at fine-tuning and
inference time the encoder sees every token, as in BrainLM's clinical-variable regression), through a
LayerNorm, optional dropout and one linear layer. The backbone keeps the parameter names of a pretraining
checkpoint under ``backbone``, so pretrained weights drop in unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.config import ModelConfig
from brainjax.models.brainlm import BrainLM
from brainjax.nn.layers import dropout, layer_norm, linear

POOLS = ("cls", "mean")


class BrainLMWithHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, n_outputs: int, *, pool: str = "cls", head_dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(f"finetune.pool must be one of {POOLS}, got {pool!r}")
        if n_outputs < 1:
            raise ValueError(f"a head needs at least one output, got {n_outputs}")
        self.pool, self.head_dropout = pool, head_dropout
        self.backbone = BrainLM(cfg, rngs=rngs)
        self.head_norm = layer_norm(cfg.width, "embed", dtype=jnp.float32, rngs=rngs)
        self.head = linear(cfg.width, n_outputs, ("embed", None), dtype=jnp.float32, rngs=rngs,
                           init=nnx.initializers.zeros_init())  # starts at the prior: zero logits / the mean

    def features(self, batch: dict) -> jax.Array:
        """The pooled embedding the head reads: float32 [B, width]."""
        return self.backbone.embed(batch)[self.pool]

    def __call__(self, batch: dict, dropout_key: jax.Array | None = None, *, frozen: bool = False) -> jax.Array:
        """Head outputs float32 [B, n_outputs] (logits, or the standardised regression target).

        frozen: stop gradients at the embedding (the backbone is not trained, so skip its backward pass).
        """
        features = self.features(batch)
        if frozen:
            features = jax.lax.stop_gradient(features)
        hidden = dropout(self.head_norm(features), self.head_dropout, dropout_key)
        return self.head(hidden)
