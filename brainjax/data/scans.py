"""Finding scans for ``brainjax prepare``: supported files, BIDS/fMRIPrep names, hemisphere pairs, confounds.

A scan's id is a stable string built from its BIDS entities without the derivative ones (``space``, ``res``,
``den``, ``desc``, ``hemi``...), e.g. ``sub-01_ses-02_task-rest_run-1`` for
``sub-01_ses-02_task-rest_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``; without entities it is
the file stem (hemisphere marker removed) and the subject is the stem too.

Directory search keeps only files that look like BOLD series of a kind the atlas can read: 4-D NIfTI
(BIDS suffix ``bold``; MNI spaces only when a ``space`` is named), surface series (``.func.gii``, MGZ with a
hemisphere marker; the atlas mesh's space when named), CIFTI-2 dense series (``.dtseries.nii``, read with
a surface atlas: wherever surface series are accepted) and parcel tables (.npy/.csv/.tsv, not confounds,
events or participants). Files named explicitly are always taken (other CIFTI files, e.g. ``.ptseries.nii``,
then fail with the reason). With an fs_LR atlas, a named density must be ``den-32k`` (GIfTI) or ``den-91k``.

HCP layout: a file ``<subject>/MNINonLinear/Results/<scan>/<scan>*`` (e.g.
``100307/MNINonLinear/Results/rfMRI_REST1_LR/rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii``, or the volume
``rfMRI_REST1_LR.nii.gz`` beside it) gets subject ``100307``, scan id ``100307_rfMRI_REST1_LR`` and session
``REST1`` (rest runs; task runs have none). What follows the scan name (``_Atlas_MSMAll``, ``_hp2000_clean``)
is not part of the id, so two variants of one run are refused as one scan id twice: pass one, e.g.
``*/MNINonLinear/Results/*/*_Atlas_MSMAll.dtseries.nii``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from brainjax.errors import InputError

EXTENSIONS = {".nii.gz": "volume", ".nii": "volume", ".func.gii": "surface", ".gii": "surface",
              ".mgz": "surface", ".mgh": "surface", ".npy": "series", ".csv": "series", ".tsv": "series",
              **{f".{c}.nii": "cifti" for c in ("dtseries", "ptseries", "dscalar", "pscalar", "dlabel", "plabel",
                                                 "dconn", "pconn", "pdconn", "dpconn")}}
CIFTI_SERIES = ".dtseries.nii"  # the only CIFTI type directory search takes
ALL_KINDS = frozenset(EXTENSIONS.values())
# Entities that name a derivative of the scan rather than the scan itself.
DERIVATIVE_ENTITIES = {"space", "res", "den", "desc", "hemi", "cohort", "label", "atlas", "seg", "model"}
_SKIP_WORDS = ("confounds", "regressors", "participants", "_events", "_scans", "_sessions", "_mask", "_dseg",
               "_probseg", "_boldref", "_sbref", "_T1w", "_T2w", ".surf.", ".shape.", ".label.")
_HEMI_INFIX = re.compile(r"(^|[._])(lh|rh)(?=[._])")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HCP_SCAN = re.compile(r"[rt]fMRI_[A-Za-z0-9_]+")  # HCP run folders: rfMRI_REST1_LR, tfMRI_WM_RL...
_DENSITIES = {"fsLR": ("32k", "91k")}  # mesh -> densities of its surface (GIfTI) and CIFTI files


class DiscoveryError(InputError):
    """Inputs that cannot be turned into a scan list (missing paths, ambiguous scan ids)."""


@dataclass(frozen=True)
class ScanInput:
    """One scan to prepare: its identity and the files that hold it.

    ``files``: (path,) for volumes, CIFTI and series, (lh, rh) for surfaces. ``kind`` is ``volume``,
    ``surface``, ``cifti``, ``series`` or ``invalid`` (then ``error`` says why, e.g. a hemisphere without its
    partner).
    """

    scan_id: str
    subject: str
    session: str
    kind: str
    files: tuple[str, ...]
    error: str = ""

    @property
    def stage_name(self) -> str:
        return stage_name(self.scan_id)


def stage_name(scan_id: str) -> str:
    """File-system-safe form of a scan id, used for staging files."""
    return _SAFE.sub("_", scan_id)


def split_name(name: str | os.PathLike) -> tuple[str, str]:
    """(stem, extension) with multi-part extensions (``.nii.gz``, ``.func.gii``) recognised."""
    name = Path(name).name
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return Path(name).stem, Path(name).suffix


def bids_entities(stem: str) -> tuple[dict[str, str], str | None]:
    """BIDS ``key-value`` entities (in order) and the suffix of a file stem; ({}, None) if not BIDS.

    Only the part before the first dot counts (brainspace's ``sub-..._run-01.fsa5.lh`` has extra dots).
    """
    entities, suffix = {}, None
    for token in stem.split(".")[0].split("_"):
        key, sep, value = token.partition("-")
        if sep and key and value:
            entities[key] = value
        else:
            suffix = token or suffix
    return (entities, suffix) if "sub" in entities else ({}, None)


def hemisphere(name: str) -> str | None:
    """``lh``/``rh`` from ``hemi-L``/``hemi-R`` or a ``.lh.``/``lh.``/``_lh_`` marker, else None."""
    entities, _ = bids_entities(split_name(name)[0])
    if entities.get("hemi") in ("L", "R"):
        return "lh" if entities["hemi"] == "L" else "rh"
    found = _HEMI_INFIX.search(split_name(name)[0] + ".")
    return found.group(2) if found else None


def _without_hemisphere(stem: str) -> str:
    stem = re.sub(r"_hemi-[LR](?=[._]|$)", "", stem)
    return re.sub(r"^(lh|rh)[._]|[._](lh|rh)(?=[._]|$)", "", stem)


def hcp_identity(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """(scan_id, subject, session) of a file ``<subject>/MNINonLinear/Results/<scan>/<scan>*`` (HCP layout)."""
    parts = Path(path).parts
    at = len(parts) - 4  # index of MNINonLinear
    if at < 1 or parts[at] != "MNINonLinear" or parts[at + 1] != "Results":
        return None
    subject, scan = parts[at - 1], parts[at + 2]
    if not _HCP_SCAN.fullmatch(scan) or not parts[-1].startswith(scan):
        return None
    session = re.match(r"rfMRI_(REST\d+)", scan)
    return f"{subject}_{scan}", subject, session.group(1) if session else ""


def scan_identity(path: str | os.PathLike) -> tuple[str, str, str]:
    """(scan_id, subject, session) of a file from its BIDS entities, HCP layout, or its stem."""
    stem = _without_hemisphere(split_name(path)[0])
    entities, _ = bids_entities(stem)
    if not entities:
        return hcp_identity(path) or (stem, stem, "")
    scan_id = "_".join(f"{k}-{v}" for k, v in entities.items() if k not in DERIVATIVE_ENTITIES)
    return scan_id, entities["sub"], entities.get("ses", "")


def _wanted(path: Path, kinds: set[str], mesh: str | None) -> bool:
    """Directory search filter: does this file look like a BOLD series of a kind the atlas reads?"""
    name = path.name
    kind = EXTENSIONS.get(split_name(name)[1])
    if kind not in kinds or name.startswith(".") or any(w in name for w in _SKIP_WORDS):
        return False
    entities, suffix = bids_entities(split_name(name)[0])
    space = entities.get("space")
    if entities.get("den") and entities["den"] not in _DENSITIES.get(mesh, (entities["den"],)):
        return False
    if kind == "volume":
        if entities:
            return suffix == "bold" and (space is None or space.startswith("MNI"))
        try:
            import nibabel as nib
            return len(nib.load(path).shape) == 4  # header only: skips 3-D masks and templates
        except Exception:  # noqa: BLE001 - an unreadable candidate is reported when processed
            return True
    if kind == "surface":
        if name.endswith(".gii") and not name.endswith(".func.gii") and suffix != "bold":
            return False
        return hemisphere(name) is not None and (space is None or mesh is None or space == mesh)
    if kind == "cifti":
        return name.endswith(CIFTI_SERIES) and (suffix in (None, "bold")) and (space is None or mesh is None
                                                                               or space == mesh)
    return suffix in (None, "timeseries", "bold")


def _collect(inputs: list[str | os.PathLike], kinds: set[str], mesh: str | None,
             exclude: Path | None) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item).expanduser().absolute()  # staged fingerprints must not depend on the cwd
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and (exclude is None or Path(root, d).resolve() != exclude))
                files += [Path(root, n) for n in sorted(names) if _wanted(Path(root, n), kinds, mesh)]
        elif path.is_file():
            if split_name(path.name)[1] not in EXTENSIONS:
                raise DiscoveryError(f"{path}: unsupported input (expected one of {', '.join(EXTENSIONS)})")
            files.append(path)
        else:
            raise DiscoveryError(f"input not found: {path}")
    return sorted(set(files))


def discover_scans(inputs: list[str | os.PathLike], kinds: frozenset[str] | set[str] = ALL_KINDS,
                   mesh: str | None = None, exclude: str | os.PathLike | None = None) -> list[ScanInput]:
    """Scans in files/directories, sorted by scan id (the order every shard of a job list agrees on).

    Surface hemispheres are paired by name; a lone hemisphere becomes an ``invalid`` scan (a recorded
    failure). Two files that map to the same scan id raise DiscoveryError naming both.
    """
    exclude = Path(exclude).resolve() if exclude is not None else None
    kinds = set(kinds) | ({"cifti"} if "surface" in kinds else set())  # CIFTI cortex is read with surface atlases
    singles, hemis = [], {}
    for path in _collect(inputs, kinds, mesh, exclude):
        kind = EXTENSIONS[split_name(path.name)[1]]
        if kind == "surface":
            side = hemisphere(path.name)
            if side is None:
                raise DiscoveryError(f"{path}: surface series needs a hemisphere in its name "
                                     f"(hemi-L/hemi-R, .lh./.rh.)")
            key = (str(path.parent), _without_hemisphere(split_name(path.name)[0]))
            if side in hemis.setdefault(key, {}):
                raise DiscoveryError(f"two {side} files for one scan: {hemis[key][side]} and {path}")
            hemis[key][side] = str(path)
        else:
            singles.append(ScanInput(*scan_identity(path), kind=kind, files=(str(path),)))
    for pair in hemis.values():
        scan_id, subject, session = scan_identity(next(iter(pair.values())))
        if set(pair) == {"lh", "rh"}:
            singles.append(ScanInput(scan_id, subject, session, "surface", (pair["lh"], pair["rh"])))
        else:
            (side, path), = pair.items()
            other = "rh" if side == "lh" else "lh"
            singles.append(ScanInput(scan_id, subject, session, "invalid", (path,),
                                     error=f"surface series has no {other} hemisphere partner"))
    seen: dict[str, ScanInput] = {}
    for scan in singles:
        if scan.stage_name in seen:
            raise DiscoveryError(f"two inputs map to scan id {scan.scan_id!r}: {seen[scan.stage_name].files[0]} "
                                 f"and {scan.files[0]}; pass only one of them (e.g. one space or one file kind)")
        seen[scan.stage_name] = scan
    return sorted(singles, key=lambda s: s.scan_id)


def find_confounds(path: str | os.PathLike) -> Path | None:
    """The confounds table that belongs to a scan file, if one lies beside it.

    Looks for ``PREFIX_desc-confounds_timeseries.tsv`` (fMRIPrep >= 1.2), ``PREFIX_desc-confounds_regressors.tsv``,
    ``PREFIX_confounds.tsv`` and ``PREFIX_confounds.txt`` (brainspace), where PREFIX is the name up to the
    first derivative entity (``space``, ``hemi``, ``desc``...) or up to the first dot.
    """
    path = Path(path)
    stem = split_name(path.name)[0].split(".")[0]
    tokens = []
    for token in stem.split("_"):
        is_suffix = "-" not in token and bool(tokens) and stem.startswith("sub-")  # e.g. "bold"
        if token.partition("-")[0] in DERIVATIVE_ENTITIES or is_suffix:
            break
        tokens.append(token)
    prefixes = dict.fromkeys(["_".join(tokens), _without_hemisphere(stem)])
    for prefix in prefixes:
        for tail in ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv", "_confounds.tsv",
                     "_confounds.txt"):
            candidate = path.with_name(prefix + tail)
            if prefix and candidate.exists():
                return candidate
    return None


def find_participants(inputs: list[str | os.PathLike]) -> Path | None:
    """``participants.tsv`` at the top of the first input directory that has one (a BIDS root)."""
    for item in inputs:
        candidate = Path(item) / "participants.tsv"
        if Path(item).is_dir() and candidate.exists():
            return candidate
    return None
