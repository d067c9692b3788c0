"""The synthetic generator: determinism, layout, phenotype effects, network ground truth, spectra, caching, CLI."""

import csv
import dataclasses
import importlib.resources
import json
import threading

import numpy as np
import pytest
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeCV
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import Dataset
from brainjax.data.synthetic import (
    GENERATOR_VERSION,
    SynthConfig,
    config_hash,
    default_dataset,
    double_gamma_hrf,
    explained_variance_fraction,
    ground_truth_networks,
    iter_scans,
    load_cohort,
    simulate_subject,
    synthesize,
)
from brainjax.data.synthetic_model import _run_var1, network_roles


def dosenbach() -> Atlas:
    """Dosenbach 160 parsed here from nilearn's CSV, independent of brainjax's atlas loaders."""
    path = importlib.resources.files("nilearn") / "datasets/data/dosenbach_2010.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return Atlas("dosenbach160", "coordinates", tuple(r["name"] + r["number"] for r in rows),
                 np.array([[float(r[c]) for c in "xyz"] for r in rows]), tuple(r["network"] for r in rows))


ATLAS = dosenbach()
SMALL = SynthConfig(subjects=6, scans_per_subject=2, timepoints=40, tr=2.0, atlas="dosenbach160", sites=2, seed=5)


def _network_pair_fc(data: np.ndarray, labels: np.ndarray, n_net: int) -> np.ndarray:
    """Mean Fisher-z FC within and between ground-truth networks (upper triangle) for one [P, T] scan."""
    z = np.arctanh(np.clip(np.corrcoef(data), -0.999, 0.999))
    np.fill_diagonal(z, np.nan)
    pairs = [np.nanmean(z[np.ix_(labels == i, labels == j)]) for i in range(n_net) for j in range(i, n_net)]
    return np.array(pairs)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = synthesize(tmp_path / "a", SMALL, atlas=ATLAS)
    b = synthesize(tmp_path / "b", SMALL, atlas=ATLAS)
    c = synthesize(tmp_path / "c", dataclasses.replace(SMALL, seed=6), atlas=ATLAS)
    for shard in sorted((tmp_path / "a" / "shards").iterdir()):
        assert shard.read_bytes() == (tmp_path / "b" / "shards" / shard.name).read_bytes()
    assert (tmp_path / "a" / "manifest.tsv").read_text() == (tmp_path / "b" / "manifest.tsv").read_text()
    assert not np.allclose(a.read(0), c.read(0))
    np.testing.assert_array_equal(a.read(3), b.read(3))


def test_layout_manifest_and_phenotypes_constant_within_subject(tmp_path):
    cfg = dataclasses.replace(SMALL, subjects=12, scans_per_subject=3, timepoints=24, sites=3)
    ds = synthesize(tmp_path / "d", cfg, fractions=(0.5, 0.25, 0.25), atlas=ATLAS)
    assert len(ds) == 36
    assert {"age", "sex", "diagnosis"} <= set(ds.manifest[0])
    by_subject = {}
    for i, row in enumerate(ds.manifest):
        assert ds.read(i).shape == (160, 24) and ds.read(i).dtype == np.float32
        assert row["tr"] == 2.0 and row["length"] == 24 and row["site"].startswith("site-")
        key = (row["age"], row["sex"], row["diagnosis"], row["site"], row["split"])
        by_subject.setdefault(row["subject"], set()).add(key)
    assert len(by_subject) == 12 and all(len(v) == 1 for v in by_subject.values())
    ages = [float(next(iter(v))[0]) for v in by_subject.values()]
    assert all(8 <= a <= 80 for a in ages)
    assert {next(iter(v))[1] for v in by_subject.values()} <= {"0", "1"}
    assert [len({r["subject"] for r in ds.manifest if r["split"] == s}) for s in ("train", "val", "test")] == [6, 3, 3]
    saved = json.loads((tmp_path / "d" / "atlas.json").read_text())
    assert saved["networks"] == list(ATLAS.networks)  # real labels are kept
    assert saved["extra"]["ground_truth_networks"] == list(ATLAS.networks)
    with pytest.raises(FileExistsError, match="already holds"):
        synthesize(tmp_path / "d", cfg, atlas=ATLAS)


