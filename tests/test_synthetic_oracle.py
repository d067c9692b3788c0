"""The synthetic data's oracle (brainjax.data.synthetic_oracle): its Gaussian law against the simulator, and its
conditional mean against dense P T x P T maths."""

import dataclasses

import numpy as np
import pytest

from brainjax.data.synthetic import load_cohort
from brainjax.data.synthetic_model import SynthConfig, simulate_subject
from brainjax.data.synthetic_oracle import WindowPrior, conditional_mean, window_prior


def _random_prior(rng, parcels=6, sources=2, length=5):
    def spd(n):
        a = rng.normal(size=(n, n))
        return a @ a.T / n + 0.3 * np.eye(n)
    return WindowPrior(loadings=rng.normal(size=(parcels, sources)), source_cov=spd(sources * length),
                       noise_cov=np.stack([spd(length) for _ in range(parcels)]), mean=rng.normal(size=parcels))


def _dense_covariance(prior: WindowPrior) -> np.ndarray:
    """Σ over (p, t) flattened parcel-major, built from the definition x = F u + e."""
    parcels, sources = prior.loadings.shape
    length = prior.noise_cov.shape[1]
    mixing = np.kron(prior.loadings, np.eye(length))  # [(p, t), (n, t)]
    sigma = mixing @ prior.source_cov @ mixing.T
    for p in range(parcels):
        sigma[p * length:(p + 1) * length, p * length:(p + 1) * length] += prior.noise_cov[p]
    return sigma


def test_conditional_mean_equals_the_dense_gaussian_conditional():
    rng = np.random.default_rng(0)
    prior = _random_prior(rng)
    parcels, length = prior.noise_cov.shape[:2]
    values = rng.normal(size=(parcels, length))
    seen = rng.uniform(size=(parcels, length)) < 0.5
    seen[2] = False  # a parcel with nothing seen
    seen[3] = True  # one with everything seen
    got = conditional_mean(prior, np.where(seen, values, np.nan), seen)
    sigma = _dense_covariance(prior)
    v, h = seen.reshape(-1), ~seen.reshape(-1)
    mean = np.repeat(prior.mean, length)
    want = mean[h] + sigma[np.ix_(h, v)] @ np.linalg.solve(sigma[np.ix_(v, v)], values.reshape(-1)[v] - mean[v])
    np.testing.assert_allclose(got.reshape(-1)[h], want, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(got[seen], values[seen])


def test_conditional_mean_rejects_mismatched_shapes():
    prior = _random_prior(np.random.default_rng(1))
    with pytest.raises(ValueError, match="disagree"):
        conditional_mean(prior, np.zeros((6, 4)), np.ones((6, 4), bool))


@pytest.mark.slow
def test_window_law_matches_the_simulator_covariance():
    # Many scans of one subject: the empirical covariance of a window's values (over scans) against the oracle's
    cfg = SynthConfig(subjects=1, scans_per_subject=1500, timepoints=40, atlas="dosenbach160", sites=1, seed=3)
    cohort = load_cohort(cfg)
    subject = cohort.subjects[0]
    comps = simulate_subject(cfg, cohort.template, 0, subject, cohort.sites[subject.site])
    data = sum(comps[k] for k in ("network", "local", "white", "pink", "drift"))  # [K, P, T]
    start, length = 10, 8
    prior = window_prior(cfg, cohort.template, subject, cohort.sites[subject.site], start, length)
    parcels = [0, 1, 40, 41, 100]  # neighbours in one network and parcels of others
    window = data[:, parcels, start:start + length].reshape(len(data), -1)  # [K, 5 T]
    empirical = window.T @ window / len(window)  # the components have mean 0 per scan
    sigma = _dense_covariance(dataclasses.replace(prior, loadings=prior.loadings[parcels],
                                                  noise_cov=prior.noise_cov[parcels], mean=prior.mean[parcels]))
    # Monte Carlo error of a covariance entry over 1,500 scans is about sqrt(2 / 1500) ~ 0.04 of the variance;
    # standardising each scan by its own sample moments shrinks entries by a few percent
    scale = np.sqrt(np.outer(np.diag(sigma), np.diag(sigma)))
    assert np.max(np.abs(empirical - sigma) / scale) < 0.12
    assert np.mean(np.abs(empirical - sigma) / scale) < 0.03
    # the total variance of every parcel is its variance budget
    np.testing.assert_allclose(np.diag(sigma).reshape(len(parcels), length).mean(1),
                               empirical.diagonal().reshape(len(parcels), length).mean(1), rtol=0.1)
