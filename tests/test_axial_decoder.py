"""The axial decoder (``model.decoder=axial``): attention across the parcels of a time patch, then over the time
patches of a parcel. Its attention pattern is checked against one dense attention over the whole flattened grid
with the pattern written as a boolean mask, and the model built on it against leakage of hidden values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_brainlm import CFG as BASE_CFG
from test_brainlm import MASK, B, P, T, _batch

from brainjax.models.brainlm import BrainLM, model_flops_per_sample
from brainjax.nn.layers import DECODER_AXES, AxialDecoder, Block

WIDTH, HEADS = 8, 2


def _dense_block(block: Block, x: jax.Array, allowed: np.ndarray) -> jax.Array:
    """``block`` on x [S, W] with dense attention restricted to ``allowed`` bool [S, S] (query, key)."""
    length = x.shape[0]
    qkv = block.attn.qkv(block.norm1(x)).reshape(length, 3, HEADS, WIDTH // HEADS)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(WIDTH // HEADS)
    probs = jax.nn.softmax(jnp.where(allowed[None], scores, -jnp.inf), axis=-1)
    attended = jnp.einsum("hqk,khd->qhd", jnp.nan_to_num(probs), v).reshape(length, WIDTH)
    x = x + block.attn.out(attended)
    return x + block.fc2(jax.nn.gelu(block.fc1(block.norm2(x))))


def _dense_reference(decoder: AxialDecoder, grid: np.ndarray, cls: np.ndarray, real: np.ndarray) -> np.ndarray:
    """One sample: grid [P, N, W], cls [W], real bool [P] -> [P, N, W] through the flattened sequence
    [CLS, (p, n) tokens] and a mask per step: space = same time patch (and CLS), time = same parcel."""
    parcels, patches, _ = grid.shape
    parcel = np.repeat(np.arange(parcels), patches)
    patch = np.tile(np.arange(patches), parcels)
    key_real = np.repeat(real, patches)
    space = np.ones((1 + parcels * patches,) * 2, bool)
    space[1:, 1:] = (patch[:, None] == patch[None, :]) & key_real[None, :]
    time = np.eye(1 + parcels * patches, dtype=bool)
    time[1:, 1:] = parcel[:, None] == parcel[None, :]
    x = jnp.concatenate([jnp.asarray(cls)[None], jnp.asarray(grid).reshape(parcels * patches, -1)])
    for space_block, time_block in zip(decoder.space_blocks, decoder.time_blocks):
        x = x.at[1:].set(_dense_block(space_block, x, space)[1:])  # CLS is read, never updated
        x = x.at[1:].set(_dense_block(time_block, x, time)[1:])
    return np.asarray(decoder.norm(x[1:])).reshape(parcels, patches, -1)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_axial_pattern_equals_dense_attention_under_the_axial_mask(impl):
    decoder = AxialDecoder(2, WIDTH, HEADS, 16, DECODER_AXES, dropout_rate=0.0, attn_impl=impl, chunk=4,
                           remat=None, dtype=jnp.float32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    grid = rng.normal(size=(2, 5, 3, WIDTH)).astype(np.float32)
    cls = rng.normal(size=(2, WIDTH)).astype(np.float32)
    real = np.array([[True] * 5, [True, True, True, False, False]])
    got = np.asarray(decoder(jnp.asarray(grid), jnp.asarray(cls), jnp.asarray(real)))
    for b in range(2):
        want = _dense_reference(decoder, grid[b], cls[b], real[b])
        np.testing.assert_allclose(got[b, real[b]], want[real[b]], rtol=1e-5, atol=1e-5)
    # a padded parcel's values never reach a real one
    poisoned = grid.copy()
    poisoned[1, 3:] = 1e3
    again = np.asarray(decoder(jnp.asarray(poisoned), jnp.asarray(cls), jnp.asarray(real)))
    np.testing.assert_allclose(again[1, :3], got[1, :3], rtol=1e-5, atol=1e-6)


def test_axial_model_sees_only_visible_tokens_and_costs_less_than_full():
    cfg = dataclasses.replace(BASE_CFG, decoder="axial", dec_depth=2)
    model, batch = BrainLM(cfg, rngs=nnx.Rngs(0)), _batch()
    rng = jax.random.key(6)
    out = model(batch, rng, MASK)
    assert out["pred"].shape == (B, P, T // cfg.patch, cfg.patch)
    hidden = np.asarray(out["masked"])[:, :, :, None].repeat(cfg.patch, -1).reshape(B, P, T)
    changed = dict(batch, signal=jnp.where(hidden, -40.0, batch["signal"]))
    np.testing.assert_allclose(np.asarray(model(changed, rng, MASK)["pred"]), np.asarray(out["pred"]), rtol=1e-5)
    # 424 parcels x 10 patches: the axial layers' attention pairs are far fewer than full self-attention's
    wide = dataclasses.replace(cfg, max_parcels=424)
    full = dataclasses.replace(wide, decoder="full", dec_depth=4)  # the same number of blocks
    assert model_flops_per_sample(wide, 424, 10 * cfg.patch, MASK) < model_flops_per_sample(
        full, 424, 10 * cfg.patch, MASK)
