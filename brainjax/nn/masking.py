"""Token masking for the BrainLM masked autoencoder: pure functions of an rng with a STATIC visible count.

Tokens are parcel x time patch, flattened parcel-major: token ``p * N + n`` is parcel ``p``, patch ``n``.
Every strategy gives each token a *priority* (0 = keep visible, 1 = mask) and a random tie-breaker; the
visible set is the ``V`` lowest scores, so the encoder always sees exactly ``V`` slots (static shapes under
jit). Padded parcels, and the parcels a scan misses (partial coverage; both have ``parcel_mask`` False), score
+inf: they are never visible and never in the loss.

Strategies (``MaskConfig.strategy``):

* ``random``      mask ``round(ratio * tokens)`` tokens uniformly.
* ``future``      mask the last ``future_patches`` patches of every parcel (forecasting).
* ``parcels``     mask ``round(ratio * parcels)`` whole parcels (spatial in-filling).
* ``time_block``  mask one contiguous block of ``round(ratio * N)`` patches for all parcels.
* ``mixture``     each sample draws one of the four with ``MaskConfig.mixture`` weights. All samples must
  keep the same number of visible tokens, so the chosen strategy's set is *topped up* (it masks too little:
  extra random tokens are masked) or *trimmed* (it masks too much: random masked tokens are made visible)
  to the ``random`` count; the random tie-breaker within a priority level does both at once. With
  ``MaskConfig.recent_context`` the future strategy's context carries one priority level per patch by age,
  so its top-up hides the oldest patches first and the most recent ones stay whole (as in forecasting).

Samples with padded parcels (mixed atlases): the static ``V`` is computed for ``n_parcels`` real parcels.
A sample with fewer real parcels keeps the strategy's masking *fraction* of its own real tokens visible;
the remaining visible slots are flagged ``visible_valid = False`` (the model excludes them from attention
keys and treats those tokens as masked), so the task stays as hard as for a full sample.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from brainjax.config import MaskConfig

STRATEGIES = ("random", "future", "parcels", "time_block")


class Masking(NamedTuple):
    """Which tokens the encoder sees (a pytree; B = batch, V = static visible count, L = P * N tokens)."""

    visible_idx: jax.Array  # int32 [B, V] flat token indices (valid slots first)
    visible_valid: jax.Array  # bool [B, V] False = padding slot (not a real visible token)
    masked: jax.Array  # bool [B, L] real tokens the model must reconstruct (the loss set)


def _round(x: float) -> int:
    # Half-up rounding, mirrored exactly by the traced per-sample counts below.
    return int(x + 0.5)


def _block_len(mask_cfg: MaskConfig, n_patches: int) -> int:
    return min(max(_round(mask_cfg.ratio * n_patches), 1), n_patches - 1)


def _natural_visible(strategy: str, mask_cfg: MaskConfig, n_parcels: int, n_patches: int) -> int:
    tokens = n_parcels * n_patches
    if strategy == "random":
        return tokens - _round(mask_cfg.ratio * tokens)
    if strategy == "future":
        return n_parcels * (n_patches - mask_cfg.future_patches)
    if strategy == "parcels":
        return (n_parcels - _round(mask_cfg.ratio * n_parcels)) * n_patches
    if strategy == "time_block":
        return n_parcels * (n_patches - _block_len(mask_cfg, n_patches))
    raise ValueError(f"unknown masking strategy {strategy!r}; expected one of {STRATEGIES + ('mixture',)}")


def visible_count(mask_cfg: MaskConfig, n_parcels: int, n_patches: int) -> int:
    """Static number of encoder (visible) slots ``V`` for ``n_parcels`` x ``n_patches`` tokens."""
    if not 0.0 <= mask_cfg.ratio < 1.0:
        raise ValueError(f"mask.ratio must be in [0, 1), got {mask_cfg.ratio}")
    if mask_cfg.strategy in ("future", "mixture") and not 0 < mask_cfg.future_patches < n_patches:
        raise ValueError(f"mask.future_patches={mask_cfg.future_patches} must be in [1, {n_patches - 1}] "
                         f"for windows of {n_patches} patches")
    if mask_cfg.strategy == "time_block" and n_patches < 2:
        raise ValueError("mask.strategy=time_block needs at least 2 patches per window")
    if mask_cfg.strategy == "mixture":
        weights = mask_cfg.mixture
        if len(weights) != len(STRATEGIES) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"mask.mixture must be {len(STRATEGIES)} non-negative weights for "
                             f"{STRATEGIES}, got {weights}")
        count = _natural_visible("random", mask_cfg, n_parcels, n_patches)
    else:
        count = _natural_visible(mask_cfg.strategy, mask_cfg, n_parcels, n_patches)
    if not 0 < count < n_parcels * n_patches:
        raise ValueError(f"mask.strategy={mask_cfg.strategy} ratio={mask_cfg.ratio} leaves {count} of "
                         f"{n_parcels * n_patches} tokens visible; need at least one visible and one masked")
    return count


def _priorities(rng: jax.Array, mask_cfg: MaskConfig, real_parcel: jax.Array, n_patches: int) -> dict:
    """Per-strategy priorities float32 [P, N] (1 = mask) and visible counts for ONE sample."""
    n_parcels = real_parcel.shape[0]
    real_count = real_parcel.sum().astype(jnp.float32)
    patch = jnp.arange(n_patches)
    k_parcel, k_block = jax.random.split(rng)

    random_masked = jnp.floor(mask_cfg.ratio * real_count * n_patches + 0.5)
    out = {"random": (jnp.zeros((n_parcels, n_patches)), real_count * n_patches - random_masked)}

    future = jnp.clip(mask_cfg.future_patches, 0, n_patches)
    hidden = patch >= n_patches - future
    if mask_cfg.recent_context:  # integer levels by age (noise < 0.5 never crosses them): the oldest go first
        level = jnp.where(hidden, n_patches + 1, n_patches - future - 1 - patch).astype(jnp.float32)
    else:
        level = hidden.astype(jnp.float32)
    out["future"] = (jnp.broadcast_to(level, (n_parcels, n_patches)), real_count * (n_patches - future))

    # Rank the real parcels in random order; the last round(ratio * R) of them are masked.
    draw = jnp.where(real_parcel, jax.random.uniform(k_parcel, (n_parcels,)), jnp.inf)
    rank = jnp.argsort(jnp.argsort(draw))
    n_masked = jnp.floor(mask_cfg.ratio * real_count + 0.5)
    hide = rank >= real_count - n_masked
    out["parcels"] = (jnp.broadcast_to(hide[:, None], (n_parcels, n_patches)).astype(jnp.float32),
                      (real_count - n_masked) * n_patches)

    if n_patches >= 2:
        length = _block_len(mask_cfg, n_patches)
        start = jax.random.randint(k_block, (), 0, n_patches - length + 1)
        block = (patch >= start) & (patch < start + length)
        out["time_block"] = (jnp.broadcast_to(block, (n_parcels, n_patches)).astype(jnp.float32),
                             real_count * (n_patches - length))
    return out


def _sample_one(rng: jax.Array, mask_cfg: MaskConfig, real_parcel: jax.Array, n_patches: int,
                n_visible: int) -> Masking:
    n_parcels = real_parcel.shape[0]
    k_prio, k_noise, k_choice = jax.random.split(rng, 3)
    options = _priorities(k_prio, mask_cfg, real_parcel, n_patches)
    if mask_cfg.strategy == "mixture":
        logits = jnp.log(jnp.asarray(mask_cfg.mixture, jnp.float32))
        choice = jax.random.categorical(k_choice, logits)
        priority = jnp.stack([options[s][0] for s in STRATEGIES])[choice]
        count = options["random"][1]  # top up / trim every strategy to the random count
    else:
        priority, count = options[mask_cfg.strategy]

    real = jnp.broadcast_to(real_parcel[:, None], (n_parcels, n_patches)).reshape(-1)
    # Noise in [0, 0.5) orders tokens randomly within a priority level without crossing levels.
    score = priority.reshape(-1) + 0.5 * jax.random.uniform(k_noise, (n_parcels * n_patches,))
    score = jnp.where(real, score, jnp.inf)
    visible_idx = jnp.argsort(score)[:n_visible].astype(jnp.int32)
    # A full sample keeps exactly V; the guard makes float rounding unable to change that.
    count = jnp.where(real_parcel.all(), n_visible, jnp.minimum(count, n_visible)).astype(jnp.int32)
    visible_valid = jnp.arange(n_visible) < count
    seen = jnp.zeros(n_parcels * n_patches, bool).at[visible_idx].set(visible_valid)
    return Masking(visible_idx, visible_valid, real & ~seen)


def sample_masking(rng: jax.Array, mask_cfg: MaskConfig, parcel_mask: jax.Array, n_patches: int) -> Masking:
    """Sample a :class:`Masking` for a batch.

    rng: PRNG key; parcel_mask: bool [B, P] (False = padded or missing parcel); n_patches: N patches per parcel.
    Returns visible_idx int32 [B, V], visible_valid bool [B, V], masked bool [B, P * N], with
    ``V = visible_count(mask_cfg, P, n_patches)`` static. The same rng gives the same masking.
    """
    batch, n_parcels = parcel_mask.shape
    n_visible = visible_count(mask_cfg, n_parcels, n_patches)
    keys = jax.random.split(rng, batch)
    return jax.vmap(lambda k, m: _sample_one(k, mask_cfg, m, n_patches, n_visible))(keys, parcel_mask)


def no_masking(parcel_mask: jax.Array, n_patches: int) -> Masking:
    """Every real token visible, nothing masked (embedding extraction); V = P * N."""
    batch, n_parcels = parcel_mask.shape
    real = jnp.broadcast_to(parcel_mask[:, :, None], (batch, n_parcels, n_patches)).reshape(batch, -1)
    idx = jnp.broadcast_to(jnp.arange(n_parcels * n_patches, dtype=jnp.int32), real.shape)
    return Masking(idx, real, jnp.zeros_like(real))
