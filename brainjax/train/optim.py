"""Optimizer: global-norm clipping + AdamW with linear warmup then cosine decay (the BrainLM recipe).

BrainLM trains with lr = base_lr x global_batch / 256, weight decay 0.05 and 5 % warmup; weight decay is
applied to matrices only (biases, norm scales and 1-D embeddings are not decayed, as in the HF Trainer that
BrainLM used).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from brainjax.config import OptimConfig


def peak_learning_rate(cfg: OptimConfig, batch_size: int) -> float:
    """``base_lr`` scaled linearly by ``batch_size / 256`` when ``cfg.scale_lr`` (batch = global batch per update)."""
    return cfg.base_lr * (batch_size / 256.0 if cfg.scale_lr else 1.0)


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return int(round(cfg.warmup_frac * total_steps))


def learning_rate_schedule(cfg: OptimConfig, total_steps: int, batch_size: int) -> Callable[[jax.Array], jax.Array]:
    """lr(k) for update k = 0, 1, ... (k = the optimizer's count before the update).

    Warmup: ``peak * (k + 1) / W`` for k < W (the first update already moves, unlike optax's schedule that
    starts at 0); then ``floor + (peak - floor) * (1 + cos(pi * (k - W) / (S - W))) / 2`` with floor =
    ``min_lr_frac * peak``, W = round(warmup_frac * S), S = total steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    peak = peak_learning_rate(cfg, batch_size)
    floor = cfg.min_lr_frac * peak
    warm = warmup_steps(cfg, total_steps)
    decay = max(1, total_steps - warm)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        progress = jnp.clip((count - warm) / decay, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        if warm == 0:
            return cosine
        return jnp.where(count < warm, peak * (count + 1.0) / warm, cosine)
    return schedule


def decay_mask(params):
    """True for arrays with >= 2 dimensions (weight matrices), False for biases and scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, batch_size: int,
                   frozen: Callable[[Any], Any] | None = None
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """``(transformation, schedule)``: clip by global norm (if ``clip_norm > 0``) then AdamW on the schedule.

    frozen: params -> pytree of bools; True leaves get zero updates and keep no optimizer state (a frozen
    backbone is neither trained nor weight-decayed).
    """
    schedule = learning_rate_schedule(cfg, total_steps, batch_size)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask))
    tx = optax.chain(*parts)
    if frozen is not None:
        labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen(params))  # noqa: E731
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
