"""Cleaning, resampling, QC checks, confound tables and scan naming for ``brainjax prepare``."""

import json

import numpy as np
import pytest
from scipy.signal import welch

from brainjax.data import clean as qc
from brainjax.data.clean import CleanOptions, ScanError, clean_series, resample_tr
from brainjax.data.readers import DEFAULT_CONFOUNDS, read_table, select_confounds, sidecar_tr
from brainjax.data.scans import DiscoveryError, bids_entities, discover_scans, find_confounds, hemisphere, scan_identity

RAW = CleanOptions(detrend=False, high_pass=None, low_pass=None, standardize="none")


def _design_residual(y, regressors):
    """Reference confound regression: residual of y on [1, t, regressors] by least squares."""
    t = np.arange(y.shape[0])
    design = np.column_stack([np.ones_like(t), t, regressors])
    return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]


def test_detrend_and_confound_regression_match_least_squares():
    rng = np.random.default_rng(0)
    confounds = rng.normal(size=(120, 4))
    y = rng.normal(size=(120, 5)) + confounds @ rng.normal(size=(4, 5)) + 0.05 * np.arange(120)[:, None] + 100
    out = clean_series(y, 2.0, CleanOptions(high_pass=None, standardize="none"), confounds)
    np.testing.assert_allclose(out, _design_residual(y, confounds), atol=1e-9)
    # a constant and a linear confound column (brainspace ships both) must not change the result
    padded = np.column_stack([confounds, np.ones(120), np.linspace(-1, 1, 120)])
    out_padded = clean_series(y, 2.0, CleanOptions(high_pass=None, standardize="none"), padded)
    np.testing.assert_allclose(out_padded, out, atol=1e-9)
    np.testing.assert_array_equal(clean_series(y, 2.0, RAW), y)


def test_high_and_low_pass_keep_the_band():
    tr, t = 0.8, np.arange(600) * 0.8
    slow, mid, fast = (np.sin(2 * np.pi * f * t) for f in (0.004, 0.05, 0.3))
    y = np.column_stack([slow + mid + fast])
    out = clean_series(y, tr, CleanOptions(high_pass=0.01, low_pass=0.1, standardize="none"))[:, 0]
    freqs, power = welch(out, fs=1 / tr, nperseg=256)
    _, power_mid = welch(mid, fs=1 / tr, nperseg=256)
    at = lambda f: int(np.argmin(np.abs(freqs - f)))
    assert power[at(0.05)] == pytest.approx(power_mid[at(0.05)], rel=0.1)
    assert power[at(0.3)] < 1e-3 * power_mid[at(0.05)]
    # the slow wave is removed: what is left correlates with the mid-band wave only
    assert np.corrcoef(out[50:-50], mid[50:-50])[0, 1] > 0.98
    with pytest.raises(ScanError, match="Nyquist"):
        clean_series(y, 4.0, CleanOptions(low_pass=0.2))


def test_standardize_zscore_and_psc():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 3)) * [1, 5, 20] + [100, 500, 1000]
    z = clean_series(y, 1.0, CleanOptions(detrend=False, high_pass=None, standardize="zscore"))
    np.testing.assert_allclose(z, (y - y.mean(0)) / y.std(0, ddof=1), atol=1e-9)
    psc = clean_series(y, 1.0, CleanOptions(detrend=False, high_pass=None, standardize="psc"))
    np.testing.assert_allclose(psc, (y - y.mean(0)) / y.mean(0) * 100, atol=1e-9)
    with pytest.raises(ScanError, match="psc needs a positive mean"):
        clean_series(y - y.mean(0), 1.0, CleanOptions(standardize="psc"))
    with pytest.raises(ValueError, match="high-pass 0.1 Hz must be below low-pass"):
        CleanOptions(high_pass=0.1, low_pass=0.05)


