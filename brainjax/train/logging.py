"""Run logs: ``metrics.jsonl``, TensorBoard events, a tqdm progress bar, throughput and MFU.

Only process 0 writes (every class here is a no-op when ``enabled`` is False).

MFU = achieved model FLOP/s / (peak FLOP/s per device x devices). The peak is ``train.peak_flops`` when set
(e.g. the vendor's dense bf16 number, to compare with published MFU), otherwise it is *measured* once with a
jitted square matmul on one device and cached in ``WORKDIR/peak_flops.json``: a measured peak is what the
hardware reaches on a plain matmul, so the MFU reads as "fraction of the achievable", not of the datasheet.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, str | bool | int) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else repr(value)  # JSON has no NaN/inf; keep them readable


class MetricsLog:
    """Appends one JSON object per logged step to ``WORKDIR/metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (written by a run that died after its last checkpoint) and any torn line."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by kill -9
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of ``WORKDIR/metrics.jsonl`` in order."""
    path = Path(workdir) / METRICS_FILE
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
    """Achievable FLOP/s of a jitted [size, size] matmul of random data on one device (cached per device kind
    and dtype in ``cache_dir``; no cache when it is None)."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    key = f"{device.platform}:{device.device_kind}:{dtype}"
    cache = Path(cache_dir) / "peak_flops.json" if cache_dir is not None else None
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
    if cache is not None:
        known[key] = peak
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps(known, indent=2))
        os.replace(tmp, cache)
    return peak
