"""Atlases: which brain regions ("parcels") the voxel or vertex signals are averaged over.

Values accepted by ``brainjax prepare --atlas`` / ``brainjax synth --atlas`` (nothing is downloaded):

Built-in coordinate atlases (spheres around MNI coordinates; files that ship inside nilearn):
  ``seitzman300``    300 ROIs (Seitzman et al. 2018), 13 networks; 15 ROIs are unassigned (network ``""``).
                     Sphere radius 5 mm, the file's most common radius (61 ROIs list 4 mm; all kept in
                     ``atlas.extra["radii"]``).
  ``dosenbach160``   160 ROIs (Dosenbach et al. 2010), 6 networks, 5 mm spheres.
  ``power264``       264 ROIs (Power et al. 2011), coordinates only (no networks), 5 mm spheres.

Built-in surface atlases:
  ``fsaverage5-N``   N parcels (N even, 2..2000), N/2 per hemisphere: seeded k-means of the fsaverage5 sphere
                     vertices (see :mod:`brainjax.data.atlas_surface`). For surface series on fsaverage5.
  ``schaeferN``      Schaefer 2018 parcels on fs_LR 32k for N = 100, 200, 300, 400, 1000 (999 parcels: label
                     533 is absent), and ``vosdewaelN`` (N = 100..400), from BrainSpace's conte69 files; no
                     network labels (see :mod:`brainjax.data.atlas_fslr`). For CIFTI dense series
                     (``.dtseries.nii``) and fs_LR 32k GIfTI series.
  ``schaeferN+subcortex``  the same plus one parcel per subcortical structure of the CIFTI file given as
                     ``--mesh REF.dtseries.nii`` (any dense file of the cohort).

Your own files:
  ``labels.nii.gz``  a 3-D integer label image in MNI space (0 = background), with ``--labels table`` to
                     name the parcels: a .tsv/.csv with columns ``index`` (label value), ``name`` and
                     optionally ``network``, or a .txt of ``value name [network]`` lines (a FreeSurfer colour
                     LUT also works). Without a table the parcels are named ``label_<value>``. Centroids come
                     from the affine.
  ``lh.annot,rh.annot``  per-vertex surface labels, left hemisphere first, with ``--mesh fsaverage5`` or
                     ``--mesh lh.pial.gii,rh.pial.gii``. Files: FreeSurfer .annot, GIfTI label .gii, .mgz, or
                     .csv (one integer per vertex). Labels 0 and -1 mean unassigned (medial wall); every other
                     label value is one parcel per hemisphere. Centroids = mean mesh coordinate per parcel.
"""

from __future__ import annotations

import csv
import importlib.resources
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import Atlas, AtlasError, AtlasSpec
from brainjax.data.atlas_fslr import SUBCORTEX, fslr_atlas_names, fslr_parcellation, is_fslr_atlas, with_subcortex
from brainjax.data.atlas_surface import fsaverage5_kmeans, load_surface_labels

COORDINATE_ATLASES = ("seitzman300", "dosenbach160", "power264")
SURFACE_ATLAS_EXAMPLES = ("fsaverage5-100", "fsaverage5-200", "fsaverage5-400", "fsaverage5-1000")
DEFAULT_SPHERE_RADIUS_MM = 5.0
_VOLUME_SUFFIXES = (".nii", ".nii.gz")


def list_builtin_atlases() -> list[str]:
    """Built-in atlas names; ``fsaverage5-N`` accepts any even N from 2 to 2000 (examples listed); the fs_LR
    ones also take ``+subcortex`` (with ``--mesh REF.dtseries.nii``)."""
    return [*COORDINATE_ATLASES, *SURFACE_ATLAS_EXAMPLES, *fslr_atlas_names()]


