"""Input readers for ``brainjax prepare``: NIfTI volumes, GIfTI/MGZ surface series, CIFTI-2 dense series
(:mod:`brainjax.data.cifti`), ready parcel tables.

Every reader returns parcel means as float64 ``[T, P]`` in the atlas's parcel order, plus what it learned on
the way (TR, parcels without any voxel/vertex, extra columns usable as confounds). Scan discovery and
BIDS/fMRIPrep name parsing live in :mod:`brainjax.data.scans`; confound selection ends this module.

TR sources, first found wins: ``--tr``; a BIDS sidecar ``NAME.json`` (``RepetitionTime``); the file itself
(NIfTI ``zooms[3]`` with its time unit, MGZ ``tr`` in ms, GIfTI ``TimeStep`` metadata, the CIFTI series
step); else an error that asks for ``--tr``.

Every reader refuses data that are not real numbers (complex, boolean, text, objects, RGB) with the data type
and the file named, before any conversion to float could drop an imaginary part or turn flags into a signal.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import AtlasSpec
from brainjax.data.cifti import cifti_tr, read_cifti
from brainjax.data.clean import ScanError
from brainjax.data.scans import ScanInput, split_name

# fMRIPrep's 9-parameter set (Satterthwaite et al. 2013): 6 rigid-body motion, white matter, CSF, global.
DEFAULT_CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "white_matter", "csf",
                     "global_signal")
_NIFTI_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}
# numpy dtype kinds that are not real-valued signal; integer ("i", "u") and float ("f") are read.
_REFUSED_KINDS = {"c": "complex: the imaginary part would be dropped", "b": "boolean: 0/1 flags, not a signal",
                  "O": "Python objects", "U": "text", "S": "text", "V": "structured, e.g. RGB",
                  "M": "dates", "m": "time spans"}


def check_dtype(dtype, path: str | Path) -> None:
    """Raise ScanError unless ``dtype`` holds real numbers (integers or floats), naming the type and the file."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        why = _REFUSED_KINDS.get(dtype.kind, "not numeric")
        raise ScanError(f"{Path(path).name}: data type {dtype} ({why}) is refused; a series must hold real numbers "
                        f"(integer or float)")


@dataclass
class RawScan:
    """Parcel means before cleaning: ``series`` float64 [T, P] and what the reader learned."""

    series: np.ndarray
    tr: float | None  # seconds, None when the file does not say
    empty_parcels: list[int] = field(default_factory=list)  # parcels with no voxel/vertex in the data
    extra_names: list[str] = field(default_factory=list)  # table columns that are not atlas parcels
    extra: np.ndarray | None = None  # [T, len(extra_names)]
    nonfinite_what: str = ""  # where NaN columns of ``series`` came from (NaN/Inf voxels inside those parcels)


# ---------------------------------------------------------------------------------------------- TR look-up

def sidecar_tr(path: str | Path) -> float | None:
    """``RepetitionTime`` from the BIDS sidecar ``NAME.json`` next to ``path``, if there is one."""
    stem, _ = split_name(Path(path).name)
    sidecar = Path(path).with_name(stem + ".json")
    if not sidecar.exists():
        return None
    try:
        value = json.loads(sidecar.read_text()).get("RepetitionTime")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ScanError(f"sidecar {sidecar} is not a valid JSON object ({err})") from None
    return None if value is None else float(value)


def _nifti_tr(img) -> float | None:
    if len(img.shape) < 4:
        return None
    _, time_unit = img.header.get_xyzt_units()
    tr = float(img.header.get_zooms()[3]) * _NIFTI_TIME_UNITS.get(time_unit, 1.0)
    return tr if tr > 0 else None


def _mgh_tr(img) -> float | None:
    tr = float(img.header["tr"]) / 1000.0  # MGH/MGZ keep TR in milliseconds
    return tr if tr > 0 else None


