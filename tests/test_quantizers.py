"""Quantizers: EMA arithmetic by hand, straight-through gradients, masking, k-means init, dead-code restarts, FSQ."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from brainjax.nn.quantizers import FSQ, VectorQuantizer, lookup

# One compiled train call per quantizer config and input shape (compiling is the slow part of these tests).
_train = nnx.jit(lambda vq, z, mask, key: vq(z, mask, train=True, rng=key))
_eval = nnx.jit(lambda quantizer, z, mask: quantizer(z, mask, train=False))
_STATE = ("codebook", "ema_sum", "ema_count", "usage", "initialized")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _set(vq, **values):
    for name, value in values.items():
        getattr(vq, name).set_value(jnp.asarray(value))
    return vq


def _state(vq):
    return {name: np.asarray(getattr(vq, name).get_value()) for name in _STATE}


def _expected_ema(state, z, decay, eps):
    """Independent numpy EMA step of the cosine codebook (nearest code by max cosine)."""
    unit = _unit(z)
    size = len(state["codebook"])
    codes = np.argmax(unit @ state["codebook"].T, axis=1)
    counts = np.array([np.sum(codes == k) for k in range(size)], float)
    sums = np.stack([unit[codes == k].sum(0) for k in range(size)])
    count = decay * state["ema_count"] + (1 - decay) * counts
    total = decay * state["ema_sum"] + (1 - decay) * sums
    n = count.sum()
    smoothed = (count + eps) / (n + size * eps) * n
    codebook = _unit(total / smoothed[:, None])
    usage = decay * state["usage"] + (1 - decay) * counts / len(z)
    return codes, {"codebook": codebook, "ema_sum": total, "ema_count": count, "usage": usage}


def _hand_vq(**kw):
    """K=3 codes at 0/120/240 degrees in 2-D, already initialised, with arbitrary EMA statistics."""
    angles = np.deg2rad([0.0, 120.0, 240.0])
    vq = VectorQuantizer(3, 2, rngs=nnx.Rngs(0), **{"decay": 0.9, "dead_threshold": 0.0, **kw})
    return _set(vq, codebook=np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32),
                ema_sum=np.float32([[1.5, 0.2], [-0.4, 0.9], [-0.3, -0.5]]), ema_count=np.float32([2.0, 1.0, 0.5]),
                usage=np.float32([0.5, 0.3, 0.2]), initialized=True)


def _polar(degrees, radius):
    rad = np.deg2rad(degrees)
    return (np.stack([np.cos(rad), np.sin(rad)], 1) * np.asarray(radius)[:, None]).astype(np.float32)


# Hand-quantizer batches are [2, 3, 2] with a [2, 3] mask, so their train/eval calls compile once.
_MASK = np.array([[True, True, False], [True, True, False]])


def test_ema_update_matches_hand_computation():
    vq = _hand_vq()
    before = _state(vq)
    valid = _polar([10.0, -20.0, 110.0, 250.0], [2.0, 0.5, 3.0, 1.0])  # nearest codes 0, 0, 1, 2 by construction
    z = np.zeros((2, 3, 2), np.float32)
    z[_MASK], z[~_MASK] = valid, 5.0  # two padded vectors
    out = _train(vq, z, _MASK, jax.random.key(0))
    codes, expected = _expected_ema(before, valid, decay=0.9, eps=1e-5)
    np.testing.assert_array_equal(codes, [0, 0, 1, 2])
    np.testing.assert_array_equal(np.asarray(out.codes)[_MASK], codes)
    after = _state(vq)
    for name, value in expected.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # Outputs use the codebook the codes were chosen from (before the update).
    np.testing.assert_allclose(np.asarray(out.quantized)[_MASK], before["codebook"][codes], atol=1e-6)
    assert float(out.stats["restarted"]) == 0 and float(out.stats["dead"]) == 0


def test_straight_through_gradient_and_no_codebook_gradient():
    vq = _hand_vq()
    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)
    assert not jax.tree.leaves(params)  # nothing for the optimizer: the codebook is learned by EMA
    z = jnp.asarray(_polar([10.0, -20.0, 110.0, 250.0, 30.0, 200.0], [2.0, 0.5, 3.0, 1.0, 1.5, 0.7]))
    w = jax.random.normal(jax.random.key(1), z.shape)

    def objective(z, rest):  # as in the trainer's pure step: merge, run (mutating state), split
        model = nnx.merge(graphdef, params, rest, copy=True)
        out = model(z, train=True, rng=jax.random.key(2))
        return jnp.sum(w * out.quantized), (out, nnx.split(model, nnx.Param, ...)[2])

    (_, (out, new_rest)), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(z, rest)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(w))
    codebook = np.asarray(vq.codebook.get_value())
    np.testing.assert_allclose(np.asarray(out.quantized), codebook[np.asarray(out.codes)], atol=1e-6)
    assert not np.allclose(np.asarray(new_rest["ema_count"].get_value()), np.asarray(vq.ema_count.get_value()))

    def through_codebook(table):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.codebook.set_value(table)
        out = model(z, train=False)
        return jnp.sum(w * out.quantized) + out.loss

    np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(through_codebook))(jnp.asarray(codebook))), 0.0)


def test_commitment_loss_and_stats_ignore_masked_vectors():
    z = np.random.default_rng(1).normal(size=(2, 3, 2)).astype(np.float32)
    start = _state(_hand_vq())
    valid = _unit(z[_MASK])
    codes = np.argmax(valid @ start["codebook"].T, axis=1)
    loss = 0.25 * np.mean(np.sum((start["codebook"][codes] - valid) ** 2, axis=1))
    share = np.bincount(codes, minlength=3) / len(codes)
    perplexity = np.exp(-np.sum(share[share > 0] * np.log(share[share > 0])))
    _, expected = _expected_ema(start, z[_MASK], decay=0.9, eps=1e-5)  # the valid vectors alone
    for poison in (np.nan, 1e6):
        bad = np.where(_MASK[..., None], z, np.float32(poison))
        for train in (False, True):
            vq = _hand_vq()
            out = _train(vq, bad, _MASK, jax.random.key(3)) if train else _eval(vq, bad, _MASK)
            np.testing.assert_array_equal(np.asarray(out.codes)[_MASK], codes)
            np.testing.assert_allclose(float(out.loss), loss, rtol=1e-5)
            np.testing.assert_allclose(float(out.stats["perplexity"]), perplexity, rtol=1e-5)
            np.testing.assert_allclose(float(out.stats["usage"]), np.mean(share > 0))
            assert np.isfinite(np.asarray(out.quantized)[_MASK]).all()
        after = _state(vq)
        for name, value in expected.items():
            np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def _clusters(directions, per, noise, seed):
    """[len(directions) * per + 8, dim] noisy copies of ``directions`` then 8 NaN rows; mask: False on the NaN rows."""
    rng = np.random.default_rng(seed)
    points = np.repeat(directions, per, axis=0) + noise * rng.normal(size=(len(directions) * per, directions.shape[1]))
    points = np.concatenate([rng.permutation(points), np.full((8, directions.shape[1]), np.nan)]).astype(np.float32)
    return points, np.arange(len(points)) < len(points) - 8


# Default-config K=8, dim=4 quantizers on [72, 4] batches share one compiled train call.
_BASIS = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))[0].T.astype(np.float32)  # orthonormal rows


def test_kmeans_initialises_once_on_the_first_training_call():
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    assert not _state(vq)["initialized"]
    _train(vq, *_clusters(_BASIS, 16, 0.05, seed=3), jax.random.key(4))
    assert _state(vq)["initialized"]
    cosine = _BASIS @ _state(vq)["codebook"].T  # [4 true directions, 8 codes]
    assert (cosine.max(1) > 0.99).all()
    # A batch around the opposite directions only nudges the codes (EMA); a re-initialisation would move them.
    _train(vq, *_clusters(-_BASIS, 16, 0.05, seed=5), jax.random.key(6))
    cosine = _BASIS @ _state(vq)["codebook"].T
    assert (cosine.max(1) > 0.99).all() and (-cosine).max() < 0.5


def test_kmeans_with_fewer_valid_vectors_than_codes():
    z, mask = _clusters(_BASIS, 16, 0.3, seed=10)
    mask[3:] = False  # 3 valid vectors for 8 codes: seeds repeat them
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    _train(vq, z, mask, jax.random.key(11))
    distance = np.linalg.norm(_state(vq)["codebook"][:, None] - _unit(z[:3])[None], axis=-1)
    np.testing.assert_allclose(distance.min(1), 0.0, atol=1e-5)  # every code is one of the valid vectors
    np.testing.assert_allclose(distance.min(0), 0.0, atol=1e-5)  # and each valid vector has a code


def _dead_code_run(dead_threshold, steps=4):
    """Codes 4..7 point away from the data (never chosen); the batch's 8 NaN rows are masked out."""
    eye = np.eye(4, dtype=np.float32)
    codebook = np.concatenate([eye, -eye])
    vq = _set(VectorQuantizer(8, 4, dead_threshold=dead_threshold, rngs=nnx.Rngs(0)), codebook=codebook,
              ema_sum=codebook * 16, ema_count=np.float32([16] * 4 + [1] * 4),
              usage=np.float32([0.25] * 4 + [0] * 4), initialized=True)
    records = []
    for step in range(steps):
        z, mask = _clusters(eye, 16, 0.3, seed=step)
        z = np.abs(z)  # the positive orthant: -e_k is never the nearest code
        out = _train(vq, z, mask, jax.random.key(step))
        stats = {k: float(v) for k, v in out.stats.items()}
        records.append({"stats": stats, "valid": _unit(z[mask]), **_state(vq)})
    return codebook, records


