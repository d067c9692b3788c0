"""The plan of a BrainLM pretraining run before it starts: mesh, batch split, attention, FLOPs and the
per-device memory table of :mod:`brainjax.train.memory` with a verdict (``brainjax plan`` prints it; ``brainjax
pretrain`` prints it before compiling anything)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from brainjax.models.brainlm import model_flops_per_sample
from brainjax.tasks import BrainLMTask
from brainjax.train import memory
from brainjax.train.step import step_compiler_options
from brainjax.train.trainer import Trainer


def local_device_memory(platform: str) -> float | None:
    """GiB the local JAX runtime lets one device use (GPU/TPU ``bytes_limit``), or None when unknown or not local."""
    device = jax.devices()[0]
    if device.platform != platform or platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some runtimes do not implement memory_stats
        return None
    limit = stats.get("bytes_limit")
    return limit / 2.0 ** 30 if limit else None


def plan(cfg, n_parcels: int, n_devices: int, platform: str, device_memory_gib: float | None
          ) -> tuple[str, bool | None]:
    """(report text, fits) of :func:`memory_report`; fits is None when the device memory is unknown."""
    data, fsdp = memory.resolve_mesh(cfg.mesh, n_devices)
    est = memory.estimate(cfg, n_parcels, data, fsdp, platform)
    fraction = 1.0
    if device_memory_gib is None:
        device_memory_gib = local_device_memory(platform)  # already the runtime's usable limit
    elif platform == "gpu":
        fraction = memory.usable_fraction(platform)
    model, batch = cfg.model, cfg.data.batch_size
    flops = model_flops_per_sample(model, n_parcels, cfg.data.window, cfg.mask) * batch
    per_device = batch // (data * fsdp)
    unused = n_devices - data * fsdp
    lines = [
        f"plan: {cfg.name} (BrainLM MAE), {est.n_params:,} parameters, {n_parcels} parcels x {cfg.data.window} TRs, "
        f"patch {model.patch}, {cfg.mask.strategy} masking {cfg.mask.ratio:g}",
        f"devices: {n_devices} {platform}; mesh data {data} x fsdp {fsdp}"
        + (f" ({unused} device(s) left unused)" if unused else ""),
        f"batch: global {batch} = {per_device} per device = micro-batch {est.micro_batch} x {est.accum_steps} "
        f"accumulation step(s)",
        f"precision: {model.dtype} compute, float32 parameters and optimizer; remat {model.remat_mode or 'off'}",
        f"attention: model.attention={model.attention} -> encoder {est.impls[0]} ({est.lengths[0]:,} tokens), "
        f"decoder {est.impls[1]} ({est.lengths[1]:,} tokens) on {platform}",
        f"model compute: {flops / 1e12:.2f} TFLOP per step ({flops / batch / 1e9:.1f} GFLOP per window, "
        f"{flops / (data * fsdp) / 1e12:.3f} TFLOP per device)",
        memory.format_table(est, device_memory_gib, fraction),
    ]
    ok = None if device_memory_gib is None else memory.fits(est, device_memory_gib, fraction)
    if ok is None:
        lines.append("verdict: device memory unknown (pass --device-memory GIB)")
    return "\n".join(lines), ok


def memory_report(cfg, n_parcels: int, n_devices: int, platform: str, device_memory_gib: float | None = None) -> str:
    """The plan of ``cfg`` (a :class:`brainjax.config.Config`) on ``n_devices`` devices of ``platform``
    ("cpu" | "gpu" | "tpu") for windows of ``n_parcels``: mesh, batch split, precision, attention, model TFLOP
    per step and the per-device memory table with a verdict against ``device_memory_gib`` (GiB per device; None
    reads it from the local GPU/TPU runtime, or leaves the verdict out). Raises ValueError for a config the
    trainer would refuse (uneven batch split, a mesh larger than the devices, an objective other than MAE)."""
    return plan(cfg, n_parcels, n_devices, platform, device_memory_gib)[0]


def compiled_step_memory(cfg, n_parcels: int, mesh, workdir: str, options: dict | None = None) -> dict[str, int]:
    """XLA's memory analysis of the trainer's own jitted step for ``cfg`` on ``mesh`` (windows of ``n_parcels``),
    compiled for the mesh's backend with the trainer's compiler options (``options`` added on top); nothing is
    allocated. ``workdir``: an empty directory the Trainer may name (nothing is written). Returns bytes per
    device: ``argument`` (state and batch), ``temp``, ``output``, ``alias`` (outputs that reuse the donated
    state), ``peak`` = argument + temp + output - alias, and ``inputs`` (the batch arrays as passed)."""
    task = BrainLMTask(cfg.model, cfg.mask, n_parcels, cfg.data.window)
    trainer = Trainer(cfg, task, workdir, None, None, None, mesh=mesh)
    size = cfg.data.batch_size
    shapes = {"signal": ((size, n_parcels, cfg.data.window), jnp.float32), "parcel_mask": ((size, n_parcels), bool),
              "coords": ((size, n_parcels, 3), jnp.float32), "tr": ((size,), jnp.float32)}
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=trainer.batch_shardings[k]) for k, (s, d) in shapes.items()}
    platform = mesh.devices.flat[0].platform
    extra, options = options, step_compiler_options(cfg.model.remat, platform)
    if platform == "cpu":  # LLVM's optimisation level: the same buffer assignment, compiled about 2x faster
        options["xla_backend_optimization_level"] = 0
    options.update(extra or {})
    stats = trainer.train_step.lower(trainer.abstract_state, batch, jax.random.key(0)).compile(options) \
        .memory_analysis()
    out = {"argument": stats.argument_size_in_bytes, "temp": stats.temp_size_in_bytes,
           "output": stats.output_size_in_bytes, "alias": stats.alias_size_in_bytes}
    inputs = sum(math.prod(s) * jnp.dtype(d).itemsize for s, d in shapes.values())
    return {**out, "peak": out["argument"] + out["temp"] + out["output"] - out["alias"], "inputs": inputs}

