"""Step time and MFU of the training step across presets and compute dtypes, printed as one JSON object.

    python benchmarks/sweep.py --presets tiny,default,ref_small,brainlm_13m --dtypes float32,bfloat16
                               [--batch 8] [--steps 3] [--parcels 300] [--set KEY=VALUE ...] [--markdown]

Every (preset, dtype) runs ``benchmarks/train_step.py --set model.dtype=DTYPE`` in its own subprocess, so
compilation, the allocator and the peak resident memory belong to that configuration alone, and a
configuration that crashes or runs out of memory only loses its own row: the row keeps its preset, dtype and
an ``error`` (the end of the subprocess's stderr) and the sweep goes on. Rows (``{"rows": [...]}``)::

    preset, dtype, batch, parcels, tokens (per sample = parcels x window / patch), params, median_step_s,
    samples_per_s, tokens_per_s, model_tflop_per_step, mfu, peak_rss_gib   (+ compile_s, peak_gflops, ...)

``mfu`` is against the matmul peak of the row's dtype measured in the same subprocess (see train_step.py).
Without ``--batch`` each preset runs at its own ``data.batch_size``. ``--markdown`` also prints a table to
stderr. Progress goes to stderr; stdout holds the JSON only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("preset", "dtype", "batch", "parcels", "tokens", "params", "median_step_s", "samples_per_s",
           "tokens_per_s", "model_tflop_per_step", "mfu", "peak_rss_gib")
EXTRA = ("step_times_s", "compile_s", "first_step_s", "forward_s", "xla_tflop_per_step", "achieved_gflops",
         "peak_gflops_fp32", "peak_gflops_bf16", "window", "remat", "device", "cpu_count")


def split_list(text: str, name: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``; raises ValueError naming ``name`` when nothing is left."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{name} is empty: give a comma-separated list")
    return items


def default_batch(preset: str, overrides: tuple[str, ...] = ()) -> int:
    """The preset's ``data.batch_size`` after ``overrides`` (raises ConfigError, a ValueError, for an unknown
    preset or a bad override)."""
    from brainjax.config import load_config, override

    return override(load_config(preset), overrides).data.batch_size


def row_from_record(record: dict) -> dict:
    """A sweep row from one train_step.py JSON record: the table's columns first, then the extras.

    tokens = tokens per sample (parcels x window / patch); tokens_per_s = tokens x samples_per_s.
    """
    row = {"preset": record["preset"], "dtype": record["dtype"], "batch": record["batch"],
           "parcels": record["parcels"], "tokens": record["tokens_per_sample"], "params": record["params"],
           "median_step_s": record["median_step_s"], "samples_per_s": record["samples_per_s"],
           "tokens_per_s": round(record["tokens_per_sample"] * record["samples_per_s"], 1),
           "model_tflop_per_step": record["model_tflop_per_step"], "mfu": record["mfu"],
           "peak_rss_gib": record["peak_rss_gib"]}
    row.update({key: record[key] for key in EXTRA if key in record})
    return row


def run_config(preset: str, dtype: str, batch: int | None, steps: int, parcels: int | None, peak_size: int,
               timeout: float, overrides: tuple[str, ...] = ()) -> dict:
    """One train_step.py subprocess for (preset, dtype) with the config ``overrides`` (KEY=VALUE). Returns its
    row, or {preset, dtype, batch, error, seconds} when it fails, times out or prints no JSON."""
    failed = {"preset": preset, "dtype": dtype, "batch": batch}
    try:
        batch = batch or default_batch(preset, overrides)
    except ValueError as err:
        return {**failed, "error": str(err), "seconds": 0.0}
    command = [sys.executable, str(HERE / "train_step.py"), "--preset", preset, "--batch", str(batch),
               "--steps", str(steps), "--peak-size", str(peak_size)]
    command += [part for item in (*overrides, f"model.dtype={dtype}") for part in ("--set", item)]
    if parcels:
        command += ["--parcels", str(parcels)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {**failed, "batch": batch, "error": f"timed out after {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or len(lines) != 1:
        # the last stderr line is the exception; a kill by the OOM killer leaves none, only the status -9
        last = (proc.stderr.strip().splitlines() or [f"{len(lines)} JSON lines on stdout"])[-1]
        return {**failed, "batch": batch, "error": f"exit status {proc.returncode}: {last}", "seconds": seconds}
    return {**row_from_record(json.loads(lines[0])), "seconds": seconds}


def markdown(rows: list[dict]) -> str:
    """The rows as a GitHub markdown table (failed rows show their error in the last column)."""
    header = [*COLUMNS, "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.get(key, "") for key in COLUMNS] + [row.get("error", "")]
        text = [f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c) for c in cells]
        lines.append("| " + " | ".join(t.replace("|", "/") for t in text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,default,ref_small,brainlm_13m")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, help="samples per step (default: each preset's data.batch_size)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the compilation step")
    parser.add_argument("--parcels", type=int, help="parcels per window (default: each preset's max_parcels)")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak measurement")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every configuration (repeatable; model.dtype comes from --dtypes)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per configuration")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table to stderr")
    args = parser.parse_args(argv)
    presets, dtypes = split_list(args.presets, "--presets"), split_list(args.dtypes, "--dtypes")
    if (args.batch is not None and args.batch < 1) or args.steps < 1:
        parser.error(f"--batch and --steps must be >= 1 (got {args.batch}, {args.steps})")

    rows = []
    for preset in presets:
        for dtype in dtypes:
            print(f"sweep: {preset} {dtype} ...", file=sys.stderr, flush=True)
            row = run_config(preset, dtype, args.batch, args.steps, args.parcels, args.peak_size, args.timeout,
                             tuple(args.overrides))
            rows.append(row)
            status = row.get("error") or f"{row['median_step_s']} s/step, mfu {row['mfu']}"
            print(f"sweep: {preset} {dtype}: {status} ({row['seconds']} s)", file=sys.stderr, flush=True)
    if args.markdown:
        print(markdown(rows), file=sys.stderr)
    print(json.dumps({"benchmark": "sweep", "steps": args.steps, "overrides": args.overrides, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
