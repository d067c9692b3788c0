"""Training-step speed and memory of a BrainLM preset, printed as one JSON object.

    python benchmarks/train_step.py --preset ref_small --batch 8 [--steps 5] [--parcels 424]
                                    [--set model.dtype=bfloat16 ...] [--profile DIR]

Runs the trainer's own jitted step (same optimizer, masking and loss as ``brainjax pretrain``) on random
normalised windows on one device, and reports:

- ``median_step_s``  median wall time of ``--steps`` steps after the first (compilation) step;
- ``forward_s``      median time of the loss alone (no gradient), to split forward from backward;
- ``model_tflop_per_step``  matmul FLOPs (forward + backward = 3 x forward) from the model's formula, and
  ``xla_tflop_per_step`` what XLA's cost analysis counts for the compiled step;
- ``peak_gflops_fp32`` / ``peak_gflops_bf16``  a jitted square matmul on random data, measured in this run;
- ``mfu``            model FLOPs per second over the peak of the compute dtype;
- ``peak_rss_gib``   the process's peak resident memory (includes compilation).

``--profile DIR`` writes a JAX profiler trace of two steps (open with TensorBoard / Perfetto).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np


def random_batch(batch: int, parcels: int, window: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the loader's layout: signal [B,P,T], parcel_mask [B,P], coords [B,P,3] mm, tr [B]."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(-70, 70, (parcels, 3)).astype(np.float32)
    return {"signal": rng.standard_normal((batch, parcels, window)).astype(np.float32),
            "parcel_mask": np.ones((batch, parcels), bool),
            "coords": np.broadcast_to(coords, (batch, parcels, 3)).copy(),
            "tr": np.full((batch,), 2.0, np.float32)}


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (a tiny preset's TFLOP or ms must not print as 0)."""
    return float(f"{value:.{digits}g}")


def timed(fn, repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn``, each waited for until its result is ready."""
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def measure_step(cfg, batch: int, steps: int, parcels: int | None = None, peak_size: int = 2048,
                 peaks: bool = True, forward: bool = True, profile: str | None = None) -> dict:
    """Time the trainer's jitted step for ``cfg`` (a :class:`brainjax.config.Config`) on one device.

    batch: samples per step; steps: timed steps after the compilation step; parcels: P of the random
    [batch, P, window] windows (default: ``cfg.model.max_parcels``); peaks: also measure the fp32 / bf16 matmul
    peaks and the MFU (several seconds on a CPU); forward: also time the loss alone (one more compilation).
    Returns the benchmark's JSON fields (see the module docstring), without those of the skipped parts.
    """
    import jax
    from flax import nnx

    from brainjax.models.brainlm import count_params
    from brainjax.tasks import BrainLMTask
    from brainjax.train.logging import measure_peak_flops
    from brainjax.train.optim import make_optimizer
    from brainjax.train.step import init_train_state, step_compiler_options, train_step

    if batch < 1 or steps < 1:
        raise ValueError(f"batch and steps must be >= 1, got batch={batch}, steps={steps}")
    parcels = parcels or cfg.model.max_parcels
    task = BrainLMTask(cfg.model, cfg.mask, n_parcels=parcels, window=cfg.data.window)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps, batch)
    state = jax.jit(init_train_state(task, tx, cfg.train.seed))()
    abstract = nnx.eval_shape(lambda: task.init_model(nnx.Rngs(0)))  # shapes only: graphdef and size
    graphdef = nnx.graphdef(abstract)
    inputs = jax.device_put(random_batch(batch, parcels, cfg.data.window))
    rng = jax.random.key(0)

    step = jax.jit(lambda s, b, r: train_step(graphdef, s, b, r, task=task, tx=tx, schedule=schedule,
                                              accum_steps=cfg.optim.accum_steps), donate_argnums=0,
                   compiler_options=step_compiler_options(cfg.model.remat, jax.devices()[0].platform))

    def loss_only(params, rest, b, r):
        return task.loss(nnx.merge(graphdef, params, rest), b, r, deterministic=True)[0]
    forward_loss = jax.jit(loss_only)

    start = time.perf_counter()
    compiled = step.lower(state, inputs, rng).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], inputs, rng)
        return metrics["loss"]

    first_step_s = timed(one_step, 1)[0]
    step_times = timed(one_step, steps)
    forward_times = []
    if forward:
        forward_loss(holder["state"]["params"], holder["state"]["rest"], inputs, rng).block_until_ready()
        forward_times = timed(lambda: forward_loss(holder["state"]["params"], holder["state"]["rest"], inputs, rng),
                              max(steps, 3))
    if profile:
        with jax.profiler.trace(profile, create_perfetto_trace=True):  # for profile_ops.py
            timed(one_step, 2)

    median = float(np.median(step_times))
    flops = task.flops_per_sample() * batch
    record = {
        "preset": cfg.name,
        "batch": batch,
        "parcels": parcels,
        "window": cfg.data.window,
        "tokens_per_sample": int(task.tokens_per_sample()),
        "params": count_params(abstract),
        "dtype": cfg.model.dtype,
        "attention": cfg.model.attention,
        "remat": cfg.model.remat,
        "compile_s": round(compile_s, 2),
        "first_step_s": significant(first_step_s),
        "median_step_s": significant(median),
        "step_times_s": [significant(t) for t in step_times],
        "samples_per_s": significant(batch / median),
        "model_tflop_per_step": significant(flops / 1e12),
        "xla_tflop_per_step": significant(xla_flops / 1e12),
        "achieved_gflops": round(flops / median / 1e9, 1),
    }
    if forward:
        record["forward_s"] = significant(float(np.median(forward_times)))
    if peaks:
        measured = {dtype: measure_peak_flops(dtype, None, size=peak_size) for dtype in ("float32", "bfloat16")}
        record.update({"peak_gflops_fp32": round(measured["float32"] / 1e9, 1),
                       "peak_gflops_bf16": round(measured["bfloat16"] / 1e9, 1),
                       "mfu": round(flops / median / measured[cfg.model.dtype], 4)})
    record.update({
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    })
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ref_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the compilation step")
    parser.add_argument("--parcels", type=int, help="parcels per window (default: the preset's max_parcels)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the peak measurement")
    parser.add_argument("--profile", help="write a profiler trace of two steps here")
    args = parser.parse_args(argv)

    from brainjax.config import load_config, override

    cfg = override(load_config(args.preset), args.overrides)
    record = measure_step(cfg, args.batch, args.steps, args.parcels, args.peak_size, profile=args.profile)
    print(json.dumps({"benchmark": "train_step", "overrides": args.overrides, **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