def _gifti_tr(img) -> float | None:
    for darray in img.darrays[:1]:
        value = darray.meta.get("TimeStep") if darray.meta is not None else None
        if value:
            tr = float(value)
            return tr / 1000.0 if tr > 20 else tr  # FreeSurfer writes ms, Workbench seconds
    return None


def probe_tr(scan: ScanInput) -> float | None:
    """The TR of a scan from its sidecar or header without reading the data (None if unknown/unreadable)."""
    import nibabel as nib

    first = scan.files[0]
    try:
        tr = sidecar_tr(first)
        if tr is not None:
            return tr
        if scan.kind == "volume":
            return _nifti_tr(nib.load(first))
        if scan.kind == "surface":
            img = nib.load(first)
            return _mgh_tr(img) if split_name(first)[1] in (".mgz", ".mgh") else _gifti_tr(img)
        if scan.kind == "cifti":
            return cifti_tr(first)
    except Exception:  # noqa: BLE001 - an unreadable file fails later with its own reason
        return None
    return None


# ---------------------------------------------------------------------------------------------- volumes

def brain_mask_for(path: Path) -> Path | None:
    """fMRIPrep's ``..._desc-brain_mask.nii.gz`` beside ``..._desc-preproc_bold.nii.gz``."""
    if "_desc-preproc_bold" not in path.name:
        return None
    mask = path.with_name(path.name.replace("_desc-preproc_bold", "_desc-brain_mask"))
    return mask if mask.exists() else None


def _parcel_extractor(spec: AtlasSpec, mask):
    """A function 4-D image -> (float64 [T, P] parcel means, parcels without voxels) for ``spec``."""
    from nilearn.maskers import NiftiLabelsMasker, NiftiSpheresMasker

    n_parcels = spec.atlas.n_parcels
    if spec.label_image is not None:
        def labels(img):
            masker = NiftiLabelsMasker(labels_img=spec.label_image, mask_img=mask, resampling_target="data",
                                       strategy="mean", standardize=None)
            signals = masker.fit_transform(img)
            column = {int(v): int(c) for c, v in masker.region_ids_.items() if c != "background"}
            series, empty = np.zeros((img.shape[3], n_parcels)), []
            for parcel, value in enumerate(np.asarray(spec.label_values)):
                if int(value) in column:
                    series[:, parcel] = signals[:, column[int(value)]]
                else:
                    empty.append(parcel)
            return series, empty
        return labels
    if spec.radius is None:
        raise ScanError(f"atlas {spec.atlas.name} ({spec.atlas.kind}) cannot parcellate volumes; use a label "
                        f"image or coordinate atlas")

    def spheres(img, seeds=tuple(range(n_parcels))):
        masker = NiftiSpheresMasker(seeds=spec.atlas.xyz[list(seeds)].tolist(), radius=spec.radius, mask_img=mask,
                                    allow_overlap=True, standardize=None)
        series = np.zeros((img.shape[3], n_parcels))
        try:
            series[:, list(seeds)] = masker.fit_transform(img)
            return series, []
        except ValueError as err:
            found = re.search(r"spheres are empty: \[([\d\s,]*)\]", str(err))
            if not found or len(seeds) < n_parcels:
                raise
            empty = [int(i) for i in re.findall(r"\d+", found.group(1))]
            kept = [i for i in range(n_parcels) if i not in set(empty)]
            if kept:  # the other spheres' means (prepare masks the empty ones, or rejects the scan)
                series = spheres(img, kept)[0]
            return series, empty
    return spheres


