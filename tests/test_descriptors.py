"""Imaging descriptors: every feature family checked against an independent numpy/scipy/networkx computation."""

import json

import networkx as nx
import numpy as np
import pytest
from scipy.sparse.csgraph import shortest_path

from brainjax.data.atlas_core import Atlas
from brainjax.data.descriptors import (
    DescriptorSettings,
    GradientReference,
    cohort_stats,
    describe_dataset,
    fit_gradient_reference,
    scan_features,
    threshold_graph,
    weighted_global_efficiency,
    zscores,
)
from brainjax.data.synthetic import SynthConfig, synthesize

SETTINGS = DescriptorSettings()


def _atlas(networks):
    p = len(networks)
    return Atlas(name="toy", kind="coordinates", names=tuple(f"p{i}" for i in range(p)), xyz=np.zeros((p, 3)),
                 networks=tuple(networks))


def _blocks(labels, t=200, seed=0, strength=3.0):
    """Series [P, T] whose parcels share one signal per label plus a weak global signal and noise."""
    rng = np.random.default_rng(seed)
    names = sorted(set(labels))
    signals = {n: rng.normal(size=t) for n in names}
    common = rng.normal(size=t)
    return np.stack([strength * signals[n] + common + rng.normal(size=t) for n in labels])


def _features(x, atlas, tr=2.0, settings=SETTINGS):
    return scan_features(x, tr, atlas, fit_gradient_reference([x], settings), settings)


def test_fc_within_and_between_match_numpy():
    labels = ["vis"] * 8 + ["dmn"] * 8 + ["sal"] * 5 + ["solo"] + [""] * 2
    x = _blocks(labels, strength=1.0)
    feats = _features(x, _atlas(labels))
    r = np.corrcoef(x)
    np.fill_diagonal(r, 0.0)  # excluded below; keeps arctanh finite
    z = np.arctanh(r)
    lab = np.array(labels)
    off = ~np.eye(len(labels), dtype=bool)
    for net in ("dmn", "sal", "vis"):
        mask = np.outer(lab == net, lab == net) & off
        assert feats[f"fc_within.{net}"] == pytest.approx(z[mask].mean(), rel=1e-9)
    assert "fc_within.solo" not in feats and not any(k.endswith(".") for k in feats)
    for a, b in [("dmn", "sal"), ("dmn", "solo"), ("sal", "vis"), ("solo", "vis")]:
        assert feats[f"fc_between.{a}.{b}"] == pytest.approx(z[np.outer(lab == a, lab == b)].mean(), rel=1e-9)
    assert "fc_between.vis.dmn" not in feats  # pairs are named in alphabetical order


def test_threshold_keeps_exact_count_and_breaks_ties_by_pair_order():
    r = np.corrcoef(np.random.default_rng(3).normal(size=(25, 40)))
    graph = threshold_graph(r, 0.1)
    rows, cols = np.triu_indices(25, k=1)
    keep = round(0.1 * rows.size)
    cut = np.sort(np.abs(r[rows, cols]))[::-1][keep - 1]
    expected = {(i, j) for i, j in zip(rows, cols) if abs(r[i, j]) >= cut}
    assert graph.number_of_nodes() == 25 and graph.number_of_edges() == keep == 30
    assert {tuple(sorted(e)) for e in graph.edges} == expected
    assert all(d["weight"] == pytest.approx(abs(r[i, j])) for i, j, d in graph.edges(data=True))
    tied = np.full((12, 12), -0.5)
    rows, cols = np.triu_indices(12, k=1)
    tied[rows[::3], cols[::3]] = tied[cols[::3], rows[::3]] = 0.7  # 22 pairs tie at 0.7, 44 at 0.5
    kept = sorted(tuple(sorted(e)) for e in threshold_graph(tied, 12 / 66).edges)
    assert kept == sorted(zip(rows[::3][:12].tolist(), cols[::3][:12].tolist()))  # earliest tied pairs win
    with pytest.raises(ValueError, match="keeps no edge"):
        threshold_graph(tied, 0.005)  # round(0.33) = 0 of 66 pairs


