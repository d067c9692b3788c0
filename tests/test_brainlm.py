"""BrainLM MAE: shapes, padding invariance, gradients, precision, remat, loss and R² against references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import r2_score

from brainjax.config import MaskConfig, ModelConfig, load_config
from brainjax.models.brainlm import BrainLM, count_params, mae_loss, model_flops_per_sample, pooled_r2
from brainjax.nn.masking import sample_masking

# Odd sizes on purpose: 7 parcels, 30 TRs, patch 5 -> 6 patches, 42 tokens.
CFG = ModelConfig(patch=5, max_parcels=7, width=12, depth=2, heads=3, mlp=24, dec_width=8, dec_depth=1,
                  dec_heads=2, dec_mlp=16, fourier_features=3, attention="xla")
MASK = MaskConfig(strategy="random", ratio=0.5)
B, P, T = 3, 7, 30
REAL = np.array([7, 4, 2])  # real parcels per sample; the rest are padding


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"signal": jnp.asarray(rng.normal(size=(B, P, T)), jnp.float32),
            "parcel_mask": jnp.asarray(np.arange(P)[None, :] < REAL[:, None]),
            "coords": jnp.asarray(rng.uniform(-70, 70, (B, P, 3)), jnp.float32),
            "tr": jnp.asarray([0.8, 2.0, 1.5], jnp.float32)}


def _model(**changes):
    return BrainLM(dataclasses.replace(CFG, **changes), rngs=nnx.Rngs(0))


def _grads(model, batch, seed=1):
    rng = jax.random.key(seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params):
        return mae_loss(nnx.merge(graphdef, params, rest, copy=True), batch, rng, MASK)[0]
    return jax.value_and_grad(loss_fn)(params)


def test_shapes_for_odd_config():
    model, batch = _model(), _batch()
    out = model(batch, sample_masking(jax.random.key(0), MASK, batch["parcel_mask"], 6))
    assert out["pred"].shape == out["target"].shape == (B, P, 6, 5) and out["pred"].dtype == jnp.float32
    assert out["masked"].shape == (B, P, 6) and out["cls"].shape == (B, 12)
    emb = model.embed(batch)
    assert emb["cls"].shape == emb["mean"].shape == (B, 12) and emb["tokens"].shape == (B, P, 6, 12)
    np.testing.assert_array_equal(np.asarray(out["target"]), np.asarray(batch["signal"]).reshape(B, P, 6, 5)
                                  * (np.arange(P)[None, :, None, None] < REAL[:, None, None, None]))


def test_rng_call_form_matches_explicit_masking():
    model, batch = _model(), _batch()
    a = model(batch, jax.random.key(4), MASK)
    b = model(batch, sample_masking(jax.random.key(4), MASK, batch["parcel_mask"], 6))
    np.testing.assert_array_equal(np.asarray(a["pred"]), np.asarray(b["pred"]))


def test_padded_parcels_do_not_affect_loss_or_embeddings():
    model, batch = _model(), _batch()
    pad = ~np.asarray(batch["parcel_mask"])
    garbage = dict(batch, signal=jnp.where(pad[:, :, None], jnp.nan, batch["signal"]),
                   coords=jnp.where(pad[:, :, None], 1e4, batch["coords"]))
    rng = jax.random.key(2)
    loss_a, sums_a = mae_loss(model, batch, rng, MASK)
    loss_b, sums_b = mae_loss(model, garbage, rng, MASK)
    assert np.isfinite(float(loss_b))
    for key in sums_a:
        np.testing.assert_allclose(float(sums_b[key]), float(sums_a[key]), rtol=1e-6)
    emb_a, emb_b = model.embed(batch), model.embed(garbage)
    for key in ("cls", "mean"):
        np.testing.assert_allclose(np.asarray(emb_b[key]), np.asarray(emb_a[key]), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradient_reaches_mask_token_not_padded_inputs():
    model, batch = _model(), _batch()
    _, grads = _grads(model, batch)
    assert float(jnp.abs(grads["mask_token"][...]).sum()) > 0
    assert float(jnp.abs(grads["cls_token"][...]).sum()) > 0

    def loss_of_signal(signal):
        return mae_loss(model, dict(batch, signal=signal), jax.random.key(1), MASK)[0]
    g = np.asarray(jax.grad(loss_of_signal)(batch["signal"]))
    pad = ~np.asarray(batch["parcel_mask"])
    assert np.abs(g[pad]).max() == 0 and np.abs(g[~pad]).max() > 0


def test_mae_loss_equals_numpy_masked_mse():
    model, batch = _model(), _batch()
    rng = jax.random.key(3)
    loss, sums = mae_loss(model, batch, rng, MASK)
    # mae_loss splits its rng into (masking, dropout); rebuild the same masking to read the model's output.
    mask_rng, _ = jax.random.split(rng)
    out = model(batch, sample_masking(mask_rng, MASK, batch["parcel_mask"], 6))
    pred, target, masked = (np.asarray(out[k], np.float64) for k in ("pred", "target", "masked"))
    sel = masked.astype(bool)
    err = (pred[sel] - target[sel]) ** 2
    np.testing.assert_allclose(float(loss), err.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["n"]), err.size)
    np.testing.assert_allclose(float(sums["sse"]), err.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["sum_y2"]), (target[sel] ** 2).sum(), rtol=1e-5)
    pad = ~np.asarray(batch["parcel_mask"])
    assert not sel[pad].any() and sel.any()


def test_pooled_r2_matches_sklearn_over_several_batches():
    rng = np.random.default_rng(0)
    ys, ps = [rng.normal(2.0, 1.5, size=n) for n in (50, 70)], []
    total = {"sse": 0.0, "n": 0.0, "sum_y": 0.0, "sum_y2": 0.0}
    for y in ys:
        p = y + rng.normal(scale=0.7, size=y.shape)
        ps.append(p)
        for key, value in (("sse", ((p - y) ** 2).sum()), ("n", y.size), ("sum_y", y.sum()),
                           ("sum_y2", (y ** 2).sum())):
            total[key] += value
    expected = r2_score(np.concatenate(ys), np.concatenate(ps))
    np.testing.assert_allclose(pooled_r2(total), expected, rtol=1e-10)


def test_norm_targets_are_per_patch_standardised():
    model, batch = _model(norm_targets=True), _batch()
    target = np.asarray(model(batch, None)["target"])
    patches = np.asarray(batch["signal"]).reshape(B, P, 6, 5)[0]
    expected = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(target[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_close_to_float32():
    batch, rng = _batch(), jax.random.key(5)
    loss32, _ = mae_loss(_model(), batch, rng, MASK)
    loss16, _ = mae_loss(_model(dtype="bfloat16"), batch, rng, MASK)  # same seed -> same float32 params
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=3e-2)
    assert _model(dtype="bfloat16").head.kernel[...].dtype == jnp.float32


@pytest.mark.slow
def test_remat_and_chunked_attention_give_same_loss_and_grads():
    batch = _batch()
    loss_ref, grads_ref = _grads(_model(), batch)
    for changes in ({"remat": True}, {"attention": "chunked", "attention_chunk": 4}):
        loss, grads = _grads(_model(**changes), batch)
        np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_dropout_uses_the_rng_only_when_training():
    model, batch = _model(dropout=0.3), _batch()
    masking = sample_masking(jax.random.key(0), MASK, batch["parcel_mask"], 6)
    eval_a = model(batch, masking, deterministic=True, dropout_rng=jax.random.key(1))["pred"]
    eval_b = model(batch, masking, deterministic=True, dropout_rng=jax.random.key(2))["pred"]
    train_a = model(batch, masking, deterministic=False, dropout_rng=jax.random.key(1))["pred"]
    train_b = model(batch, masking, deterministic=False, dropout_rng=jax.random.key(2))["pred"]
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    assert not np.allclose(np.asarray(train_a), np.asarray(train_b))


@pytest.mark.parametrize("kind", ["seconds", "learned"])
def test_time_embeddings(kind):
    model, batch = _model(time_embedding=kind, max_patches=8), _batch()
    slower = dict(batch, tr=batch["tr"] * 2)
    differs = not np.allclose(np.asarray(model.embed(batch)["cls"]), np.asarray(model.embed(slower)["cls"]))
    assert differs == (kind == "seconds")  # only onset-in-seconds depends on the TR
    with pytest.raises(ValueError, match="max_patches"):
        _model(time_embedding="learned", max_patches=4).embed(batch)


def test_params_carry_logical_axis_names():
    allowed = {"embed", "mlp", "qkv", "patch", "fourier", "dec_embed", "dec_mlp", "dec_qkv", None}
    params = nnx.state(_model(), nnx.Param)
    names = [v.get_metadata().get("out_sharding") for v in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable))]
    assert names and all(n is not None and set(n) <= allowed for n in names)


def test_flops_positive_and_grow_with_window():
    small = model_flops_per_sample(CFG, 7, 30, MASK)
    assert 0 < small < model_flops_per_sample(CFG, 7, 60, MASK)


@pytest.mark.parametrize("name,low,high", [("tiny", 5e3, 1e4), ("ref_small", 4e6, 6e6),
                                           ("brainlm_13m", 1.1e7, 1.6e7), ("brainlm_111m", 1.0e8, 1.25e8),
                                           pytest.param("brainlm_650m", 6.0e8, 7.0e8, marks=pytest.mark.slow)])
def test_preset_parameter_counts(name, low, high):
    cfg = load_config(name)
    model = nnx.eval_shape(lambda: BrainLM(cfg.model, rngs=nnx.Rngs(0)))
    assert low <= count_params(model) <= high
