"""Masking invariants: static visible count, padded parcels, per-strategy structure, determinism."""

import jax
import numpy as np
import pytest

from brainjax.config import MaskConfig
from brainjax.nn.masking import sample_masking, visible_count

B, P, N = 6, 7, 5
FULL = np.ones((B, P), bool)
PADDED = np.arange(P)[None, :] < np.array([7, 7, 4, 2, 5, 1])[:, None]  # real parcels per sample vary
STRATEGIES = ("random", "future", "parcels", "time_block", "mixture")


def _sample(strategy, parcel_mask, seed=0, **kw):
    cfg = MaskConfig(strategy=strategy, **{"ratio": 0.6, "future_patches": 2, **kw})
    m = sample_masking(jax.random.key(seed), cfg, parcel_mask, N)
    return cfg, jax.tree.map(np.asarray, m)


def _visible_grid(m):
    """bool [B, P, N]: tokens the encoder sees as valid."""
    grid = np.zeros((B, P * N), bool)
    for b in range(B):
        grid[b, m.visible_idx[b][m.visible_valid[b]]] = True
    return grid.reshape(B, P, N)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_v_visible_and_partition(strategy):
    cfg, m = _sample(strategy, FULL)
    v = visible_count(cfg, P, N)
    assert m.visible_idx.shape == (B, v) and m.visible_idx.dtype == np.int32
    assert m.visible_valid.all()  # no padding: every slot is a real visible token
    for b in range(B):
        assert len(np.unique(m.visible_idx[b])) == v
    visible = _visible_grid(m)
    # Every token is either visible or masked, never both.
    np.testing.assert_array_equal(visible.reshape(B, -1) ^ m.masked, np.ones((B, P * N), bool))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_padded_parcels_never_visible_nor_masked(strategy):
    _, m = _sample(strategy, PADDED)
    visible = _visible_grid(m)
    masked = m.masked.reshape(B, P, N)
    pad = ~PADDED
    assert not visible[pad].any() and not masked[pad].any()
    # Real tokens are all accounted for, and every sample has at least one of each.
    np.testing.assert_array_equal(visible | masked, np.broadcast_to(PADDED[:, :, None], (B, P, N)))
    assert (masked.reshape(B, -1).sum(1) > 0).all() or strategy == "parcels"


def test_counts_match_independent_formulas():
    # Independent arithmetic for ratio 0.6, P=7, N=5, future 2.
    tokens = P * N
    assert visible_count(MaskConfig("random", 0.6), P, N) == tokens - 21
    assert visible_count(MaskConfig("future", future_patches=2), P, N) == P * 3
    assert visible_count(MaskConfig("parcels", 0.6), P, N) == (P - 4) * N
    assert visible_count(MaskConfig("time_block", 0.6), P, N) == P * (N - 3)
    assert visible_count(MaskConfig("mixture", 0.6, future_patches=2), P, N) == tokens - 21


def test_padded_samples_keep_their_own_masking_fraction():
    _, m = _sample("random", PADDED)
    real_tokens = PADDED.sum(1) * N
    expected_visible = real_tokens - np.floor(0.6 * real_tokens + 0.5)
    np.testing.assert_array_equal(m.visible_valid.sum(1), expected_visible)
    # Valid slots come first, invalid ones after.
    for b in range(B):
        k = int(m.visible_valid[b].sum())
        assert m.visible_valid[b, :k].all() and not m.visible_valid[b, k:].any()


def test_future_masks_last_patches():
    _, m = _sample("future", PADDED)
    masked = m.masked.reshape(B, P, N)
    expected = np.zeros((B, P, N), bool)
    expected[:, :, -2:] = True
    np.testing.assert_array_equal(masked, expected & PADDED[:, :, None])


def test_parcels_masks_whole_parcels():
    _, m = _sample("parcels", PADDED)
    masked = m.masked.reshape(B, P, N)
    per_parcel = masked.sum(2)
    assert np.isin(per_parcel, [0, N]).all()
    np.testing.assert_array_equal((per_parcel == N).sum(1), np.floor(0.6 * PADDED.sum(1) + 0.5))


def test_time_block_is_one_contiguous_block_for_all_parcels():
    _, m = _sample("time_block", FULL, seed=3)
    masked = m.masked.reshape(B, P, N)
    for b in range(B):
        assert (masked[b] == masked[b, :1]).all()  # same patches for every parcel
        patches = np.flatnonzero(masked[b, 0])
        assert len(patches) == 3 and np.all(np.diff(patches) == 1)


def test_mixture_uses_several_strategies_with_same_count():
    cfg = MaskConfig("mixture", ratio=0.6, future_patches=2, mixture=(0.25, 0.25, 0.25, 0.25))
    full = np.ones((64, P), bool)
    m = jax.tree.map(np.asarray, sample_masking(jax.random.key(0), cfg, full, N))
    assert m.visible_valid.all() and m.visible_idx.shape == (64, visible_count(cfg, P, N))
    masked = m.masked.reshape(64, P, N)
    # The future strategy masks the last 2 patches of every parcel (14 tokens) then tops up to 21 at random:
    # some samples must have every final-2 token masked, which random masking alone almost never does.
    future_like = masked[:, :, -2:].all(axis=(1, 2))
    assert 3 <= future_like.sum() <= 40


def test_deterministic_by_rng():
    _, a = _sample("mixture", PADDED, seed=5)
    _, b = _sample("mixture", PADDED, seed=5)
    _, c = _sample("mixture", PADDED, seed=6)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.masked, c.masked)


@pytest.mark.parametrize("bad", [MaskConfig("random", ratio=1.0), MaskConfig("future", future_patches=5),
                                 MaskConfig("nonsense"), MaskConfig("mixture", mixture=(1.0, 0.0))])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        visible_count(bad, P, N)


@pytest.mark.parametrize("recent", [False, True])
def test_recent_context_keeps_the_patches_before_the_forecast_whole(recent):
    # Future-only mixture: 2 forecast patches hidden, topped up to the random count (ratio 0.6 of 35 -> 14
    # visible of the 21 context tokens). With recent_context the 14 are the last two context patches, whole.
    cfg = MaskConfig("mixture", ratio=0.6, future_patches=2, mixture=(0.0, 1.0, 0.0, 0.0), recent_context=recent)
    m = jax.tree.map(np.asarray, sample_masking(jax.random.key(1), cfg, FULL, N))
    visible = _visible_grid(m)
    assert (visible.sum(axis=(1, 2)) == 14).all() and not visible[:, :, -2:].any()
    whole_recent = visible[:, :, 1:3].all(axis=(1, 2))
    assert whole_recent.all() if recent else not whole_recent.any()
    # the strategy on its own still shows the whole context
    alone = jax.tree.map(np.asarray, sample_masking(jax.random.key(1), MaskConfig(
        "future", future_patches=2, recent_context=recent), FULL, N))
    assert _visible_grid(alone)[:, :, :3].all()
