"""Atlases: built-in coordinate files parsed independently, volume centroids by hand, fsaverage5 k-means,
surface label files in every format, and errors on bad input."""

import csv
import importlib.resources

import nibabel as nib
import numpy as np
import pytest

from brainjax.data.atlas import AtlasError, AtlasSpec, list_builtin_atlases, load_atlas, load_volume_atlas
from brainjax.data.atlas_core import Atlas
from brainjax.data.atlas_surface import fsaverage5_kmeans

NILEARN_DATA = importlib.resources.files("nilearn") / "datasets" / "data"
AFFINE = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 4.0, -30], [0, 0, 0, 1]])


def fsaverage5_pial(hemi):
    side = {"lh": "left", "rh": "right"}[hemi]
    path = NILEARN_DATA / "fsaverage5" / f"pial_{side}.gii.gz"
    return np.asarray(nib.load(str(path)).darrays[0].data, np.float64)


# ---------------------------------------------------------------------------------------------- coordinates

def test_seitzman300_matches_raw_file():
    text = (NILEARN_DATA / "seitzman_2018_ROIs_300inVol_MNI_allInfo.txt").read_text().splitlines()[1:]
    rows = [line.split() for line in text if line.strip()]
    spec = load_atlas("seitzman300")
    atlas = spec.atlas
    assert atlas.n_parcels == 300 and atlas.kind == "coordinates"
    np.testing.assert_allclose(atlas.xyz, [[float(v) for v in r[:3]] for r in rows], atol=1e-4)
    ids, networks = atlas.network_ids()
    assert len(networks) == 13 and "unassigned" not in networks
    assert np.sum(ids == -1) == sum(r[5] == "unassigned" for r in rows) == 15
    assert [atlas.networks[i] for i in range(300)] == ["" if r[5] == "unassigned" else r[5] for r in rows]
    assert spec.radius == 5.0 and atlas.extra["radii"] == [float(r[3]) for r in rows]
    assert len(set(atlas.names)) == 300 and spec.label_image is None and spec.vertex_labels is None


