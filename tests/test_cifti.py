"""CIFTI-2 dense series and the built-in fs_LR 32k atlases (BrainSpace's Schaefer / Vos de Wael on conte69).

Synthetic CIFTI files are built with nibabel over BrainSpace's conte69 cortex masks; expected parcel means,
counts and centroids are computed here with numpy straight from the shipped CSV / GIfTI files.
"""

import importlib.resources
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes as axes

from brainjax.cli import main as cli_main
from brainjax.data.atlas import AtlasError, list_builtin_atlases, load_atlas
from brainjax.data.cifti import CiftiError, read_cifti
from brainjax.data.readers import probe_tr, read_scan, read_surface
from brainjax.data.scans import ScanInput, discover_scans
from brainjax.errors import InputError

DATASETS = Path(str(importlib.resources.files("brainspace"))) / "datasets"
V = 32492
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -30], [0, 0, 2.0, -10], [0, 0, 0, 1]])


def labels_csv(name):
    return np.loadtxt(DATASETS / "parcellations" / f"{name}_conte69.csv", dtype=int)


def cortex_masks():
    return [np.loadtxt(DATASETS / "surfaces" / f"conte69_32k_{h}_mask.csv").astype(bool) for h in ("lh", "rh")]


def midthickness():
    return np.concatenate([nib.load(DATASETS / "surfaces" / f"conte69_32k_{h}.gii").darrays[0].data
                           for h in ("lh", "rh")]).astype(np.float64)


def subcortex_volume(structures=("thalamus_left", "accumbens_right")):
    """Small volume models: each structure a block of voxels in a 6x6x6 grid."""
    blocks = {"thalamus_left": (slice(0, 2), slice(0, 3), slice(0, 2)),
              "accumbens_right": (slice(3, 6), slice(4, 6), slice(2, 5))}
    parts = []
    for name in structures:
        mask = np.zeros((6, 6, 6), bool)
        mask[blocks[name]] = True
        parts.append(axes.BrainModelAxis.from_mask(mask, name, AFFINE))
    return parts


def write_cifti(path, data_for, n_time=6, tr=0.72, masks=None, volume=(), n_vertices=V, unit="SECOND"):
    """A dense series over ``masks`` (default: BrainSpace's cortex masks) plus ``volume`` models.

    ``data_for(models)`` gives the [T, N] data. Returns the BrainModelAxis."""
    masks = cortex_masks() if masks is None else masks
    models = (axes.BrainModelAxis.from_mask(masks[0][:n_vertices], "CortexLeft")
              + axes.BrainModelAxis.from_mask(masks[1][:n_vertices], "CortexRight"))
    for part in volume:
        models = models + part
    data = np.asarray(data_for(models), np.float32)
    series = axes.SeriesAxis(0.0, tr, n_time, unit=unit)
    nib.Cifti2Image(data, header=(series, models)).to_filename(str(path))
    return models


def global_vertex(models):
    """Index into the 64,984 concatenated lh+rh vertices of each surface grayordinate (-1 for voxels)."""
    offset = np.where(models.name == "CIFTI_STRUCTURE_CORTEX_RIGHT", V, 0)
    return np.where(models.surface_mask, models.vertex + offset, -1)


def planted(models, labels, n_time, rng):
    """Data whose mean over each parcel's present vertices is exactly the parcel's planted series."""
    where = global_vertex(models)
    label = np.where(where >= 0, labels[np.maximum(where, 0)], 0)
    signal = rng.normal(size=(n_time, labels.max() + 1))
    data = rng.normal(scale=50.0, size=(n_time, len(models)))  # unlabelled grayordinates: ignored
    for value in np.unique(label[label > 0]):
        cols = np.flatnonzero(label == value)
        noise = rng.normal(size=(n_time, cols.size))
        data[:, cols] = signal[:, [value]] + noise - noise.mean(axis=1, keepdims=True)
    return data, signal, label


# ---------------------------------------------------------------------------------------------- atlases

