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


def timed(fn, repeats: int) -> list[float]:
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


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

    import jax
    from flax import nnx

    from brainjax.config import load_config, override
    from brainjax.models.brainlm import count_params
    from brainjax.train.logging import measure_peak_flops
    from brainjax.train.optim import make_optimizer
    from brainjax.train.step import init_train_state, train_step
    from brainjax.train.tasks import BrainLMTask

    cfg = override(load_config(args.preset), args.overrides)
    parcels = args.parcels or cfg.model.max_parcels
    task = BrainLMTask(cfg.model, cfg.mask, n_parcels=parcels, window=cfg.data.window)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps, args.batch)
    state = jax.jit(init_train_state(task, tx, cfg.train.seed))()
    abstract = nnx.eval_shape(lambda: task.init_model(nnx.Rngs(0)))  # shapes only: graphdef and size
    graphdef = nnx.graphdef(abstract)
    batch = jax.device_put(random_batch(args.batch, parcels, cfg.data.window))
    rng = jax.random.key(0)

    step = jax.jit(lambda s, b, r: train_step(graphdef, s, b, r, task=task, tx=tx, schedule=schedule,
                                              accum_steps=cfg.optim.accum_steps), donate_argnums=0)

    def loss_only(params, rest, b, r):
        return task.loss(nnx.merge(graphdef, params, rest), b, r, deterministic=True)[0]
    forward = jax.jit(loss_only)

    start = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float((cost or {}).get("flops", float("nan")))

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics["loss"]

    first_step_s = timed(one_step, 1)[0]
    step_times = timed(one_step, args.steps)
    forward(holder["state"]["params"], holder["state"]["rest"], batch, rng).block_until_ready()
    forward_times = timed(lambda: forward(holder["state"]["params"], holder["state"]["rest"], batch, rng),
                          max(args.steps, 3))
    if args.profile:
        with jax.profiler.trace(args.profile):
            timed(one_step, 2)

    median = float(np.median(step_times))
    flops = task.flops_per_sample() * args.batch
    peaks = {dtype: measure_peak_flops(dtype, None, size=args.peak_size) for dtype in ("float32", "bfloat16")}
    peak = peaks[cfg.model.dtype]
    print(json.dumps({
        "benchmark": "train_step",
        "preset": cfg.name,
        "overrides": args.overrides,
        "batch": args.batch,
        "parcels": parcels,
        "window": cfg.data.window,
        "tokens_per_sample": int(task.tokens_per_sample()),
        "params": count_params(abstract),
        "dtype": cfg.model.dtype,
        "attention": cfg.model.attention,
        "remat": cfg.model.remat,
        "compile_s": round(compile_s, 2),
        "first_step_s": round(first_step_s, 3),
        "median_step_s": round(median, 3),
        "step_times_s": [round(t, 3) for t in step_times],
        "forward_s": round(float(np.median(forward_times)), 3),
        "samples_per_s": round(args.batch / median, 3),
        "model_tflop_per_step": round(flops / 1e12, 4),
        "xla_tflop_per_step": round(xla_flops / 1e12, 4),
        "achieved_gflops": round(flops / median / 1e9, 1),
        "peak_gflops_fp32": round(peaks["float32"] / 1e9, 1),
        "peak_gflops_bf16": round(peaks["bfloat16"] / 1e9, 1),
        "mfu": round(flops / median / peak, 4),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
