"""``brainjax prepare`` on real data shipped by dependencies (nitime volumes and series, a brainspace run).

References are computed here with numpy on the raw files: parcel means over voxels/vertices, and least-squares
confound regression on [1, t, confounds] for the cleaned variants.
"""

import importlib.resources
import time

import nibabel as nib
import numpy as np
import pytest

from brainjax.data.atlas import AtlasSpec, load_atlas
from brainjax.data.atlas_core import Atlas
from brainjax.data.clean import CleanOptions
from brainjax.data.dataset import Dataset, DatasetError
from brainjax.data.prepare import PrepareOptions, prepare

NITIME = importlib.resources.files("nitime") / "data"
RAW = CleanOptions(detrend=False, high_pass=None, standardize="none")
DETREND_ONLY = CleanOptions(detrend=True, high_pass=None, standardize="none")


def _residual(y, regressors=None):
    """Least-squares residual of y [T, P] on [1, t, regressors]."""
    t = np.arange(y.shape[0], dtype=np.float64)
    design = np.column_stack([np.ones_like(t), t] + ([regressors] if regressors is not None else []))
    return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]


def nitime_block_atlas():
    """A label image on fmri1's own grid (the volumes are partial and not in MNI space): 2 x 2 x 2 blocks."""
    img = nib.load(str(NITIME / "fmri1.nii.gz"))
    idx = np.indices(img.shape[:3])
    labels = (1 + (idx[0] >= 5) + 2 * (idx[1] >= 5) + 4 * (idx[2] >= 9)).astype(np.int16)
    values = np.arange(1, 9)
    xyz = [nib.affines.apply_affine(img.affine, np.argwhere(labels == v).mean(0)) for v in values]
    atlas = Atlas("nitime-blocks", "volume", tuple(f"block{v}" for v in values), np.array(xyz))
    return AtlasSpec(atlas=atlas, label_image=nib.Nifti1Image(labels, img.affine), label_values=values,
                     radius=None, vertex_labels=None, mesh=None), labels


def test_nitime_volumes(tmp_path):
    spec, labels = nitime_block_atlas()
    files = [str(NITIME / "fmri1.nii.gz"), str(NITIME / "fmri2.nii.gz")]
    start = time.perf_counter()
    result = prepare(files, tmp_path / "raw", PrepareOptions(clean=RAW, confounds="none", min_length=30), spec=spec)
    seconds = time.perf_counter() - start
    print(f"\nprepare nitime fmri1+fmri2 (8 blocks, no cleaning): {seconds:.2f} s")
    assert result.failures == []
    raw = Dataset(tmp_path / "raw")
    assert [(r["scan_id"], r["tr"], r["length"]) for r in raw.manifest] == [("fmri1", 1.35, 40), ("fmri2", 1.35, 40)]
    cleaned = prepare(files, tmp_path / "clean", PrepareOptions(
        clean=CleanOptions(high_pass=None, standardize="zscore"), confounds="none", min_length=30), spec=spec)
    assert cleaned.failures == []
    for i, name in enumerate(("fmri1", "fmri2")):
        data = np.asarray(nib.load(str(NITIME / f"{name}.nii.gz")).dataobj, np.float64)
        means = np.stack([data[labels == v].mean(axis=0) for v in spec.label_values])  # [P, T]
        np.testing.assert_allclose(raw.read(i), means, rtol=1e-6)
        expected = _residual(means.T)
        expected /= expected.std(axis=0, ddof=1)
        # nilearn averages in float32: ~1e-7 relative on means of ~1e3 that vary by a few units -> ~1e-5 here
        np.testing.assert_allclose(Dataset(tmp_path / "clean").read(i), expected.T, atol=1e-4)
    # the default min-length of 100 TRs rejects both 40-TR runs, with the reason
    with pytest.raises(DatasetError, match=r"no scan passed QC \(2 failed: fmri1.nii.gz: too short: 40 TRs < "
                                           r"--min-length 100; fmri2.nii.gz: too short"):
        prepare(files, tmp_path / "short", PrepareOptions(confounds="none"), spec=spec)


def _series_spec(names, seed=0):
    """A coordinate atlas for a ready-made series: the names are real, the coordinates are made up."""
    xyz = np.random.default_rng(seed).uniform(-60, 60, size=(len(names), 3))
    return AtlasSpec(atlas=Atlas("nitime-rois", "coordinates", tuple(names), xyz), label_image=None,
                     label_values=None, radius=5.0, vertex_labels=None, mesh=None)


