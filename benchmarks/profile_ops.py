"""Where a profiled step spends its device time: XLA operations ranked by total duration, as one JSON object.

    python benchmarks/train_step.py --preset brainlm_111m --batch 2 --steps 2 --profile /tmp/prof
    python benchmarks/profile_ops.py /tmp/prof [--top 15]

Reads the newest ``perfetto_trace.json.gz`` under the trace directory (``jax.profiler.trace(...,
create_perfetto_trace=True)``, which ``train_step.py --profile`` uses), keeps the complete events of the threads
that execute XLA programs (``tf_XLA*`` on CPU; the device streams' ``/device:*`` processes on GPU and TPU),
and sums their durations by operation name (``fusion.12``, ``convolution``, ...; a trailing ``.N`` is kept so
each fusion stays distinct) and by kind (the name without ``.N``). The runtime's own bookkeeping events
(C++ names with ``::``, e.g. ``ThunkExecutor::Execute``, which enclose the operations) are left out, so nothing
is counted twice.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
from pathlib import Path


def load_events(trace_dir: str | Path) -> tuple[Path, list[dict]]:
    """(trace file, its events) for the newest perfetto trace under ``trace_dir``; FileNotFoundError if none."""
    files = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"{trace_dir}: no perfetto_trace.json.gz (profile with create_perfetto_trace=True)")
    data = json.loads(gzip.open(files[-1]).read())
    return files[-1], data["traceEvents"] if isinstance(data, dict) else data


def op_times(events: list[dict]) -> tuple[dict[str, float], float]:
    """({operation: total microseconds}, total microseconds) over the events of XLA-executing threads."""
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}

    def executes_xla(event: dict) -> bool:
        if processes.get(event.get("pid"), "").startswith("/device:"):
            return True
        return threads.get((event.get("pid"), event.get("tid")), "").startswith("tf_XLA")

    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and "::" not in event["name"] and executes_xla(event):
            totals[event["name"]] += float(event.get("dur", 0.0))
    return dict(totals), sum(totals.values())


def by_kind(totals: dict[str, float]) -> dict[str, float]:
    """Totals summed over the numbered instances of an operation: ``fusion.3`` and ``fusion.12`` -> ``fusion``."""
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, us in totals.items():
        stem, _, suffix = name.rpartition(".")
        kinds[stem if stem and suffix.isdigit() else name] += us
    return dict(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir", help="the --profile directory of train_step.py (or any jax.profiler trace)")
    parser.add_argument("--top", type=int, default=15, help="operations listed (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        path, events = load_events(args.trace_dir)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"profile_ops: {err}", file=sys.stderr)
        return 2
    totals, total = op_times(events)

    def ranked(table: dict[str, float]) -> list[dict]:
        top = sorted(table.items(), key=lambda item: -item[1])[:args.top]
        return [{"name": name, "ms": round(us / 1e3, 3), "share": round(us / total, 4) if total else 0.0}
                for name, us in top]
    print(json.dumps({"benchmark": "profile_ops", "trace": str(path), "xla_busy_ms": round(total / 1e3, 3),
                      "kinds": ranked(by_kind(totals)), "ops": ranked(totals)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