def load_atlas(spec: str, labels: str | None = None, mesh: str | None = None) -> AtlasSpec:
    """Load a built-in atlas by name or an atlas file (see the module docstring for accepted values).

    Args:
      spec: built-in name, a label image path, or ``"lh_file,rh_file"`` surface label files.
      labels: label table for a label image (names, optional networks).
      mesh: surface label files: ``"fsaverage5"`` or ``"lh_mesh,rh_mesh"`` files; ``NAME+subcortex``: the
        reference CIFTI file.
    Raises AtlasError for unknown names and bad or inconsistent files.
    """
    spec = str(spec).strip()
    if is_fslr_atlas(spec):
        if labels is not None or (mesh is not None and not spec.endswith(SUBCORTEX)):
            raise AtlasError(f"atlas {spec} is built in: --labels / --mesh apply only to atlas files (and --mesh "
                             f"to NAME{SUBCORTEX}: the reference CIFTI)")
        base = _builtin(spec.removesuffix(SUBCORTEX))
        return with_subcortex(base, mesh) if spec.endswith(SUBCORTEX) else base
    if spec in COORDINATE_ATLASES or re.fullmatch(r"fsaverage5-\d+", spec):
        if labels is not None or mesh is not None:
            raise AtlasError(f"atlas {spec} is built in: --labels / --mesh apply only to atlas files")
        return _builtin(spec)
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) == 2:
        if labels is not None:
            raise AtlasError(f"atlas {spec}: --labels applies to label images, not surface label files")
        try:
            return load_surface_labels(parts[0], parts[1], mesh)
        except (OSError, ValueError) as err:
            raise AtlasError(str(err)) from None
    path = Path(spec)
    if path.name.endswith(_VOLUME_SUFFIXES):
        if mesh is not None:
            raise AtlasError(f"atlas {spec}: --mesh applies to surface label files, not label images")
        return load_volume_atlas(path, labels)
    known = ", ".join(list_builtin_atlases())
    if path.exists():
        raise AtlasError(f"atlas {spec}: unsupported file type (expected .nii/.nii.gz, or 'lh,rh' surface "
                         f"label files with --mesh); built-in atlases: {known}, fsaverage5-N for even N")
    raise AtlasError(f"unknown atlas {spec!r} (no such file); built-in atlases: {known}, "
                     f"fsaverage5-N for even N, schaeferN/vosdewaelN{SUBCORTEX} with --mesh REF.dtseries.nii")


@lru_cache(maxsize=16)
def _builtin(name: str) -> AtlasSpec:
    if name == "seitzman300":
        spec = _seitzman()
    elif name == "dosenbach160":
        spec = _dosenbach()
    elif name == "power264":
        spec = _power()
    elif is_fslr_atlas(name):
        spec = fslr_parcellation(name)
    else:
        n_parcels = int(name.split("-")[1])
        if n_parcels % 2 or not 2 <= n_parcels <= 2000:
            raise AtlasError(f"atlas {name}: fsaverage5-N needs an even N from 2 to 2000")
        spec = fsaverage5_kmeans(n_parcels)
    # Cached objects are shared between callers, so nobody may modify them in place.
    spec.atlas.xyz.flags.writeable = False
    for array in [spec.label_values, *(spec.vertex_labels or {}).values()]:
        if array is not None:
            array.flags.writeable = False
    return spec


# ------------------------------------------------------------------------------------------ coordinates

def nilearn_data_file(name: str) -> Path:
    """Path of a file in nilearn's shipped ``datasets/data`` folder."""
    path = Path(str(importlib.resources.files("nilearn") / "datasets" / "data" / name))
    if not path.exists():
        raise AtlasError(f"{path}: not found in the installed nilearn (it ships this file since 0.10)")
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def _seitzman() -> AtlasSpec:
    path = nilearn_data_file("seitzman_2018_ROIs_300inVol_MNI_allInfo.txt")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    if header[:3] != ["x", "y", "z"] or any(len(r) != 6 for r in rows):
        raise AtlasError(f"{path}: expected columns x y z radius netWorkbenchLabel netName")
    xyz = np.array([[float(v) for v in r[:3]] for r in rows])
    radii = [float(r[3]) for r in rows]
    networks = tuple("" if r[5] == "unassigned" else r[5] for r in rows)
    names = tuple(f"{r[5]}_{i:03d}" for i, r in enumerate(rows))
    # NiftiSpheresMasker takes one radius: the file's most common one (5 mm for 239 of 300 ROIs).
    radius = Counter(radii).most_common(1)[0][0]
    atlas = Atlas("seitzman300", "coordinates", names, xyz, networks, source=f"nilearn:{path.name}",
                  extra={"radius_mm": radius, "radii": radii})
    return AtlasSpec(atlas=atlas, radius=radius)