def test_weighted_efficiency_by_hand_and_unweighted_case():
    graph = nx.Graph()
    graph.add_nodes_from(range(4))  # node 3 is isolated: its pairs add 0
    graph.add_weighted_edges_from([(0, 1, 0.5), (1, 2, 0.25), (0, 2, 0.1)])
    # lengths 1/w: d01 = 2, d12 = 4, d02 = min(10, 2 + 4) = 6; 12 ordered pairs
    assert weighted_global_efficiency(graph) == pytest.approx(2 * (1 / 2 + 1 / 4 + 1 / 6) / 12)
    unit = nx.gnm_random_graph(15, 25, seed=1)
    nx.set_edge_attributes(unit, 1.0, "weight")
    assert weighted_global_efficiency(unit) == pytest.approx(nx.global_efficiency(unit))


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_graph_metrics_match_independent_computation():
    labels = [n for n in "abcd" for _ in range(10)]
    x = _blocks(labels, seed=5)
    pairs = 40 * 39 // 2
    settings = DescriptorSettings(density=180 / pairs)  # exactly the 4 * 45 within-block pairs
    feats = _features(x, _atlas(labels), settings=settings)
    r = np.corrcoef(x)
    w = np.abs(r)
    np.fill_diagonal(w, 0)
    w[w < np.sort(w[np.triu_indices(40, 1)])[::-1][179]] = 0
    lab = np.array(labels)
    assert np.array_equal(w > 0, np.equal.outer(lab, lab) & ~np.eye(40, dtype=bool))  # four cliques
    graph = nx.from_numpy_array(w)
    blocks = [set(np.flatnonzero(lab == n)) for n in "abcd"]
    degree = w.sum(axis=1)
    hand_q = sum(w[np.ix_(list(b), list(b))].sum() / w.sum() - (degree[list(b)].sum() / w.sum()) ** 2 for b in blocks)
    assert feats["modularity"] == pytest.approx(nx.community.modularity(graph, blocks, weight="weight"))
    assert feats["modularity"] == pytest.approx(hand_q)
    assert feats["clustering"] == pytest.approx(nx.average_clustering(graph, weight="weight"))
    dist = shortest_path(np.where(w > 0, 1 / np.where(w > 0, w, 1), 0), directed=False)
    off = ~np.eye(40, dtype=bool)
    assert feats["global_efficiency"] == pytest.approx(np.mean(1 / dist[off]))
    for n in "abcd":
        assert feats[f"strength.{n}"] == pytest.approx(degree[lab == n].mean())


def test_spectral_features_on_sinusoids():
    p, t, tr = 20, 200, 2.0
    time = np.arange(t) * tr
    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, (p, 1))
    wave = lambda amp, k: amp * np.sin(2 * np.pi * k / (t * tr) * time + phase * (1 + k % 3))
    atlas = _atlas(["a"] * 10 + ["b"] * 10)
    # bin k sits at k / 400 Hz: k = 12 (0.03 Hz) is in 0.01-0.08 Hz (bins 4..32, 29 bins), k = 60 is above it
    feats = _features(wave(2.0, 12) + wave(0.5, 60), atlas, tr)
    for n in "ab":
        # boxcar density periodogram of A sin at a bin: A^2 * T * TR / 2 in that bin, 0 elsewhere
        assert feats[f"alff.{n}"] == pytest.approx(np.sqrt(2.0**2 * t * tr / 2) / 29, rel=1e-9)
        assert feats[f"falff.{n}"] == pytest.approx(2.0 / 2.5, rel=1e-9)
        assert feats[f"band_ratio.{n}"] == pytest.approx(2.0**2 / 0.5**2, rel=1e-9)
    high = _features(wave(0.2, 12) + wave(2.0, 60), atlas, tr)
    assert high["band_ratio.a"] == pytest.approx(0.01, rel=1e-9) and high["falff.a"] < 0.1


def test_autocorrelation_and_empty_bands():
    rng = np.random.default_rng(2)
    x = np.cumsum(rng.normal(size=(20, 60)), axis=1) * 0.3 + rng.normal(size=(20, 60))
    labels = ["a"] * 7 + ["b"] * 13
    feats = _features(x, _atlas(labels))
    lag1 = np.array([np.corrcoef(row[:-1], row[1:])[0, 1] for row in x])
    assert feats["autocorr1.a"] == pytest.approx(lag1[:7].mean()) and feats["autocorr1.b"] == pytest.approx(
        lag1[7:].mean())
    nyquist_below_band_top = _features(x[:, :20], _atlas(labels), tr=10.0)  # freqs 0.005..0.05 Hz
    assert np.isnan(nyquist_below_band_top["band_ratio.a"]) and np.isfinite(nyquist_below_band_top["alff.a"])
    short = _features(x[:, :4], _atlas(labels), tr=2.0)  # freqs 0, 0.125, 0.25 Hz: no bin in 0.01-0.08
    assert np.isnan(short["alff.a"]) and np.isnan(short["falff.b"])


def test_outlier_fraction_counts_both_jumps_of_each_spike():
    rng = np.random.default_rng(4)
    t = 80
    # all parcels follow one course whose |increments| are uniform in [1, 2], so the scan's DVARS (after
    # z-scoring) is |increment| / std: median 1.5, MAD 0.25 -> limit 2.61 > 2, nothing flagged
    course = np.cumsum(rng.choice([-1, 1], t) * rng.uniform(1, 2, t))
    x = course + 0.01 * rng.normal(size=(20, t))
    atlas = _atlas(["a"] * 20)
    assert _features(x, atlas)["outlier_fraction"] == 0
    x[:, [20, 45, 70]] += 25  # each spike makes the jump into and out of it (two TRs) exceed the limit
    assert _features(x, atlas)["outlier_fraction"] == pytest.approx(6 / t)


