"""Host memory of opening a checkpoint for evaluation: the whole train state vs the parameters only.

    python benchmarks/restore_memory.py [--preset brainlm_111m] [--root DIR] [--keep]

Writes one checkpoint of ``--preset`` (freshly initialised model + AdamW state, one local device; nothing is
trained), then opens it in two fresh processes and reports each one's peak resident memory
(``VmHWM``) and its growth over the process's footprint just before the restore:

- ``full_state``: what evaluation did before brainjax 0.2 (``load_for_eval``): rebuild the optimizer and
  restore the whole train state (parameters, both AdamW moments, counters);
- ``params_only``: :func:`brainjax.run.load_model`: Orbax partial restore of the model's variables.

Output: {"cpu", "preset", "parameters", "checkpoint_bytes", "full_state": {...}, "params_only": {...},
"ratio"} where each entry holds ``peak_rss_gib``, ``restore_rss_gib`` (peak minus the pre-restore RSS) and
``seconds``; ``ratio`` = full / params-only restore growth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from quality import cpu_model  # noqa: E402 - the benchmarks folder is not a package

GIB = 2.0 ** 30


def _status_gib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from Linux /proc.

    Not ``getrusage``'s ru_maxrss: a child started by fork + exec inherits its parent's high-water mark there."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def write_checkpoint(preset: str, workdir: Path) -> int:
    """An initialised train state of ``preset`` saved as step 0 of ``workdir``; returns the parameter count."""
    import jax
    import numpy as np
    from flax import nnx

    from brainjax import sharding
    from brainjax.config import MeshConfig, load_config, to_dict
    from brainjax.tasks import task_for
    from brainjax.train.checkpoint import Checkpointer
    from brainjax.train.step import init_train_state, optimizer_for

    cfg = dataclasses.replace(load_config(preset), mesh=MeshConfig(data=1, fsdp=1))
    task = task_for(cfg)
    abstract = nnx.state(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))), nnx.Param)
    tx, _ = optimizer_for(task, cfg, abstract)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    state = sharding.init_sharded(init_train_state(task, tx, cfg.train.seed), mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    checkpointer.save(0, state, {}, json.loads(json.dumps(to_dict(cfg))), {})
    checkpointer.close()
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"])))


def restore(mode: str, workdir: Path) -> dict:
    """Open ``workdir`` the ``mode`` way in this process; peak and growth of its resident memory."""
    import jax
    from flax import nnx

    from brainjax import sharding
    from brainjax.run import Run, load_model
    from brainjax.tasks import task_for
    from brainjax.train.step import init_train_state, optimizer_for

    jax.devices()  # the runtime's own memory belongs to the baseline
    before, start = _status_gib("VmRSS"), time.perf_counter()
    if mode == "params_only":
        loaded = load_model(workdir)
        jax.block_until_ready(nnx.state(loaded.model))
    else:
        with Run(workdir) as run:
            cfg, lineage = run.config()
            task = task_for(cfg, lineage)
            abstract = nnx.state(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))), nnx.Param)
            tx, _ = optimizer_for(task, cfg, abstract)
            target = sharding.abstract_sharded(init_train_state(task, tx, cfg.train.seed),
                                               sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
            jax.block_until_ready(run.checkpointer.restore(run.choose(), target).state)
    seconds = time.perf_counter() - start
    peak = _status_gib("VmHWM")
    return {"peak_rss_gib": round(peak, 3), "restore_rss_gib": round(peak - before, 3),
            "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="brainlm_111m")
    parser.add_argument("--root", help="where the checkpoint goes (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint")
    parser.add_argument("--child", choices=("full_state", "params_only"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(restore(args.child, Path(args.root))))
        return
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="restore_memory-"))
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    try:
        workdir = root / "run"
        n_params = write_checkpoint(args.preset, workdir)
        size = sum(f.stat().st_size for f in (workdir / "checkpoints").rglob("*") if f.is_file())
        out = {"cpu": cpu_model(), "preset": args.preset, "parameters": n_params, "checkpoint_bytes": size}
        for mode in ("full_state", "params_only"):  # each in a fresh process: a high-water mark only grows
            child = subprocess.run([sys.executable, __file__, "--child", mode, "--root", str(workdir)], env=env,
                                   check=True, capture_output=True, text=True)
            out[mode] = json.loads(child.stdout.strip().splitlines()[-1])
        out["ratio"] = round(out["full_state"]["restore_rss_gib"] / max(out["params_only"]["restore_rss_gib"],
                                                                           1e-9), 2)
        print(json.dumps(out))
    finally:
        if not (args.keep or args.root):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
