"""Surface atlases: the built-in ``fsaverage5-N`` k-means parcellations and per-vertex label files.

Coordinates: fsaverage pial vertex coordinates are in FreeSurfer's MNI305-aligned space (Talairach-registered
average), so mean pial coordinates are used as approximate MNI mm centroids (off by a few mm from MNI152).
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import Atlas, AtlasError, AtlasSpec

HEMIS = ("lh", "rh")
_FSAVERAGE5_FILES = {"lh": "left", "rh": "right"}
# nilearn ships no medial-wall mask for fsaverage5. Its average thickness map is ~0 there (FreeSurfer gives
# non-cortex no thickness); real cortex is thicker than 1 mm, so < 1 mm is used as the medial-wall proxy
# (about 600 of 10,242 vertices per hemisphere).
MEDIAL_WALL_MAX_THICKNESS_MM = 1.0
_SEED = 0


def _fsaverage5_file(kind: str, hemi: str) -> Path:
    path = Path(str(importlib.resources.files("nilearn") / "datasets" / "data" / "fsaverage5"
                    / f"{kind}_{_FSAVERAGE5_FILES[hemi]}.gii.gz"))
    if not path.exists():
        raise AtlasError(f"{path}: fsaverage5 file missing from the installed nilearn")
    return path


def fsaverage5_mesh(kind: str = "pial") -> dict[str, np.ndarray]:
    """float64 [10242, 3] vertex coordinates per hemisphere of nilearn's fsaverage5 ``kind`` mesh."""
    import nibabel as nib

    load = lambda h: nib.load(str(_fsaverage5_file(kind, h))).darrays[0].data
    return {h: np.asarray(load(h), np.float64) for h in HEMIS}


def fsaverage5_cortex() -> dict[str, np.ndarray]:
    """bool [10242] per hemisphere: True off the medial wall (thickness proxy, see the module constant)."""
    import nibabel as nib

    thickness = {h: np.asarray(nib.load(str(_fsaverage5_file("thick", h))).darrays[0].data) for h in HEMIS}
    return {h: t >= MEDIAL_WALL_MAX_THICKNESS_MM for h, t in thickness.items()}


def fsaverage5_kmeans(n_parcels: int) -> AtlasSpec:
    """``fsaverage5-N``: k-means (fixed seed) of each hemisphere's cortical vertices on the sphere, N/2 each.

    The sphere makes parcels of roughly equal cortical area. Parcels are ordered by their centroid (y, then z,
    then x), so the order is reproducible and anterior parcels come last; names ``lh_000``... Medial-wall
    vertices get label -1.
    """
    from sklearn.cluster import KMeans

    per_hemi = n_parcels // 2
    sphere, pial, cortex = fsaverage5_mesh("sphere"), fsaverage5_mesh("pial"), fsaverage5_cortex()
    vertex_labels, names, centroids = {}, [], []
    width = max(3, len(str(per_hemi - 1)))
    for offset, hemi in enumerate(HEMIS):
        keep = np.flatnonzero(cortex[hemi])
        points = sphere[hemi][keep] / np.linalg.norm(sphere[hemi][keep], axis=1, keepdims=True)
        kmeans = KMeans(n_clusters=per_hemi, n_init=1, random_state=_SEED + offset).fit(points)
        cluster = kmeans.labels_
        counts = np.bincount(cluster, minlength=per_hemi)
        if np.any(counts == 0):
            raise AtlasError(f"fsaverage5-{n_parcels}: k-means left {int(np.sum(counts == 0))} parcels empty")
        sums = [np.bincount(cluster, weights=pial[hemi][keep, d], minlength=per_hemi) for d in range(3)]
        means = np.stack(sums, 1) / counts[:, None]
        order = np.lexsort((means[:, 0], means[:, 2], means[:, 1]))
        rank = np.empty(per_hemi, np.int64)
        rank[order] = np.arange(per_hemi)
        labels = np.full(sphere[hemi].shape[0], -1, np.int32)
        labels[keep] = rank[cluster] + offset * per_hemi
        vertex_labels[hemi] = labels
        centroids.append(means[order])
        names += [f"{hemi}_{i:0{width}d}" for i in range(per_hemi)]
    atlas = Atlas(f"fsaverage5-{n_parcels}", "surface", tuple(names), np.concatenate(centroids), None,
                  source="nilearn:datasets/data/fsaverage5 (k-means on sphere)",
                  extra={"mesh": "fsaverage5", "seed": _SEED,
                         "medial_wall": f"thickness < {MEDIAL_WALL_MAX_THICKNESS_MM} mm"})
    return AtlasSpec(atlas=atlas, vertex_labels=vertex_labels, mesh="fsaverage5")


# ------------------------------------------------------------------------------------------ label files