def test_dead_code_restart_revives_unused_codes():
    codebook, records = _dead_code_run(0.03)
    first = records[0]
    assert first["stats"] == {**first["stats"], "dead": 4, "restarted": 4, "usage": 0.5}
    # Restarted codes are valid (not padded) vectors of the batch, and no NaN got in.
    distance = np.linalg.norm(first["codebook"][4:, None] - first["valid"][None], axis=-1).min(1)
    np.testing.assert_allclose(distance, 0.0, atol=1e-6)
    assert all(np.isfinite(r[name]).all() for r in records for name in _STATE)
    assert records[-1]["stats"]["dead"] < 4 and records[-1]["stats"]["usage"] > 0.5

    codebook, frozen = _dead_code_run(0.0)
    assert all(r["stats"] == {**r["stats"], "dead": 0, "restarted": 0, "usage": 0.5} for r in frozen)
    np.testing.assert_allclose(frozen[-1]["codebook"][4:], codebook[4:], atol=1e-6)


def test_eval_and_all_masked_batches_change_no_state():
    cases = ((VectorQuantizer(8, 4, rngs=nnx.Rngs(0)), *_clusters(_BASIS, 16, 0.3, seed=9)),
             (_hand_vq(), np.ones((2, 3, 2), np.float32), _MASK))
    for vq, z, mask in cases:
        before = _state(vq)
        out = _eval(vq, z, mask)
        jax.tree.map(np.testing.assert_array_equal, _state(vq), before)
        assert float(out.stats["restarted"]) == 0
    # A training batch of padding only: no k-means on nothing, no EMA decay, no restart from padded rows.
    vq = _set(VectorQuantizer(8, 4, rngs=nnx.Rngs(0)), usage=np.float32([0.0, 0.5] * 4))  # 4 dead codes
    before = _state(vq)
    z, mask = _clusters(_BASIS, 16, 0.3, seed=9)
    out = _train(vq, z, np.zeros_like(mask), jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, _state(vq), before)
    assert not before["initialized"] and float(out.loss) == 0.0
    assert {k: float(v) for k, v in out.stats.items()} == {"perplexity": 1.0, "usage": 0.0, "dead": 4.0,
                                                          "restarted": 0.0}


