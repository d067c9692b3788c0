"""CIFTI-2 dense series (``.dtseries.nii``, HCP grayordinates) -> parcel means with an fs_LR 32k atlas.

A dense series is a [T, N] matrix: one axis a ``SeriesAxis`` (time; its step is the TR), the other a
``BrainModelAxis`` listing N grayordinates: vertices of surface structures (``CIFTI_STRUCTURE_CORTEX_LEFT`` /
``_RIGHT``, each vertex by its index on a mesh of ``nvertices`` vertices, 32,492 on fs_LR 32k; the medial wall
is simply absent) and voxels of subcortical structures (voxel indices and the axis's affine to mm).

Cortex vertices are averaged per parcel of the atlas's vertex labels (lh labels for CORTEX_LEFT). Labelled
atlas vertices the file does not hold are skipped; a parcel none of whose vertices is in the file is reported
in ``empty`` (``RawScan.empty_parcels``). With a ``+subcortex`` atlas (:mod:`brainjax.data.atlas_fslr`) each
subcortical structure the atlas names is one more parcel, the mean of the file's voxels of that structure
(empty when the file lacks it). Other structures are ignored.

TR: the SeriesAxis step when its unit is SECOND (nibabel applies the file's SeriesExponent, so a series
stored in milliseconds with exponent -3 reads in seconds); a step above 20 is taken as milliseconds written
as seconds (as for GIfTI); a series in another unit (HERTZ, METER, RADIAN) is refused as not a time series.

Refused with a :class:`CiftiError` naming the file: not CIFTI-2; not a dense series (parcellated
``.ptseries.nii``, ``.dscalar.nii``, ``.dconn.nii``...); cortex on another mesh than the atlas's (vertex
count); no cortex; data that are not real numbers. NaN/Inf on a grayordinate that a parcel uses make that
parcel's mean NaN (``nonfinite`` says how many), as the volume reader does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import AtlasSpec
from brainjax.data.clean import ScanError

CORTEX = {"CIFTI_STRUCTURE_CORTEX_LEFT": "lh", "CIFTI_STRUCTURE_CORTEX_RIGHT": "rh"}
FSLR32K_VERTICES = 32492
_GRAYORDINATES_PER_BLOCK = 8192  # columns read at once: contiguous on disk (time varies fastest)


class CiftiError(ScanError):
    """A CIFTI file that is not a dense series this atlas can parcellate; the message names the file."""


@dataclass
class CiftiParcels:
    """What :func:`read_cifti` learned: float64 [T, P] parcel means and the rest of a ``RawScan``."""

    series: np.ndarray
    tr: float | None
    empty: list[int] = field(default_factory=list)
    nonfinite: str = ""  # "NaN/Inf values in ..." when some parcels' means are NaN


def structure_name(cifti_name: str) -> str:
    """``CIFTI_STRUCTURE_THALAMUS_LEFT`` -> ``thalamus_left`` (parcel names of subcortical structures)."""
    return cifti_name.removeprefix("CIFTI_STRUCTURE_").lower()


def open_cifti(path: str | Path, series: bool = True):
    """(image, time axis index or None, SeriesAxis or None, BrainModelAxis) of a dense CIFTI-2 file.

    ``series=False`` accepts any dense file (e.g. ``.dscalar.nii``) when only its brain models are needed.
    """
    import nibabel as nib
    from nibabel.cifti2 import cifti2_axes as axes

    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for corrupt files
        raise CiftiError(f"{path.name}: unreadable as CIFTI-2 ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Cifti2Image):
        raise CiftiError(f"{path.name}: not a CIFTI-2 file ({type(img).__name__}, shape {img.shape}); HCP dense "
                         f"series are .dtseries.nii files with a CIFTI-2 header")
    found = [img.header.get_axis(i) for i in range(img.ndim)]
    names = " x ".join(type(a).__name__.removesuffix("Axis").lower() for a in found)
    models = [i for i, a in enumerate(found) if isinstance(a, axes.BrainModelAxis)]
    times = [i for i, a in enumerate(found) if isinstance(a, axes.SeriesAxis)]
    if len(found) != 2 or len(models) != 1 or (series and len(times) != 1):
        parcellated = any(isinstance(a, axes.ParcelsAxis) for a in found)
        hint = (" (a parcellated file: brainjax parcellates dense series itself; give the parcel series as a "
                ".npy/.csv table [T, P] instead)" if parcellated else "")
        raise CiftiError(f"{path.name}: not a CIFTI dense series (axes: {names}; expected series x brain "
                         f"models, as in .dtseries.nii){hint}")
    time = times[0] if times else None
    return img, time, None if time is None else found[time], found[models[0]]


def series_tr(axis, where: str | Path) -> float | None:
    """TR in seconds from a SeriesAxis (None when its step is not positive); refuses non-time units."""
    if axis.unit != "SECOND":
        raise CiftiError(f"{Path(where).name}: the series axis is in {axis.unit.lower()} units, not seconds: "
                         f"not a time series")
    step = float(axis.step)
    if not np.isfinite(step) or step <= 0:
        return None
    return step / 1000.0 if step > 20 else step


def cifti_tr(path: str | Path) -> float | None:
    """The TR of a dense series from its header alone."""
    _, _, axis, _ = open_cifti(path)
    return series_tr(axis, path)


def grayordinate_parcels(models, spec: AtlasSpec, where: str | Path) -> np.ndarray:
    """int [N]: the atlas parcel of each grayordinate of a BrainModelAxis, -1 where none."""
    name = Path(where).name
    atlas = spec.atlas
    if spec.vertex_labels is None:
        raise CiftiError(f"{name}: atlas {atlas.name} ({atlas.kind}) has no vertex labels; CIFTI dense series "
                         f"need an fs_LR 32k surface atlas such as schaefer400")
    structures = spec.structures or ()
    first = atlas.n_parcels - len(structures)
    extra = {s: first + i for i, s in enumerate(structures)}
    parcels = np.full(len(models), -1, np.int64)
    cortex = []
    for structure, part, sub in models.iter_structures():
        if structure in CORTEX:
            labels = np.asarray(spec.vertex_labels[CORTEX[structure]])
            n_vertices = sub.nvertices[structure]
            if n_vertices != labels.shape[0]:
                mesh = "fs_LR 32k" if labels.shape[0] == FSLR32K_VERTICES else spec.mesh
                raise CiftiError(f"{name}: {structure_name(structure)} is on a mesh of {n_vertices} vertices, the "
                                 f"atlas {atlas.name} on {mesh} ({labels.shape[0]} per hemisphere); resample "
                                 f"the CIFTI to that mesh (HCP's *_Atlas*.dtseries.nii are fs_LR 32k)")
            if sub.vertex.size and (sub.vertex.min() < 0 or sub.vertex.max() >= n_vertices):
                raise CiftiError(f"{name}: {structure_name(structure)} lists vertex indices outside "
                                 f"0..{n_vertices - 1}")
            parcels[part] = labels[sub.vertex]
            cortex.append(structure)
        elif structure in extra:
            parcels[part] = extra[structure]
    if not cortex:
        present = ", ".join(structure_name(s) for s, _, _ in models.iter_structures()) or "none"
        raise CiftiError(f"{name}: no cortex surface (CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT) among its brain models "
                         f"({present})")
    return parcels


def read_cifti(path: str | Path, spec: AtlasSpec) -> CiftiParcels:
    """Parcel means of a CIFTI-2 dense series (see the module docstring)."""
    from scipy.sparse import csr_matrix

    path = Path(path)
    img, time, axis, models = open_cifti(path)
    tr = series_tr(axis, path)
    dtype = np.dtype(img.dataobj.dtype)
    if dtype.kind not in "iuf":
        raise CiftiError(f"{path.name}: data type {dtype} is refused; a series must hold real numbers "
                         f"(integer or float)")
    parcels = grayordinate_parcels(models, spec, path)
    n_parcels, n_time, n_models = spec.atlas.n_parcels, img.shape[time], len(models)
    keep = np.flatnonzero(parcels >= 0)
    counts = np.bincount(parcels[keep], minlength=n_parcels)
    # [P, N] averaging matrix: one matrix product gives every parcel's mean at every time point
    weights = csr_matrix((1.0 / counts[parcels[keep]], (parcels[keep], keep)), shape=(n_parcels, n_models))
    means = np.zeros((n_parcels, n_time))
    hit = np.zeros(n_parcels, bool)
    bad_columns = bad_values = 0
    for start in range(0, n_models, _GRAYORDINATES_PER_BLOCK):
        stop = min(start + _GRAYORDINATES_PER_BLOCK, n_models)
        block = img.dataobj[:, start:stop] if time == 0 else img.dataobj[start:stop, :].T
        block = np.asarray(block, np.float64)  # [T, n]
        bad = ~np.isfinite(block)
        if bad.any():
            used = np.zeros(stop - start, bool)
            used[keep[(keep >= start) & (keep < stop)] - start] = True
            columns = bad.any(axis=0) & used
            bad_columns += int(columns.sum())
            bad_values += int(bad[:, columns].sum())
            hit[parcels[start:stop][columns]] = True
            block[bad] = 0.0
        means += weights[:, start:stop] @ block.T
    means[hit] = np.nan
    nonfinite = (f"NaN/Inf values in {bad_columns} grayordinates ({bad_values} values)" if hit.any() else "")
    return CiftiParcels(means.T, tr, np.flatnonzero(counts == 0).tolist(), nonfinite)


def subcortical_structures(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(CIFTI structure name, centroid in mm [3]) of each voxel structure of a dense CIFTI file, in file order.

    The centroid is the mean voxel index mapped through the BrainModelAxis affine.
    """
    import nibabel as nib

    _, _, _, models = open_cifti(path, series=False)
    found = []
    for structure, _, sub in models.iter_structures():
        if sub.volume_mask.any():
            found.append((structure, nib.affines.apply_affine(sub.affine, sub.voxel.mean(axis=0))))
    return found
