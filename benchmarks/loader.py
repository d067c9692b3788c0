"""Input-pipeline throughput: host batches per second from a dataset directory, printed as one JSON object.

    python benchmarks/loader.py --data DIR [--window 200] [--batch 32] [--workers 0] [--seconds 10]

Measures the training loader (random crops, shuffled, infinite) on one process. The first batch (thread or
worker start-up, first reads) is timed separately and excluded from the rates. ``mb_per_s`` counts the
float32 ``signal`` delivered (batch x parcels x window x 4 bytes per batch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def measure_loader(spec, seconds: float) -> dict:
    """Drain the training loader built from ``spec`` (a :class:`brainjax.data.pipeline.LoaderSpec`) for
    ``seconds`` after its first batch. Returns windows/s, MB/s of float32 signal, the batch count and the
    loader's settings (see the module docstring)."""
    from brainjax.data.pipeline import make_loader

    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    start = time.perf_counter()
    loader = make_loader(spec)
    first = next(loader)
    first_batch_s = time.perf_counter() - start
    batches, values = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(loader)
        batches += 1
        values += batch["signal"].size
    elapsed = time.perf_counter() - start
    loader.close()
    dataset = loader.datasets[0]
    return {
        "windows_per_s": round(batches * spec.batch_size / elapsed, 2),
        "mb_per_s": round(values * 4 / elapsed / 1e6, 2),
        "batches": batches,
        "seconds": round(elapsed, 3),
        "first_batch_s": round(first_batch_s, 3),
        "window": spec.window,
        "batch": spec.batch_size,
        "workers": spec.workers,
        "threads": spec.read_threads,
        "parcels": int(first["signal"].shape[1]),
        "dataset_scans": len(dataset),
        "split_scans": len(dataset.indices(spec.split)),
        "windows_per_epoch": loader.windows_per_epoch,
        "data": str(dataset.path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset directory (brainjax prepare / synth output)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--window", type=int, default=200, help="window length in TRs")
    parser.add_argument("--stride", type=int, default=0, help="0 = one random crop per scan per epoch")
    parser.add_argument("--batch", type=int, default=32, help="batch size (this single process)")
    parser.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    parser.add_argument("--threads", type=int, default=4, help="reader threads per process")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement time after the first batch")
    args = parser.parse_args(argv)

    from brainjax.data.pipeline import LoaderSpec

    spec = LoaderSpec(paths=(args.data,), split=args.split, window=args.window, batch_size=args.batch,
                      stride=args.stride, workers=args.workers, read_threads=args.threads,
                      process_index=0, process_count=1)
    print(json.dumps({"benchmark": "loader", **measure_loader(spec, args.seconds)}))
    return 0


if __name__ == "__main__":  # the guard matters: Grain workers are spawned and re-import this module
    sys.exit(main())
