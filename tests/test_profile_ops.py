"""benchmarks/profile_ops.py: operation totals from a perfetto trace, on a trace written by hand and a real one."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import profile_ops  # noqa: E402


def _write(path: Path, events: list[dict]) -> None:
    path.mkdir(parents=True)
    with gzip.open(path / "perfetto_trace.json.gz", "wt") as fh:
        json.dump({"traceEvents": events}, fh)


def test_sums_xla_thread_and_device_events_only(tmp_path):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "tf_XLAPjRtCpuClient/1"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "python"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:TPU:0"}}]
    ops = [{"ph": "X", "pid": 1, "tid": 7, "name": "fusion.1", "dur": 30.0},
           {"ph": "X", "pid": 1, "tid": 7, "name": "fusion.1", "dur": 10.0},
           {"ph": "X", "pid": 2, "tid": 3, "name": "convolution", "dur": 60.0},
           {"ph": "X", "pid": 1, "tid": 8, "name": "PjitFunction(step)", "dur": 500.0},  # host side: not counted
           {"ph": "X", "pid": 1, "tid": 7, "name": "ThunkExecutor::Execute", "dur": 45.0},  # encloses the ops
           {"ph": "i", "pid": 1, "tid": 7, "name": "marker"}]
    _write(tmp_path / "a", meta + ops)
    _, events = profile_ops.load_events(tmp_path)
    totals, total = profile_ops.op_times(events)
    assert totals == {"fusion.1": 40.0, "convolution": 60.0} and total == 100.0
    assert profile_ops.by_kind({"fusion.1": 4.0, "fusion.12": 6.0, "dot": 1.0, "copy.x": 2.0}) == \
        {"fusion": 10.0, "dot": 1.0, "copy.x": 2.0}


def test_real_trace_and_missing_trace(tmp_path):
    script = ("import jax, jax.numpy as jnp\n"
              "f = jax.jit(lambda a: jnp.tanh(a @ a).sum())\n"
              "a = jnp.ones((256, 256)); f(a).block_until_ready()\n"
              f"with jax.profiler.trace({str(tmp_path / 'trace')!r}, create_perfetto_trace=True):\n"
              "    f(a).block_until_ready()\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, capture_output=True)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_ops.py"), str(tmp_path / "trace")],
                         capture_output=True, text=True, timeout=60)
    record = json.loads(out.stdout)
    assert record["xla_busy_ms"] > 0 and record["ops"]
    assert sum(op["share"] for op in record["ops"]) == pytest.approx(1.0, abs=1e-3)
    assert profile_ops.main([str(tmp_path / "nothing")]) == 2
