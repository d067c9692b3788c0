"""Built-in fs_LR 32k atlases from BrainSpace's conte69 files: ``schaeferN``, ``vosdewaelN`` and ``+subcortex``.

For CIFTI dense series (HCP grayordinates, :mod:`brainjax.data.cifti`) and fs_LR 32k GIfTI series (one
``.func.gii`` per hemisphere, 32,492 vertices each). Files inside the installed ``brainspace`` package, found
with importlib.resources (nothing is downloaded):

  ``datasets/parcellations/{schaefer,vosdewael}_N_conte69.csv``: one integer label per line, 64,984 lines: the
      32,492 left-hemisphere vertices of conte69 32k (the fs_LR 32k mesh, same vertex order) first, then the
      32,492 right ones. 0 = unlabelled (medial wall). Left labels are 1..N/2, right ones N/2+1..N (checked
      when loading). Shipped: schaefer 100, 200, 300, 400, 1000; vosdewael 100, 200, 300, 400.
  ``datasets/surfaces/conte69_32k_{lh,rh}.gii``: the midthickness surfaces (GIfTI metadata
      ``AnatomicalStructureSecondary: MidThickness``), MNI mm. Parcel centroid = mean midthickness coordinate
      of the parcel's vertices.

Facts measured on these files: ``schaefer_1000`` lacks label 533 (a right-hemisphere parcel), so
``schaefer1000`` has 999 parcels. The labels cover about 29,600 vertices per hemisphere: a few hundred more
than BrainSpace's cortex masks (``conte69_32k_{lh,rh}_mask.csv``, 29,271 / 29,287 vertices), and not the same
medial wall as HCP's 91k grayordinates (29,696 / 29,716 cortex vertices); vertices a CIFTI lacks are skipped.

Parcels are ordered by label value (lh first); parcel names are ``lh_<label>`` / ``rh_<label>`` with the CSV's
label value, zero-padded (``lh_001`` ... ``rh_400``). Networks: none. The CSVs carry integers only, and
nothing shipped offline says which of Schaefer's orderings (7 or 17 networks) they follow, so no network is
assigned (``atlas.networks`` is None; ``atlas.extra["networks"]`` says why). Vos de Wael parcels subdivide the
Desikan-Killiany regions; their names are not shipped either.

``NAME+subcortex`` (e.g. ``schaefer400+subcortex``) appends one parcel per subcortical structure of a reference
CIFTI file given as ``--mesh REF.dtseries.nii`` (any dense file of the cohort; HCP 91k files share one voxel
list): structures in the file's order, named like ``thalamus_left``, centroid = mean voxel coordinate through
the file's affine. Every scan averages its own voxels of each structure (a structure it lacks is an empty
parcel; surface GIfTI input has no voxels, so those parcels are empty there).
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import numpy as np

from brainjax.data.atlas_core import Atlas, AtlasError, AtlasSpec
from brainjax.data.cifti import CiftiError, structure_name, subcortical_structures

FAMILIES = ("schaefer", "vosdewael")
HEMIS = ("lh", "rh")
MESH = "fsLR"  # the BIDS ``space`` of fs_LR files (den-32k GIfTI, den-91k CIFTI)
N_VERTICES = 32492
SUBCORTEX = "+subcortex"
NO_NETWORKS = ("none: BrainSpace's label files carry integers only; which Schaefer ordering (7 or 17 networks) "
               "they follow is not shipped, so no network labels are assigned")
_NAME = re.compile(r"(schaefer|vosdewael)(\d+)")


def brainspace_file(*parts: str) -> Path:
    """Path of a file in the installed brainspace package's ``datasets`` folder."""
    path = Path(str(importlib.resources.files("brainspace"))).joinpath("datasets", *parts)
    if not path.exists():
        raise AtlasError(f"{path}: not found in the installed brainspace package")
    return path


def fslr_atlas_names() -> list[str]:
    """``schaeferN`` / ``vosdewaelN`` for every parcellation file the installed brainspace ships."""
    folder = brainspace_file("parcellations")
    found = [re.fullmatch(r"(schaefer|vosdewael)_(\d+)_conte69\.csv", p.name) for p in folder.iterdir()]
    return sorted((f"{m.group(1)}{m.group(2)}" for m in found if m),
                  key=lambda n: (FAMILIES.index(_NAME.fullmatch(n).group(1)), int(_NAME.fullmatch(n).group(2))))


