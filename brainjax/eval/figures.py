"""Evaluation figures: per-parcel values on a glass brain, forecast error by horizon (matplotlib Agg).

Files are written through a temporary name and renamed, so an interrupted run leaves no half-written PNG;
on an object store (``gs://...`` work dirs) the PNG is rendered to a local temporary file and uploaded as one
object, which appears whole or not at all (:func:`brainjax.paths.atomic_path`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from brainjax.paths import atomic_path, workdir_path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write the matplotlib figure ``fig`` as a PNG to ``path`` (local or remote) atomically, then close it."""
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:  # a local file either way: matplotlib writes no remote paths
            fig.savefig(tmp, format="png", dpi=dpi)
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


RECONSTRUCTION_FIGURE = "reconstruction.png"


def reconstruction_hook(task, workdir: str | os.PathLike) -> Callable:
    """The Trainer's end-of-run hook for objectives that reconstruct windows: true vs reconstructed series of
    a few parcels of the first validation window, saved as ``WORKDIR/reconstruction.png``.

    Every process must call the hook (the model runs on global arrays); only the one told to ``write`` saves."""
    path = workdir_path(workdir) / RECONSTRUCTION_FIGURE

    def finish(model, batch, rng, write: bool) -> dict:
        out = task.reconstruct(model, batch, rng)
        if out is None:
            return {}
        if write:
            save_reconstruction_figure(path, out["pred"][0], out["target"][0], out["shown"][0],
                                       out["parcel_mask"][0], what=out["what"])
        return {"figure": str(path)}
    return finish


def save_reconstruction_figure(path: Path, pred: np.ndarray, target: np.ndarray, masked: np.ndarray,
                               parcel_mask: np.ndarray, n_show: int = 4, what: str = "masked") -> None:
    """True vs reconstructed series of ``n_show`` parcels; the patches in ``masked`` are shaded and plotted
    (``what`` names them: "masked" for the MAE, "coded" for the tokenizer, which reconstructs every patch).

    pred/target: [P, N, patch] (one sample), masked: [P, N] bool, parcel_mask: [P] bool.
    """
    plt = _pyplot()
    real = np.flatnonzero(parcel_mask)
    # Prefer parcels with masked patches so the figure shows reconstructions, not copies of the input.
    order = sorted(real, key=lambda p: -int(masked[p].sum()))
    shown = sorted(order[:n_show])
    n_patches, patch = target.shape[1], target.shape[2]
    t = np.arange(n_patches * patch)
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.8 * len(shown)), sharex=True, squeeze=False)
    for ax, p in zip(axes[:, 0], shown):
        for k in np.flatnonzero(masked[p]):
            ax.axvspan(k * patch, (k + 1) * patch, color="0.9", lw=0)
        ax.plot(t, target[p].reshape(-1), color="k", lw=1, label="true")
        recon = np.where(np.repeat(masked[p], patch), pred[p].reshape(-1), np.nan)
        ax.plot(t, recon, color="tab:red", lw=1, label=f"reconstructed ({what})")
        ax.set_ylabel(f"parcel {p}")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel(f"time (TR) — shaded: {what} patches")
    fig.tight_layout()
    save_figure(fig, path)
