"""``brainjax evaluate``: reconstruction, probes, forecasting and network identification of a checkpoint,
each beside its baselines, as one JSON report with figures next to it and a printed table.

Tasks (``--tasks``, comma-separated; default all that apply):

* ``reconstruct``  masked MSE / R² per masking strategy vs per-parcel mean, interpolation, regression
* ``probe``        embeddings -> ridge/logistic and k-NN per phenotype, subject-level CV, vs FC features
* ``forecast``     the last ``--forecast-patches`` patches of each window vs persistence, AR, VAR, LSTM
* ``networks``     parcel embeddings / attention -> networks vs the atlas labels, vs FC-row clustering
* ``finetuned``    (fine-tuned regress/classify checkpoints) held-out predictions of the trained head

External cohorts (a dataset that is all test data, BrainLM's headline use): the reconstruction and
forecasting baselines are fitted on the checkpoint's own training data (or ``--baseline-data``), never on the
evaluated scans, and the report says which (``baselines``); ``--probe-train D`` fits the probes on D's labelled
scans and tests them on the external cohort, subject-level as within one cohort.

The checkpoint is loaded for evaluation only (onto however many devices this process has); nothing in the
work dir changes. The report goes to ``--out`` (default ``WORKDIR/eval/report.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from brainjax.errors import UsageError

HELP = "evaluate a checkpoint (reconstruct, probe, forecast, networks) beside baselines; JSON report + figures"
TASKS = ("reconstruct", "probe", "forecast", "networks", "finetuned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a pretraining or fine-tuning work dir, an export "
                        "directory (brainjax export), or BrainLM's ViT-MAE weights (a Hugging Face directory)")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="held-out split for reconstruct/forecast/networks/finetuned (default: %(default)s)")
    parser.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)} (default: all that apply)")
    parser.add_argument("--out", help="report path (default: WORKDIR/eval/report.json; figures beside it)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass (default: %(default)s)")
    parser.add_argument("--max-windows", type=int, default=0, help="cap windows per task (0 = all)")
    parser.add_argument("--probe-splits", default="train,val,test",
                        help="scans the probes cross-validate over (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="probe cross-validation folds (default: %(default)s)")
    parser.add_argument("--forecast-patches", type=int, default=1, help="patches forecast (default: %(default)s)")
    parser.add_argument("--lstm-steps", type=int, default=300,
                        help="training steps of the LSTM forecasting baseline (0 = leave it out)")
    parser.add_argument("--baseline-data", help="dataset whose training split fits the reconstruction and "
                        "forecasting baselines (default: the evaluated dataset's, or for an external cohort "
                        "without one the checkpoint's own training data)")
    parser.add_argument("--probe-train", help="external-cohort probes: fit on this dataset's scans and labels "
                        "(e.g. the pretraining cohort) and test on every scan of --data, instead of "
                        "cross-validating within --data")
    parser.add_argument("--seed", type=int, default=0, help="masking draws, clustering and CV folds")
    parser.add_argument("--no-figures", action="store_true", help="write the JSON report only")


def choose_tasks(text: str | None, finetune_task: str) -> list[str]:
    """The tasks to run: all that apply to this checkpoint kind, or the requested subset (validated)."""
    head = finetune_task in ("regress", "classify")
    default = ["finetuned", "probe"] if head else ["reconstruct", "probe", "forecast", "networks"]
    if not text:
        return default
    tasks = [t for t in text.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UsageError(f"--tasks {text!r}: unknown {unknown}; expected a subset of {','.join(TASKS)}")
    if "finetuned" in tasks and not head:
        raise UsageError("--tasks finetuned needs a regress/classify fine-tuning work dir (brainjax finetune)")
    return tasks


def run_task(task: str, loaded, data: str, args: argparse.Namespace, figures: Path | None,
             baselines: dict | None) -> dict:
    common = dict(batch_size=args.batch, max_windows=args.max_windows)
    if task == "reconstruct":
        from brainjax.eval.reconstruct import evaluate_reconstruction
        return evaluate_reconstruction(loaded, data, args.split, seed=args.seed, figure_dir=figures,
                                       baselines_from=baselines["path"], **common)
    if task == "probe":
        splits = tuple(s for s in args.probe_splits.split(",") if s)
        if args.probe_train:
            from brainjax.eval.transfer import evaluate_probe_transfer
            return evaluate_probe_transfer(loaded, str(Path(args.probe_train).resolve()), data, splits,
                                           batch_size=args.batch, seed=args.seed)
        from brainjax.eval.phenotypes import evaluate_probes
        result = evaluate_probes(loaded, data, splits, batch_size=args.batch, folds=args.folds, seed=args.seed)
        return {**result, "folds": args.folds}
    if task == "forecast":
        from brainjax.eval.forecast import evaluate_forecast
        return evaluate_forecast(loaded, data, args.split, future_patches=args.forecast_patches, seed=args.seed,
                                 lstm_steps=args.lstm_steps, figure_dir=figures, baselines_from=baselines["path"],
                                 **common)
    if task == "networks":
        from brainjax.eval.network_maps import evaluate_networks
        return evaluate_networks(loaded, data, args.split, seed=args.seed, figure_dir=figures, **common)
    from brainjax.eval.phenotypes import evaluate_head
    return evaluate_head(loaded, data, args.split, **common)


def main(args: argparse.Namespace) -> int:
    import jax

    from brainjax.data.dataset import Dataset
    from brainjax.data.synthetic import data_or_default
    from brainjax.errors import BrainjaxError
    from brainjax.eval.inputs import baseline_data
    from brainjax.eval.report import format_report, write_report
    from brainjax.run import load_model

    data = data_or_default(args.data)
    out = Path(args.out) if args.out else Path(args.workdir) / "eval" / "report.json"
    Dataset(data)  # fail on a bad dataset before loading the model
    loaded = load_model(args.workdir, args.step, objective="mae")  # BrainLM runs and their heads
    tasks = choose_tasks(args.tasks, loaded.cfg.finetune.task)
    supported = getattr(loaded.backbone, "evaluate_tasks", None)  # e.g. a ViT-MAE: no attention maps
    if supported is not None:
        if args.tasks and set(tasks) - set(supported):
            raise UsageError(f"--tasks {args.tasks}: {args.workdir} supports {','.join(supported)} only")
        tasks = [t for t in tasks if t in supported]
    figures = None if args.no_figures else out.parent
    baseline_source = args.baseline_data and str(Path(args.baseline_data).resolve())
    # fitted baselines exist for reconstruct and forecast only; found (or refused) before any task runs
    baselines = baseline_data(loaded, data, baseline_source) if {"reconstruct", "forecast"} & set(tasks) else None
    report = {"workdir": str(Path(args.workdir).resolve()), "step": loaded.step, "data": data,
              "split": args.split, "config": loaded.cfg.name, "finetune": loaded.cfg.finetune.task or None,
              "devices": jax.device_count(), "platform": jax.default_backend(), "baselines": baselines,
              "tasks": {}, "seconds": {}}
    if baselines and baselines["path"] != data:
        print(f"baselines fitted on {baselines['path']} ({baselines['source']})", file=sys.stderr)
    for task in tasks:
        start = time.perf_counter()
        try:
            report["tasks"][task] = run_task(task, loaded, data, args, figures, baselines)
        except ValueError as err:  # name the task that failed (the cli prints one line and exits 2)
            raise (type(err) if isinstance(err, BrainjaxError) else ValueError)(f"{task}: {err}") from err
        report["seconds"][task] = round(time.perf_counter() - start, 2)
        print(f"{task}: done in {report['seconds'][task]:.1f} s", file=sys.stderr)
    write_report(out, report)
    print(format_report(report))
    print(f"\nreport -> {out}")
    return 0
