"""The memory plan (``brainjax plan``) against XLA's memory analysis of the compiled step, preset by preset.

    python benchmarks/plan_vs_xla.py [--presets tiny,default,ref_small,...] [--parcels 424] [--devices 8]

For each preset the trainer's own jitted step is compiled (never run: nothing is allocated) for this machine's
backend on a mesh of the preset's ``mesh.fsdp`` devices (simulated CPU devices when ``--devices`` asks for
them), with the preset's global batch, and XLA's per-device peak (arguments + temporaries + outputs - donated
aliases) is set beside the plan's total for the same mesh and platform. Prints one JSON object: per preset both
figures in GiB, their ratio, the compile time and the largest plan terms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

PRESETS = ("tiny", "default", "quality", "ref_small", "brainlm_13m", "gpu_local", "brainlm_111m", "pod_111m",
           "pod_650m", "brainlm_650m")
GIB = 2.0 ** 30


def compare(name: str, parcels: int | None, devices) -> dict:
    """Plan and XLA's figures for preset ``name`` on the first ``mesh.fsdp`` of ``devices``."""
    import dataclasses

    from brainjax import sharding
    from brainjax.config import MeshConfig, load_config
    from brainjax.train import memory
    from brainjax.train.plan import compiled_step_memory

    cfg = load_config(name)
    fsdp = cfg.mesh.fsdp
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=1, fsdp=fsdp))
    parcels = parcels or cfg.model.max_parcels
    platform_name = devices[0].platform
    est = memory.estimate(cfg, parcels, 1, fsdp, platform_name)
    mesh = sharding.make_mesh(cfg.mesh, devices[:fsdp])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        xla = compiled_step_memory(cfg, parcels, mesh, workdir)
    terms = {k: round(getattr(est, k) / GIB, 3) for k in ("params", "optimizer", "grads", "activations", "attention",
                                                           "gathered", "update")}
    return {"preset": name, "parcels": parcels, "mesh": [1, fsdp], "micro_batch": est.micro_batch,
            "dtype": cfg.model.dtype, "remat": cfg.model.remat_mode, "impls": list(est.impls),
            "plan_gib": round(est.total / GIB, 3), "xla_gib": round(xla["peak"] / GIB, 3),
            "xla_over_plan": round(xla["peak"] / est.total, 3),
            "xla_temp_gib": round(xla["temp"] / GIB, 3), "compile_s": round(time.perf_counter() - start, 1),
            "plan_terms_gib": terms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--parcels", type=int, help="parcels per window (default: each preset's max_parcels)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (for fsdp presets)")
    args = parser.parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax

    rows = []
    for name in (n for n in args.presets.split(",") if n):
        rows.append(compare(name, args.parcels, jax.devices()))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: the big presets compile for minutes
    ratios = [row["xla_over_plan"] for row in rows]
    print(json.dumps({"benchmark": "plan_vs_xla", "platform": jax.devices()[0].platform, "jax": jax.__version__,
                      "machine": platform.machine(), "rows": rows,
                      "worst_ratio": max(ratios, key=lambda r: abs(r - 1)) if ratios else None,
                      "within_10_percent": sum(abs(r - 1) <= 0.1 for r in ratios)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
