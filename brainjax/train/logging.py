"""Run logs: ``metrics.jsonl``, TensorBoard events, a tqdm progress bar, throughput and MFU.

Only process 0 writes (every class here is a no-op when ``enabled`` is False).

The work dir may be remote (``gs://bucket/run``, see :mod:`brainjax.paths`). Object stores cannot append, so
for a remote work dir ``metrics.jsonl`` is kept in memory and the whole object is re-uploaded, and TensorBoard
writes its event files to a local scratch directory that is mirrored to ``WORKDIR/tb``; both are uploaded at
most every ``sync_seconds`` (and at every :meth:`MetricsLog.sync`, which the trainer calls at each checkpoint,
and at :meth:`MetricsLog.close`), so a long run does not spend its time re-uploading a growing log. Records
lost to a kill between syncs are after the last checkpoint, which resuming drops anyway.

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices). The peak is ``train.peak_flops`` when set
(e.g. the vendor's dense bf16 number, to compare with published MFU), otherwise it is *measured* once with a
jitted square matmul on one local device and cached in ``WORKDIR/peak_flops.json``: a measured peak is what
the hardware reaches on a plain matmul, so the MFU reads as "fraction of the achievable", not of the datasheet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from brainjax.distributed import is_main
from brainjax.paths import atomic_write_text, copy_tree, is_remote, workdir_path

METRICS_FILE = "metrics.jsonl"
SYNC_SECONDS = 60.0  # remote work dirs: the most time between two uploads of the logs


def _clean(value: Any) -> Any:
    if isinstance(value, str | bool | int) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else repr(value)  # JSON has no NaN/inf; keep them readable


def _parse_records(text: str, after: int | None = None) -> list[str]:
    """The complete JSON lines of ``text`` (a torn last line is dropped), only steps <= ``after`` if given."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
        if after is None or record.get("step", 0) <= after:
            kept.append(line)
    return kept


class MetricsLog:
    """Appends one JSON object per logged step to ``WORKDIR/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Local work dirs are appended to and flushed at every record; remote ones are uploaded whole, at most
    every ``sync_seconds`` (see the module docstring).
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 sync_seconds: float = SYNC_SECONDS):
        root = workdir_path(workdir)
        self.path = root / METRICS_FILE
        self.enabled = enabled
        self.remote = is_remote(root)
        self.sync_seconds = sync_seconds
        self._tb = None
        self._tb_remote, self._tb_local = root / "tb", None
        self._lines: list[str] | None = None  # remote only: the file's content, loaded on first use
        self._dirty, self._last_sync = False, time.monotonic()
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter
            if self.remote:  # tensorboardX's own gs:// writer needs google-cloud-storage and its own auth
                self._tb_local = tempfile.mkdtemp(prefix="brainjax-tb-")
            self._tb = SummaryWriter(self._tb_local or os.fspath(self._tb_remote))

    def _remote_lines(self) -> list[str]:
        if self._lines is None:
            self._lines = _parse_records(self.path.read_text()) if self.path.exists() else []
        return self._lines

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (written by a run that died after its last checkpoint) and any torn line."""
        if not self.enabled or not self.path.exists():
            return
        kept = _parse_records(self.path.read_text(), after=step)
        if self.remote:
            self._lines = kept
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def last(self, key: str) -> Any:
        """The newest logged value of ``key`` (None if no record has it, or this process does not log)."""
        if not self.enabled:
            return None
        lines = self._remote_lines() if self.remote else (
            _parse_records(self.path.read_text()) if self.path.exists() else [])
        for line in reversed(lines):
            value = json.loads(line).get(key)
            if value is not None:
                return value
        return None

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Log ``metrics`` at ``step``; returns the JSON record (non-finite floats as strings)."""
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        line = json.dumps(record)
        if self.remote:
            self._remote_lines().append(line)
            self._dirty = True
        else:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self.remote and time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()
        return record

    def sync(self) -> None:
        """Upload the pending records and TensorBoard events of a remote work dir (no-op for a local one)."""
        if not (self.enabled and self.remote):
            return
        if self._dirty:
            atomic_write_text(self.path, "".join(line + "\n" for line in self._remote_lines()))
            self._dirty = False
        if self._tb_local is not None:
            copy_tree(self._tb_local, self._tb_remote)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Close TensorBoard and (remote work dirs) upload what is pending and remove the local scratch dir."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self.sync()
        if self._tb_local is not None:
            shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb_local = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of ``WORKDIR/metrics.jsonl`` in order (local or remote work dir)."""
    path = workdir_path(workdir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Progress:
    """tqdm bar over optimizer steps with ETA; shows the latest loss and throughput."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is None:
            return
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Throughput:
    """Steps/s, tokens/s and MFU over the interval since the last :meth:`report`."""

    def __init__(self, tokens_per_step: float, flops_per_step: float, peak_flops_total: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak_flops_total = peak_flops_total
        self.restart()

    def restart(self) -> None:
        self._t0, self._steps = time.perf_counter(), 0

    def tick(self, n: int = 1) -> None:
        self._steps += n

    def report(self) -> dict[str, float]:
        """Rates since the last report (empty when no step was timed, e.g. right after compilation)."""
        if self._steps == 0:
            self.restart()
            return {}
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self._steps / elapsed
        self.restart()
        peak = self.peak_flops_total
        mfu = rate * self.flops_per_step / peak if peak > 0 else float("nan")
        return {"steps_per_s": rate, "tokens_per_s": rate * self.tokens_per_step, "mfu": mfu}


def measure_peak_flops(dtype: str = "float32", cache_dir: str | os.PathLike | None = None,
                       size: int | None = None, repeats: int = 5) -> float:
    """Achievable FLOP/s of a jitted [size, size] matmul of random data on this process's first local device.

    Cached per device kind and dtype in ``cache_dir/peak_flops.json`` (local or remote; no cache when
    ``cache_dir`` is None). Only process 0 writes the cache: in a multi-process run every process shares one
    work dir, and two processes replacing the same file race.
    """
    import jax
    import jax.numpy as jnp

    # jax.devices()[0] is process 0's device in a multi-process run: another process cannot compute on it
    device = jax.local_devices()[0]
    key = f"{device.platform}:{device.device_kind}:{dtype}"
    cache = workdir_path(cache_dir) / "peak_flops.json" if cache_dir is not None else None
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if key in known:
        return float(known[key])
    n = size or (2048 if device.platform == "cpu" else 8192)  # smaller CPU matmuls read ~2x below peak
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (n, n), jnp.float32).astype(dtype), device) for k in (ka, kb))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    peak = 2.0 * n**3 / float(np.median(times))
    if cache is not None and is_main():
        known[key] = peak
        atomic_write_text(cache, json.dumps(known, indent=2))
    return peak
