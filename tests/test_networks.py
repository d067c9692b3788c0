"""Network identification: group FC against numpy, matching accuracy by hand, planted clusters recovered,
classification near 1 / near chance, the figure written atomically, and errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from brainjax.eval.networks import (
    agreement,
    ari_difference,
    classify_networks,
    cluster_affinity,
    cluster_features,
    group_fc,
    identify,
    matched_accuracy,
    save_network_figure,
)


def planted_features(seed: int = 0, sizes=(30, 30, 30, 30), dim: int = 10, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(0, 5, (len(sizes), dim))
    return centres[true] + rng.normal(0, noise, (true.size, dim)), true


def planted_affinity(seed: int = 0, blocks: int = 4, size: int = 25):
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(blocks), size)
    a = np.where(true[:, None] == true[None, :], 0.7, 0.05) + rng.uniform(-0.2, 0.2, (true.size,) * 2)
    return a, true  # deliberately asymmetric, with negative entries between blocks


def network_series(seed: int, true: np.ndarray, n_time: int = 150):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(true.max() + 1, n_time))
    return latent[true] + rng.normal(0, 1.0, (true.size, n_time))


# --------------------------------------------------------------------------------------------- group FC

def test_group_fc_matches_numpy():
    rng = np.random.default_rng(1)
    scans = [rng.normal(size=(7, 40)) for _ in range(3)]
    expected = np.zeros((7, 7))
    for s in scans:
        r = np.corrcoef(s)
        np.fill_diagonal(r, 0.0)
        expected += np.arctanh(r) / 3
    fc = group_fc(scans)
    assert fc.dtype == np.float64 and fc.shape == (7, 7)
    np.testing.assert_allclose(fc, expected, atol=1e-12)
    np.testing.assert_array_equal(fc, fc.T)
    np.testing.assert_array_equal(np.diag(fc), 0.0)


def test_group_fc_perfect_correlation_stays_finite():
    t = np.arange(20.0)
    fc = group_fc([np.stack([t, 2 * t + 1, np.sin(t)])])
    assert np.all(np.isfinite(fc)) and fc[0, 1] > 5


@pytest.mark.parametrize("scans, message", [
    ([], "at least one"),
    ([np.ones((3, 10))], "constant"),
    ([np.full((3, 10), np.nan)], "NaN"),
    ([np.zeros(10)], "2-D"),
    ([np.random.default_rng(0).normal(size=(3, 2))], "at least 3"),
    ([np.random.default_rng(0).normal(size=(3, 10)), np.random.default_rng(1).normal(size=(4, 10))], "parcels"),
])
def test_group_fc_rejects_bad_input(scans, message):
    with pytest.raises(ValueError, match=message):
        group_fc(scans)


# ------------------------------------------------------------------------------------------------ scores

def test_matched_accuracy_permuted_relabelling_is_perfect():
    true = np.repeat(np.arange(5), 4)
    perm = np.array([3, 0, 4, 1, 2])
    assert matched_accuracy(true, perm[true] + 10) == 1.0


def test_matched_accuracy_is_one_to_one_not_greedy():
    # contingency (networks x clusters) = [[3, 2], [2, 0]]: greedy takes the 3 and then 0 (3/7), a
    # majority vote maps both clusters to network 0 (5/7); the best one-to-one matching is 2 + 2 = 4/7.
    true = np.array([0, 0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0, 0])
    assert matched_accuracy(true, pred) == pytest.approx(4 / 7)


def test_matched_accuracy_more_clusters_than_networks():
    # network 0 split over clusters 0 and 1: only one of them can be matched
    assert matched_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])) == pytest.approx(3 / 4)
    # fewer clusters than networks: one network has no cluster
    assert matched_accuracy(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(4 / 6)


def test_unlabelled_parcels_are_not_scored():
    true = np.array([0, 0, 1, 1, -1, -1])
    for junk in ([0, 1], [1, 0], [7, 7]):
        pred = np.array([0, 0, 1, 1, *junk])
        assert matched_accuracy(true, pred) == 1.0
        assert agreement(true, pred)["n_parcels_scored"] == 4


def test_agreement_matches_sklearn_on_labelled_subset():
    rng = np.random.default_rng(2)
    true = rng.integers(-1, 4, 80)
    pred = rng.integers(0, 5, 80)
    keep = [i for i in range(80) if true[i] != -1]
    result = agreement(true, pred)
    assert result["ari"] == pytest.approx(adjusted_rand_score(true[keep], pred[keep]))
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(true[keep], pred[keep]))
    assert result["accuracy"] == pytest.approx(matched_accuracy(true, pred))
    assert result["n_networks"] == 4 and result["n_parcels_scored"] == len(keep)


@pytest.mark.parametrize("true, pred, message", [
    (np.array([0, 1]), np.array([0, 1, 1]), "length"),
    (np.array([-1, -1]), np.array([0, 1]), "no labelled"),
    (np.array([0.0, np.nan]), np.array([0, 1]), "integer"),
    (np.array([0, 0.5]), np.array([0, 1]), "integer"),
    (np.zeros((2, 2), int), np.zeros((2, 2), int), "1-D"),
])
def test_scores_reject_bad_labels(true, pred, message):
    with pytest.raises(ValueError, match=message):
        matched_accuracy(true, pred)


# -------------------------------------------------------------------------------------------- clustering

def test_cluster_features_recovers_planted_clusters_and_ignores_column_scale():
    x, true = planted_features()
    labels = cluster_features(x, 4, seed=3)
    assert labels.shape == (120,) and set(labels) == {0, 1, 2, 3}
    assert matched_accuracy(true, labels) == 1.0
    np.testing.assert_array_equal(cluster_features(x, 4, seed=3), labels)
    scaled = x * np.r_[1000.0, np.ones(9)]  # columns are standardised, so scale cannot matter
    assert matched_accuracy(true, cluster_features(scaled, 4, seed=3)) == 1.0


def test_cluster_affinity_recovers_noisy_blocks():
    a, true = planted_affinity()
    assert not np.allclose(a, a.T) and (a < 0).any()
    labels = cluster_affinity(a, 4, seed=0)
    assert matched_accuracy(true, labels) == 1.0
    np.testing.assert_array_equal(cluster_affinity(a, 4, seed=0), labels)
    # only the symmetrised, clipped matrix matters: transposing, pre-symmetrising or changing the negative
    # entries of the symmetrised matrix is a no-op
    sym = (a + a.T) / 2
    assert (sym < 0).any()
    for same in (a.T, sym, np.clip(sym, 0, None), np.where(sym < 0, -5.0, sym)):
        np.testing.assert_array_equal(cluster_affinity(same, 4, seed=0), labels)


@pytest.mark.parametrize("func, x, k, message", [
    (cluster_features, np.full((5, 2), np.nan), 2, "NaN"),
    (cluster_features, np.ones(5), 2, "2-D"),
    (cluster_features, np.ones((5, 2)), 6, "n_clusters"),
    (cluster_affinity, np.ones((5, 4)), 2, "square"),
    (cluster_affinity, np.where(np.eye(4), np.nan, 1.0), 2, "NaN"),
    (cluster_affinity, -np.ones((4, 4)), 2, "no positive"),
    (cluster_affinity, np.ones((4, 4)), 0, "n_clusters"),
])
def test_clustering_rejects_bad_input(func, x, k, message):
    with pytest.raises(ValueError, match=message):
        func(x, k)


# ---------------------------------------------------------------------------------------- classification

def test_classify_separable_features_near_perfect():
    x, true = planted_features(sizes=(20, 20, 20), dim=6, noise=1.0)
    result = classify_networks(x, true)
    assert result["accuracy"] >= 0.95 and result["balanced_accuracy"] >= 0.95
    assert result["chance"] == pytest.approx(1 / 3) and result["n_parcels"] == 60
    assert result["excluded_networks"] == []


def test_classify_random_features_near_chance():
    rng = np.random.default_rng(4)
    true = np.repeat(np.arange(4), 30)
    result = classify_networks(rng.normal(size=(120, 5)), true, seed=1)
    assert abs(result["accuracy"] - 0.25) < 0.15 and abs(result["balanced_accuracy"] - 0.25) < 0.15


def test_classify_excludes_tiny_networks_and_unlabelled():
    x, true = planted_features(sizes=(40, 20, 3, 10), dim=6)
    true = true.copy()
    true[:5] = -1  # 35 labelled parcels remain in network 0
    result = classify_networks(x, true, folds=5)
    assert result["excluded_networks"] == [2]
    assert result["n_parcels"] == 35 + 20 + 10
    assert result["chance"] == pytest.approx(35 / 65)
    assert classify_networks(x, true, folds=3)["excluded_networks"] == []


def test_classify_rejects_bad_input():
    x, true = planted_features(sizes=(10, 10))
    with pytest.raises(ValueError, match="parcels"):
        classify_networks(x[:-1], true)
    with pytest.raises(ValueError, match="at least 2 networks"):
        classify_networks(x, np.r_[np.zeros(19, int), 1])
    with pytest.raises(ValueError, match="folds"):
        classify_networks(x, true, folds=1)
    with pytest.raises(ValueError, match="NaN"):
        classify_networks(np.where(x > 2, np.nan, x), true)


# ------------------------------------------------------------------------------------ ARI bootstrap

def test_ari_difference_by_parcel_bootstrap():
    rng = np.random.default_rng(6)
    true = np.repeat(np.arange(4), 15)
    true[[3, 40]] = -1  # unlabelled: neither scored nor resampled
    good = np.where(rng.random(60) < 0.9, np.maximum(true, 0), rng.integers(0, 4, 60))  # ~90 % right
    bad = rng.integers(0, 4, 60)
    out = ari_difference(true, good, bad, n_boot=300, seed=1)
    keep = true >= 0
    want = adjusted_rand_score(true[keep], good[keep]) - adjusted_rand_score(true[keep], bad[keep])
    assert out["diff"] == pytest.approx(want) and out["n_units"] == 58
    assert out["low"] <= out["diff"] <= out["high"] and out["low"] > 0 and out["verdict"] == "beats"
    assert ari_difference(true, bad, good, n_boot=300, seed=1)["verdict"] == "loses"
    same = ari_difference(true, good, good, n_boot=100)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and same["verdict"] == "ties"
    # relabelling clusters changes nothing: only the partition is scored
    assert ari_difference(true, (good + 1) % 4, bad, n_boot=300, seed=1) == out


def test_ari_difference_interval_covers_the_spread_of_resampled_parcels():
    """Two clusterings equally good on different networks: their gap is zero on average, and parcel
    resampling must say "ties" rather than pick a side."""
    true = np.repeat(np.arange(4), 20)
    first = np.where(true < 2, true, 2)  # merges networks 2 and 3
    second = np.where(true >= 2, true, 0)  # merges networks 0 and 1
    out = ari_difference(true, first, second, n_boot=400, seed=2)
    assert out["diff"] == pytest.approx(0.0, abs=1e-12) and out["low"] < 0 < out["high"]
    assert out["verdict"] == "ties"


# ------------------------------------------------------------------------------------- end to end, figure

def test_identify_fc_baseline_recovers_networks():
    true = np.repeat(np.arange(3), 20)
    true[[0, 25, 50]] = -1
    names = ["visual", "motor", "default"]
    fc = group_fc([network_series(s, np.where(true < 0, 0, true)) for s in range(3)])
    out = identify(fc, true, names, kind="affinity")
    assert out["clustering"]["accuracy"] == 1.0 and out["clustering"]["n_parcels_scored"] == 57
    assert out["classification"]["accuracy"] >= 0.95 and out["classification"]["excluded_names"] == []
    assert len(out["assignment"]) == 60 and len(set(out["assignment"])) == 3

    x, true = planted_features(sizes=(30, 30, 4), dim=8)
    out = identify(x, true, ["a", "b", "tiny"], kind="features")
    assert out["clustering"]["n_networks"] == 3
    assert out["classification"]["excluded_names"] == ["tiny"]
    with pytest.raises(ValueError, match="kind"):
        identify(x, true, ["a", "b", "tiny"], kind="attention")
    with pytest.raises(ValueError, match="one name per network"):
        identify(x, true, ["a", "b"], kind="features")


def test_save_network_figure_writes_png_atomically(tmp_path):
    rng = np.random.default_rng(5)
    coords = rng.uniform(-60, 60, (30, 3))
    labels = np.repeat([0, 1, 2, -1, 12], 6)
    names = [f"net{i}" for i in range(13)]
    path = tmp_path / "networks.png"
    save_network_figure(path, coords, labels, names, "planted")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["networks.png"]
    with pytest.raises(ValueError, match="one name per network"):
        save_network_figure(path, coords, labels, names[:5], "bad")
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        save_network_figure(path, coords[:, :2], labels, names, "bad")
