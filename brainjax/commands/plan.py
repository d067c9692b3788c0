"""``brainjax plan``: size a BrainLM pretraining run before launching it (mesh, batch, attention, memory, FLOPs).

Nothing is compiled or allocated: the memory comes from the analytic model in :mod:`brainjax.train.memory`, so a
TPU pod or a GPU can be planned from a laptop (``--platform tpu --devices 256 --device-memory 16``). Without
``--platform`` / ``--devices`` the local JAX devices are used, and on a local GPU or TPU the device memory is
read from the runtime when ``--device-memory`` is not given.

Exit codes: 0 fits (or no device memory known), 1 the estimate does not fit, 2 a bad preset, override or mesh.
"""

from __future__ import annotations

import argparse
import sys

HELP = "estimate per-device memory, mesh, batch split and FLOPs of a pretraining preset before launching it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="default", help="experiments/NAME.py preset (default: %(default)s)")
    source.add_argument("--config", help="a Python file defining config()")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set mesh.fsdp=4 (repeatable)")
    parser.add_argument("--devices", type=int, help="devices in the run (default: the local JAX device count)")
    parser.add_argument("--platform", help="cpu | gpu | tpu (default: the local JAX platform)")
    parser.add_argument("--device-memory", type=float, metavar="GIB",
                        help="memory of one device in GiB, e.g. 16 (v5e), 32 (v4), 80 (H100), 24 (a consumer GPU)")
    parser.add_argument("--parcels", type=int, help="parcels per window (default: the preset's model.max_parcels)")


def local_device_memory(platform: str) -> float | None:
    """GiB the local JAX runtime lets one device use (GPU/TPU ``bytes_limit``), or None when unknown or not local."""
    import jax

    device = jax.devices()[0]
    if device.platform != platform or platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some runtimes do not implement memory_stats
        return None
    limit = stats.get("bytes_limit")
    return limit / 2.0 ** 30 if limit else None


def _plan(cfg, n_parcels: int, n_devices: int, platform: str, device_memory_gib: float | None
          ) -> tuple[str, bool | None]:
    """(report text, fits) where fits is None when the device memory is unknown."""
    from brainjax.models.brainlm import model_flops_per_sample
    from brainjax.train import memory

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
        f"precision: {model.dtype} compute, float32 parameters and optimizer; remat {'on' if model.remat else 'off'}",
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
    return _plan(cfg, n_parcels, n_devices, platform, device_memory_gib)[0]


def main(args: argparse.Namespace) -> int:
    from brainjax.config import ConfigError, load_config, override
    from brainjax.train.memory import PLATFORMS

    try:
        cfg = override(load_config(args.config or args.preset), args.overrides)
        platform, n_devices = args.platform, args.devices
        if platform is None or n_devices is None:
            import jax
            platform = platform or jax.devices()[0].platform
            n_devices = n_devices or jax.device_count()
        if platform not in PLATFORMS:
            raise ValueError(f"--platform must be one of {PLATFORMS}, got {platform!r}")
        if args.device_memory is not None and args.device_memory <= 0:
            raise ValueError(f"--device-memory must be > 0 GiB, got {args.device_memory}")
        text, ok = _plan(cfg, args.parcels or cfg.model.max_parcels, n_devices, platform, args.device_memory)
    except (ConfigError, ValueError) as err:
        print(f"brainjax plan: {err}", file=sys.stderr)
        return 2
    print(text)
    return 1 if ok is False else 0
