"""The :class:`Atlas` record saved as ``atlas.json`` in every dataset.

Loaders for the supported atlas kinds live in :mod:`brainjax.data.atlas`; this module only holds the
data structure and its JSON round trip so that readers of a dataset need nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainjax.errors import InputError
from brainjax.paths import atomic_write_text

if TYPE_CHECKING:
    import nibabel as nib


@dataclass(frozen=True)
class Atlas:
    """Per-parcel names, MNI coordinates (mm) and optional network labels.

    Attributes:
      name: atlas identifier (e.g. ``seitzman300``).
      kind: ``coordinates`` | ``volume`` | ``surface`` | ``series`` (parcel series given ready-made).
      names: P parcel names.
      xyz: float32 [P, 3] MNI coordinates in mm.
      networks: P network labels (``""`` where unknown), or None when the atlas has none.
      source: where it came from (file path or package resource), for provenance.
      extra: free-form JSON-able metadata (e.g. sphere radius, label values, gradients).
    """

    name: str
    kind: str
    names: tuple[str, ...]
    xyz: np.ndarray
    networks: tuple[str, ...] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        xyz = np.asarray(self.xyz, dtype=np.float32)
        object.__setattr__(self, "xyz", xyz)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"atlas {self.name}: xyz must be [P, 3], got {xyz.shape}")
        if len(self.names) != xyz.shape[0]:
            raise ValueError(f"atlas {self.name}: {len(self.names)} names for {xyz.shape[0]} coordinates")
        if self.networks is not None and len(self.networks) != xyz.shape[0]:
            raise ValueError(f"atlas {self.name}: {len(self.networks)} network labels for {xyz.shape[0]} parcels")
        if not np.all(np.isfinite(xyz)):
            raise ValueError(f"atlas {self.name}: non-finite coordinates")

    @property
    def n_parcels(self) -> int:
        return int(self.xyz.shape[0])

    def network_ids(self) -> tuple[np.ndarray, list[str]]:
        """Integer network id per parcel (-1 where unlabelled) and the sorted list of network names."""
        if self.networks is None:
            return np.full(self.n_parcels, -1, np.int32), []
        labels = sorted({n for n in self.networks if n})
        index = {n: i for i, n in enumerate(labels)}
        return np.array([index.get(n, -1) for n in self.networks], np.int32), labels

    def to_json(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "names": list(self.names),
            "xyz": self.xyz.round(3).tolist(),
            "networks": None if self.networks is None else list(self.networks),
            "source": self.source, "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "atlas.json") -> Atlas:
        try:
            return cls(
                name=data["name"], kind=data["kind"], names=tuple(data["names"]),
                xyz=np.asarray(data["xyz"], np.float32),
                networks=None if data.get("networks") is None else tuple(data["networks"]),
                source=data.get("source", ""), extra=data.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise AtlasError(f"{where}: invalid atlas ({err})") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Atlas:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"atlas file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json(data, where=str(path))


class AtlasError(InputError):
    """An atlas that cannot be loaded: unknown name, unreadable or inconsistent file."""


@dataclass(frozen=True)
class AtlasSpec:
    """An :class:`Atlas` plus what is needed to extract parcel series with it.

    Exactly one of ``label_image`` (volume), ``radius`` (coordinate spheres) or ``vertex_labels`` (surface) is
    set for loaded atlases. Arrays of cached built-in atlases are read-only.
    """

    atlas: Atlas                                     # what goes into atlas.json
    label_image: nib.Nifti1Image | None = None       # volume atlases: integer label image in MNI space
    label_values: np.ndarray | None = None           # int [P]: label value of parcel i in label_image
    radius: float | None = None                      # coordinate atlases: sphere radius in mm
    vertex_labels: dict[str, np.ndarray] | None = None  # surface: {"lh": int [V_lh], ...}, -1 = unassigned
    mesh: str | None = None                          # surface: mesh name or "lh,rh" mesh files
    # CIFTI structures (e.g. CIFTI_STRUCTURE_THALAMUS_LEFT) that are the last len(structures) parcels, one each
    structures: tuple[str, ...] | None = None