def read_mesh_coordinates(path: str | Path) -> np.ndarray:
    """float64 [V, 3] vertex coordinates of a GIfTI surface (.gii/.gii.gz) or FreeSurfer surface (lh.pial)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise AtlasError(f"{path}: mesh file not found")
    try:
        if path.name.endswith((".gii", ".gii.gz")):
            arrays = [d.data for d in nib.load(str(path)).darrays if np.asarray(d.data).ndim == 2]
            coords = next(a for a in arrays if a.shape[1] == 3 and np.issubdtype(a.dtype, np.floating))
        else:
            coords = nib.freesurfer.read_geometry(str(path))[0]
    except Exception as err:  # nibabel raises many types for unreadable files
        raise AtlasError(f"{path}: cannot read mesh coordinates ({err or 'no float [V, 3] array'})") from None
    return np.asarray(coords, np.float64)


def read_vertex_labels(path: str | Path) -> tuple[np.ndarray, dict[int, str]]:
    """(int [V] label per vertex, {label value: name} where the file names them) of a surface label file.

    Accepts FreeSurfer .annot, GIfTI label (.label.gii / .gii), .mgz/.mgh and .csv/.txt (one integer per
    vertex).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise AtlasError(f"{path}: surface label file not found")
    name = path.name.lower()
    names: dict[int, str] = {}
    try:
        if name.endswith(".annot"):
            values, _, annot_names = nib.freesurfer.read_annot(str(path))
            names = {i: n.decode() if isinstance(n, bytes) else str(n) for i, n in enumerate(annot_names)}
        elif name.endswith((".gii", ".gii.gz")):
            img = nib.load(str(path))
            values = img.darrays[0].data
            names = {int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items()}
        elif name.endswith((".mgz", ".mgh")):
            values = np.asarray(nib.load(str(path)).dataobj)
            values = values.reshape(-1) if values.size == max(values.shape) else values
        elif name.endswith((".csv", ".txt")):
            values = np.loadtxt(str(path), delimiter="," if name.endswith(".csv") else None, ndmin=1)
        else:
            raise AtlasError(f"{path}: unsupported surface label file (expected .annot, .gii, .mgz or .csv)")
    except AtlasError:
        raise
    except Exception as err:  # nibabel / numpy raise many types for corrupt files
        raise AtlasError(f"{path}: cannot read surface labels ({err})") from None
    values = np.asarray(values)
    if values.ndim != 1:
        raise AtlasError(f"{path}: expected one label per vertex, got an array of shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise AtlasError(f"{path}: surface labels must be integers")
    return np.round(values).astype(np.int64), names


def _mesh_for(mesh: str | None, where: str) -> tuple[dict[str, np.ndarray], str]:
    if mesh is None:
        raise AtlasError(f"{where}: surface label files need --mesh (fsaverage5 or 'lh_mesh,rh_mesh')")
    if mesh.strip() == "fsaverage5":
        return fsaverage5_mesh("pial"), "fsaverage5"
    files = [p.strip() for p in mesh.split(",")]
    if len(files) != 2:
        raise AtlasError(f"mesh {mesh!r}: expected 'fsaverage5' or two files 'lh_mesh,rh_mesh'")
    return {h: read_mesh_coordinates(f) for h, f in zip(HEMIS, files)}, mesh


_SCHAEFER_NETWORK = re.compile(r"^\d+Networks_[LR]H_([A-Za-z]+)_")


def load_surface_labels(lh_path: str | Path, rh_path: str | Path, mesh: str | None) -> AtlasSpec:
    """Per-vertex label files of the two hemispheres (lh first) on ``mesh`` -> surface AtlasSpec.

    Labels 0 and -1 are unassigned; each other value is one parcel per hemisphere, lh parcels first, ascending
    value. Names come from the file's label table (``lh_<name>``) or are ``lh_<value>``. Networks are read
    from Schaefer-style names (``7Networks_LH_Vis_1`` -> ``Vis``) when every parcel has one, else None.
    """
    coords, mesh_name = _mesh_for(mesh, f"{lh_path},{rh_path}")
    vertex_labels, names, centroids = {}, [], []
    for hemi, path in zip(HEMIS, (lh_path, rh_path)):
        values, table = read_vertex_labels(path)
        if values.shape[0] != coords[hemi].shape[0]:
            raise AtlasError(f"{path}: {values.shape[0]} vertices, but the {hemi} mesh ({mesh_name}) has "
                             f"{coords[hemi].shape[0]}")
        parcels = np.unique(values[values > 0])
        if parcels.size == 0:
            raise AtlasError(f"{path}: no labelled vertices (all 0 / -1)")
        index = np.searchsorted(parcels, values)
        labels = np.where(values > 0, index + len(names), -1).astype(np.int32)
        counts = np.bincount(index[values > 0], minlength=parcels.size)
        sums = np.stack([np.bincount(index[values > 0], weights=coords[hemi][values > 0, d],
                                     minlength=parcels.size) for d in range(3)], 1)
        centroids.append(sums / counts[:, None])
        names += [f"{hemi}_{table.get(int(v), int(v))}" for v in parcels]
        vertex_labels[hemi] = labels
    networks = [_SCHAEFER_NETWORK.match(n[3:]) for n in names]
    atlas = Atlas(Path(lh_path).name.split(".")[0], "surface", tuple(names), np.concatenate(centroids),
                  tuple(m.group(1) for m in networks) if all(networks) else None,
                  source=f"{Path(lh_path).resolve()},{Path(rh_path).resolve()}", extra={"mesh": mesh_name})
    return AtlasSpec(atlas=atlas, vertex_labels=vertex_labels, mesh=mesh_name)