SHIPPED = sorted((re.fullmatch(r"(schaefer|vosdewael)_(\d+)_conte69\.csv", p.name) for p in
                  (DATASETS / "parcellations").iterdir()), key=lambda m: m.string if m else "")
SHIPPED = [(m.group(1), int(m.group(2))) for m in SHIPPED if m]


def test_every_shipped_parcellation_is_built_in():
    assert {f"{f}{n}" for f, n in SHIPPED} <= set(list_builtin_atlases())
    assert {("schaefer", 100), ("schaefer", 400), ("schaefer", 1000), ("vosdewael", 400)} <= set(SHIPPED)


@pytest.mark.parametrize("family,size", SHIPPED)
def test_parcel_counts_names_and_centroids_match_the_shipped_files(family, size):
    values = labels_csv(f"{family}_{size}")
    present = np.unique(values[values > 0])
    spec = load_atlas(f"{family}{size}")
    atlas = spec.atlas
    assert atlas.n_parcels == present.size and atlas.kind == "surface" and spec.mesh == "fsLR"
    assert [int(n.split("_")[1]) for n in atlas.names] == present.tolist()
    assert all(n.startswith("lh_" if v <= size // 2 else "rh_") for n, v in zip(atlas.names, present))
    coords = midthickness()
    expected = np.stack([coords[values == v].mean(axis=0) for v in present])
    np.testing.assert_allclose(atlas.xyz, expected, atol=1e-3)
    both = np.concatenate([spec.vertex_labels["lh"], spec.vertex_labels["rh"]])
    assert both.shape == (2 * V,)
    np.testing.assert_array_equal(both >= 0, values > 0)
    np.testing.assert_array_equal(present[both[values > 0]], values[values > 0])
    assert atlas.networks is None and "none" in atlas.extra["networks"]


def test_schaefer1000_lacks_one_label_and_says_so():
    atlas = load_atlas("schaefer1000").atlas
    assert atlas.n_parcels == 999 and atlas.extra["missing_labels"] == [533]


def test_fslr_atlas_option_errors(tmp_path):
    with pytest.raises(AtlasError, match=r"--mesh REF\.dtseries\.nii"):
        load_atlas("schaefer400+subcortex")
    with pytest.raises(AtlasError, match="built in"):
        load_atlas("schaefer400", mesh="fsaverage5")
    with pytest.raises(AtlasError, match="unknown atlas 'schaefer500'.*schaefer400"):
        load_atlas("schaefer500")
    no_voxels = tmp_path / "cortex.dtseries.nii"
    write_cifti(no_voxels, lambda m: np.zeros((6, len(m))))
    with pytest.raises(AtlasError, match="no subcortical"):
        load_atlas("schaefer100+subcortex", mesh=str(no_voxels))


# ---------------------------------------------------------------------------------------------- reading

def test_planted_parcel_means_come_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    values = labels_csv("schaefer_400")
    path = tmp_path / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii"
    store = {}
    write_cifti(path, lambda m: store.setdefault("x", planted(m, values, 6, rng))[0])
    _, signal, label = store["x"]
    data = np.asarray(nib.load(path).get_fdata())  # as stored (float32)
    raw = read_scan(ScanInput("s", "01", "", "cifti", (str(path),)), load_atlas("schaefer400"))
    assert raw.series.shape == (6, 400) and raw.tr == pytest.approx(0.72)
    present = np.unique(label[label > 0])
    independent = np.stack([data[:, label == v].mean(axis=1) for v in range(1, 401)], 1)
    np.testing.assert_allclose(raw.series[:, present - 1], independent[:, present - 1], atol=1e-5)
    np.testing.assert_allclose(raw.series[:, present - 1], signal[:, present], atol=1e-4)
    # parcels with no vertex inside BrainSpace's cortex mask (if any) are the empty ones
    assert raw.empty_parcels == sorted(set(range(400)) - set((present - 1).tolist()))
    assert probe_tr(ScanInput("s", "01", "", "cifti", (str(path),))) == pytest.approx(0.72)


def test_missing_cortex_vertices_give_empty_parcels(tmp_path):
    values = labels_csv("schaefer_100")
    masks = [m.copy() for m in cortex_masks()]
    masks[0][values[:V] == 7] = False  # lh parcel 7 and rh parcel 60 absent from the file
    masks[1][values[V:] == 60] = False
    masks[1][values[V:] == 61] = False
    masks[1][np.flatnonzero(values[V:] == 61)[0]] = True  # one vertex of 61 left: not empty
    path = tmp_path / "partial.dtseries.nii"
    write_cifti(path, lambda m: np.ones((6, len(m))) + np.arange(6)[:, None], masks=masks)
    found = read_cifti(path, load_atlas("schaefer100"))
    covered = {v for v in np.unique(values[np.concatenate(masks)]) if v > 0}
    assert found.empty == [v - 1 for v in range(1, 101) if v not in covered]
    assert 6 in found.empty and 59 in found.empty and 60 not in found.empty
    np.testing.assert_allclose(found.series[:, 60], np.arange(6) + 1.0)


def test_nan_grayordinates_make_their_parcel_nan(tmp_path):
    values = labels_csv("schaefer_100")
    path = tmp_path / "nan.dtseries.nii"

    def data(models):
        out = np.ones((6, len(models)))
        where = global_vertex(models)
        out[2, np.flatnonzero(values[where] == 3)[:2]] = np.nan
        out[:, np.flatnonzero(values[where] == 0)[:5]] = np.inf  # unlabelled: harmless
        return out

    write_cifti(path, data)
    found = read_cifti(path, load_atlas("schaefer100"))
    assert np.isnan(found.series[:, 2]).all() and np.isfinite(np.delete(found.series, 2, axis=1)).all()
    assert "2 grayordinates (2 values)" in found.nonfinite


def test_subcortical_structures_are_extra_parcels(tmp_path):
    rng = np.random.default_rng(1)
    ref = tmp_path / "ref.dtseries.nii"
    models = write_cifti(ref, lambda m: rng.normal(size=(6, len(m))), volume=subcortex_volume())
    spec = load_atlas("schaefer100+subcortex", mesh=str(ref))
    atlas = spec.atlas
    assert atlas.n_parcels == 102 and atlas.names[-2:] == ("thalamus_left", "accumbens_right")
    assert spec.structures == ("CIFTI_STRUCTURE_THALAMUS_LEFT", "CIFTI_STRUCTURE_ACCUMBENS_RIGHT")
    voxels = models.voxel[models.volume_mask]
    names = models.name[models.volume_mask]
    for parcel, structure in zip((100, 101), spec.structures):
        mm = voxels[names == structure] @ AFFINE[:3, :3].T + AFFINE[:3, 3]
        np.testing.assert_allclose(atlas.xyz[parcel], mm.mean(axis=0), atol=1e-4)
    data = np.asarray(nib.load(ref).get_fdata())
    found = read_cifti(ref, spec)
    np.testing.assert_allclose(found.series[:, 100], data[:, models.name == spec.structures[0]].mean(1), atol=1e-5)
    np.testing.assert_allclose(found.series[:, 101], data[:, models.name == spec.structures[1]].mean(1), atol=1e-5)
    np.testing.assert_allclose(found.series[:, :100], read_cifti(ref, load_atlas("schaefer100")).series)
    # a scan without one of the structures: that parcel is empty
    other = tmp_path / "other.dtseries.nii"
    write_cifti(other, lambda m: np.ones((6, len(m))), volume=subcortex_volume(("accumbens_right",)))
    assert 100 in read_cifti(other, spec).empty and 101 not in read_cifti(other, spec).empty


@pytest.mark.parametrize("step,unit,expected", [(0.8, "SECOND", 0.8), (720.0, "SECOND", 0.72),
                                                (0.0, "SECOND", None)])
def test_tr_from_the_series_axis(tmp_path, step, unit, expected):
    path = tmp_path / "x.dtseries.nii"
    write_cifti(path, lambda m: np.ones((6, len(m))), tr=step, unit=unit)
    assert read_cifti(path, load_atlas("schaefer100")).tr == (pytest.approx(expected) if expected else None)


def test_refused_files_name_themselves(tmp_path):
    spec = load_atlas("schaefer100")
    hertz = tmp_path / "spectrum.dtseries.nii"
    write_cifti(hertz, lambda m: np.ones((6, len(m))), tr=0.1, unit="HERTZ")
    with pytest.raises(CiftiError, match="spectrum.dtseries.nii.*hertz"):
        read_cifti(hertz, spec)
    small = tmp_path / "fsaverage5.dtseries.nii"
    write_cifti(small, lambda m: np.ones((6, len(m))), n_vertices=10242)
    with pytest.raises(InputError, match=r"fsaverage5\.dtseries\.nii: cortex_left is on a mesh of 10242 vertices.*"
                                         r"fs_LR 32k"):
        read_scan(ScanInput("s", "s", "", "cifti", (str(small),)), spec)
    models = axes.BrainModelAxis.from_mask(cortex_masks()[0], "CortexLeft")
    parcels = axes.ParcelsAxis.from_brain_models([("a", models[:10]), ("b", models[10:20])])
    ptseries = tmp_path / "sub-01_task-rest_bold.ptseries.nii"
    nib.Cifti2Image(np.ones((6, 2), np.float32), header=(axes.SeriesAxis(0, 1, 6), parcels)).to_filename(ptseries)
    with pytest.raises(InputError, match=r"_bold\.ptseries\.nii: not a CIFTI dense series.*parcellated"):
        read_scan(ScanInput("s", "s", "", "cifti", (str(ptseries),)), spec)
    dscalar = tmp_path / "x.dscalar.nii"
    nib.Cifti2Image(np.ones((1, len(models)), np.float32),
                    header=(axes.ScalarAxis(["a"]), models)).to_filename(dscalar)
    with pytest.raises(CiftiError, match="x.dscalar.nii: not a CIFTI dense series"):
        read_cifti(dscalar, spec)
    with pytest.raises(CiftiError, match="no vertex labels"):
        read_cifti(small, load_atlas("power264"))
    nifti = tmp_path / "fake.dtseries.nii"
    nib.Nifti1Image(np.ones((2, 2, 2, 3), np.float32), np.eye(4)).to_filename(nifti)
    with pytest.raises(CiftiError, match="fake.dtseries.nii: not a CIFTI-2 file"):
        read_cifti(nifti, spec)


def test_fslr_gifti_pairs_read_with_schaefer(tmp_path):
    values = labels_csv("schaefer_100")
    rng = np.random.default_rng(2)
    data = rng.normal(size=(2 * V, 3)).astype(np.float32)
    files = []
    for hemi, rows in (("L", slice(0, V)), ("R", slice(V, 2 * V))):
        img = nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(data[rows, t]) for t in range(3)])
        files.append(str(tmp_path / f"sub-01_task-rest_hemi-{hemi}_space-fsLR_den-32k_bold.func.gii"))
        nib.save(img, files[-1])
    raw = read_surface(tuple(files), load_atlas("schaefer100"))
    expected = np.stack([data[values == v].mean(axis=0) for v in range(1, 101)], 1)
    np.testing.assert_allclose(raw.series, expected, atol=1e-5)
    assert raw.empty_parcels == []