def test_atlas_without_networks_gets_spatial_groups():
    xyz = ATLAS.xyz
    bare = Atlas("bare", "coordinates", ATLAS.names, xyz, None)
    labels = np.array(ground_truth_networks(bare))
    assert len(set(labels)) == 8  # 160 / 20
    # groups are spatially compact: each parcel is nearer its own group's centroid than the mean distance
    centroids = {g: xyz[labels == g].mean(0) for g in set(labels)}
    own = np.array([np.linalg.norm(x - centroids[g]) for x, g in zip(xyz, labels)])
    other = np.array([np.mean([np.linalg.norm(x - c) for c in centroids.values()]) for x in xyz])
    assert np.mean(own < other) > 0.95
    partly = Atlas("partly", "coordinates", ATLAS.names, xyz, ("",) * 20 + ATLAS.networks[20:])
    filled = ground_truth_networks(partly)
    assert filled[20:] == ATLAS.networks[20:] and all(n.startswith("synthetic") for n in filled[:20])
    # Seitzman spells "no network" as "unassigned": same treatment as an empty label
    unassigned = Atlas("u", "coordinates", ATLAS.names, xyz, ("unassigned",) * 20 + ATLAS.networks[20:])
    assert ground_truth_networks(unassigned) == filled


def test_phenotype_networks_are_found_by_name_and_never_coincide():
    names = sorted(set(ATLAS.networks))
    assert [names[i] for i in network_roles(names)] == ["default", "fronto-parietal", "occipital", "sensorimotor"]
    schaefer = ["Cont", "Default", "DorsAttn", "Limbic", "SalVentAttn", "SomMot", "Vis"]
    assert [schaefer[i] for i in network_roles(schaefer)] == ["Default", "Cont", "Vis", "SomMot"]
    for names in (["a", "b"], ["x", "default", "y"], ["visual", "default", "b", "c"]):
        dmn, fpn, vis, smn = network_roles(names)
        assert dmn != fpn and vis != smn


def test_blocked_var_recursion_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    trans = 0.9 * np.eye(3) + 0.05 * rng.normal(size=(3, 3))
    innov = rng.normal(size=(101, 2, 3))  # 101 is not a multiple of the block length
    expected, state = np.zeros_like(innov), np.zeros((2, 3))
    for t in range(len(innov)):
        state = state @ trans.T + innov[t]
        expected[t] = state
    np.testing.assert_allclose(_run_var1(trans, innov, block=8), expected, atol=1e-10)


@pytest.fixture(scope="module")
def cohort_scans():
    cfg = SynthConfig(subjects=60, scans_per_subject=2, timepoints=150, tr=2.0, atlas="dosenbach160", sites=2,
                      seed=11)
    cohort = load_cohort(cfg, ATLAS)
    return cohort, list(iter_scans(cohort))


