"""Orbax checkpoints with named items, retention, async saves, and resume that survives a bad latest step.

Layout: ``DIR/<step>/{state,data,config,lineage,metrics}`` where

- ``state``   the train state pytree (parameters, optimizer state, counters), StandardSave/StandardRestore;
- ``data``    the data iterator state (JSON), so a resumed run sees the same batches;
- ``config``  the resolved run configuration (JSON), checked against the current one on resume;
- ``lineage`` what the run derived and where its weights came from (JSON, :class:`brainjax.config.Lineage`;
  absent in checkpoints written before it existed, whose config held it);
- ``metrics`` the last logged metrics at that step (JSON).

Evaluation and warm starts restore the parameters alone (:meth:`Checkpointer.restore_params`: Orbax reads only
the requested arrays, so the optimizer moments, twice the parameters' size under AdamW, never load); resuming
restores the whole state.

The state is restored into an *abstract* target whose ShapeDtypeStructs carry the current mesh's shardings,
so a checkpoint written on one mesh restores onto any other (8 devices -> 1 and back).

``DIR`` may be local or remote (``gs://bucket/run/checkpoints``; see :mod:`brainjax.paths`): Orbax takes the
``etils.epath.Path`` and tensorstore writes the arrays, so every process writes its shards into the one
checkpoint either way.

A step only counts once Orbax has finished it (locally it writes to a temporary directory and renames; on
GCS, which cannot rename, it writes a ``commit_success`` marker last and ignores steps without one), so a kill
mid-save leaves the previous step intact. A finished step that fails to restore (truncated or deleted file)
is moved aside to ``DIR/../corrupt_checkpoints/`` with a warning naming the step, and the previous step is
used.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from brainjax.distributed import is_main
from brainjax.paths import move_tree, workdir_path

ITEMS = ("state", "data", "config", "lineage", "metrics")


@dataclass
class Restored:
    step: int
    state: Any
    data: dict
    config: dict
    lineage: dict
    metrics: dict


class Checkpointer:
    """A thin owner of an Orbax ``CheckpointManager`` with brainjax's items and retention policy.

    Keeps the ``keep_last`` most recent steps plus every step divisible by ``keep_every`` (0 = none).
    Saves are asynchronous when ``async_save``: ``save`` returns once the arrays are copied off the
    devices and the files are written in a background thread (call :meth:`wait` or :meth:`close`).
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, keep_every: int = 0,
                 async_save: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 (the latest checkpoint is needed to resume), got {keep_last}")
        self.directory = workdir_path(directory)  # an absolute local path, or a gs:// URI kept intact
        policy: Any = policies.LatestN(n=keep_last)
        if keep_every > 0:
            policy = policies.AnyPreservationPolicy([policy, policies.EveryNSteps(interval_steps=keep_every)])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True, save_interval_steps=1)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data: dict, config: dict, metrics: dict, lineage: dict | None = None) -> None:
        """Save all items at ``step`` (a no-op if that step already exists)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
            config=ocp.args.JsonSave(config), lineage=ocp.args.JsonSave(lineage or {}),
            metrics=ocp.args.JsonSave(_jsonable(metrics))))

    def read_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

    def read_lineage(self, step: int) -> dict:
        """The step's lineage item, or {} for a checkpoint written before that item existed."""
        if not (self.directory / str(step) / "lineage").exists():
            return {}
        return self.manager.restore(step, args=ocp.args.Composite(lineage=ocp.args.JsonRestore())).lineage

    def restore(self, step: int, abstract_state: Any) -> Restored:
        """Restore ``step`` onto the shardings carried by ``abstract_state`` (ShapeDtypeStructs)."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(), metrics=ocp.args.JsonRestore()))
        return Restored(step, out.state, out.data, out.config, self.read_lineage(step), out.metrics)

    def restore_params(self, step: int, abstract_subset: dict) -> dict:
        """Only the entries of the state item named in ``abstract_subset`` (e.g. ``{"params": ..., "rest": ...}``
        of ShapeDtypeStructs carrying their target shardings); nothing else of the state is read."""
        self.wait()
        path = self.directory / str(step) / "state"
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subset)
        with ocp.PyTreeCheckpointer() as reader:
            return reader.restore(path, args=ocp.args.PyTreeRestore(
                item=abstract_subset, restore_args=restore_args, partial_restore=True))

    def restore_latest(self, abstract_state: Any,
                       check_config: Callable[[dict, dict, int], None] | None = None) -> Restored | None:
        """Restore the newest readable step, or None when there is none.

        ``check_config(config, lineage, step)`` may raise :class:`CheckpointMismatchError` to refuse the run; that
        error propagates. Any other failure marks the step as corrupt: it is moved aside with a warning and
        the previous step is tried.
        """
        self.wait()
        for step in reversed(self.steps()):
            try:
                config, lineage = self.read_config(step), self.read_lineage(step)
            except Exception as err:  # noqa: BLE001 - any unreadable file means a bad checkpoint
                self._quarantine(step, err)
                continue
            if check_config is not None:
                check_config(config, lineage, step)
            try:
                return self.restore(step, abstract_state)
            except Exception as err:  # noqa: BLE001
                self._quarantine(step, err)
        return None

    def _quarantine(self, step: int, err: Exception) -> None:
        warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable ({type(err).__name__}: "
                      f"{str(err)[:300]}); falling back to the previous checkpoint", stacklevel=3)
        if is_main():
            move_tree(self.directory / str(step), self.directory.parent / "corrupt_checkpoints" /
                      f"{step}-{int(time.time())}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"brainjax_quarantine_{step}")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Multi-host preemption sync point (JAX's preemption service); False on a single process."""
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _jsonable(tree: dict) -> dict:
    """Plain floats/ints/strings only (JsonSave refuses numpy scalars)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _jsonable(value)
        elif isinstance(value, str | bool | int | float) or value is None:
            out[key] = value
        else:
            out[key] = float(value)
    return out