def is_fslr_atlas(name: str) -> bool:
    """True for a shipped ``schaeferN`` / ``vosdewaelN``, with or without ``+subcortex``."""
    return name.removesuffix(SUBCORTEX) in fslr_atlas_names()


def conte69_midthickness() -> dict[str, np.ndarray]:
    """float64 [32492, 3] midthickness vertex coordinates (MNI mm) per hemisphere."""
    import nibabel as nib

    coords = {}
    for hemi in HEMIS:
        path = brainspace_file("surfaces", f"conte69_32k_{hemi}.gii")
        coords[hemi] = np.asarray(nib.load(str(path)).darrays[0].data, np.float64)
        if coords[hemi].shape != (N_VERTICES, 3):
            raise AtlasError(f"{path}: expected {N_VERTICES} x 3 vertex coordinates, got {coords[hemi].shape}")
    return coords


def fslr_parcellation(name: str) -> AtlasSpec:
    """The built-in ``schaeferN`` / ``vosdewaelN`` atlas (see the module docstring)."""
    family, size = _NAME.fullmatch(name).groups()
    path = brainspace_file("parcellations", f"{family}_{size}_conte69.csv")
    values = np.loadtxt(str(path), dtype=np.int64, ndmin=1)
    if values.shape != (2 * N_VERTICES,):
        raise AtlasError(f"{path}: expected {2 * N_VERTICES} labels (conte69 32k, lh then rh), got {values.shape}")
    coords = conte69_midthickness()
    half = int(size) // 2
    vertex_labels, names, centroids = {}, [], []
    width = len(size)
    for offset, hemi in enumerate(HEMIS):
        hemi_values = values[offset * N_VERTICES:(offset + 1) * N_VERTICES]
        labels = np.unique(hemi_values[hemi_values > 0])
        low, high = (1, half) if hemi == "lh" else (half + 1, 2 * half)
        if labels.size == 0 or labels[0] < low or labels[-1] > high:
            raise AtlasError(f"{path}: {hemi} labels should lie in {low}..{high}, found {labels[:1]}..{labels[-1:]}")
        index = np.searchsorted(labels, hemi_values)
        labelled = hemi_values > 0
        vertex_labels[hemi] = np.where(labelled, index + len(names), -1).astype(np.int32)
        counts = np.bincount(index[labelled], minlength=labels.size)
        sums = np.stack([np.bincount(index[labelled], weights=coords[hemi][labelled, d], minlength=labels.size)
                         for d in range(3)], 1)
        centroids.append(sums / counts[:, None])
        names += [f"{hemi}_{v:0{width}d}" for v in labels]
    missing = sorted(set(range(1, 2 * half + 1)) - {int(n[3:]) for n in names})
    atlas = Atlas(name, "surface", tuple(names), np.concatenate(centroids), None,
                  source=f"brainspace:datasets/parcellations/{path.name}",
                  extra={"mesh": "fsLR 32k (conte69)", "centroids": "conte69_32k midthickness",
                         "networks": NO_NETWORKS, "missing_labels": missing})
    return AtlasSpec(atlas=atlas, vertex_labels=vertex_labels, mesh=MESH)


def with_subcortex(base: AtlasSpec, reference: str | None) -> AtlasSpec:
    """``base`` plus one parcel per subcortical structure of the ``reference`` CIFTI (``--mesh``)."""
    name = base.atlas.name + SUBCORTEX
    if reference is None:
        raise AtlasError(f"atlas {name}: give a CIFTI dense file of the cohort as --mesh REF.dtseries.nii; its "
                         f"subcortical structures become parcels (centroids from its voxel coordinates)")
    try:
        found = subcortical_structures(reference)
    except CiftiError as err:
        raise AtlasError(f"atlas {name}: --mesh {err}") from None
    if not found:
        raise AtlasError(f"atlas {name}: {reference} has no subcortical (voxel) structures")
    atlas = base.atlas
    extra = dict(atlas.extra, subcortex={"reference": str(Path(reference).resolve()),
                                         "structures": [s for s, _ in found]})
    xyz = np.concatenate([atlas.xyz, np.stack([c for _, c in found])])
    merged = Atlas(name, atlas.kind, atlas.names + tuple(structure_name(s) for s, _ in found), xyz, None,
                   source=atlas.source, extra=extra)
    merged.xyz.flags.writeable = False
    return AtlasSpec(atlas=merged, vertex_labels=base.vertex_labels, mesh=base.mesh,
                     structures=tuple(s for s, _ in found))