def test_phenotypes_are_decodable_from_fc_by_an_independent_probe(cohort_scans):
    cohort, scans = cohort_scans
    labels, names = ATLAS.network_ids()
    x = np.array([_network_pair_fc(d, labels, len(names)) for _, _, d in scans])
    groups = np.array([s for s, _, _ in scans])  # folds split subjects, never a subject's scans
    age = np.array([cohort.subjects[s].age for s, _, _ in scans])
    sex = np.array([cohort.subjects[s].sex for s, _, _ in scans])
    diagnosis = np.array([cohort.subjects[s].diagnosis for s, _, _ in scans])
    assert 0.15 < diagnosis.mean() < 0.45 and 0.25 < sex.mean() < 0.75
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
    r2 = cross_val_score(ridge, x, age, groups=groups, cv=GroupKFold(5), scoring="r2").mean()
    assert r2 > 0.4
    logistic = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    for target in (sex, diagnosis):
        auc = cross_val_score(logistic, x, target, groups=groups, scoring="roc_auc",
                              cv=StratifiedGroupKFold(5, shuffle=True, random_state=0)).mean()
        assert auc > 0.7
    # Sign of the documented effects: age lowers within-DMN FC, diagnosis lowers DMN-FP FC.
    dmn, fpn = names.index("default"), names.index("fronto-parietal")
    pair_index = {(i, j): k for k, (i, j) in enumerate((i, j) for i in range(len(names))
                                                       for j in range(i, len(names)))}
    assert stats.pearsonr(age, x[:, pair_index[(dmn, dmn)]])[0] < -0.3
    dmn_fp = x[:, pair_index[tuple(sorted((dmn, fpn)))]]
    assert dmn_fp[diagnosis == 1].mean() < dmn_fp[diagnosis == 0].mean() - 0.05


def test_networks_are_recoverable_from_fc_clustering(cohort_scans):
    _, scans = cohort_scans
    mean_fc = np.mean([np.corrcoef(d) for _, _, d in scans[:20]], axis=0)
    labels, names = ATLAS.network_ids()
    found = KMeans(len(names), n_init=10, random_state=0).fit_predict(mean_fc)
    assert adjusted_rand_score(labels, found) > 0.3


def test_hrf_matches_scipy_and_signal_is_low_frequency(cohort_scans):
    t = np.arange(0, 32, 0.1)
    reference = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    np.testing.assert_allclose(double_gamma_hrf(t), reference, atol=1e-10)
    assert abs(t[np.argmax(double_gamma_hrf(t, 1.2))] - 6.0) < 0.11  # stretched peak: 5 s * 1.2
    _, scans = cohort_scans
    data = np.stack([d for _, _, d in scans[:10]])
    spectrum = np.abs(np.fft.rfft(data - data.mean(-1, keepdims=True))) ** 2
    freqs = np.fft.rfftfreq(data.shape[-1], 2.0)
    # white noise alone would put 60 % of its power below 0.15 Hz (Nyquist 0.25 Hz)
    assert spectrum[..., freqs < 0.15].sum() / spectrum.sum() > 0.8


def test_documented_variance_fraction_matches_regression_on_latents():
    cfg = SynthConfig(subjects=8, scans_per_subject=1, timepoints=300, atlas="dosenbach160", sites=2, seed=3)
    cohort = load_cohort(cfg, ATLAS)
    documented = explained_variance_fraction(cfg, ATLAS)
    assert abs(documented["structured"] + documented["noise"] - 1) < 1e-9
    explained = total = 0.0
    for s, subject in enumerate(cohort.subjects):
        comps = simulate_subject(cfg, cohort.template, s, subject, cohort.sites[subject.site])
        data = sum(comps[k] for k in ("network", "local", "white", "pink", "drift"))[0]
        latent = comps["latent"][0].T  # [T, N]
        fitted = LinearRegression().fit(latent, data.T).predict(latent)
        explained += ((fitted - data.T.mean(0)) ** 2).sum()
        total += ((data.T - data.T.mean(0)) ** 2).sum()
    # OLS on N latents also fits ~N/T of the noise by chance, hence the tolerance
    assert abs(explained / total - documented["network"]) < 0.06


@pytest.fixture
def dosenbach_by_name(monkeypatch):
    """Serve ATLAS for any atlas name, so these tests do not depend on the atlas loaders."""
    import brainjax.data.synthetic as synthetic

    original = synthetic.load_cohort
    monkeypatch.setattr(synthetic, "load_cohort", lambda cfg, atlas=None: original(cfg, atlas or ATLAS))