def test_dosenbach160_matches_raw_file():
    with open(str(NILEARN_DATA / "dosenbach_2010.csv"), newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    atlas = load_atlas("dosenbach160").atlas
    assert atlas.n_parcels == 160
    np.testing.assert_allclose(atlas.xyz, [[float(v) for v in r[1:4]] for r in rows])
    assert list(atlas.networks) == [r[5] for r in rows]
    assert len(atlas.network_ids()[1]) == 6
    assert len(set(atlas.names)) == 160 and all(n.startswith(r[4]) for n, r in zip(atlas.names, rows))
    assert load_atlas("dosenbach160").radius == 5.0


def test_power264_matches_raw_file():
    raw = np.loadtxt(str(NILEARN_DATA / "power_2011.csv"), delimiter=",", skiprows=1)
    spec = load_atlas("power264")
    assert spec.atlas.n_parcels == 264 and spec.atlas.networks is None and spec.radius == 5.0
    np.testing.assert_allclose(spec.atlas.xyz, raw[:, 1:4])
    np.testing.assert_array_equal(spec.atlas.network_ids()[0], -np.ones(264))


def test_builtin_atlases_are_cached_and_read_only():
    assert load_atlas("power264") is load_atlas("power264")
    with pytest.raises(ValueError):
        load_atlas("power264").atlas.xyz[0, 0] = 1.0
    assert set(list_builtin_atlases()) >= {"seitzman300", "dosenbach160", "power264", "fsaverage5-400"}


def test_unknown_atlas_lists_builtins():
    with pytest.raises(AtlasError, match="unknown atlas 'schaefer9'.*seitzman300.*power264"):
        load_atlas("schaefer9")
    with pytest.raises(AtlasError, match="even N"):
        load_atlas("fsaverage5-7")
    with pytest.raises(AtlasError, match="built in"):
        load_atlas("seitzman300", labels="names.tsv")


def test_atlas_json_round_trip(tmp_path):
    atlas = load_atlas("seitzman300").atlas
    atlas.save(tmp_path / "atlas.json")
    loaded = Atlas.load(tmp_path / "atlas.json")
    assert (loaded.name, loaded.kind, loaded.names, loaded.networks) == (atlas.name, atlas.kind, atlas.names,
                                                                           atlas.networks)
    np.testing.assert_allclose(loaded.xyz, atlas.xyz, atol=1e-3)
    assert loaded.extra == atlas.extra
    np.testing.assert_array_equal(loaded.network_ids()[0], atlas.network_ids()[0])


# ---------------------------------------------------------------------------------------------- volumes

def box_image(tmp_path, dtype=np.int16):
    """Labels 7 and 3 in two boxes of a 10 x 8 x 6 grid; a single voxel labelled 12."""
    data = np.zeros((10, 8, 6), dtype)
    data[1:4, 2:6, 0:2] = 7   # voxel centre (2, 3.5, 0.5)
    data[6:10, 0:2, 3:6] = 3  # voxel centre (7.5, 0.5, 4)
    data[0, 7, 5] = 12
    path = tmp_path / "boxes.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def mm(i, j, k):
    return [2 * i - 10, 3 * j + 20, 4 * k - 30]


def test_volume_atlas_centroids_by_hand(tmp_path):
    spec = load_atlas(str(box_image(tmp_path)))
    assert spec.atlas.kind == "volume" and spec.atlas.names == ("label_3", "label_7", "label_12")
    np.testing.assert_array_equal(spec.label_values, [3, 7, 12])
    np.testing.assert_allclose(spec.atlas.xyz, [mm(7.5, 0.5, 4), mm(2, 3.5, 0.5), mm(0, 7, 5)], atol=1e-5)
    assert spec.atlas.networks is None and spec.radius is None
    assert spec.label_image.shape == (10, 8, 6)
    np.testing.assert_array_equal(spec.label_image.affine, AFFINE)


def test_volume_atlas_label_table(tmp_path):
    image = box_image(tmp_path, dtype=np.float32)  # integral floats are accepted
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\tnetwork\n7\tmotor\tSomMot\n3\tvisual\tVis\n")
    spec = load_atlas(str(image), labels=str(table))
    assert spec.atlas.names == ("motor", "visual") and spec.atlas.networks == ("SomMot", "Vis")
    np.testing.assert_array_equal(spec.label_values, [7, 3])
    np.testing.assert_allclose(spec.atlas.xyz, [mm(2, 3.5, 0.5), mm(7.5, 0.5, 4)], atol=1e-5)
    assert spec.atlas.extra["ignored_values"] == [12]
    text_table = tmp_path / "labels.txt"
    text_table.write_text("# value name\n3 visual\n7 motor\n12 dot\n")
    spec = load_volume_atlas(image, text_table)
    assert spec.atlas.names == ("visual", "motor", "dot") and spec.atlas.networks is None


def test_volume_atlas_bad_inputs(tmp_path):
    def save(name, data):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return str(path)

    with pytest.raises(AtlasError, match="four_d.nii.gz: label image must be 3-D"):
        load_atlas(save("four_d.nii.gz", np.ones((4, 4, 4, 3), np.int16)))
    with pytest.raises(AtlasError, match="prob.nii.gz: .*non-integer"):
        load_atlas(save("prob.nii.gz", np.full((4, 4, 4), 0.5, np.float32)))
    with pytest.raises(AtlasError, match="empty.nii: .*no labels"):
        load_atlas(save("empty.nii", np.zeros((4, 4, 4), np.int16)))
    with pytest.raises(AtlasError, match="missing.nii.gz: label image not found"):
        load_atlas(str(tmp_path / "missing.nii.gz"))
    good = str(box_image(tmp_path))
    table = tmp_path / "absent.csv"
    table.write_text("index,name\n3,a\n99,b\n")
    with pytest.raises(AtlasError, match=r"absent.csv: lists label values absent from .*boxes.nii.gz: \[99"):
        load_atlas(good, labels=str(table))
    table.write_text("value,region\n3,a\n3,b\n")
    with pytest.raises(AtlasError, match=r"absent.csv: label values listed more than once: \[3\]"):
        load_atlas(good, labels=str(table))
    table.write_text("number,title\n3,a\n")
    with pytest.raises(AtlasError, match="absent.csv: label table needs 'index' and 'name'"):
        load_atlas(good, labels=str(table))
    other = tmp_path / "atlas.xyz"
    other.write_text("1 2 3\n")
    with pytest.raises(AtlasError, match="atlas.xyz: unsupported file type"):
        load_atlas(str(other))


# ---------------------------------------------------------------------------------------------- surfaces

def test_fsaverage5_kmeans_parcellation():
    spec = load_atlas("fsaverage5-100")
    again = fsaverage5_kmeans(100)  # a fresh, uncached run
    for hemi in ("lh", "rh"):
        np.testing.assert_array_equal(spec.vertex_labels[hemi], again.vertex_labels[hemi])
    np.testing.assert_array_equal(spec.atlas.xyz, again.atlas.xyz)
    atlas, labels = spec.atlas, spec.vertex_labels
    assert atlas.n_parcels == 100 and atlas.kind == "surface" and spec.mesh == "fsaverage5"
    assert atlas.names[:2] == ("lh_000", "lh_001") and atlas.names[50] == "rh_000" and atlas.networks is None
    assert labels["lh"].shape == labels["rh"].shape == (10242,)
    assert set(np.unique(labels["lh"])) == {-1, *range(50)}
    assert set(np.unique(labels["rh"])) == {-1, *range(50, 100)}
    for hemi in ("lh", "rh"):
        medial_wall = np.sum(labels[hemi] == -1)
        assert 300 < medial_wall < 1200, medial_wall
        # parcels of similar area: no parcel more than 3x the mean size
        sizes = np.bincount(labels[hemi][labels[hemi] >= 0])
        assert sizes[sizes > 0].max() < 3 * sizes[sizes > 0].mean()
    pial = {h: fsaverage5_pial(h) for h in ("lh", "rh")}
    expected = [pial[h][labels[h] == p].mean(0) for h, parcels in (("lh", range(50)), ("rh", range(50, 100)))
                for p in parcels]
    np.testing.assert_allclose(atlas.xyz, expected, atol=1e-3)
    assert np.all(atlas.xyz[:50, 0] < 0) and np.all(atlas.xyz[50:, 0] > 0)
    assert np.all(np.abs(atlas.xyz[:, 0]) < 75) and np.all((atlas.xyz[:, 1] > -110) & (atlas.xyz[:, 1] < 75))
    assert np.all((atlas.xyz[:, 2] > -50) & (atlas.xyz[:, 2] < 85))


def write_labels(path, values, names):
    suffix = path.name.split(".", 1)[1]
    if suffix == "annot":
        ctab = np.array([[10 * i, 20, 30, 0, 0] for i in range(len(names))], np.int32)
        nib.freesurfer.write_annot(str(path), values.astype(np.int32), ctab, names, fill_ctab=True)
    elif suffix == "label.gii":
        table = nib.gifti.GiftiLabelTable()
        for key, name in enumerate(names):
            label = nib.gifti.GiftiLabel(key)
            label.label = name.decode()
            table.labels.append(label)
        array = nib.gifti.GiftiDataArray(values.astype(np.int32), intent="NIFTI_INTENT_LABEL",
                                         datatype="int32")
        nib.save(nib.gifti.GiftiImage(darrays=[array], labeltable=table), path)
    elif suffix == "mgz":
        nib.save(nib.MGHImage(values.astype(np.int32).reshape(-1, 1, 1), np.eye(4)), path)
    else:
        np.savetxt(path, values, fmt="%d", delimiter=",")


@pytest.mark.parametrize("suffix", ["annot", "label.gii", "mgz", "csv"])
def test_surface_label_file_round_trip(tmp_path, suffix):
    pial = {h: fsaverage5_pial(h) for h in ("lh", "rh")}
    values = {}
    for hemi, n_labels in (("lh", 3), ("rh", 4)):
        # labels 1..n by anterior-posterior band, label 0 (unassigned) for the lowest vertices
        y = pial[hemi][:, 1]
        values[hemi] = np.digitize(y, np.quantile(y, np.linspace(0, 1, n_labels + 1)[1:-1])) + 1
        values[hemi][pial[hemi][:, 2] < -20] = 0
    names = [b"unknown", b"front", b"middle", b"back", b"extra"]
    files = []
    for hemi in ("lh", "rh"):
        files.append(tmp_path / f"{hemi}.{suffix}")
        write_labels(files[-1], values[hemi], names)
    spec = load_atlas(",".join(map(str, files)), mesh="fsaverage5")
    assert spec.atlas.n_parcels == 7 and spec.mesh == "fsaverage5" and spec.atlas.kind == "surface"
    expected_xyz, expected_labels = [], {}
    for hemi, offset in (("lh", 0), ("rh", 3)):
        used = np.unique(values[hemi][values[hemi] > 0])
        expected_xyz += [pial[hemi][values[hemi] == v].mean(0) for v in used]
        expected_labels[hemi] = np.where(values[hemi] > 0, values[hemi] - 1 + offset, -1)
        np.testing.assert_array_equal(spec.vertex_labels[hemi], expected_labels[hemi])
    np.testing.assert_allclose(spec.atlas.xyz, expected_xyz, atol=1e-3)
    if suffix in ("annot", "label.gii"):
        assert spec.atlas.names[:3] == ("lh_front", "lh_middle", "lh_back")
        assert spec.atlas.names[-1] == "rh_extra"
    else:
        assert spec.atlas.names[:4] == ("lh_1", "lh_2", "lh_3", "rh_1")


def test_surface_labels_on_mesh_files_and_mismatches(tmp_path):
    meshes = []
    for hemi, sign in (("lh", -1), ("rh", 1)):
        coords = np.array([[10, 0, 0], [20, 0, 0], [30, 6, 3], [40, 9, 9]], np.float32) * [sign, 1, 1]
        faces = np.array([[0, 1, 2], [1, 2, 3]], np.int32)
        arrays = [nib.gifti.GiftiDataArray(coords.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
                  nib.gifti.GiftiDataArray(faces, intent="NIFTI_INTENT_TRIANGLE")]
        meshes.append(tmp_path / f"{hemi}.pial.gii")
        nib.save(nib.gifti.GiftiImage(darrays=arrays), meshes[-1])
    (tmp_path / "lh.csv").write_text("5\n5\n-1\n8\n")
    (tmp_path / "rh.csv").write_text("0\n2\n2\n2\n")
    labels = f"{tmp_path / 'lh.csv'},{tmp_path / 'rh.csv'}"
    spec = load_atlas(labels, mesh=f"{meshes[0]},{meshes[1]}")
    np.testing.assert_allclose(spec.atlas.xyz, [[-15, 0, 0], [-40, 9, 9], [30, 5, 4]])
    np.testing.assert_array_equal(spec.vertex_labels["lh"], [0, 0, -1, 1])
    np.testing.assert_array_equal(spec.vertex_labels["rh"], [-1, 2, 2, 2])
    assert isinstance(spec, AtlasSpec) and spec.atlas.names == ("lh_5", "lh_8", "rh_2")
    with pytest.raises(AtlasError, match=r"lh.csv: 4 vertices, but the lh mesh \(fsaverage5\) has 10242"):
        load_atlas(labels, mesh="fsaverage5")
    with pytest.raises(AtlasError, match="need --mesh"):
        load_atlas(labels)
    (tmp_path / "rh.csv").write_text("0\n0\n-1\n0\n")
    with pytest.raises(AtlasError, match="rh.csv: no labelled vertices"):
        load_atlas(labels, mesh=f"{meshes[0]},{meshes[1]}")
    with pytest.raises(AtlasError, match="nowhere.annot: surface label file not found"):
        load_atlas(f"{tmp_path / 'nowhere.annot'},{tmp_path / 'rh.csv'}", mesh="fsaverage5")


def test_schaefer_style_annot_names_give_networks(tmp_path):
    mesh = tmp_path / "mesh.gii"
    coords = np.array([[0, 0, 0], [2, 0, 0], [0, 4, 0], [0, 0, 6]], np.float32)
    points = nib.gifti.GiftiDataArray(coords, intent="NIFTI_INTENT_POINTSET")
    nib.save(nib.gifti.GiftiImage(darrays=[points]), mesh)
    names = [b"Background+Medial_Wall", b"7Networks_LH_Vis_1", b"7Networks_LH_Default_PCC_1"]
    write_labels(tmp_path / "lh.annot", np.array([1, 1, 2, 0]), names)
    write_labels(tmp_path / "rh.annot", np.array([0, 2, 2, 2]), [n.replace(b"LH", b"RH") for n in names])
    spec = load_atlas(f"{tmp_path / 'lh.annot'},{tmp_path / 'rh.annot'}", mesh=f"{mesh},{mesh}")
    assert spec.atlas.networks == ("Vis", "Default", "Default")
    np.testing.assert_allclose(spec.atlas.xyz, [[1, 0, 0], [0, 4, 0], [2 / 3, 4 / 3, 2]], atol=1e-6)
    lut = tmp_path / "lut.txt"
    lut.write_text("#No. Label Name: R G B A\n0 Unknown 0 0 0 0\n3 Left-Thalamus 0 118 14 0\n")
    image = box_image(tmp_path)
    from_lut = load_volume_atlas(image, lut)
    assert from_lut.atlas.names == ("Left-Thalamus",) and from_lut.atlas.extra["ignored_values"] == [7, 12]
