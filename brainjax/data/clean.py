"""Cleaning and quality control of parcel time series, applied after parcel extraction.

Cleaning runs on the parcel means, not on voxels/vertices: detrending, Butterworth filtering and confound
regression are linear in the signal, so cleaning the mean of a parcel equals the mean of the cleaned voxels
(up to rounding) at a fraction of the cost. Order (nilearn ``signal.clean``): linear detrend of signals and
confounds, the same band-pass on both, projection of the confounds out of the signals, then standardisation.
Resampling to a target TR comes last.

Defaults and why (BrainLM-style pretraining data):

* detrend on: scanner drift dominates raw parcel means and carries no neural information;
* high-pass 0.01 Hz on: the classic resting-state cut-off, removes slow drift that a linear trend misses;
* low-pass off: BrainLM trained on UK Biobank data that were only high-passed; a 0.1 Hz low-pass turns masked
  reconstruction into interpolation of a smooth curve and removes the content forecasting is judged on.
  ``--low-pass 0.1`` gives the classic 0.01-0.1 Hz band-pass;
* standardize ``zscore`` per scan and parcel: scanner units differ between sites and between volume, surface
  and ready-made inputs; the dataset's median/IQR statistics are then computed on comparable scales.

Quality-control checks raise :class:`ScanError` with a reason that ends up in ``failures.tsv``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from brainjax.errors import InputError

STANDARDIZE_CHOICES = ("none", "zscore", "psc")
# Reasons list at most this many parcel names, then "... and N more".
_MAX_NAMES = 10
# Two TRs closer than this (relative) are the same TR (header floats are rounded differently by tools).
TR_RTOL = 1e-3


class ScanError(InputError):
    """A scan that cannot be used; the message is the reason recorded in ``failures.tsv``."""


@dataclass(frozen=True)
class CleanOptions:
    """How parcel series are cleaned (all filters in Hz, TRs in seconds)."""

    detrend: bool = True  # remove mean and linear trend (signals and confounds)
    high_pass: float | None = 0.01  # Butterworth high-pass cut-off; None = off
    low_pass: float | None = None  # Butterworth low-pass cut-off; None = off
    standardize: str = "zscore"  # none | zscore (per parcel, per scan) | psc (percent signal change)
    target_tr: float | None = None  # resample every scan to this TR; None = keep (all scans must share a TR)

    def __post_init__(self):
        if self.standardize not in STANDARDIZE_CHOICES:
            raise ValueError(f"standardize must be one of {STANDARDIZE_CHOICES}, got {self.standardize!r}")
        for name in ("high_pass", "low_pass", "target_tr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None for off), got {value}")
        if self.high_pass and self.low_pass and self.high_pass >= self.low_pass:
            raise ValueError(f"high-pass {self.high_pass} Hz must be below low-pass {self.low_pass} Hz")


def name_list(names: Sequence[str], indices: Sequence[int] | np.ndarray) -> str:
    """``"a, b, c"`` for the parcels at ``indices``, truncated after a few names."""
    indices = [int(i) for i in indices]
    shown = ", ".join(str(names[i]) for i in indices[:_MAX_NAMES])
    return shown + (f" ... and {len(indices) - _MAX_NAMES} more" if len(indices) > _MAX_NAMES else "")


def check_finite(series: np.ndarray, names: Sequence[str], what: str = "") -> None:
    """Raise if any value of ``series`` [T, P] is NaN or infinite, naming the parcels."""
    bad = ~np.isfinite(series)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        raise ScanError(f"NaN/Inf values{what} ({int(bad.sum())} of {bad.size}) in {len(cols)} parcels: "
                        f"{name_list(names, cols)}")


def check_variance(series: np.ndarray, names: Sequence[str], empty: Sequence[int] = ()) -> None:
    """Raise for parcels that are exactly constant over time in ``series`` [T, P].

    ``empty`` lists parcels known to have no voxels/vertices in the data; they are reported as such (a parcel
    outside the field of view or mask extracts as all zeros, which a model would learn as real signal).
    """
    empty = sorted(set(int(i) for i in empty))
    if empty:
        raise ScanError(f"{len(empty)} parcels have no voxels/vertices inside the data: {name_list(names, empty)}")
    constant = np.flatnonzero(np.all(series == series[:1], axis=0))
    if constant.size:
        raise ScanError(f"zero-variance parcels ({constant.size}; constant over time, e.g. outside the brain "
                        f"mask): {name_list(names, constant)}")


@dataclass(frozen=True)
class MissingParcels:
    """Parcels of one scan whose values cannot be used, by cause (disjoint, ascending parcel indices).

    ``empty``: no voxel/vertex inside the data (outside the field of view or the mask); ``nonfinite``: NaN/Inf
    in the parcel means (``nonfinite_what`` says where they came from, e.g. NaN voxels); ``constant``: exactly
    constant over time (e.g. signal drop-out, or zeros outside the brain mask).
    """

    empty: tuple[int, ...] = ()
    nonfinite: tuple[int, ...] = ()
    constant: tuple[int, ...] = ()
    nonfinite_what: str = ""

    @property
    def indices(self) -> list[int]:
        return sorted(self.empty + self.nonfinite + self.constant)

    def __len__(self) -> int:
        return len(self.empty) + len(self.nonfinite) + len(self.constant)

    def describe(self, names: Sequence[str]) -> str:
        """One phrase per cause, e.g. ``1 parcels have no voxels/vertices inside the data: a; zero-variance ...``."""
        parts = []
        if self.empty:
            parts.append(f"{len(self.empty)} parcels have no voxels/vertices inside the data: "
                         f"{name_list(names, self.empty)}")
        if self.nonfinite:
            what = self.nonfinite_what or "NaN/Inf values in the parcel means"
            parts.append(f"{what}, inside {len(self.nonfinite)} parcels: {name_list(names, self.nonfinite)}")
        if self.constant:
            parts.append(f"zero-variance parcels ({len(self.constant)}; constant over time, e.g. outside the brain "
                         f"mask): {name_list(names, self.constant)}")
        return "; ".join(parts)


def find_missing(series: np.ndarray, empty: Sequence[int] = (), nonfinite_what: str = "") -> MissingParcels:
    """The parcels of ``series`` [T, P] that are empty (given by the reader), non-finite or constant over time."""
    empty_set = {int(i) for i in empty}
    bad = ~np.isfinite(series).all(axis=0)
    bad[list(empty_set)] = False
    nonfinite = np.flatnonzero(bad)
    what = nonfinite_what
    if nonfinite.size and not what:
        values = ~np.isfinite(series[:, nonfinite])
        what = f"NaN/Inf values in the parcel means ({int(values.sum())} of {series.shape[0] * nonfinite.size})"
    flat = np.all(series == series[:1], axis=0) if series.shape[0] else np.ones(series.shape[1], bool)
    flat[list(empty_set)] = False
    flat[nonfinite] = False
    return MissingParcels(tuple(sorted(empty_set)), tuple(int(i) for i in nonfinite),
                          tuple(int(i) for i in np.flatnonzero(flat)), what if nonfinite.size else "")


def allowed_missing(n_parcels: int, max_fraction: float) -> int:
    """How many missing parcels a scan of ``n_parcels`` may have under ``--max-missing-parcels max_fraction``
    (always fewer than all: a scan needs at least one parcel with signal)."""
    return min(int(np.floor(max_fraction * n_parcels + 1e-9)), n_parcels - 1)


def check_missing(missing: MissingParcels, names: Sequence[str], max_fraction: float) -> None:
    """Raise when a scan misses more parcels than ``max_fraction`` of the atlas allows, naming them."""
    allowed = allowed_missing(len(names), max_fraction)
    if len(missing) > allowed:
        raise ScanError(f"{missing.describe(names)} ({len(missing)} of {len(names)} parcels missing; "
                        f"--max-missing-parcels {max_fraction:g} allows {allowed})")


def check_length(n_timepoints: int, min_length: int, after: str = "") -> None:
    if n_timepoints < min_length:
        raise ScanError(f"too short: {n_timepoints} TRs{after} < --min-length {min_length}")


def check_tr(tr: float | None, where: str) -> float:
    """A plausible TR in seconds, or ScanError asking for ``--tr``."""
    if tr is None or not np.isfinite(tr) or tr <= 0:
        raise ScanError(f"no repetition time (TR) in {where}; pass --tr SECONDS")
    if not 0.05 <= tr <= 20:
        raise ScanError(f"implausible TR {tr:g} s from {where}; pass --tr SECONDS")
    return round(float(tr), 6)  # headers store float32: 1.35 reads as 1.350000023841858


def reference_tr(trs: Sequence[float | None]) -> float | None:
    """The dataset's TR when scans are not resampled: the most common one (ties: the smallest).

    Every job of a sharded run computes this from the whole scan list, so all jobs agree.
    """
    rounded = Counter(round(float(t), 4) for t in trs if t is not None)
    if not rounded:
        return None
    top = max(rounded.values())
    return min(t for t, n in rounded.items() if n == top)


def check_same_tr(tr: float, reference: float | None, n_scans: int, n_reference: int) -> None:
    if reference is not None and not np.isclose(tr, reference, rtol=TR_RTOL, atol=0):
        raise ScanError(f"TR mismatch: {tr:g} s, while the dataset's TR is {reference:g} s ({n_reference} of "
                        f"{n_scans} scans); all scans must share a TR unless --target-tr resamples them")


def clean_series(series: np.ndarray, tr: float, options: CleanOptions,
                 confounds: np.ndarray | None = None) -> np.ndarray:
    """Detrend, filter, regress confounds and standardize one scan.

    Args:
      series: [T, P] parcel means.
      tr: repetition time in seconds (sets the filter frequencies).
      confounds: [T, C] regressors or None.
    Returns float64 [T, P].
    """
    from nilearn.signal import clean

    if confounds is not None:
        if confounds.shape[0] != series.shape[0]:
            raise ScanError(f"confounds have {confounds.shape[0]} rows, the scan has {series.shape[0]} TRs")
        confounds = drop_trend_columns(confounds, options.detrend)
    nyquist = 0.5 / tr
    for name, cut in (("high-pass", options.high_pass), ("low-pass", options.low_pass)):
        if cut is not None and cut >= nyquist:
            raise ScanError(f"{name} {cut:g} Hz is at or above the Nyquist frequency {nyquist:g} Hz of TR {tr:g} s")
    standardize = {"none": None, "zscore": "zscore_sample", "psc": "psc"}[options.standardize]
    filtering = options.high_pass is not None or options.low_pass is not None
    if standardize == "psc":
        means = np.abs(series.mean(axis=0))
        # psc divides by each parcel's mean; series that were already demeaned have none to divide by
        if np.any(means < 1e-6 * max(float(np.abs(series).max()), 1e-12)):
            raise ScanError("--standardize psc needs a positive mean signal per parcel; this series is demeaned "
                            "(use --standardize zscore or none)")
    return clean(series.astype(np.float64), detrend=options.detrend, standardize=standardize,
                 confounds=confounds, standardize_confounds=True,
                 filter="butterworth" if filtering else False,
                 high_pass=options.high_pass, low_pass=options.low_pass, t_r=tr)


def drop_trend_columns(confounds: np.ndarray, detrend: bool) -> np.ndarray | None:
    """Drop confound columns that are constant (or, when detrending, a linear trend): [T, C] -> [T, C'].

    Detrending leaves such a column as rounding noise (~1e-16), which nilearn's confound z-scoring then blows
    up to a unit-variance random regressor; brainspace's confounds carry a constant and a linear column.
    """
    t = np.linspace(-1.0, 1.0, confounds.shape[0])
    basis = np.stack([np.ones_like(t), t], axis=1) if detrend else np.ones((confounds.shape[0], 1))
    fitted = basis @ np.linalg.lstsq(basis, confounds, rcond=None)[0]
    scale = np.maximum(np.abs(confounds).max(axis=0), 1e-300)
    keep = np.abs(confounds - fitted).max(axis=0) > 1e-8 * scale
    return confounds[:, keep] if keep.any() else None


def resample_tr(series: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample [T, P] from ``tr`` to ``target_tr`` seconds: polyphase FIR (``scipy.signal.resample_poly``).

    The ratio ``tr / target_tr`` is approximated by a fraction with denominator <= 1000 (error < 1e-6 for
    usual TRs). The polyphase filter low-passes at the lower of the two Nyquist frequencies (anti-aliasing
    when the target TR is longer), and ``padtype="line"`` extends the signal by its linear trend at the edges
    so an undetrended series does not ring at the ends. Sample k of the output is at time ``k * target_tr``.
    Returns float64 [ceil(T * tr / target_tr), P].
    """
    from scipy.signal import resample_poly

    if np.isclose(tr, target_tr, rtol=TR_RTOL, atol=0):
        return series.astype(np.float64)
    ratio = Fraction(float(tr) / float(target_tr)).limit_denominator(1000)
    return resample_poly(series.astype(np.float64), ratio.numerator, ratio.denominator, axis=0, padtype="line")