def test_gradients_reference_alignment_determinism_and_json():
    labels = ["a"] * 12 + ["b"] * 14 + ["c"] * 14
    x = _blocks(labels, seed=7, strength=1.0)
    atlas = _atlas(labels)
    ref = fit_gradient_reference([x], SETTINGS)
    feats = scan_features(x, 2.0, atlas, ref, SETTINGS)
    lab = np.array(labels)
    for k in (1, 2):
        g = ref.gradients[:, k - 1]
        assert feats[f"gradient{k}_range"] == pytest.approx(np.ptp(g), rel=1e-6)
        for n in "abc":
            assert feats[f"gradient{k}_mean.{n}"] == pytest.approx(g[lab == n].mean(), abs=1e-6)
    again = GradientReference.from_json(json.loads(json.dumps(ref.to_json())))
    assert np.array_equal(again.gradients, ref.gradients) and again.n_scans == 1
    assert scan_features(x, 2.0, atlas, again, SETTINGS) == feats
    other = _blocks(labels, seed=8, strength=1.0)
    pair = fit_gradient_reference([x, other], SETTINGS)
    assert np.array_equal(pair.gradients, fit_gradient_reference([x, other], SETTINGS).gradients)
    assert pair.n_scans == 2 and not np.allclose(pair.gradients, ref.gradients)
    with pytest.raises(ValueError, match="gradient reference"):
        GradientReference.from_json({"gradients": [[0.0]], "lambdas": [1.0], "n_scans": 1})


def test_cohort_stats_and_zscores_against_numpy():
    rows = [{"a": 1.0, "b": 5.0, "c": 2.0}, {"a": 3.0, "b": np.nan, "c": 2.0}, {"a": 8.0, "c": 2.0}]
    stats = cohort_stats(rows)
    a = np.array([1.0, 3.0, 8.0])
    assert stats["a"] == pytest.approx((a.mean(), a.std()))
    assert stats["b"] == (5.0, 0.0) and stats["c"] == (2.0, 0.0)
    z = zscores({"a": 4.0, "b": 5.0, "c": 2.0, "d": 1.0}, stats)
    assert z["a"] == pytest.approx((4.0 - a.mean()) / a.std())
    assert np.isnan(z["b"]) and np.isnan(z["c"]) and np.isnan(z["d"])
    assert np.isnan(zscores({"a": np.nan}, stats)["a"])
    assert cohort_stats([{"e": np.nan}])["e"] != cohort_stats([{"e": np.nan}])["e"]  # (nan, nan)


def test_describe_dataset_on_synthetic_cohort(tmp_path):
    cfg = SynthConfig(subjects=12, scans_per_subject=1, timepoints=120, atlas="dosenbach160", sites=2, seed=1)
    ds = synthesize(tmp_path / "ds", cfg, (0.6, 0.2, 0.2))
    rows, cohort = describe_dataset(ds, SETTINGS)
    train = ds.indices("train")
    assert [r["scan_id"] for r in rows] == [m["scan_id"] for m in ds.manifest]
    assert [r["split"] for r in rows] == [m["split"] for m in ds.manifest]
    assert cohort["n_train"] == len(train) == cohort["reference"]["n_scans"]
    keys = list(rows[0]["features"])
    assert all(list(r["features"]) == keys == list(r["z"]) for r in rows)
    _, names = ds.atlas.network_ids()
    assert {f"alff.{n}" for n in names} <= set(keys) and "outlier_fraction" in keys
    values = np.array([[rows[i]["features"][k] for k in keys] for i in train])
    zs = np.array([[rows[i]["z"][k] for k in keys] for i in train])
    varying = np.ptp(values, axis=0) > 0
    assert varying.sum() > 0.9 * len(keys)
    assert np.allclose(zs[:, varying].mean(axis=0), 0, atol=1e-9)
    assert np.allclose(zs[:, varying].std(axis=0), 1, atol=1e-9)
    assert np.allclose([cohort["stats"][k][0] for k in keys], values.mean(axis=0))
    json.dumps(cohort)  # JSON-able


def test_bad_input_raises():
    labels = ["a"] * 20
    atlas = _atlas(labels)
    x = _blocks(labels, t=30)
    ref = fit_gradient_reference([x], SETTINGS)
    cases = {"NaN": x.copy(), "constant": x.copy(), "parcels, expected": x[:19], "time points": x[:, :2],
             "at least 20": x[:19]}
    cases["NaN"][3, 4] = np.nan
    cases["constant"][5] = 1.0
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            if message == "at least 20":
                fit_gradient_reference([bad], SETTINGS)
            else:
                scan_features(bad, 2.0, atlas, ref, SETTINGS)
    with pytest.raises(ValueError, match="TR"):
        scan_features(x, 0.0, atlas, ref, SETTINGS)
    with pytest.raises(ValueError, match="no scans"):
        fit_gradient_reference([], SETTINGS)
    with pytest.raises(ValueError, match="density"):
        DescriptorSettings(density=0.0)
