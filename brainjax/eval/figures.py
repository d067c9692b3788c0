"""Evaluation figures: per-parcel values on a glass brain, forecast error by horizon (matplotlib Agg).

Files are written through a temporary name and renamed, so an interrupted run leaves no half-written PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def save_parcel_values(path: Path, xyz: np.ndarray, values: np.ndarray, title: str) -> None:
    """One marker per parcel at its MNI position (xyz float [P, 3] mm), coloured by ``values`` [P].

    Non-finite values (parcels never scored) are left out.
    """
    from nilearn import plotting

    plt = _pyplot()
    values = np.asarray(values, np.float64)
    keep = np.isfinite(values)
    if not keep.any():
        raise ValueError(f"{path}: no finite per-parcel value to plot")
    shown = values[keep]
    low, high = np.percentile(shown, [2, 98]) if shown.size > 1 else (shown[0] - 1, shown[0] + 1)
    fig = plt.figure(figsize=(10, 3.2))
    plotting.plot_markers(shown, np.asarray(xyz)[keep], node_size=18, node_vmin=float(low),
                          node_vmax=float(max(high, low + 1e-6)), node_cmap="viridis", display_mode="lzry",
                          title=title, figure=fig, colorbar=True)
    _save(fig, path)


def save_forecast_errors(path: Path, curves: dict[str, list[float]], tr: float, title: str) -> None:
    """MSE per horizon step (one line per method; ``curves`` maps name -> [H]) against seconds ahead."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, curve in curves.items():
        steps = np.arange(1, len(curve) + 1) * tr
        ax.plot(steps, curve, label=name, lw=1.5 if name == "model" else 1.0)
    ax.set_xlabel("seconds ahead")
    ax.set_ylabel("MSE (normalised units)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