def _dosenbach() -> AtlasSpec:
    path = nilearn_data_file("dosenbach_2010.csv")
    rows = _csv_rows(path)
    xyz = np.array([[float(r[c]) for c in "xyz"] for r in rows])
    counts = Counter(r["name"] for r in rows)
    # Several regions share a name (e.g. 18 "occipital"); the ROI number makes them unique.
    names = tuple(r["name"] if counts[r["name"]] == 1 else f"{r['name']}_{r['number']}" for r in rows)
    networks = tuple(r["network"] for r in rows)
    atlas = Atlas("dosenbach160", "coordinates", names, xyz, networks, source=f"nilearn:{path.name}",
                  extra={"radius_mm": DEFAULT_SPHERE_RADIUS_MM})
    return AtlasSpec(atlas=atlas, radius=DEFAULT_SPHERE_RADIUS_MM)


def _power() -> AtlasSpec:
    path = nilearn_data_file("power_2011.csv")
    rows = _csv_rows(path)
    xyz = np.array([[float(r[c]) for c in "XYZ"] for r in rows])
    names = tuple(f"power_{int(r['ROI']):03d}" for r in rows)
    atlas = Atlas("power264", "coordinates", names, xyz, None, source=f"nilearn:{path.name}",
                  extra={"radius_mm": DEFAULT_SPHERE_RADIUS_MM})
    return AtlasSpec(atlas=atlas, radius=DEFAULT_SPHERE_RADIUS_MM)


# ------------------------------------------------------------------------------------------ volumes

_INDEX_COLUMNS = ("index", "value", "label_value", "id")
_NAME_COLUMNS = ("name", "label", "label_name", "region")
_NETWORK_COLUMNS = ("network", "network_name", "net")


def read_label_table(path: str | Path) -> list[tuple[int, str, str]]:
    """(label value, name, network or "") rows of a label table.

    .tsv/.csv need a header with an index column (``index``/``value``/``id``) and a name column (``name``/
    ``label``/``region``), optionally ``network``. Other files (.txt, .lut) hold ``value name [network]``
    lines or FreeSurfer LUT lines ``value name R G B A``; ``#`` starts a comment, a non-numeric first line is
    a header.
    """
    path = Path(path)
    if not path.exists():
        raise AtlasError(f"{path}: label table not found")
    text = path.read_text()
    rows: list[tuple[int, str, str]] = []
    if path.suffix.lower() in (".tsv", ".csv"):
        lines = [line for line in text.splitlines() if line.strip()]
        reader = csv.reader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = [c.strip().lower() for c in next(reader, [])]
        pick = lambda options: next((header.index(c) for c in options if c in header), None)
        index_col, name_col, network_col = pick(_INDEX_COLUMNS), pick(_NAME_COLUMNS), pick(_NETWORK_COLUMNS)
        if index_col is None or name_col is None:
            raise AtlasError(f"{path}: label table needs 'index' and 'name' columns, found {header}")
        for line_no, cells in enumerate(reader, 2):
            if len(cells) != len(header):
                raise AtlasError(f"{path}: line {line_no} has {len(cells)} cells, the header "
                                 f"has {len(header)}")
            network = cells[network_col].strip() if network_col is not None else ""
            rows.append((_label_value(cells[index_col], path, line_no), cells[name_col].strip(), network))
    else:
        lines = [(n, line.split("#")[0].split()) for n, line in enumerate(text.splitlines(), 1)]
        lines = [(n, tokens) for n, tokens in lines if tokens]
        if lines and not re.fullmatch(r"-?\d+", lines[0][1][0]):
            lines = lines[1:]
        for line_no, tokens in lines:
            is_lut = len(tokens) == 6 and all(re.fullmatch(r"\d+", t) for t in tokens[2:])
            if not (2 <= len(tokens) <= 3 or is_lut):
                raise AtlasError(f"{path}: line {line_no}: expected 'value name [network]', got {tokens}")
            network = tokens[2] if len(tokens) == 3 else ""
            rows.append((_label_value(tokens[0], path, line_no), tokens[1], network))
    if not rows:
        raise AtlasError(f"{path}: label table is empty")
    values = [r[0] for r in rows]
    duplicated = sorted(v for v, c in Counter(values).items() if c > 1)
    if duplicated:
        raise AtlasError(f"{path}: label values listed more than once: {duplicated}")
    return rows


