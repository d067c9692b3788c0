"""Masked reconstruction of held-out windows, per masking strategy, beside baselines given the same tokens.

For every window of the split and every strategy the model and each baseline of
:mod:`brainjax.eval.recon_baselines` receive the same visible tokens (one masking drawn per window from a
fixed seed) and are scored on the same masked values: MSE and R² pooled over all masked values (BrainLM's
number) and R² per parcel. Per strategy the model is compared with the baseline of best pooled R² by a paired
bootstrap over windows (each draw rescoring both on the same windows): an interval of the R² difference and a
verdict (beats / ties / loses).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from brainjax.config import MaskConfig
from brainjax.data.dataset import Dataset
from brainjax.eval.bootstrap import N_BOOT
from brainjax.eval.figures import save_parcel_values, save_reconstruction_figure
from brainjax.eval.inputs import normalized_scans, split_windows
from brainjax.eval.recon_baselines import BASELINES, ReconMetrics, accumulate_moments, compare_to_best

STRATEGIES = ("random", "parcels", "time_block", "future")


def strategy_config(base: MaskConfig, strategy: str, future_patches: int = 1) -> MaskConfig:
    """The checkpoint's masking settings with ``strategy`` (future: ``future_patches`` patches at the end)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; expected a subset of {STRATEGIES}")
    return dataclasses.replace(base, strategy=strategy, future_patches=future_patches)


def evaluate_reconstruction(loaded, data: str, split: str, *, strategies=STRATEGIES, batch_size: int = 16,
                            max_windows: int = 0, seed: int = 0, max_train_scans: int = 200,
                            n_boot: int = N_BOOT, figure_dir: Path | None = None,
                            baselines_from: str | None = None) -> dict:
    """Model and baseline reconstruction metrics per strategy (JSON-able).

    Returns {strategy: {"model": metrics, "parcel_mean": ..., "interpolation": ..., "regression": ...,
    "comparison": ...}} with metrics from :class:`~brainjax.eval.recon_baselines.ReconMetrics`
    (``r2_per_parcel`` included) and the comparison of
    :func:`~brainjax.eval.recon_baselines.compare_to_best` (``n_boot`` draws over scans, a scan's windows
    resampled together, seeded by ``seed``), plus "windows" (windows scored) and, with ``figure_dir``, "figures".
    baselines_from: the dataset whose training split fits the regression baseline (default: ``data``; see
    :func:`~brainjax.eval.inputs.baseline_data`).
    """
    model = loaded.backbone
    # a model that masks in its own way (a ViT-MAE's random blocks) is scored on the strategies it has
    strategies = tuple(s for s in strategies if s in getattr(model, "mask_strategies", STRATEGIES))
    dataset = Dataset(data)
    train, _ = normalized_scans(Dataset(baselines_from or data), "train", max_train_scans, complete=True)
    moments = accumulate_moments(train)  # the regression baseline's covariance: training split only
    patch = model.cfg.patch
    configs = {s: strategy_config(loaded.cfg.mask, s) for s in strategies}
    runs = {s: nnx.jit(lambda m, b, rng, c=c: m(b, rng, c)) for s, c in configs.items()}
    scores = {s: {name: ReconMetrics() for name in ("model", *BASELINES)} for s in strategies}
    sums = {s: {name: [] for name in scores[s]} for s in strategies}  # per-window [B_valid, 4] blocks
    example, windows, scans = None, 0, []
    for index, (host, batch) in enumerate(split_windows(loaded, data, split, batch_size, max_windows)):
        windows += int(host["valid"].sum())
        rows = np.flatnonzero(host["valid"])  # padding rows are no windows: they must not be resampled
        scans.extend(int(s) for s in host["scan"][rows])
        parcel_mask = host["parcel_mask"]
        patches = host["signal"].reshape(*host["signal"].shape[:2], -1, patch)
        for s_index, strategy in enumerate(strategies):
            rng = jax.random.fold_in(jax.random.key(seed), index * len(STRATEGIES) + s_index)
            out = jax.device_get(runs[strategy](model, batch, rng))
            masked = np.asarray(out["masked"]) & parcel_mask[:, :, None]
            per_window = scores[strategy]["model"].update(np.asarray(out["pred"]), np.asarray(out["target"]), masked)
            sums[strategy]["model"].append(per_window[rows])
            for name, baseline in BASELINES.items():
                pred = baseline(patches, masked, parcel_mask, moments)
                sums[strategy][name].append(scores[strategy][name].update(pred, patches, masked)[rows])
            if example is None and strategy == strategies[0]:
                row = int(rows[0])
                example = (np.asarray(out["pred"])[row], np.asarray(out["target"])[row], masked[row],
                           parcel_mask[row])
    if windows == 0:
        raise ValueError(f"{data}: split {split!r} has no whole window of {loaded.cfg.data.window} TRs")
    report = {s: {name: acc.result() for name, acc in accs.items()} for s, accs in scores.items()}
    for strategy, blocks in sums.items():
        windowed = {name: np.concatenate(b) for name, b in blocks.items()}
        report[strategy]["comparison"] = compare_to_best(windowed, n_boot=n_boot, seed=seed, groups=scans)
    report["windows"] = windows
    if figure_dir is not None:
        report["figures"] = _figures(figure_dir, example, report[strategies[0]]["model"]["r2_per_parcel"],
                                     dataset, strategies[0])
    return report


def _figures(figure_dir: Path, example, r2_per_parcel, dataset: Dataset, strategy: str) -> dict:
    figure_dir.mkdir(parents=True, exist_ok=True)
    traces = figure_dir / f"reconstruction_{strategy}.png"
    save_reconstruction_figure(traces, *example)
    brain = figure_dir / f"reconstruction_r2_{strategy}.png"
    values = np.asarray(r2_per_parcel, np.float64)[:dataset.atlas.n_parcels]
    save_parcel_values(brain, dataset.atlas.xyz, values, f"per-parcel R² ({strategy} masking)")
    return {"traces": str(traces), "r2_glass_brain": str(brain)}