@pytest.mark.parametrize("tr, target", [(2.0, 1.0), (0.72, 1.44), (1.35, 0.8)])
def test_resample_tr_follows_the_continuous_signal(tr, target):
    def wave(times):  # content well below both Nyquist frequencies
        return np.column_stack([np.sin(2 * np.pi * 0.03 * times), np.cos(2 * np.pi * 0.05 * times + 1.0)])

    n = 400
    out = resample_tr(wave(np.arange(n) * tr), tr, target)
    assert out.shape == (int(np.ceil(n * tr / target)), 2)
    inner = slice(len(out) // 10, -len(out) // 10)  # FIR edges are approximate
    np.testing.assert_allclose(out[inner], wave(np.arange(len(out)) * target)[inner], atol=0.02)
    np.testing.assert_array_equal(resample_tr(wave(np.arange(10.0)), 2.0, 2.0), wave(np.arange(10.0)))


def test_qc_reasons_name_the_parcels():
    names = ("vis", "smn", "dmn")
    good = np.random.default_rng(0).normal(size=(50, 3))
    qc.check_finite(good, names)
    qc.check_variance(good, names)
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ScanError, match=r"NaN/Inf values \(1 of 150\) in 1 parcels: smn"):
        qc.check_finite(bad, names)
    bad = good.copy()
    bad[:, 2] = 7.0
    with pytest.raises(ScanError, match="zero-variance parcels .*: dmn"):
        qc.check_variance(bad, names)
    with pytest.raises(ScanError, match="2 parcels have no voxels/vertices inside the data: vis, dmn"):
        qc.check_variance(good, names, empty=[2, 0])
    with pytest.raises(ScanError, match="too short: 40 TRs < --min-length 100"):
        qc.check_length(40, 100)
    qc.check_length(100, 100)
    with pytest.raises(ScanError, match="pass --tr"):
        qc.check_tr(None, "x.npy")
    with pytest.raises(ScanError, match="implausible TR 1000 s"):
        qc.check_tr(1000.0, "x.mgz")
    assert qc.check_tr(1.35, "x") == 1.35


def test_reference_tr_and_mismatch():
    assert qc.reference_tr([2.0, 2.0, 0.72, None]) == 2.0
    assert qc.reference_tr([2.0, 0.72]) == 0.72  # tie: the smallest
    assert qc.reference_tr([None]) is None
    qc.check_same_tr(2.0000004, 2.0, 3, 2)
    with pytest.raises(ScanError, match=r"TR mismatch: 0.72 s, while the dataset's TR is 2 s \(2 of 3 scans\)"):
        qc.check_same_tr(0.72, 2.0, 3, 2)


def test_confound_tables(tmp_path):
    header = list(DEFAULT_CONFOUNDS) + ["framewise_displacement", "cosine00"]
    rows = [["n/a" if (i == 0 and c == "framewise_displacement") else f"{i * 0.1 + j:.3f}"
             for j, c in enumerate(header)] for i in range(6)]
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")
    names, values = read_table(path)
    assert names == header and values.shape == (6, 11) and np.isnan(values[0, 9])
    picked, chosen = select_confounds(names, values, "auto", "t")
    assert chosen == list(DEFAULT_CONFOUNDS)
    np.testing.assert_array_equal(picked, values[:, :9])
    picked, _ = select_confounds(names, values, ("framewise_displacement",), "t")
    assert picked[0, 0] == 0 and picked[1, 0] == values[1, 9]  # leading n/a of a derivative column -> 0
    with pytest.raises(ScanError, match="no column nope"):
        select_confounds(names, values, ("nope",), "t")
    values[3, 9] = np.nan
    with pytest.raises(ScanError, match="'framewise_displacement' in t has NaN/Inf after row 2"):
        select_confounds(names, values, ("framewise_displacement",), "t")
    txt = tmp_path / "run_confounds.txt"
    txt.write_text("0.1 0.2 1\n0.3 0.5 1\n0.2 0.1 1\n")  # brainspace style: no header, spaces
    names, values = read_table(txt)
    assert names is None
    picked, chosen = select_confounds(names, values, "auto", "t")
    assert chosen == ["0", "1", "2"] and picked.shape == (3, 3)
    assert select_confounds(names, values, ("1",), "t")[0][:, 0].tolist() == [0.2, 0.5, 0.1]


