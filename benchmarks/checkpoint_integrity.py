"""What checkpoint checksums cost: save and restore times with and without them, and the checksum pass alone.

    python benchmarks/checkpoint_integrity.py [--preset brainlm_13m] [--repeats 3] [--dense] [--root DIR]

Saves one train state of ``--preset`` (freshly initialised model + AdamW state, one local device; nothing is
trained) as step 0 of a fresh checkpoint directory, ``--repeats`` times with checksums and as often without
(alternating, so drift hits both alike), and restores each one with a fresh :class:`Checkpointer`:

- ``save_s``: ``save`` + ``wait`` (the asynchronous write finished; with checksums, their record written);
- ``restore_s``: the whole train state, as resuming does (verification included with checksums);
- ``restore_params_s``: the parameters only, as evaluation does (the whole step is verified first);
- ``checksum_s`` / ``verify_s``: :func:`file_checksums` of the step and :func:`verify_step` alone.

Times are medians. The files are in the page cache throughout, as they are when a save's checksums are
recorded; verifying a cold step reads it from disk once, and the restore after it then hits the cache.
A fresh AdamW state is all zeros, which tensorstore's compression shrinks to almost nothing; ``--dense``
fills the optimizer moments with random values, so the step has a trained run's size on disk.

Output: {"cpu", "device", "preset", "parameters", "dense", "checkpoint_bytes", "files", "repeats",
"save_s", "restore_s", "restore_params_s" (each {"without", "with", "overhead"}, overhead = with / without
- 1), "checksum_s", "verify_s", "checksum_gb_per_s"}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from quality import cpu_model  # noqa: E402 - the benchmarks folder is not a package


def train_state(preset: str, dense: bool):
    """(state, abstract state, parameter count) of ``preset`` on one local device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from brainjax import sharding
    from brainjax.config import MeshConfig, load_config
    from brainjax.tasks import task_for
    from brainjax.train.step import init_train_state, optimizer_for

    cfg = dataclasses.replace(load_config(preset), mesh=MeshConfig(data=1, fsdp=1))
    task = task_for(cfg)
    abstract_params = nnx.state(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))), nnx.Param)
    tx, _ = optimizer_for(task, cfg, abstract_params)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    init = init_train_state(task, tx, cfg.train.seed)
    state = sharding.init_sharded(init, mesh)
    if dense:  # every floating moment random (counters stay): incompressible, like a trained run's
        leaves, treedef = jax.tree.flatten(state["opt"])
        keys = jax.random.split(jax.random.key(1), len(leaves))
        state["opt"] = jax.tree.unflatten(treedef, [
            jax.device_put(jax.random.normal(key, x.shape, x.dtype) * 1e-3, x.sharding)
            if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim else x for x, key in zip(leaves, keys)])
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"])))
    return state, sharding.abstract_sharded(init, mesh), n_params


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(state, abstract, root: Path, checksums: bool, index: int) -> dict[str, float]:
    """Save ``state`` into a fresh directory under ``root``, then restore it both ways; seconds of each."""
    import jax

    from brainjax.train.checkpoint import Checkpointer

    directory = root / f"{'with' if checksums else 'without'}-{index}"
    ckpt = Checkpointer(directory, async_save=True, checksums=checksums)

    def save():
        ckpt.save(0, state, {}, {}, {})
        ckpt.wait()
    out = {"save_s": _timed(save)}
    ckpt.close()
    ckpt = Checkpointer(directory, async_save=False, checksums=checksums)
    out["restore_s"] = _timed(lambda: jax.block_until_ready(ckpt.restore(0, abstract).state))
    ckpt.close()
    ckpt = Checkpointer(directory, async_save=False, checksums=checksums)  # nothing verified yet
    subset = {"params": abstract["params"], "rest": abstract["rest"]}
    out["restore_params_s"] = _timed(lambda: jax.block_until_ready(ckpt.restore_params(0, subset)))
    ckpt.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="brainlm_13m")
    parser.add_argument("--repeats", type=int, default=3, help="saves and restores of each kind (median)")
    parser.add_argument("--dense", action="store_true", help="random optimizer moments (a trained run's size)")
    parser.add_argument("--root", help="where the checkpoints go (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    import jax
    from etils import epath

    from brainjax.train.checkpoint import file_checksums, verify_step

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="checkpoint_integrity-"))
    try:
        state, abstract, n_params = train_state(args.preset, args.dense)
        runs = {True: [], False: []}
        for index in range(args.repeats):
            for checksums in (False, True):
                runs[checksums].append(measure(state, abstract, root, checksums, index))
        step_dir = epath.Path(root / "with-0" / "0")
        checksum_s = statistics.median(_timed(lambda: file_checksums(step_dir)) for _ in range(args.repeats))
        verify_s = statistics.median(_timed(lambda: verify_step(step_dir)) for _ in range(args.repeats))
        files = file_checksums(step_dir)
        size = sum(entry["bytes"] for entry in files.values())
        out = {"cpu": cpu_model(), "device": jax.devices()[0].device_kind, "preset": args.preset,
               "parameters": n_params, "dense": args.dense, "checkpoint_bytes": size, "files": len(files),
               "repeats": args.repeats}
        for key in ("save_s", "restore_s", "restore_params_s"):
            without = statistics.median(r[key] for r in runs[False])
            with_ = statistics.median(r[key] for r in runs[True])
            out[key] = {"without": round(without, 4), "with": round(with_, 4),
                        "overhead": round(with_ / without - 1, 3)}
        out.update(checksum_s=round(checksum_s, 4), verify_s=round(verify_s, 4),
                   checksum_gb_per_s=round(size / checksum_s / 1e9, 2))
        print(json.dumps(out))
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
