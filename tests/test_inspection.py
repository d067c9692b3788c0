"""Model inspection used by evaluation: attention probabilities and the future-masking forecast path.

The attention weights must be the probabilities the model actually uses (weights @ V reproduces the
attention layer's output), the per-parcel summary must be their aggregation over patches and heads, and a
forecast with future masking must not depend on the values it forecasts.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from brainjax.config import MaskConfig, ModelConfig
from brainjax.models.brainlm import BrainLM
from brainjax.nn.masking import no_masking

CFG = ModelConfig(patch=5, max_parcels=6, width=12, depth=2, heads=3, mlp=24, dec_width=8, dec_depth=1,
                  dec_heads=2, dec_mlp=16, fourier_features=3, attention="xla")
B, P, T, N = 2, 6, 20, 4
REAL = np.array([6, 4])


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"signal": jnp.asarray(rng.normal(size=(B, P, T)), jnp.float32),
            "parcel_mask": jnp.asarray(np.arange(P)[None, :] < REAL[:, None]),
            "coords": jnp.asarray(rng.uniform(-70, 70, (B, P, 3)), jnp.float32),
            "tr": jnp.asarray([0.8, 2.0], jnp.float32)}


def test_attention_weights_reproduce_the_attention_output():
    model = BrainLM(CFG, rngs=nnx.Rngs(0))
    attn = model.encoder.blocks[0].attn
    x = jax.random.normal(jax.random.key(1), (B, 9, CFG.width))
    key_mask = jnp.asarray(np.arange(9)[None, :] < np.array([9, 6])[:, None])
    weights = attn.weights(x, key_mask)
    assert weights.shape == (B, CFG.heads, 9, 9)
    np.testing.assert_allclose(np.asarray(weights.sum(-1)), 1.0, rtol=1e-5)
    assert float(jnp.abs(weights[1, :, :, 6:]).max()) < 1e-20  # masked keys get no attention
    v = attn.qkv(x).reshape(B, 9, 3, CFG.heads, CFG.width // CFG.heads)[:, :, 2]
    by_hand = attn.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, 9, CFG.width))
    np.testing.assert_allclose(np.asarray(by_hand), np.asarray(attn(x, key_mask)), atol=1e-5)


@pytest.mark.slow
def test_parcel_attention_is_the_token_attention_aggregated():
    model, batch = BrainLM(CFG, rngs=nnx.Rngs(0)), _batch()
    maps = jax.tree.map(np.asarray, model.attention_maps(batch))
    assert maps["parcel"].shape == (B, CFG.depth, P, P) and maps["cls"].shape == (B, CFG.depth, P)
    tokens, key_mask, _ = model._encoder_inputs(batch, no_masking(batch["parcel_mask"], N))
    layers = [np.asarray(w) for w in model.encoder.attention_weights(tokens, key_mask)]
    for b in range(B):
        for layer, weights in enumerate(layers):
            mean = weights[b].mean(0)  # over heads, [1 + P*N, 1 + P*N]
            for i in range(P):
                for j in range(P):
                    if i < REAL[b] and j < REAL[b]:
                        rows = [1 + i * N + n for n in range(N)]
                        cols = [1 + j * N + n for n in range(N)]
                        expected = mean[np.ix_(rows, cols)].sum(1).mean()
                    else:
                        expected = 0.0
                    np.testing.assert_allclose(maps["parcel"][b, layer, i, j], expected, atol=1e-6)
            # every real query row: parcels + CLS = 1
            cls_share = mean[1:, 0].reshape(P, N).mean(1)
            np.testing.assert_allclose(maps["parcel"][b, layer, :REAL[b]].sum(-1) + cls_share[:REAL[b]],
                                       1.0, rtol=1e-5)


@pytest.mark.slow
def test_future_masked_forecast_does_not_read_the_future():
    model, batch = BrainLM(CFG, rngs=nnx.Rngs(0)), _batch()
    mask_cfg = MaskConfig(strategy="future", future_patches=1)
    out = model(batch, jax.random.key(3), mask_cfg)
    assert np.asarray(out["masked"])[0, :, -1].all() and not np.asarray(out["masked"])[0, :, :-1].any()
    poisoned = dict(batch, signal=batch["signal"].at[:, :, -CFG.patch:].set(1e4))
    again = model(poisoned, jax.random.key(3), mask_cfg)
    np.testing.assert_array_equal(np.asarray(out["pred"]), np.asarray(again["pred"]))
    changed = model(dict(batch, signal=batch["signal"].at[:, :, :CFG.patch].set(3.0)), jax.random.key(3), mask_cfg)
    assert not np.allclose(np.asarray(changed["pred"][:, :, -1]), np.asarray(out["pred"][:, :, -1]))


def test_attention_maps_ignore_padded_parcels_content():
    model, batch = BrainLM(dataclasses.replace(CFG, depth=1), rngs=nnx.Rngs(0)), _batch()
    poisoned = dict(batch, signal=batch["signal"].at[1, 4:].set(jnp.nan))
    a, b = model.attention_maps(batch), model.attention_maps(poisoned)
    np.testing.assert_array_equal(np.asarray(a["parcel"]), np.asarray(b["parcel"]))