def read_volume(path: str | Path, spec: AtlasSpec) -> RawScan:
    """Parcel means of a 4-D NIfTI: NiftiLabelsMasker (label image) or NiftiSpheresMasker (coordinates).

    nilearn silently turns NaN voxels into zeros, so non-finite voxels are counted first and the parcels they
    fall in get NaN means (``prepare`` counts them as missing; NaNs outside every parcel are harmless).
    """
    import nibabel as nib

    path = Path(path)
    img = nib.load(path)
    if len(img.shape) != 4:
        cifti = " (CIFTI dense series are read uncompressed, as .dtseries.nii, with an fs_LR atlas such as " \
            "schaefer400)" if path.name.endswith(("tseries.nii", "tseries.nii.gz")) else ""
        raise ScanError(f"expected a 4-D image, got shape {img.shape}{cifti}")
    tr = _nifti_tr(img)
    check_dtype(img.get_data_dtype(), path)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    extract = _parcel_extractor(spec, brain_mask_for(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resampling and NaN notices; the QC checks report problems instead
        bad = ~np.isfinite(data)  # before extraction: nilearn zeroes NaNs of the array in place
        try:
            series, empty = extract(nib.Nifti1Image(data, img.affine, img.header))
        except ScanError:
            raise
        except Exception as err:  # noqa: BLE001 - the file was read: this is the atlas against its grid
            zooms = tuple(round(float(z), 2) for z in img.header.get_zooms()[:3])
            raise ScanError(f"the atlas {spec.atlas.name} could not be applied to this image's grid (shape "
                            f"{img.shape[:3]}, voxel size {zooms}): {type(err).__name__}: {err}") from None
        nonfinite_what = ""
        if bad.any():
            # the same extractor on a one-frame image of non-finite counts tells which parcels they fall in
            counts = nib.Nifti1Image(bad.sum(axis=3, keepdims=True).astype(np.float32), img.affine)
            hit = np.setdiff1d(np.flatnonzero(extract(counts)[0][0] > 0), empty)
            if hit.size:
                series[:, hit] = np.nan
                nonfinite_what = f"NaN/Inf values in {int(bad.any(axis=3).sum())} voxels ({int(bad.sum())} values)"
    return RawScan(series, tr, empty, nonfinite_what=nonfinite_what)


# ---------------------------------------------------------------------------------------------- surfaces

def load_hemisphere(path: str | Path) -> tuple[np.ndarray, float | None]:
    """One hemisphere's series as float32 [V, T] and its TR (None when the file has none)."""
    import nibabel as nib

    path = Path(path)
    img = nib.load(path)
    if split_name(path.name)[1] in (".mgz", ".mgh"):
        check_dtype(img.get_data_dtype(), path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
        if data.ndim != 4 or data.shape[1:3] != (1, 1):
            raise ScanError(f"expected a surface series of shape (V, 1, 1, T), got {data.shape}")
        return data[:, 0, 0, :], _mgh_tr(img)
    for darray in img.darrays[:1]:  # a series' arrays share one type
        check_dtype(np.asarray(darray.data).dtype, path)
    arrays = [np.asarray(d.data, np.float32) for d in img.darrays]
    if len(arrays) == 1 and arrays[0].ndim == 2:
        data = arrays[0]
    elif arrays and all(a.ndim == 1 for a in arrays):
        data = np.stack(arrays, axis=1)
    else:
        raise ScanError(f"expected one data array per time point, got shapes {[a.shape for a in arrays][:3]}")
    return data, _gifti_tr(img)


def parcel_means_from_vertices(hemis: dict[str, np.ndarray], vertex_labels: dict[str, np.ndarray],
                               n_parcels: int) -> tuple[np.ndarray, list[int]]:
    """Average vertices per parcel over both hemispheres.

    Args:
      hemis: {"lh": [V_lh, T], "rh": [V_rh, T]} vertex series.
      vertex_labels: {"lh": int [V_lh], "rh": int [V_rh]} parcel index per vertex, -1 = unassigned.
    Returns (float64 [T, P] means, parcels without any vertex).
    """
    from scipy.sparse import csr_matrix

    n_time = next(iter(hemis.values())).shape[1]
    sums = np.zeros((n_parcels, n_time))
    counts = np.zeros(n_parcels)
    for hemi, data in hemis.items():
        labels = np.asarray(vertex_labels[hemi])
        if labels.shape[0] != data.shape[0]:
            raise ScanError(f"{hemi}: {data.shape[0]} vertices, the atlas mesh has {labels.shape[0]}")
        if data.shape[1] != n_time:
            raise ScanError(f"hemispheres differ in length: {n_time} and {data.shape[1]} time points")
        keep = np.flatnonzero(labels >= 0)
        # A sparse [P, V] indicator turns the per-parcel sum into one matrix product over all time points.
        indicator = csr_matrix((np.ones(keep.size), (labels[keep], keep)), shape=(n_parcels, data.shape[0]))
        sums += indicator @ data.astype(np.float64)
        counts += np.bincount(labels[keep], minlength=n_parcels)[:n_parcels]
    empty = np.flatnonzero(counts == 0).tolist()
    return (sums / np.maximum(counts, 1)[:, None]).T, empty


def read_surface(files: tuple[str, str], spec: AtlasSpec) -> RawScan:
    """Parcel means of a left/right pair of surface series (GIfTI or MGZ), files ordered (lh, rh)."""
    if spec.vertex_labels is None:
        raise ScanError(f"atlas {spec.atlas.name} ({spec.atlas.kind}) has no vertex labels; surface series need "
                        f"a surface atlas such as fsaverage5-400")
    hemis, trs = {}, []
    for hemi, path in zip(("lh", "rh"), files):
        hemis[hemi], tr = load_hemisphere(path)
        trs.append(tr)
        expected = len(spec.vertex_labels[hemi])
        if hemis[hemi].shape[0] != expected:
            raise ScanError(f"{path}: {hemis[hemi].shape[0]} vertices, but the atlas's {hemi} mesh has {expected} "
                            f"(files are read as lh, rh: {', '.join(str(f) for f in files)})")
    series, empty = parcel_means_from_vertices(hemis, spec.vertex_labels, spec.atlas.n_parcels)
    return RawScan(series, trs[0], empty)


# ---------------------------------------------------------------------------------------------- tables

def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.strip().lower() in ("n/a", "nan", "")


def _cell_type(text: str) -> str | None:
    """``"bool"``/``"complex"`` for a cell that is one of those (refused values, not a header name), else None."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return "bool"
    try:
        complex(text)
    except ValueError:
        return None
    return None if _is_number(text) else "complex"


def _bad_cell(path: Path, rows: list[list[str]], first_line: int) -> str:
    """Where the first cell that is not a real number is, and what it is."""
    for line_no, row in enumerate(rows, first_line):
        for col, cell in enumerate(row, 1):
            if not _is_number(cell):
                kind = _cell_type(cell) or "string"
                return (f"{path.name}: {kind} value {cell.strip()!r} on line {line_no}, column {col} is refused; "
                        f"a table must hold real numbers")
    return f"{path.name}: a cell is not a real number"


def read_table(path: str | Path) -> tuple[list[str] | None, np.ndarray]:
    """A numeric table (.csv, .tsv, .txt): (column names or None without a header row, float64 [rows, cols]).

    ``n/a`` and empty cells read as NaN. The delimiter is the extension's, whitespace for .txt.
    """
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".txt":
        rows = [line.split() for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.reader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ","))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ScanError("empty table")
    names = None
    if not all(_is_number(cell) or _cell_type(cell) for cell in rows[0]):
        names, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(names) if names else len(rows[0])
    for line_no, row in enumerate(rows, 2 if names else 1):
        if len(row) != width:
            raise ScanError(f"line {line_no} has {len(row)} columns, expected {width}")
    try:
        values = np.array([[np.nan if c.strip().lower() in ("n/a", "") else float(c) for c in row]
                           for row in rows], np.float64).reshape(len(rows), width)
    except ValueError:
        raise ScanError(_bad_cell(path, rows, 2 if names else 1)) from None
    return names, values


def _npy_dtype(path: Path) -> np.dtype:
    """The dtype in a .npy header, read without loading (or unpickling) the array."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        return read_header(fh)[2]


def read_series(path: str | Path, spec: AtlasSpec) -> RawScan:
    """A ready parcel table [T, P] (.npy, or .csv/.tsv with an optional header of parcel names).

    Columns are matched to the atlas by name when every atlas parcel name is a column (extra columns, such
    as nitime's WM/Vent/Brain, become candidate confounds); otherwise by position, which needs exactly P.
    """
    path = Path(path)
    atlas = spec.atlas
    if path.suffix == ".npy":
        check_dtype(_npy_dtype(path), path)
        names, values = None, np.load(path, allow_pickle=False)
        if values.ndim != 2:
            raise ScanError(f"expected a 2-D [T, P] array, got shape {values.shape}")
        values = values.astype(np.float64)
    else:
        names, values = read_table(path)
    n_cols = values.shape[1]
    if names is not None and set(atlas.names) <= set(names):
        position = {n: i for i, n in enumerate(names)}
        picked = [position[n] for n in atlas.names]
        extra = [i for i in range(n_cols) if i not in set(picked)]
        return RawScan(values[:, picked], None, extra_names=[names[i] for i in extra],
                       extra=values[:, extra] if extra else None)
    if n_cols != atlas.n_parcels:
        hint = " (the array looks transposed; save it as [T, P])" if values.shape[0] == atlas.n_parcels else ""
        named = " and its column names are not the atlas's parcel names" if names is not None else ""
        raise ScanError(f"parcel count mismatch: {n_cols} columns{named}, atlas {atlas.name} has "
                        f"{atlas.n_parcels} parcels{hint}")
    return RawScan(values, None)


def read_scan(scan: ScanInput, spec: AtlasSpec) -> RawScan:
    """Dispatch on ``scan.kind``; any reading error becomes a ScanError naming the problem."""
    try:
        if scan.kind == "volume":
            return read_volume(scan.files[0], spec)
        if scan.kind == "surface":
            return read_surface(scan.files, spec)
        if scan.kind == "cifti":
            found = read_cifti(scan.files[0], spec)
            return RawScan(found.series, found.tr, found.empty, nonfinite_what=found.nonfinite)
        if scan.kind == "series":
            return read_series(scan.files[0], spec)
    except ScanError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel/gzip/numpy raise many types for a corrupt file
        raise ScanError(f"unreadable: {type(err).__name__}: {err}") from None
    raise ScanError(scan.error or f"unsupported input kind {scan.kind!r}")


# ---------------------------------------------------------------------------------------------- confounds

def select_confounds(names: list[str] | None, values: np.ndarray, columns: str | tuple[str, ...],
                     where: str) -> tuple[np.ndarray, list[str]]:
    """Pick confound columns: ``"auto"`` or a tuple of names (0-based indices for a table without header).

    ``auto`` takes the 9-parameter set where the table has those names, else every column. Leading NaNs
    (the first rows of fMRIPrep derivative columns) become 0; a NaN after the first value is an error.
    Returns (float64 [T, C], chosen names).
    """
    labels = names if names is not None else [str(i) for i in range(values.shape[1])]
    if columns == "auto":
        chosen = [c for c in DEFAULT_CONFOUNDS if c in labels] or list(labels)
    else:
        missing = [c for c in columns if c not in labels]
        if missing:
            shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
            raise ScanError(f"confounds {where} have no column {', '.join(missing)} (columns: {shown})")
        chosen = list(columns)
    picked = values[:, [labels.index(c) for c in chosen]].copy()
    for j, name in enumerate(chosen):
        finite = np.isfinite(picked[:, j])
        if not finite.any():
            raise ScanError(f"confound column {name!r} in {where} has no finite value")
        first = int(np.argmax(finite))
        if not finite[first:].all():
            raise ScanError(f"confound column {name!r} in {where} has NaN/Inf after row {first + 1}")
        picked[:first, j] = 0.0
    return picked, chosen
