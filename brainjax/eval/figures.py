"""Evaluation figures: per-parcel values on a glass brain, forecast error by horizon (matplotlib Agg).

Files are written through a temporary name and renamed, so an interrupted run leaves no half-written PNG;
on an object store (``gs://...`` work dirs) the PNG is rendered in memory and uploaded as one object, which
appears whole or not at all (see :mod:`brainjax.paths`).
"""

from __future__ import annotations

import io
import os

import numpy as np

from brainjax.paths import atomic_write_bytes, is_remote, workdir_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write the matplotlib figure ``fig`` as a PNG to ``path`` (local or remote) atomically, then close it."""
    plt = _pyplot()
    target = workdir_path(path)
    try:
        if is_remote(target):  # matplotlib only writes local files or file objects
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi)
            atomic_write_bytes(target, buffer.getvalue())
        else:
            tmp = target.with_name(target.stem + f".tmp{os.getpid()}.png")
            fig.savefig(tmp, dpi=dpi)
            os.replace(tmp, target)
    finally:
        plt.close(fig)


def save_parcel_values(path: str | os.PathLike, xyz: np.ndarray, values: np.ndarray, title: str) -> None:
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
    save_figure(fig, path)


def save_forecast_errors(path: str | os.PathLike, curves: dict[str, list[float]], tr: float, title: str) -> None:
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
    save_figure(fig, path)
