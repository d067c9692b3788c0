"""BrainLM variants for model quality: the CrossMAE decoder and the scan-level (InfoNCE) objective."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_brainlm import CFG as BASE_CFG
from test_brainlm import MASK, B, P, T, _batch

from brainjax.models.brainlm import BrainLM, info_nce, mae_loss, model_flops_per_sample
from brainjax.nn.layers import DECODER_AXES, CrossDecoder

# The odd-sized model of test_brainlm (7 parcels, 6 patches, padded samples) with the CrossMAE decoder.
CFG = dataclasses.replace(BASE_CFG, dec_depth=2, decoder="cross")


def _numpy_info_nce(z1, z2, valid, temperature):
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    rows = np.flatnonzero(valid)
    sim = z1[rows] @ z2[rows].T / temperature
    total = 0.0
    for i in range(len(rows)):
        total += -sim[i, i] + np.log(np.exp(sim[i]).sum())  # view 1 -> view 2
        total += -sim[i, i] + np.log(np.exp(sim[:, i]).sum())  # view 2 -> view 1
    return total / (2 * len(rows))


def test_info_nce_matches_a_hand_computation_with_invalid_rows():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    valid = np.array([True, True, False, True, True])
    got = float(info_nce(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(valid), 0.3))
    np.testing.assert_allclose(got, _numpy_info_nce(z1, z2, valid, 0.3), rtol=1e-5)
    # identical views far apart from each other: the positive wins every row, the loss is near zero
    eye = np.eye(4) * 10
    assert float(info_nce(jnp.asarray(eye), jnp.asarray(eye), jnp.ones(4, bool), 0.05)) < 1e-6
    assert float(info_nce(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray([True] + [False] * 4), 0.3)) == 0.0


def test_cross_decoder_queries_do_not_interact():
    decoder = CrossDecoder(2, 8, 2, 16, DECODER_AXES, dropout_rate=0.0, attn_impl="xla", chunk=64, remat=False,
                           dtype=jnp.float32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    queries = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    memory = jnp.asarray(rng.normal(size=(2, 4, 8)), jnp.float32)
    memory_mask = jnp.asarray([[True, True, False, True], [True, False, False, False]])
    whole = np.asarray(decoder(queries, memory, memory_mask))
    for i in range(6):  # each query decoded alone gives the same row: no query-query attention
        alone = np.asarray(decoder(queries[:, i:i + 1], memory, memory_mask))
        np.testing.assert_allclose(alone[:, 0], whole[:, i], rtol=1e-5, atol=1e-6)
    # masked memory slots are ignored whatever they hold
    poisoned = memory.at[0, 2].set(1e3).at[1, 1:].set(-1e3)
    np.testing.assert_allclose(np.asarray(decoder(queries, poisoned, memory_mask)), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cross_model_depends_only_on_visible_tokens_and_trains():
    model, batch = BrainLM(CFG, rngs=nnx.Rngs(0)), _batch()
    rng = jax.random.key(4)
    out = model(batch, rng, MASK)
    hidden = np.asarray(out["masked"])[:, :, :, None].repeat(CFG.patch, -1).reshape(B, P, T)
    changed = dict(batch, signal=jnp.where(hidden, 50.0, batch["signal"]))
    np.testing.assert_allclose(np.asarray(model(changed, rng, MASK)["pred"]), np.asarray(out["pred"]), rtol=1e-5)

    optimizer = nnx.Optimizer(model, __import__("optax").adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, key):
        loss, grads = nnx.value_and_grad(lambda m: mae_loss(m, batch, key, MASK)[0])(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, jax.random.key(0))) for _ in range(60)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_contrastive_objective_adds_weighted_info_nce_and_reaches_the_cls():
    cfg = dataclasses.replace(CFG, contrastive_weight=0.5, contrastive_temperature=0.2)
    model, batch = BrainLM(cfg, rngs=nnx.Rngs(0)), _batch()
    rng = jax.random.key(5)
    loss, sums = mae_loss(model, batch, rng, MASK)
    mse = float(sums["sse"]) / float(sums["n"])
    np.testing.assert_allclose(float(loss), mse + 0.5 * float(sums["contrast"]), rtol=1e-6)
    # the contrast term is InfoNCE between the CLS projections of two independent maskings of each window
    from brainjax.nn.masking import sample_masking
    mask_rng, _, view_rng = jax.random.split(rng, 3)
    parcel_mask = batch["parcel_mask"]
    first = sample_masking(mask_rng, MASK, parcel_mask, T // cfg.patch)
    second = sample_masking(jax.random.split(view_rng)[0], MASK, parcel_mask, T // cfg.patch)
    z = [np.asarray(model.project_cls(model._encode(batch, m, None)[0][:, 0])) for m in (first, second)]
    np.testing.assert_allclose(float(sums["contrast"]), _numpy_info_nce(*z, np.ones(B, bool), 0.2), rtol=1e-4)

    def contrast_only(m):
        return mae_loss(m, batch, rng, MASK)[1]["contrast"]
    grads = nnx.grad(contrast_only)(model)
    assert float(jnp.abs(grads["cls_token"][...]).sum()) > 0


@pytest.mark.parametrize("decoder", ["full", "cross"])
def test_flops_count_the_second_view(decoder):
    base = dataclasses.replace(CFG, decoder=decoder)
    one = model_flops_per_sample(base, 7, 30, MASK)
    two = model_flops_per_sample(dataclasses.replace(base, contrastive_weight=1.0), 7, 30, MASK)
    assert two > one > 0
    if decoder == "cross":  # fewer attention pairs than the full decoder
        assert one < model_flops_per_sample(dataclasses.replace(base, decoder="full"), 7, 30, MASK)


@pytest.mark.slow
def test_factorised_decoder_keeps_parcels_apart_until_the_memory():
    from brainjax.nn.layers import FactorisedDecoder
    decoder = FactorisedDecoder(2, 8, 2, 16, DECODER_AXES, dropout_rate=0.0, attn_impl="xla", chunk=64,
                                remat=False, dtype=jnp.float32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.normal(size=(2, 5, 4, 8)), jnp.float32)
    memory = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    memory_mask = jnp.asarray([[True, True, False], [True, False, True]])
    whole = np.asarray(decoder(tokens, memory, memory_mask))
    for p in range(5):  # a parcel decoded alone: its tokens see each other and the memory, nothing else
        alone = np.asarray(decoder(tokens[:, p:p + 1], memory, memory_mask))
        np.testing.assert_allclose(alone[:, 0], whole[:, p], rtol=1e-5, atol=1e-6)
    # within a parcel, time patches do interact: changing one patch moves the others' outputs
    moved = np.asarray(decoder(tokens.at[:, 2, 0].add(jnp.arange(8.0)), memory, memory_mask))  # LN-visible
    assert np.abs(moved[:, 2, 1:] - whole[:, 2, 1:]).max() > 1e-4
    np.testing.assert_allclose(moved[:, :2], whole[:, :2], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_factorised_model_sees_only_visible_tokens():
    cfg = dataclasses.replace(CFG, decoder="factorised", parcel_identity=True)
    model, batch = BrainLM(cfg, rngs=nnx.Rngs(0)), _batch()
    rng = jax.random.key(6)
    out = model(batch, rng, MASK)
    hidden = np.asarray(out["masked"])[:, :, :, None].repeat(CFG.patch, -1).reshape(B, P, T)
    changed = dict(batch, signal=jnp.where(hidden, -40.0, batch["signal"]))
    np.testing.assert_allclose(np.asarray(model(changed, rng, MASK)["pred"]), np.asarray(out["pred"]), rtol=1e-5)
    assert model_flops_per_sample(cfg, 7, 30, MASK) > model_flops_per_sample(
        dataclasses.replace(cfg, decoder="cross"), 7, 30, MASK)


def test_neighbour_context_embeds_visible_neighbours_only():
    cfg = dataclasses.replace(CFG, neighbour_context=True)
    model, batch = BrainLM(cfg, rngs=nnx.Rngs(0)), _batch()
    from brainjax.nn.masking import sample_masking
    n = T // cfg.patch
    masking = sample_masking(jax.random.key(7), MASK, batch["parcel_mask"], n)
    patches = np.asarray(batch["signal"]).reshape(B, P, n, cfg.patch)
    hidden = np.asarray(masking.masked).reshape(B, P, n)
    seen = np.asarray(batch["parcel_mask"])[:, :, None] & ~hidden
    got = np.asarray(model.neighbours(model._neighbour_features(jnp.asarray(patches), jnp.asarray(seen))))
    kernel = np.asarray(model.neighbours.kernel[...])
    bias = np.asarray(model.neighbours.bias[...])
    for b in range(B):
        for p in range(P):
            for k in range(n):
                feats = np.zeros(2 * cfg.patch + 2)
                if k > 0 and seen[b, p, k - 1]:
                    feats[:cfg.patch], feats[cfg.patch] = patches[b, p, k - 1], 1.0
                if k < n - 1 and seen[b, p, k + 1]:
                    feats[cfg.patch + 1:-1], feats[-1] = patches[b, p, k + 1], 1.0
                np.testing.assert_allclose(got[b, p, k], feats @ kernel + bias, rtol=1e-5, atol=1e-5)
    # the whole model still reads nothing hidden
    out = model(batch, masking)
    poisoned = np.where(hidden[..., None], 1e3, patches).reshape(B, P, T)
    again = model(dict(batch, signal=jnp.asarray(poisoned, jnp.float32)), masking)
    np.testing.assert_allclose(np.asarray(again["pred"]), np.asarray(out["pred"]), rtol=1e-5, atol=1e-5)