def test_names_hemispheres_and_confound_files(tmp_path):
    bold = "sub-01_ses-02_task-rest_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    assert scan_identity(bold) == ("sub-01_ses-02_task-rest_run-1", "01", "02")
    assert bids_entities("sub-01_task-rest_bold")[1] == "bold"
    brainspace = "sub-010188_ses-02_task-rest_acq-AP_run-01.fsa5.lh.mgz"
    assert scan_identity(brainspace) == ("sub-010188_ses-02_task-rest_acq-AP_run-01", "010188", "02")
    assert [hemisphere(n) for n in (brainspace, "sub-1_hemi-R_bold.func.gii", "lh.rest.mgz", "fmri1.nii.gz")] \
        == ["lh", "rh", "lh", None]
    assert scan_identity("rest.rh.mgz") == scan_identity("lh.rest.mgz") == ("rest", "rest", "")
    (tmp_path / bold).write_bytes(b"")
    fmriprep = tmp_path / "sub-01_ses-02_task-rest_run-1_desc-confounds_timeseries.tsv"
    fmriprep.write_text("a\n1\n")
    assert find_confounds(tmp_path / bold) == fmriprep
    (tmp_path / "sub-010188_ses-02_task-rest_acq-AP_run-01_confounds.txt").write_text("1\n")
    assert find_confounds(tmp_path / brainspace).name == "sub-010188_ses-02_task-rest_acq-AP_run-01_confounds.txt"
    assert find_confounds(tmp_path / "fmri1.nii.gz") is None
    (tmp_path / bold.replace(".nii.gz", ".json")).write_text(json.dumps({"RepetitionTime": 0.72}))
    assert sidecar_tr(tmp_path / bold) == 0.72


def test_discovery_pairs_filters_and_rejects_ambiguity(tmp_path):
    root = tmp_path / "bids"
    func = root / "sub-02" / "func"
    func.mkdir(parents=True)
    for name in ("sub-02_task-rest_hemi-L_space-fsaverage5_bold.func.gii",
                 "sub-02_task-rest_hemi-R_space-fsaverage5_bold.func.gii",
                 "sub-02_task-rest_hemi-L_space-fsnative_bold.func.gii",  # other space: not for this atlas
                 "sub-02_task-rest_desc-confounds_timeseries.tsv", "sub-02_task-rest_space-MNI_desc-brain_mask.nii.gz",
                 "sub-02_task-nback_hemi-L_space-fsaverage5_bold.func.gii", "sub-02_task-rest_timeseries.tsv"):
        (func / name).write_bytes(b"")
    (root / "participants.tsv").write_text("participant_id\nsub-02\n")
    scans = discover_scans([root], {"surface", "volume"}, mesh="fsaverage5")
    assert [(s.scan_id, s.kind) for s in scans] == [("sub-02_task-nback", "invalid"), ("sub-02_task-rest", "surface")]
    assert scans[1].files == (str(func / "sub-02_task-rest_hemi-L_space-fsaverage5_bold.func.gii"),
                              str(func / "sub-02_task-rest_hemi-R_space-fsaverage5_bold.func.gii"))
    assert "no rh hemisphere partner" in scans[0].error
    # the parcel table is the only series: confounds, participants and masks are not scans
    series = discover_scans([root], {"series"})
    assert [s.files[0] for s in series] == [str(func / "sub-02_task-rest_timeseries.tsv")]
    # the surface pair and the table are the same scan: asking for both is ambiguous
    with pytest.raises(DiscoveryError, match="two inputs map to scan id 'sub-02_task-rest'"):
        discover_scans([root], {"surface", "series"}, mesh="fsaverage5")


def test_discovery_duplicate_ids_and_missing_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        np.save(tmp_path / d / "rest.npy", np.zeros((3, 2)))
    with pytest.raises(DiscoveryError, match="two inputs map to scan id 'rest'"):
        discover_scans([tmp_path])
    with pytest.raises(DiscoveryError, match="input not found"):
        discover_scans([tmp_path / "nope"])
    scans = discover_scans([tmp_path / "a"])
    assert [(s.scan_id, s.subject, s.kind) for s in scans] == [("rest", "rest", "series")]
