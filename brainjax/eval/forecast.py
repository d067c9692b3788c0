"""Forecasting future brain states: the model with future masking against fitted baselines.

Each held-out window of ``N`` patches is split into a context (the first ``N - k`` patches) and the target
(the last ``k`` patches, ``H = k * patch`` TRs). The model sees the context tokens only (``future``
masking — zero-shot for a pretrained model, or after ``brainjax finetune --task forecast``). Baselines get
the same context and are fitted on the training split only: persistence, per-parcel AR(p), ridge VAR(p)
(ridge penalty chosen on the validation split) and a small LSTM. Error is reported per horizon step, and the
model is compared with the baselines by paired bootstraps over windows (model MSE minus baseline MSE, overall
and per step, each with an interval and a verdict).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from brainjax.data.dataset import Dataset
from brainjax.eval import forecast_baselines as fb
from brainjax.eval.bootstrap import N_BOOT
from brainjax.eval.figures import save_forecast_errors
from brainjax.eval.inputs import normalized_scans, split_windows
from brainjax.eval.reconstruct import strategy_config

VAR_ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def evaluate_forecast(loaded, data: str, split: str, *, future_patches: int = 1, batch_size: int = 16,
                      max_windows: int = 0, seed: int = 0, ar_order: int = 3, var_order: int = 1,
                      lstm_steps: int = 300, max_train_scans: int = 200, n_boot: int = N_BOOT,
                      figure_dir: Path | None = None, baselines_from: str | None = None) -> dict:
    """Forecast errors per method: {"context_trs", "horizon_trs", "tr", "windows", "methods": {name:
    forecast_errors dict}, "var_alpha", ..., "comparison", "per_step", "vs"} with the last three from
    :func:`~brainjax.eval.forecast_baselines.compare_forecasts` (``n_boot`` draws over scans, a scan's
    windows together, seeded by ``seed``); ``lstm_steps=0`` leaves the LSTM out. baselines_from: the dataset
    whose training (and validation) split fits the baselines (default: ``data``)."""
    model = loaded.backbone
    patch, window = model.cfg.patch, loaded.cfg.data.window
    n_patches = window // patch
    if not 0 < future_patches < n_patches:
        raise ValueError(f"--forecast-patches {future_patches}: windows of this checkpoint hold {n_patches} "
                         f"patches of {patch} TRs; forecast between 1 and {n_patches - 1}")
    horizon, context_len = future_patches * patch, window - future_patches * patch
    dataset = Dataset(data)
    source = Dataset(baselines_from) if baselines_from else dataset
    train, _ = normalized_scans(source, "train", max_train_scans, complete=True)
    val, _ = normalized_scans(source, "val", max_train_scans, complete=True)
    baselines = {"persistence": lambda ctx: fb.persistence(ctx, horizon)}
    ar = fb.fit_ar(train, ar_order)
    baselines[f"ar{ar_order}"] = lambda ctx: fb.predict_ar(ar, ctx, horizon)
    alpha = fb.choose_var_alpha(train, val, var_order, VAR_ALPHAS) if val else VAR_ALPHAS[2]
    var = fb.fit_var(train, var_order, alpha)
    baselines[f"var{var_order}"] = lambda ctx: fb.predict_var(var, ctx, horizon)
    if lstm_steps:
        lstm = fb.train_lstm(train, context_len, horizon, steps=lstm_steps, seed=seed)
        predict_lstm = nnx.jit(lambda m, ctx: m(ctx))
        baselines["lstm"] = lambda ctx: np.asarray(predict_lstm(lstm, ctx))

    mask_cfg = strategy_config(loaded.cfg.mask, "future", future_patches)
    run = nnx.jit(lambda m, b, rng: m(b, rng, mask_cfg))
    preds: dict[str, list] = {name: [] for name in ("model", *baselines)}
    targets, masks, windows, scans = [], [], 0, []
    for index, (host, batch) in enumerate(split_windows(loaded, data, split, batch_size, max_windows)):
        rows = np.flatnonzero(host["valid"])
        windows += rows.size
        scans.extend(int(s) for s in host["scan"][rows])
        out = jax.device_get(run(model, batch, jax.random.fold_in(jax.random.key(seed), index)))
        pred = np.asarray(out["pred"])[rows, :, n_patches - future_patches:]
        preds["model"].append(pred.reshape(rows.size, pred.shape[1], horizon))
        context = host["signal"][rows, :, :context_len]
        for name, predict in baselines.items():
            preds[name].append(np.asarray(predict(context), np.float32))
        targets.append(host["signal"][rows, :, context_len:])
        masks.append(host["parcel_mask"][rows])
    if windows == 0:
        raise ValueError(f"{data}: split {split!r} has no whole window of {window} TRs")
    target, parcel_mask = np.concatenate(targets), np.concatenate(masks)
    preds = {name: np.concatenate(p) for name, p in preds.items()}
    methods = {name: fb.forecast_errors(p, target, parcel_mask) for name, p in preds.items()}
    errors = {name: fb.window_errors(p, target, parcel_mask) for name, p in preds.items()}
    tr = float(np.median([row["tr"] for row in dataset.manifest]))
    report = {"context_trs": context_len, "horizon_trs": horizon, "tr": tr, "windows": windows,
              "finetuned": loaded.cfg.finetune.task == "forecast", "var_alpha": alpha, "ar_order": ar_order,
              "var_order": var_order, "lstm_steps": lstm_steps, "methods": methods,
              **fb.compare_forecasts(errors, n_boot=n_boot, seed=seed, groups=scans)}
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
        path = figure_dir / "forecast_mse_by_horizon.png"
        save_forecast_errors(path, {k: v["mse_per_step"] for k, v in methods.items()}, tr,
                             f"forecast from {context_len} TRs ({split} split)")
        report["figures"] = {"mse_by_horizon": str(path)}
    return report
