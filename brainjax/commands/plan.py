"""``brainjax plan``: size a BrainLM pretraining run before launching it (mesh, batch, attention, memory, FLOPs).

Nothing is compiled or allocated: the memory comes from the analytic model in :mod:`brainjax.train.memory`, so a
TPU pod or a GPU can be planned from a laptop (``--platform tpu --devices 256 --device-memory 16``). Without
``--platform`` / ``--devices`` the local JAX devices are used, and on a local GPU or TPU the device memory is
read from the runtime when ``--device-memory`` is not given.

Exit codes: 0 fits (or no device memory known), 1 the estimate does not fit, 2 a bad preset, override or mesh.
"""

from __future__ import annotations

import argparse

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


def main(args: argparse.Namespace) -> int:
    from brainjax.config import check, load_config, override
    from brainjax.errors import UsageError
    from brainjax.train.memory import PLATFORMS
    from brainjax.train.plan import plan

    cfg = check(override(load_config(args.config or args.preset), args.overrides))
    platform, n_devices = args.platform, args.devices
    if platform is None or n_devices is None:
        import jax
        platform = platform or jax.devices()[0].platform
        n_devices = n_devices or jax.device_count()
    if platform not in PLATFORMS:
        raise UsageError(f"--platform must be one of {PLATFORMS}, got {platform!r}")
    if args.device_memory is not None and args.device_memory <= 0:
        raise UsageError(f"--device-memory must be > 0 GiB, got {args.device_memory}")
    text, ok = plan(cfg, args.parcels or cfg.model.max_parcels, n_devices, platform, args.device_memory)
    print(text)
    return 1 if ok is False else 0
