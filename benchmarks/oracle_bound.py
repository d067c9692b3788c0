"""How much of the regression baseline's gap a model could close: the synthetic generator's own conditional mean.

    python benchmarks/oracle_bound.py [--workdir runs/quality] [--data DIR] [--split test] [--max-windows 96]
                                      [--strategies random,time_block,future] [--seed 0]

On the embedded synthetic data (or any dataset ``brainjax synth`` wrote) every held-out window is reconstructed
three ways from the same visible tokens (masking drawn as ``brainjax evaluate`` draws it): the regression
baseline, the model of ``--workdir`` (if given), and the oracle of :mod:`brainjax.data.synthetic_oracle`, the
Gaussian conditional mean under the generator's true covariance for that subject, site and window, which
knows what no model is told and so bounds every model's R² from above. With future masking the oracle's
error per horizon step is the floor for forecasting. Prints one JSON object: {"cpu", "split", "windows",
"seconds", "strategies": {s: {"r2": {method: pooled R²}, "oracle_minus_regression", "model_minus_regression",
"model_minus_oracle" (each {"diff", "low", "high", ...}: a paired bootstrap over scans), "headroom_captured"}},
"future_step_mse": {method: [per-TR MSE]}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import cpu_model  # noqa: E402

from brainjax.config import MaskConfig  # noqa: E402
from brainjax.data.dataset import Dataset  # noqa: E402
from brainjax.data.pipeline import eval_batches  # noqa: E402
from brainjax.data.synthetic import data_or_default  # noqa: E402
from brainjax.data.synthetic_oracle import conditional_mean, dataset_cohort, scan_prior  # noqa: E402
from brainjax.eval import forecast_baselines as fb  # noqa: E402
from brainjax.eval.bootstrap import paired_interval, pooled_r2  # noqa: E402
from brainjax.eval.forecast import VAR_ALPHAS  # noqa: E402
from brainjax.eval.inputs import normalized_scans  # noqa: E402
from brainjax.eval.recon_baselines import ReconMetrics, accumulate_moments, regression_baseline  # noqa: E402
from brainjax.eval.reconstruct import STRATEGIES, strategy_config  # noqa: E402
from brainjax.nn.masking import sample_masking  # noqa: E402


def _difference(a: np.ndarray, b: np.ndarray, groups: list[int], seed: int) -> dict:
    """Pooled R² of window sums ``a`` minus ``b`` with its paired bootstrap interval over scans."""
    return paired_interval(lambda w: pooled_r2(w, a) - pooled_r2(w, b), len(a), groups=groups, seed=seed)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a BrainLM run to score beside the oracle (optional)")
    parser.add_argument("--data", help="a synthetic dataset (default: the embedded one)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-windows", type=int, default=96)
    parser.add_argument("--strategies", default="random,time_block,future")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=80, help="without --workdir: window length in TRs")
    parser.add_argument("--patch", type=int, default=20, help="without --workdir: TRs per token")
    args = parser.parse_args(argv)
    start_time = time.perf_counter()
    data = data_or_default(args.data)
    dataset = Dataset(data)
    cohort = dataset_cohort(dataset)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    model = run = None
    mask_cfg, window, patch = MaskConfig(ratio=0.75), args.window, args.patch
    if args.workdir:
        from flax import nnx

        from brainjax.run import load_model
        loaded = load_model(args.workdir, objective="mae")
        model, mask_cfg = loaded.backbone, loaded.cfg.mask
        window, patch = loaded.cfg.data.window, model.cfg.patch
        run = nnx.jit(lambda m, b, rng, c: m(b, rng, c), static_argnums=3)
    n_patches = window // patch
    train, _ = normalized_scans(dataset, "train", 200, complete=True)
    moments = accumulate_moments(train)
    methods = ["oracle", "regression"] + (["model"] if model is not None else [])
    sums = {s: {m: [] for m in methods} for s in strategies}
    forecasters = {}
    if "future" in strategies:  # the forecasting baselines of `brainjax evaluate`, fitted on the training split
        val, _ = normalized_scans(dataset, "val", 200, complete=True)
        ar = fb.fit_ar(train, 3)
        var = fb.fit_var(train, 1, fb.choose_var_alpha(train, val, 1, VAR_ALPHAS) if val else VAR_ALPHAS[2])
        forecasters = {"ar3": lambda ctx: fb.predict_ar(ar, ctx, patch),
                       "var1": lambda ctx: fb.predict_var(var, ctx, patch)}
    step_errors = {m: [] for m in methods + list(forecasters)}  # future masking: per window (count, sse [H])
    scans, seen_windows = [], 0
    for index, host in enumerate(eval_batches([data], args.split, window, 16, process_index=0, process_count=1)):
        valid = host["valid"] & (np.arange(len(host["valid"])) < args.max_windows - seen_windows)
        rows = np.flatnonzero(valid)
        if not len(rows):
            break
        seen_windows += len(rows)
        scans.extend(int(s) for s in host["scan"][rows])
        parcel_mask = host["parcel_mask"] & valid[:, None]
        batch = {k: host[k] for k in ("signal", "parcel_mask", "coords", "tr")}
        batch["parcel_mask"] = parcel_mask
        patches = host["signal"].reshape(*host["signal"].shape[:2], n_patches, patch)
        priors = [scan_prior(cohort, dataset, int(host["scan"][r]), int(host["start"][r]), window) for r in rows]
        for strategy in strategies:
            cfg = strategy_config(mask_cfg, strategy)
            rng = jax.random.fold_in(jax.random.key(args.seed), index * len(STRATEGIES) + STRATEGIES.index(strategy))
            if model is not None:
                out = jax.device_get(run(model, batch, rng, cfg))
                masked = np.asarray(out["masked"]) & parcel_mask[:, :, None]
                preds = {"model": np.asarray(out["pred"])}
            else:
                masking = sample_masking(rng, cfg, parcel_mask, n_patches)
                masked = np.asarray(masking.masked).reshape(patches.shape[:3]) & parcel_mask[:, :, None]
                preds = {}
            preds["regression"] = regression_baseline(patches, masked, parcel_mask, moments)
            oracle = np.zeros_like(patches)
            for r, prior in zip(rows, priors):
                seen = np.repeat(~masked[r], patch, axis=-1)
                oracle[r] = conditional_mean(prior, host["signal"][r], seen).reshape(patches.shape[1:])
            preds["oracle"] = oracle
            for name in methods:
                sums[strategy][name].append(ReconMetrics().update(preds[name], patches, masked)[rows])
            if strategy == "future":  # the last patch of every real parcel: error per horizon TR
                context = host["signal"][rows, :, :window - patch]
                for name, forecast in forecasters.items():
                    preds[name] = np.zeros_like(patches)
                    preds[name][rows, :, -1] = forecast(context)
                for name in step_errors:
                    step_errors[name].append(fb.window_errors(preds[name][rows, :, -1], patches[rows, :, -1],
                                                              parcel_mask[rows]))
        print(f"windows {seen_windows}", file=sys.stderr)
    report = {"cpu": cpu_model(), "data": data, "split": args.split, "windows": seen_windows,
              "workdir": args.workdir, "strategies": {}}
    for strategy in strategies:
        blocks = {name: np.concatenate(b) for name, b in sums[strategy].items()}
        ones = np.ones(len(blocks["oracle"]))
        entry = {"r2": {name: pooled_r2(ones, b) for name, b in blocks.items()},
                 "oracle_minus_regression": _difference(blocks["oracle"], blocks["regression"], scans, args.seed)}
        if model is not None:
            entry["model_minus_regression"] = _difference(blocks["model"], blocks["regression"], scans, args.seed)
            entry["model_minus_oracle"] = _difference(blocks["model"], blocks["oracle"], scans, args.seed)
            gap = entry["r2"]["oracle"] - entry["r2"]["regression"]
            entry["headroom_captured"] = (entry["r2"]["model"] - entry["r2"]["regression"]) / gap if gap > 0 else None
        report["strategies"][strategy] = entry
    if forecasters:
        errors = {name: (np.concatenate([c for c, _ in e]), np.concatenate([s for _, s in e]))
                  for name, e in step_errors.items()}
        report["future_step_mse"] = {name: (sse.sum(0) / count.sum()).round(4).tolist()
                                     for name, (count, sse) in errors.items()}
        report["forecast_steps"] = {}
        for name in ("oracle", "model"):  # each against the best forecasting baseline, step by step
            if name in errors:
                compared = fb.compare_forecasts({"model": errors[name], **{k: errors[k] for k in forecasters}},
                                                seed=args.seed, groups=scans)
                verdicts = [step["verdict"] for step in compared["per_step"]]
                report["forecast_steps"][name] = {v: verdicts.count(v) for v in ("beats", "ties", "loses")}
                report["forecast_steps"][name]["first_not_beaten"] = next(
                    (i + 1 for i, v in enumerate(verdicts) if v != "beats"), None)
    report["seconds"] = round(time.perf_counter() - start_time, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
