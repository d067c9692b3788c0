"""Second-order readouts: token covariance against a numpy loop and against fc_features, a planted correlation
recovered, per-scan means across batches, and a probe that sees a planted connectivity effect the mean misses."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from brainjax.eval.probe import fc_features, probe
from brainjax.eval.readouts import ScanMeans, square, token_covariance, upper_triangle


def _loop_reference(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """token_covariance by explicit loops in float64: [B, P, N, W] -> [B, P, P]."""
    b, p, n, w = tokens.shape
    out = np.zeros((b, p, p))
    for i in range(b):
        for j in range(p):
            for k in range(p):
                if j == k or not (mask[i, j] and mask[i, k]):
                    continue
                a = tokens[i, j] - tokens[i, j].mean(0)  # centred over the N patches, per dimension
                c = tokens[i, k] - tokens[i, k].mean(0)
                r = sum(a[t, d] * c[t, d] for t in range(n) for d in range(w)) / np.sqrt((a**2).sum() * (c**2).sum())
                out[i, j, k] = np.arctanh(r)
    return out


def test_token_covariance_matches_a_loop_with_padded_parcels():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 4, 6)) + rng.normal(0, 3, (3, 5, 1, 6))  # parcel offsets: centring matters
    mask = np.ones((3, 5), bool)
    mask[1, 3:] = False  # a window padded to 5 parcels from 3
    tokens[1, 3:] = 0.0
    got = np.asarray(token_covariance(tokens.astype(np.float32), mask))
    want = _loop_reference(tokens, mask)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.array_equal(got[1, 3:], np.zeros((2, 5))) and np.array_equal(got[1, :, 3:], np.zeros((5, 2)))
    np.testing.assert_array_equal(got, np.swapaxes(got, 1, 2))


def test_one_dimensional_tokens_are_fc():
    """With W = 1 and one token per time point, the readout is Pearson FC of the series (fc_features)."""
    rng = np.random.default_rng(1)
    series = rng.normal(size=(7, 30)) + rng.normal(size=(1, 30))  # shared signal: sizeable correlations
    readout = token_covariance(series[None, :, :, None].astype(np.float32), np.ones((1, 7), bool))
    np.testing.assert_allclose(upper_triangle(np.asarray(readout))[0], fc_features([series])[0], atol=1e-5)


def test_planted_token_correlation_is_recovered():
    rng = np.random.default_rng(2)
    n, w = 60, 64
    for rho in (-0.6, 0.0, 0.3, 0.9):
        a, b, c = rng.normal(size=(3, n, w))
        # parcel-specific offsets constant over patches (as a spatial embedding) must not count as covariance
        tokens = np.stack([a + 5.0, rho * a + np.sqrt(1 - rho**2) * b - rng.normal(0, 4, w), c])
        z = np.asarray(token_covariance(tokens[None].astype(np.float32), np.ones((1, 3), bool)))[0]
        assert np.tanh(z[0, 1]) == pytest.approx(rho, abs=0.05)
        assert abs(np.tanh(z[0, 2])) < 0.05 and abs(np.tanh(z[1, 2])) < 0.05


def test_token_covariance_edge_cases():
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    tokens[0, 2] = 1.5  # constant over patches: correlation undefined, reported as 0 rather than NaN
    got = np.asarray(token_covariance(tokens, np.ones((2, 4), bool)))
    assert np.isfinite(got).all() and not got[0, 2].any() and not got[0, :, 2].any() and got[1, 2].any()
    tokens[1, 1] = tokens[1, 0] * 2.0 + 1.0  # perfectly correlated parcels: clipped, finite
    assert np.isfinite(np.asarray(token_covariance(tokens, np.ones((2, 4), bool)))).all()
    with pytest.raises(ValueError, match="at least 2 time patches"):
        token_covariance(tokens[:, :, :1], np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="parcel_mask"):
        token_covariance(tokens, np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"\[B, P, N, W\]"):
        token_covariance(tokens[0], np.ones((2, 4), bool))


def test_upper_triangle_and_square():
    m = np.arange(25, dtype=float).reshape(5, 5)
    m = m + m.T
    np.fill_diagonal(m, 0)
    tri = upper_triangle(m)
    assert tri.tolist() == [m[i, j] for i in range(5) for j in range(i + 1, 5)]  # row-major, like fc_features
    np.testing.assert_array_equal(square(tri, 5), m)
    assert upper_triangle(m, 3).tolist() == [m[0, 1], m[0, 2], m[1, 2]]  # padded parcels 3, 4 dropped
    with pytest.raises(ValueError, match="upper triangle of 4"):
        square(tri, 4)


def test_scan_means_across_batches_and_out_of_order():
    rng = np.random.default_rng(4)
    scans = np.array([3, 3, 0, 3, 7, 0, 7, 7, 7])
    values = rng.normal(size=(scans.size, 4))
    acc = ScanMeans()
    for part in np.array_split(np.arange(scans.size), 4):  # a scan's windows span batches
        acc.add(scans[part], values[part])
    seen, means = acc.means()
    assert seen.tolist() == [0, 3, 7]
    for s, mean in zip(seen, means):
        np.testing.assert_allclose(mean, values[scans == s].mean(0))
    with pytest.raises(ValueError, match="no window"):
        ScanMeans().means()


def test_probe_sees_planted_connectivity_that_the_mean_misses():
    """Class shifts the correlation of parcels 0 and 1 over time patches; every token keeps mean 0 and
    variance 1, so the mean readout holds nothing to find."""
    rng = np.random.default_rng(5)
    n_subjects, per, windows, parcels, patches, width = 30, 2, 2, 5, 8, 8
    label = np.repeat(rng.permutation(np.arange(n_subjects) % 2), per)  # one class per subject
    scans = np.repeat(np.arange(label.size), windows)
    tokens = rng.normal(size=(scans.size, parcels, patches, width))
    rho = np.where(label[scans] == 1, 0.8, 0.0)[:, None, None]
    tokens[:, 1] = rho * tokens[:, 0] + np.sqrt(1 - rho**2) * tokens[:, 1]
    every_parcel = np.ones((scans.size, parcels), bool)
    readout = upper_triangle(np.asarray(token_covariance(tokens.astype(np.float32), every_parcel)))
    tokcov, mean = ScanMeans(), ScanMeans()
    tokcov.add(scans, readout)
    mean.add(scans, tokens.mean((1, 2)))
    groups = [f"sub-{s}" for s in np.repeat(np.arange(n_subjects), per)]
    values = [str(v) for v in label]
    with threadpool_limits(1):
        by_tokcov = probe(tokcov.means()[1], values, groups, folds=5)
        by_mean = probe(mean.means()[1], values, groups, folds=5)
    assert by_tokcov["models"]["logistic"]["auroc"] > 0.9
    assert by_mean["models"]["logistic"]["auroc"] < 0.7