def test_default_dataset_is_cached_and_survives_a_race(tmp_path, dosenbach_by_name):
    cfg = dataclasses.replace(SMALL, timepoints=20)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(default_dataset(tmp_path, cfg))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    first = (paths[0] / "manifest.tsv").stat().st_mtime_ns
    assert default_dataset(tmp_path, cfg) == paths[0]
    assert (paths[0] / "manifest.tsv").stat().st_mtime_ns == first
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no temporary leftovers
    assert len(Dataset(paths[0])) == 12
    other = default_dataset(tmp_path, dataclasses.replace(cfg, seed=9))
    assert other != paths[0] and len(Dataset(other)) == 12


def test_default_dataset_cache_location_and_broken_entries(tmp_path, monkeypatch, dosenbach_by_name):
    cfg = dataclasses.replace(SMALL, subjects=3, scans_per_subject=1, timepoints=20)
    monkeypatch.setenv("BRAINJAX_CACHE", str(tmp_path / "env"))
    path = default_dataset(cfg=cfg)
    assert path.parent == tmp_path / "env" and path.name.startswith(f"synthetic-v{GENERATOR_VERSION}-")
    assert path.name.endswith(config_hash(cfg)) and config_hash(cfg) != config_hash(dataclasses.replace(cfg, seed=1))
    broken = tmp_path / "broken" / path.name
    broken.mkdir(parents=True)  # e.g. a user deleted files by hand: refuse rather than guess
    with pytest.raises(FileExistsError, match="not a finished dataset"):
        default_dataset(tmp_path / "broken", cfg)


def test_bad_split_fractions_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        synthesize(tmp_path / "bad", SMALL, fractions=(0.5, 0.5, 0.5), atlas=ATLAS)
    assert not (tmp_path / "bad").exists()


def test_cli_writes_a_dataset(tmp_path, capsys, dosenbach_by_name):
    from brainjax.cli import main

    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--subjects", "5", "--timepoints", "20", "--atlas", "dosenbach160",
                 "--split-fractions", "0.6,0.2,0.2", "--seed", "2"]) == 0
    ds = Dataset(out)
    assert len(ds) == 10 and ds.atlas.n_parcels == 160
    assert [len({r["subject"] for r in ds.manifest if r["split"] == s}) for s in ("train", "val", "test")] == [3, 1, 1]
    assert "wrote 10 scans" in capsys.readouterr().out
    for bad in ("0.5,0.5", "0.5,0.3,0.3"):
        with pytest.raises(SystemExit):
            main(["synth", "--out", str(tmp_path / "x"), "--split-fractions", bad])
    assert main(["synth", "--out", str(out), "--subjects", "5", "--timepoints", "20", "--atlas", "dosenbach160"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_real_atlas_loader_is_used_by_name(tmp_path):
    from brainjax.data.atlas import load_atlas

    cfg = SynthConfig(subjects=3, scans_per_subject=1, timepoints=20, atlas="seitzman300", sites=1)
    ds = synthesize(tmp_path / "s", cfg)
    atlas = load_atlas("seitzman300").atlas
    assert ds.atlas.n_parcels == atlas.n_parcels == 300
    truth = ds.atlas.extra["ground_truth_networks"]
    assert len(set(truth)) == 13 + 2  # 13 named networks + 15 unassigned parcels in two spatial groups
    assert all(t == n for t, n in zip(truth, atlas.networks) if n and n != "unassigned")


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="subjects"):
        SynthConfig(subjects=0)
    with pytest.raises(ValueError, match="timepoints"):
        SynthConfig(timepoints=4)
    with pytest.raises(ValueError, match="diagnosis_rate"):
        SynthConfig(diagnosis_rate=1.5)
    with pytest.raises(ValueError, match="at least two networks"):
        synthesize("/nonexistent-never-written", SMALL,
                   atlas=Atlas("one", "coordinates", ("a", "b"), np.zeros((2, 3)), ("v", "v")))