# ---------------------------------------------------------------------------------------------- discovery

def test_hcp_and_bids_names_are_discovered(tmp_path):
    def touch(relative):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    for subject in ("100307", "100408"):
        results = f"hcp/{subject}/MNINonLinear/Results"
        for run in ("rfMRI_REST1_LR", "rfMRI_REST2_RL", "tfMRI_WM_LR"):
            touch(f"{results}/{run}/{run}_Atlas_MSMAll.dtseries.nii")
            touch(f"{results}/{run}/{run}_Atlas_stats.dscalar.nii")  # not a series: skipped
            touch(f"{results}/{run}/{run}.nii.gz")  # the volume: not read with a surface atlas
    func = "bids/sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1"
    touch(f"{func}_space-fsLR_den-91k_bold.dtseries.nii")
    touch(f"{func}_space-fsLR_den-170k_bold.dtseries.nii")  # another density: skipped
    touch(f"{func}_hemi-L_space-fsaverage5_bold.func.gii")  # another mesh: skipped
    touch(f"{func}_hemi-R_space-fsaverage5_bold.func.gii")
    touch(f"{func}_space-fsLR_den-91k_bold.ptseries.nii")  # parcellated: skipped
    scans = discover_scans([tmp_path], {"series", "surface"}, mesh="fsLR")
    found = {s.scan_id: (s.subject, s.session, s.kind, Path(s.files[0]).name) for s in scans}
    assert found == {
        "100307_rfMRI_REST1_LR": ("100307", "REST1", "cifti", "rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii"),
        "100307_rfMRI_REST2_RL": ("100307", "REST2", "cifti", "rfMRI_REST2_RL_Atlas_MSMAll.dtseries.nii"),
        "100307_tfMRI_WM_LR": ("100307", "", "cifti", "tfMRI_WM_LR_Atlas_MSMAll.dtseries.nii"),
        "100408_rfMRI_REST1_LR": ("100408", "REST1", "cifti", "rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii"),
        "100408_rfMRI_REST2_RL": ("100408", "REST2", "cifti", "rfMRI_REST2_RL_Atlas_MSMAll.dtseries.nii"),
        "100408_tfMRI_WM_LR": ("100408", "", "cifti", "tfMRI_WM_LR_Atlas_MSMAll.dtseries.nii"),
        "sub-01_ses-1_task-rest_run-1": ("01", "1", "cifti", "sub-01_ses-1_task-rest_run-1_space-fsLR_den-91k_"
                                                             "bold.dtseries.nii"),
    }
    # a volume atlas takes the HCP volumes instead, with the same identities
    volumes = discover_scans([tmp_path / "hcp"], {"series", "volume"})
    assert {s.scan_id for s in volumes} == {k for k in found if not k.startswith("sub-")}
    assert {s.kind for s in volumes} == {"volume"}
    with pytest.raises(InputError, match="two inputs map to scan id '100307_rfMRI_REST1_LR'"):
        touch("hcp/100307/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas.dtseries.nii")
        discover_scans([tmp_path / "hcp"], {"series", "surface"}, mesh="fsLR")


# ---------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_prepare_cli_on_a_cifti_cohort(tmp_path, capsys):
    rng = np.random.default_rng(3)
    values = labels_csv("schaefer_400")
    for subject in ("100307", "100408"):
        folder = tmp_path / "hcp" / subject / "MNINonLinear" / "Results" / "rfMRI_REST1_LR"
        folder.mkdir(parents=True)
        write_cifti(folder / "rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii",
                    lambda m: planted(m, values, 100, rng)[0], n_time=100, tr=0.72)
    out = tmp_path / "ds"
    start = time.perf_counter()
    code = cli_main(["prepare", str(tmp_path / "hcp"), "--atlas", "schaefer400", "--out", str(out)])
    seconds = time.perf_counter() - start
    assert code == 0, capsys.readouterr().err
    manifest = (out / "manifest.tsv").read_text()
    assert "100307_rfMRI_REST1_LR" in manifest and "100408_rfMRI_REST1_LR" in manifest
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "atlas schaefer400 (surface): 400 parcels, 0 networks" in text and "networks: none" in text
    print(f"prepare of 2 CIFTI scans x 100 TRs with schaefer400: {seconds:.2f} s")
