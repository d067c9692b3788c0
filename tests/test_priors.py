"""The factor-analysis prior (brainjax.nn.priors) and the linear paths of the MAE that use it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_brainlm import CFG, MASK, B, P, T, _batch

from brainjax.config import MaskConfig
from brainjax.models.brainlm import DYNAMICS_EDGE, BrainLM, _gated_neighbours, _parcel_trend
from brainjax.nn.masking import sample_masking
from brainjax.nn.priors import factor_posterior_mean


def _gaussian_conditional(loadings, noise, x, seen):
    """Reference: the factor mean L E[z | x_seen] = L L_vᵀ Σ_vv⁻¹ x_v with Σ = L Lᵀ + diag(noise), P x P maths."""
    if not seen.any():
        return np.zeros((len(loadings), x.shape[-1]))
    sigma_vv = loadings[seen] @ loadings[seen].T + np.diag(noise[seen])
    return loadings @ loadings[seen].T @ np.linalg.solve(sigma_vv, x[seen])


def test_factor_posterior_mean_matches_the_gaussian_conditional_mean():
    rng = np.random.default_rng(0)
    batch, parcels, patches, length, rank = 2, 9, 3, 4, 3
    loadings = rng.normal(size=(batch, parcels, rank))
    noise = rng.uniform(0.2, 1.5, size=(batch, parcels))
    values = rng.normal(size=(batch, parcels, patches, length))
    seen = rng.uniform(size=(batch, parcels, patches)) < 0.5
    seen[1, :, 2] = False  # a patch with nothing seen: the prior is zero there
    got = np.asarray(factor_posterior_mean(jnp.asarray(loadings), jnp.asarray(noise),
                                           jnp.asarray(np.where(seen[..., None], values, np.nan)), jnp.asarray(seen)))
    for b in range(batch):
        for n in range(patches):
            want = _gaussian_conditional(loadings[b], noise[b], values[b, :, n], seen[b, :, n])
            np.testing.assert_allclose(got[b, :, n], want, rtol=1e-4, atol=1e-5)
            hidden = ~seen[b, :, n]  # hidden rows: Σ_hv Σ_vv⁻¹ x_v, the regression baseline's formula
            if seen[b, :, n].any():
                sigma = loadings[b] @ loadings[b].T + np.diag(noise[b])
                v = seen[b, :, n]
                regression = sigma[np.ix_(hidden, v)] @ np.linalg.solve(sigma[np.ix_(v, v)], values[b, v, n])
                np.testing.assert_allclose(got[b, hidden, n], regression, rtol=1e-4, atol=1e-5)
    assert np.all(got[1, :, 2] == 0.0)


def test_factor_prior_recovers_a_planted_factor_model_better_than_the_mean():
    # Data drawn from x = L z + e: with the true loadings the prior's R² on hidden parcels is the best linear one
    rng = np.random.default_rng(1)
    parcels, rank, samples = 40, 4, 400
    loadings = rng.normal(size=(parcels, rank))
    noise = np.full(parcels, 0.5)
    x = rng.normal(size=(samples, rank)) @ loadings.T + rng.normal(size=(samples, parcels)) * np.sqrt(noise)
    seen = np.zeros((1, parcels, samples), bool)
    seen[0, :10] = True  # 10 visible parcels predict the other 30
    values = jnp.asarray(x.T[None, :, :, None])  # [1, P, N=samples, T=1]
    got = np.asarray(factor_posterior_mean(jnp.asarray(loadings[None]), jnp.asarray(noise[None]), values,
                                           jnp.asarray(seen)))[0, 10:, :, 0]
    truth = x.T[10:]
    r2 = 1 - ((got - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    # expected: the factor share explained by 10 parcels (high), far above the mean's 0
    assert r2 > 0.7


def _model(**changes):
    cfg = dataclasses.replace(CFG, decoder="cross", parcel_identity=True, **changes)
    model = BrainLM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(9)
    for layer in (model.skip, model.dynamics):  # zero-initialised paths: give them weights, or a test sees nothing
        if layer is not None:
            layer.kernel[...] = jnp.asarray(rng.normal(0, 0.3, layer.kernel.shape), jnp.float32)
            layer.bias[...] = jnp.asarray(rng.normal(0, 0.3, layer.bias.shape), jnp.float32)
    return model


@pytest.mark.parametrize("changes", [{"factor_prior": 3}, {"linear_skip": True},
                                     {"factor_prior": 2, "linear_skip": True, "neighbour_context": True,
                                      "parcel_trend": True},
                                     {"factor_prior": 2, "factor_dynamics": True, "linear_skip": True}])
@pytest.mark.parametrize("strategy", ["random", "mixture"])
def test_linear_paths_read_nothing_hidden_and_leave_padding_out(changes, strategy):
    model, batch = _model(**changes), _batch()
    mask_cfg = dataclasses.replace(MASK, strategy=strategy, mixture=(0.2, 0.4, 0.0, 0.4))  # future, time blocks
    masking = sample_masking(jax.random.key(3), mask_cfg, batch["parcel_mask"], T // CFG.patch)
    out = model(batch, masking)
    hidden = np.repeat(np.asarray(out["masked"]), CFG.patch, axis=-1)
    padded = ~np.asarray(batch["parcel_mask"])[:, :, None]
    poisoned = np.where(hidden | padded, 1e3, np.asarray(batch["signal"]))
    again = model(dict(batch, signal=jnp.asarray(poisoned, jnp.float32)), masking)
    np.testing.assert_allclose(np.asarray(again["pred"]), np.asarray(out["pred"]), rtol=1e-5, atol=1e-5)


def test_prediction_is_the_decoder_head_plus_the_factor_prior():
    model, batch = _model(factor_prior=3), _batch()
    # a zero head leaves exactly the prior: the loadings and noise the model reports, through the reference
    model.head.kernel[...] = jnp.zeros_like(model.head.kernel[...])
    model.head.bias[...] = jnp.zeros_like(model.head.bias[...])
    masking = sample_masking(jax.random.key(5), MASK, batch["parcel_mask"], T // CFG.patch)
    pred = np.asarray(model(batch, masking)["pred"])
    loadings, noise = (np.asarray(a, np.float64) for a in model.factor_model(batch["coords"], batch["parcel_mask"]))
    patches = np.asarray(batch["signal"]).reshape(B, P, -1, CFG.patch)
    seen = np.asarray(batch["parcel_mask"])[:, :, None] & ~np.asarray(masking.masked).reshape(B, P, -1)
    for b in range(B):
        for n in range(patches.shape[2]):
            want = _gaussian_conditional(loadings[b], noise[b], patches[b, :, n], seen[b, :, n])
            np.testing.assert_allclose(pred[b, :, n], want, rtol=1e-4, atol=1e-5)
    assert np.all(loadings[~np.asarray(batch["parcel_mask"])] == 0)


def test_linear_priors_refuse_normalised_targets():
    with pytest.raises(ValueError, match="norm_targets"):
        _model(factor_prior=2, norm_targets=True)
    with pytest.raises(ValueError, match="factor_dynamics"):
        _model(factor_dynamics=True)


def _numpy_scores(loadings, noise, values):
    """E[z | x] = (I + Lᵀ Ψ⁻¹ L)⁻¹ Lᵀ Ψ⁻¹ x for the given (seen) rows; values [p, t] -> [r, t]."""
    weighted = loadings.T / noise
    return np.linalg.solve(np.eye(loadings.shape[1]) + weighted @ loadings, weighted @ values)


def test_latent_dynamics_extrapolate_the_edge_factor_scores_into_empty_patches_only():
    model, batch = _model(factor_prior=2, factor_dynamics=True), _batch()
    model.head.kernel[...] = jnp.zeros_like(model.head.kernel[...])  # leave exactly the linear prior
    model.head.bias[...] = jnp.zeros_like(model.head.bias[...])
    n_patches = T // CFG.patch
    future = sample_masking(jax.random.key(0), MaskConfig(strategy="future", future_patches=2), batch["parcel_mask"],
                            n_patches)
    pred = np.asarray(model(batch, future)["pred"])
    loadings, noise = (np.asarray(a, np.float64) for a in model.factor_model(batch["coords"], batch["parcel_mask"]))
    kernel, bias = np.asarray(model.dynamics.kernel[...], np.float64), np.asarray(model.dynamics.bias[...], np.float64)
    patches = np.asarray(batch["signal"], np.float64).reshape(B, P, n_patches, CFG.patch)
    real = np.asarray(batch["parcel_mask"])
    for b in range(B):
        L, psi = loadings[b, real[b]], noise[b, real[b]]
        for n in range(n_patches):
            if n < n_patches - 2:  # seen patches: the same-time conditional mean, no dynamics
                want = _gaussian_conditional(loadings[b], noise[b], patches[b, :, n], real[b])
            else:  # empty: the map of the last seen patch's closing scores (the next patch is empty too: zeros)
                last = n_patches - 3
                before = _numpy_scores(L, psi, patches[b, real[b], last])[:, -DYNAMICS_EDGE:] if n == last + 1 else \
                    np.zeros((2, DYNAMICS_EDGE))
                edges = np.concatenate([before, np.zeros((2, DYNAMICS_EDGE))], -1).reshape(-1)
                latent = (edges @ kernel + bias).reshape(CFG.patch, 2)
                want = loadings[b] @ latent.T
            np.testing.assert_allclose(pred[b, :, n], want, rtol=1e-4, atol=1e-4)



def test_parcel_trend_is_a_least_squares_line_through_the_seen_patches():
    rng = np.random.default_rng(2)
    means = rng.normal(size=(2, 3, 6, 1))
    seen = np.ones((2, 3, 6, 1))
    seen[0, 0, [1, 4]] = 0
    seen[0, 1, 1:] = 0  # one seen patch: its value, slope 0
    seen[0, 2] = 0  # none seen: zeros
    got = np.asarray(_parcel_trend(jnp.asarray(means * seen, jnp.float32), jnp.asarray(seen, jnp.float32)))
    time = np.arange(6) / 5
    for b, p in np.ndindex(2, 3):
        keep = seen[b, p, :, 0] > 0
        if keep.sum() >= 2:
            slope, intercept = np.polyfit(time[keep], means[b, p, keep, 0], 1)
            np.testing.assert_allclose(got[b, p, :, 0], intercept + slope * time, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got[b, p, :, 1], slope, rtol=1e-4, atol=1e-5)
        assert np.allclose(got[b, p, :, 3], keep.mean())
    np.testing.assert_allclose(got[0, 1, :, 0], means[0, 1, 0, 0], rtol=1e-5)
    assert np.all(got[0, 1, :, 1] == 0) and np.all(got[0, 2] == 0)


def test_factor_correlation_clusters_into_the_planted_networks():
    from sklearn.metrics import adjusted_rand_score

    from brainjax.eval.network_maps import factor_correlation
    from brainjax.eval.networks import cluster_affinity
    model = _model(factor_prior=3, max_parcels=9)
    assert factor_correlation(_model(), np.zeros((9, 3))) is None
    networks = np.repeat(np.arange(3), 3)  # parcel slots 0-2, 3-5, 6-8
    table = np.zeros(model.dec_parcel_table.shape, np.float32)
    table[np.arange(9), networks] = 100.0  # each slot's network, far above the coordinate embedding
    model.dec_parcel_table[...] = jnp.asarray(table)
    kernel = np.zeros(model.factor_loadings.kernel.shape, np.float32)
    kernel[:3, :3] = np.eye(3)  # loadings = the network one-hot (scaled)
    model.factor_loadings.kernel[...] = jnp.asarray(kernel)
    corr = factor_correlation(model, np.random.default_rng(0).uniform(-60, 60, (9, 3)))
    assert corr.shape == (9, 9) and np.allclose(np.diag(corr), 1.0)
    assert adjusted_rand_score(networks, cluster_affinity(corr, 3)) == 1.0


def test_gated_neighbours_split_the_cases_by_which_neighbours_are_seen():
    patch = 2
    prev, nxt = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    rows = []
    for prev_seen, next_seen in ((1, 0), (0, 1), (1, 1), (0, 0)):
        rows.append(np.concatenate([prev * prev_seen, [prev_seen], nxt * next_seen, [next_seen], [7.0]]))
    got = np.asarray(_gated_neighbours(jnp.asarray(np.stack(rows), jnp.float32), patch))
    zero = np.zeros(patch)
    want = [np.concatenate([prev, zero, zero, zero, [1, 0, 0], [7.0]]),  # extrapolate forwards
            np.concatenate([zero, nxt, zero, zero, [0, 1, 0], [7.0]]),  # backwards
            np.concatenate([zero, zero, prev, nxt, [0, 0, 1], [7.0]]),  # interpolate
            np.concatenate([zero, zero, zero, zero, [0, 0, 0], [7.0]])]
    np.testing.assert_array_equal(got, np.stack(want))


def _numpy_factor_covariance(loadings, noise, signal):
    """Reference for one window: scores E[z | x_t] = Lᵀ Σ⁻¹ x_t with Σ = L Lᵀ + diag(noise) (P x P solve)."""
    sigma = loadings @ loadings.T + np.diag(noise)
    scores = loadings.T @ np.linalg.solve(sigma, signal)  # [r, T]
    cov = np.cov(scores, bias=True)
    var = np.diag(cov)
    r = cov / np.sqrt(np.outer(var, var))
    rows, cols = np.triu_indices(len(var), k=1)
    residual = np.log((signal - loadings @ scores).var(-1))
    return np.concatenate([np.arctanh(r[rows, cols]), np.log(var)]), residual


def test_factor_covariance_matches_a_numpy_reference_and_ignores_masked_parcels():
    from brainjax.eval.readouts import factor_covariance
    rng = np.random.default_rng(3)
    batch, parcels, rank, length = 2, 8, 3, 40
    loadings = rng.normal(size=(batch, parcels, rank))
    noise = rng.uniform(0.3, 1.0, (batch, parcels))
    signal = rng.normal(size=(batch, parcels, length))
    mask = np.ones((batch, parcels), bool)
    mask[1, 5:] = False  # padded / missing parcels: whatever they hold is ignored
    poisoned = np.where(mask[:, :, None], signal, 1e6)
    coupling, residual = (np.asarray(a) for a in factor_covariance(
        jnp.asarray(loadings), jnp.asarray(noise), jnp.asarray(poisoned, jnp.float32), jnp.asarray(mask)))
    assert coupling.shape == (batch, rank * (rank + 1) // 2) and residual.shape == (batch, parcels)
    for b in range(batch):
        keep = mask[b]
        want_coupling, want_residual = _numpy_factor_covariance(loadings[b, keep], noise[b, keep], signal[b, keep])
        np.testing.assert_allclose(coupling[b], want_coupling, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(residual[b, keep], want_residual, rtol=1e-3, atol=1e-4)
    assert np.all(residual[1, 5:] == 0)


def test_factor_coupling_recovers_a_planted_network_coupling_the_mean_cannot():
    from sklearn.metrics import roc_auc_score

    from brainjax.eval.readouts import factor_covariance
    rng = np.random.default_rng(4)
    scans, parcels, length = 40, 12, 120
    networks = np.repeat(np.arange(2), parcels // 2)
    loadings = np.eye(2)[networks]  # parcels load on their own network
    label = np.arange(scans) % 2  # label 1: the two networks are coupled (r = 0.6), label 0: independent
    signal = []
    for y in label:
        corr = np.array([[1.0, 0.6 * y], [0.6 * y, 1.0]])
        latent = np.linalg.cholesky(corr) @ rng.normal(size=(2, length))
        signal.append(loadings @ latent + 0.5 * rng.normal(size=(parcels, length)))
    signal = np.asarray(signal, np.float32)
    coupling, _ = factor_covariance(jnp.asarray(np.broadcast_to(loadings, (scans, parcels, 2))),
                                    jnp.full((scans, parcels), 0.25), jnp.asarray(signal),
                                    jnp.ones((scans, parcels), bool))
    assert roc_auc_score(label, np.asarray(coupling)[:, 0]) > 0.95  # the one between-factor entry
    assert roc_auc_score(label, signal.mean((1, 2))) < 0.8  # a first-order summary sees no difference
