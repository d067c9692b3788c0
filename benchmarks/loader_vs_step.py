"""Is the input pipeline fast enough? Loader windows/s against the training step's consumption, as one JSON object.

    python benchmarks/loader_vs_step.py --preset default [--data DIR] [--workers 0] [--threads 4]
                                        [--batch N] [--seconds 10] [--steps 5]

Measures, one after the other in this process, for the preset's window and global batch:

- the training loader (``brainjax.data.pipeline``, random crops, shuffled, as ``brainjax pretrain`` builds it
  on one process) on ``--data`` (default: the embedded synthetic dataset): ``loader_windows_per_s``;
- the trainer's jitted step on random windows of the loader's parcel count, as ``benchmarks/train_step.py``
  times it: ``step_windows_per_s = batch / median_step_s``;

and prints ``ratio = loader_windows_per_s / step_windows_per_s``. Above 1 the loader keeps up with the step;
below 1 training waits for data. The ratio is reported, never asserted. Both are measured alone on an idle
process, while in training they share the host's cores, so a ratio near 1 is already a warning. Progress
goes to stderr; stdout holds the JSON only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}")


def compare(loader_windows_per_s: float, batch: int, median_step_s: float) -> dict:
    """The comparison fields: the step's windows/s (batch / median step time) and loader/step.

    Raises ValueError when a rate is not positive (e.g. a loader that delivered no batch in the time).
    """
    if not median_step_s > 0 or not loader_windows_per_s > 0:
        raise ValueError(f"rates must be positive: loader {loader_windows_per_s} windows/s, step "
                         f"{median_step_s} s")
    step_rate = batch / median_step_s
    return {"loader_windows_per_s": significant(loader_windows_per_s), "step_windows_per_s": significant(step_rate),
            "ratio": significant(loader_windows_per_s / step_rate)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--workers", type=int, default=0, help="Grain worker processes (as data.workers)")
    parser.add_argument("--threads", type=int, default=4, help="reader threads per process")
    parser.add_argument("--batch", type=int, help="global batch (default: the preset's data.batch_size)")
    parser.add_argument("--seconds", type=float, default=10.0, help="loader measurement time after its first batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the compilation step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))  # the sibling benchmarks hold the measurements
    from loader import measure_loader
    from train_step import measure_step

    from brainjax.config import load_config, override
    from brainjax.data.pipeline import LoaderSpec, spec_dict

    cfg = override(load_config(args.preset), args.overrides)
    batch = args.batch or cfg.data.batch_size
    if args.data:
        data = str(Path(args.data).expanduser().resolve())
    else:
        from brainjax.data.synthetic import default_dataset
        data = str(default_dataset())
    spec = LoaderSpec(paths=(data,), split="train", window=cfg.data.window, batch_size=batch,
                      stride=cfg.data.stride, seed=cfg.train.seed, workers=args.workers, read_threads=args.threads,
                      process_index=0, process_count=1)
    print(f"loader_vs_step: loader {args.seconds:g} s on {data} ...", file=sys.stderr, flush=True)
    loader = measure_loader(spec, args.seconds)
    print(f"loader_vs_step: {loader['windows_per_s']} windows/s; timing {args.steps} steps of {cfg.name} at "
          f"{loader['parcels']} parcels ...", file=sys.stderr, flush=True)
    # the step sees the loader's parcel count, as in `brainjax pretrain` (one dataset is never padded)
    step = measure_step(cfg, batch, args.steps, loader["parcels"], peaks=False, forward=False)
    print(json.dumps({
        "benchmark": "loader_vs_step",
        "preset": cfg.name,
        "overrides": args.overrides,
        "batch": batch,
        "window": cfg.data.window,
        "parcels": loader["parcels"],
        **compare(loader["windows_per_s"], batch, step["median_step_s"]),
        "loader": {**{k: v for k, v in spec_dict(spec).items() if k not in ("paths", "process_index",
                                                                           "process_count")},
                   **{k: loader[k] for k in ("windows_per_s", "mb_per_s", "batches", "seconds", "first_batch_s",
                                             "dataset_scans", "split_scans", "windows_per_epoch", "data")}},
        "step": {k: step[k] for k in ("median_step_s", "step_times_s", "compile_s", "first_step_s", "dtype",
                                      "tokens_per_sample", "params", "peak_rss_gib", "device", "cpu_count")},
    }))
    return 0


if __name__ == "__main__":  # the guard matters: Grain workers are spawned and re-import this module
    sys.exit(main())