def test_nitime_series_with_in_file_confounds(tmp_path):
    csv_path = NITIME / "fmri_timeseries.csv"
    header = csv_path.read_text().splitlines()[0].replace('"', "").split(",")
    table = np.loadtxt(str(csv_path), delimiter=",", skiprows=1)
    assert table.shape == (250, 31) and header[:3] == ["WM", "Vent", "Brain"]
    # 28 ROI atlas: WM, ventricle and whole-brain columns are not parcels; --confounds auto regresses them out
    spec28 = _series_spec(header[3:])
    start = time.perf_counter()
    result = prepare([str(csv_path)], tmp_path / "28", PrepareOptions(tr=1.89, clean=DETREND_ONLY), spec=spec28)
    print(f"\nprepare nitime fmri_timeseries.csv (28 ROIs, WM/CSF/global confounds): "
          f"{time.perf_counter() - start:.2f} s")
    assert result.failures == []
    ds = Dataset(tmp_path / "28")
    assert ds.manifest[0]["tr"] == 1.89 and ds.manifest[0]["length"] == 250 and ds.manifest[0]["n_parcels"] == 28
    np.testing.assert_allclose(ds.read(0), _residual(table[:, 3:], table[:, :3]).T, atol=2e-4)
    # 31 columns taken as parcels by position when the atlas names differ; no cleaning keeps the values
    spec31 = _series_spec([f"roi{i}" for i in range(31)])
    prepare([str(csv_path)], tmp_path / "31", PrepareOptions(tr=1.89, clean=RAW, confounds="none"), spec=spec31)
    np.testing.assert_allclose(Dataset(tmp_path / "31").read(0), table.T, rtol=1e-6)
    # without --tr the TR is unknown (a CSV has no header for it): the reason says what to do
    with pytest.raises(DatasetError, match=r"fmri_timeseries.csv: no repetition time .* pass --tr SECONDS"):
        prepare([str(csv_path)], tmp_path / "no-tr", PrepareOptions(clean=RAW), spec=spec28)


BRAINSPACE = importlib.resources.files("brainspace") / "datasets" / "preprocessing"
RUN = "sub-010188_ses-02_task-rest_acq-AP_run-01"


@pytest.fixture(scope="module")
def brainspace_raw():
    lh, rh = (np.asarray(nib.load(str(BRAINSPACE / f"{RUN}.fsa5.{h}.mgz")).dataobj, np.float64)[:, 0, 0, :]
              for h in ("lh", "rh"))
    return lh, rh, np.loadtxt(str(BRAINSPACE / f"{RUN}_confounds.txt"))


@pytest.mark.slow
def test_brainspace_surface_run(tmp_path, brainspace_raw):
    lh, rh, confounds = brainspace_raw
    assert lh.shape == rh.shape == (10242, 652) and confounds.shape == (652, 29)
    spec = load_atlas("fsaverage5-20")
    start = time.perf_counter()
    prepare([str(BRAINSPACE)], tmp_path / "raw", PrepareOptions(atlas="fsaverage5-20", clean=RAW, confounds="none"),
            spec=spec)
    print(f"\nprepare brainspace run (fsaverage5-20, no cleaning): {time.perf_counter() - start:.2f} s")
    raw = Dataset(tmp_path / "raw")
    # the MGZ header says tr = 1000 ms; the scan id and subject come from the BIDS-like name
    assert [(r["scan_id"], r["subject"], r["session"], r["tr"], r["length"]) for r in raw.manifest] == [
        (RUN, "010188", "02", 1.0, 652)]
    labels_lh, labels_rh = spec.vertex_labels["lh"], spec.vertex_labels["rh"]
    means = np.stack([np.concatenate([lh[labels_lh == p], rh[labels_rh == p]]).mean(axis=0) for p in range(20)])
    np.testing.assert_allclose(raw.read(0), means, rtol=1e-5, atol=1e-6)
    # defaults except the filter: the confounds table beside the run is found and regressed with the trend
    cleaned = prepare([str(BRAINSPACE)], tmp_path / "clean", PrepareOptions(
        atlas="fsaverage5-20", clean=DETREND_ONLY), spec=spec)
    assert cleaned.failures == []
    np.testing.assert_allclose(Dataset(tmp_path / "clean").read(0), _residual(means.T, confounds).T, atol=1e-5)
    # --tr overrides the header, --target-tr resamples (652 TRs at 1 s -> 466 at 1.4 s)
    resampled = prepare([str(BRAINSPACE)], tmp_path / "rs", PrepareOptions(
        atlas="fsaverage5-20", tr=1.0, clean=CleanOptions(target_tr=1.4)), spec=spec)
    assert resampled.failures == []
    assert [(r["tr"], r["length"]) for r in Dataset(tmp_path / "rs").manifest] == [(1.4, 466)]