def _label_value(text: str, path: Path, line_no: int) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise AtlasError(f"{path}: line {line_no}: label value {text!r} is not an integer") from None


def load_volume_atlas(path: str | Path, labels: str | Path | None = None) -> AtlasSpec:
    """A 3-D integer label image (0 = background) and an optional label table -> volume AtlasSpec.

    Parcels follow the table's order when a table is given (a row for 0 is skipped; image labels missing
    from it are ignored and listed in ``atlas.extra["ignored_values"]``), else ascending label value.
    Centroid of a parcel = the mean of its voxel indices mapped through the image affine (mm).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise AtlasError(f"{path}: label image not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise AtlasError(f"{path}: cannot read the label image ({err})") from None
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise AtlasError(f"{path}: label image must be 3-D, got shape {data.shape} (probabilistic 4-D "
                         f"atlases are not supported)")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise AtlasError(f"{path}: label image has non-integer values (a probabilistic or resampled "
                             f"atlas?)")
    data = np.round(data).astype(np.int64)
    if data.min() < 0:
        raise AtlasError(f"{path}: label image has negative values")
    present = np.unique(data)
    present = present[present != 0]
    if present.size == 0:
        raise AtlasError(f"{path}: label image has no labels (all voxels are background 0)")
    if labels is None:
        table = [(int(v), f"label_{int(v)}", "") for v in present]
    else:
        # Lookup tables often list 0 as "Background" / "Unknown"; 0 is never a parcel.
        table = [row for row in read_label_table(labels) if row[0] != 0]
        missing = sorted({v for v, _, _ in table} - set(present.tolist()))
        if missing:
            raise AtlasError(f"{labels}: lists label values absent from {path}: {missing[:20]}")
    values = np.array([v for v, _, _ in table], np.int64)
    ignored = sorted(set(present.tolist()) - set(values.tolist()))
    voxels = np.argwhere(np.isin(data, values))
    position = np.searchsorted(np.sort(values), data[tuple(voxels.T)])
    order = np.argsort(values)  # position indexes sorted values; map back to table order below
    counts = np.bincount(position, minlength=len(values))
    sums = np.stack([np.bincount(position, weights=voxels[:, d], minlength=len(values)) for d in range(3)], 1)
    centres_sorted = sums / counts[:, None]
    centres = np.empty_like(centres_sorted)
    centres[order] = centres_sorted
    xyz = nib.affines.apply_affine(img.affine, centres)
    networks = tuple(n for _, _, n in table) if any(n for _, _, n in table) else None
    atlas = Atlas(path.name.split(".")[0], "volume", tuple(n for _, n, _ in table), xyz, networks,
                  source=str(path.resolve()),
                  extra={"label_values": values.tolist(), "ignored_values": ignored,
                         "labels_table": str(Path(labels).resolve()) if labels else None})
    label_image = nib.Nifti1Image(data.astype(np.int32), img.affine)
    return AtlasSpec(atlas=atlas, label_image=label_image, label_values=values)