def test_jitted_train_call_matches_eager():
    z, mask = _clusters(_BASIS, 16, 0.3, seed=7)
    eager_vq, jit_vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(1)), VectorQuantizer(8, 4, rngs=nnx.Rngs(1))
    eager = eager_vq(z, mask, train=True, rng=jax.random.key(8))
    jitted = _train(jit_vq, z, mask, jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(eager.codes), np.asarray(jitted.codes))
    np.testing.assert_allclose(np.asarray(eager.quantized), np.asarray(jitted.quantized), atol=1e-5)
    np.testing.assert_allclose(float(eager.loss), float(jitted.loss), rtol=1e-4)
    for name, value in _state(eager_vq).items():
        np.testing.assert_allclose(_state(jit_vq)[name], value, atol=1e-5, err_msg=name)


def test_lookup_decodes_codes():
    codebook = np.arange(12, dtype=np.float32).reshape(4, 3)
    codes = np.array([[3, 0], [1, 1]])
    np.testing.assert_array_equal(np.asarray(lookup(codebook, codes)), codebook[codes])
    with pytest.raises(ValueError, match="integers"):
        lookup(codebook, codes.astype(np.float32))


def test_vq_rejects_bad_input():
    vq = VectorQuantizer(8, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        vq(np.zeros((5, 2), np.float32), train=False)
    with pytest.raises(ValueError, match="mask shape"):
        vq(np.zeros((5, 4), np.float32), np.ones(4, bool), train=False)
    with pytest.raises(ValueError, match="rng"):
        vq(np.zeros((5, 4), np.float32), train=True)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 4, decay=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kmeans_iters"):
        VectorQuantizer(8, 4, kmeans_iters=0, rngs=nnx.Rngs(0))


def _numpy_fsq(z, levels, eps=1e-3):
    """Independent FSQ: grid values [..., C] and mixed-radix indices [...] (channel 0 fastest)."""
    sizes = np.array(levels)
    half, bound = sizes // 2, (sizes - 1) * (1 - eps) / 2
    offset = np.where(sizes % 2 == 0, 0.5, 0.0)
    shift = np.where(offset < bound, np.arctanh(np.minimum(offset / bound, 0.99)), 0.0)  # clip: no NaN warning
    steps = np.round(np.tanh(np.asarray(z, np.float64) + shift) * bound - offset)
    radix = np.cumprod([1, *levels[:-1]])
    return steps / half, ((steps + half) * radix).sum(-1).astype(int), (shift, bound, half)


def test_fsq_index_round_trip_and_grid():
    for levels in ((3, 4, 5), (3, 3, 2)):
        fsq = FSQ(levels)
        assert fsq.codebook_size == np.prod(levels)
        codes = np.asarray(fsq.indices_to_codes(jnp.arange(fsq.codebook_size)))
        np.testing.assert_array_equal(np.asarray(fsq.codes_to_indices(codes)), np.arange(fsq.codebook_size))
        assert len(np.unique(codes, axis=0)) == fsq.codebook_size
        half = np.array(levels) // 2
        digits = codes * half + half
        np.testing.assert_allclose(digits, np.round(digits), atol=1e-6)
        assert (digits >= -1e-6).all() and (digits <= np.array(levels) - 1 + 1e-6).all()


def test_fsq_quantizes_onto_the_grid_with_straight_through_gradient():
    levels = (3, 4, 5, 2)
    fsq = FSQ(levels)
    z = np.random.default_rng(0).normal(size=(40, 4)) * 2
    z = np.concatenate([z, np.zeros((1, 4)), np.full((1, 4), 50.0), np.full((1, 4), -50.0)]).astype(np.float32)
    out = _eval(fsq, z, np.ones(len(z), bool))
    grid, indices, (shift, bound, half) = _numpy_fsq(z, levels)
    np.testing.assert_allclose(np.asarray(out.quantized), grid, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.codes), indices)
    np.testing.assert_array_equal(np.asarray(fsq.indices_to_codes(out.codes)), np.asarray(out.quantized))
    # Zero lands on the grid point 0 (a 2-level channel: its upper level); saturation reaches both outer levels.
    np.testing.assert_array_equal(np.asarray(out.quantized)[-3], 0.0)
    sizes = np.array(levels)
    np.testing.assert_allclose(np.asarray(out.quantized)[-2:], [(sizes - 1 - half) / half, -half / half])
    # Rounding passes the gradient through unchanged: d quantized / dz = bound'(z) / (L // 2).
    w = np.random.default_rng(1).normal(size=z.shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(w * fsq(x).quantized)))(z)
    expected = w * (1 - np.tanh(z.astype(np.float64) + shift) ** 2) * bound / half
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-6)


def test_fsq_stats_over_valid_vectors():
    fsq = FSQ((3, 2))
    z = np.random.default_rng(1).normal(size=(4, 5, 2)).astype(np.float32)
    mask = np.random.default_rng(2).random((4, 5)) > 0.3
    share = np.bincount(_numpy_fsq(z[mask], (3, 2))[1], minlength=6) / mask.sum()
    for poison in (0.0, np.nan):
        out = _eval(fsq, np.where(mask[..., None], z, np.float32(poison)), mask)
        np.testing.assert_allclose(float(out.stats["perplexity"]),
                                   np.exp(-np.sum(share[share > 0] * np.log(share[share > 0]))), rtol=1e-5)
        np.testing.assert_allclose(float(out.stats["usage"]), np.mean(share > 0))
        assert float(out.loss) == 0.0 and np.isfinite(np.asarray(out.quantized)).all()
    with pytest.raises(ValueError, match="levels"):
        FSQ((3, 1))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        fsq(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="integers"):
        fsq.indices_to_codes(np.zeros(3, np.float32))
