"""Open a run's work dir: its checkpoints, configuration and lineage, and its model with parameters only.

The checkpoint's own ``config`` and ``lineage`` items rebuild the model (so evaluation needs no preset or
flags), and the parameters are restored into an abstract target laid out on the current mesh, so a checkpoint
written on 8 devices loads on 1 and the other way round. Only the model's variables are read (Orbax partial
restore): the optimizer's moments, twice the parameters under AdamW, stay on disk. Resuming a run (the whole
train state) is the Trainer's job.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
from flax import nnx

from brainjax import sharding
from brainjax.config import Config, Lineage, MeshConfig, from_saved
from brainjax.errors import CheckpointMismatchError, CorruptCheckpointError, NoCheckpointError
from brainjax.paths import workdir_path
from brainjax.tasks import task_for
from brainjax.train.checkpoint import Checkpointer


@dataclass
class LoadedModel:
    model: nnx.Module  # the run's model (BrainLM, head model, tokenizer or fMRI-LM) on this process's devices
    cfg: Config  # the run configuration saved with the checkpoint
    lineage: Lineage  # what the run derived (classes, LM architecture) and where it came from
    step: int  # the checkpoint's step
    mesh: Any  # the mesh the parameters live on (batches go through ``pipeline.to_global(batch, mesh)``)

    @property
    def backbone(self) -> nnx.Module:
        """The BrainLM masked autoencoder (encoder and decoder) of an MAE run, or a head model's backbone."""
        return getattr(self.model, "backbone", self.model)


def model_target(task, mesh) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, {"params", "rest"}: States of ShapeDtypeStructs laid out on ``mesh``) of ``task``'s model:
    what a restore fills (shapes only, nothing is initialised) and how the model is merged back."""
    def variables():
        _, params, rest = nnx.split(task.init_model(nnx.Rngs(0)), nnx.Param, ...)
        return {"params": params, "rest": rest}
    graphdef = nnx.graphdef(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))))
    return graphdef, sharding.abstract_sharded(variables, mesh)


class Run:
    """A work dir with checkpoints (``WORKDIR/checkpoints``); local or ``gs://``."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = workdir_path(workdir)
        directory = self.workdir / "checkpoints"
        if not directory.is_dir():
            raise NoCheckpointError(f"{workdir}: no checkpoints/ directory (train with `brainjax pretrain --workdir`)")
        self.checkpointer = Checkpointer(directory, async_save=False)
        self.steps = self.checkpointer.steps()
        if not self.steps:
            self.close()
            raise NoCheckpointError(f"{directory}: no checkpoint steps")

    def choose(self, step: int | None = None) -> int:
        """``step`` if the run has it (default: the latest)."""
        if step is not None and step not in self.steps:
            raise NoCheckpointError(f"{self.checkpointer.directory}: no step {step}; available steps: {self.steps}")
        return self.steps[-1] if step is None else step

    def verify(self, step: int | None = None) -> int:
        """``step`` (default: the latest) after checking its files against the checksums recorded at save;
        :class:`CorruptCheckpointError` naming the file when they differ. Nothing in the work dir is changed."""
        step = self.choose(step)
        try:
            self.checkpointer.verify(step)
        except CorruptCheckpointError as err:
            others = [s for s in self.steps if s != step]
            raise CorruptCheckpointError(f"{err} (it does not match the checksum recorded at save); "
                                         + (f"load another step ({others}) or " if others else "")
                                         + "restore the work dir from a copy") from err
        return step

    def config(self, step: int | None = None) -> tuple[Config, Lineage]:
        """The configuration and lineage saved with ``step`` (any brainjax version's layout)."""
        step = self.choose(step)
        return from_saved(self.checkpointer.read_config(step), self.checkpointer.read_lineage(step))

    def load(self, step: int | None = None, mesh: Any = None, objective: str | None = None) -> LoadedModel:
        """The model of checkpoint ``step`` with its parameters (and other model variables) only.

        mesh: where to put the parameters (default: every device of this process on the data axis).
        objective: refuse a run of another objective (e.g. ``"tokenizer"``), before any array is read.

        Raises :class:`CorruptCheckpointError` (naming the file) when the step's files do not match the checksums
        recorded at save; the work dir is left as it is (resuming the run moves such a step aside).
        """
        step = self.verify(step)  # before the config is read: a damaged config could describe another model
        cfg, lineage = self.config(step)
        if objective is not None and cfg.objective != objective:
            raise CheckpointMismatchError(f"{self.workdir} is a {cfg.objective!r} run, not a {objective} run"
                                          + (" (a BrainLM pretraining or fine-tuning work dir)" if objective == "mae"
                                             else ""))
        # the saved mesh described the training devices; evaluation uses every device here on the data axis
        cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=-1, fsdp=1))
        task = task_for(cfg, lineage)  # the models hold no per-parcel weights: max_parcels fits every atlas
        mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
        graphdef, target = model_target(task, mesh)
        try:
            restored = self.checkpointer.restore_params(step, target)
        except CorruptCheckpointError:
            raise
        except (ValueError, KeyError) as err:
            raise CheckpointMismatchError(f"{self.workdir}: step {step} does not hold the parameters its own "
                                          f"configuration describes ({type(err).__name__}: {str(err)[:300]})") from err
        return LoadedModel(nnx.merge(graphdef, restored["params"], restored["rest"]), cfg, lineage, step, mesh)

    def close(self) -> None:
        self.checkpointer.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def warm_start_from(loaded: LoadedModel) -> Callable[[dict], dict]:
    """A Trainer ``warm_start``: put the loaded BrainLM's parameters into a fresh state.

    The fresh state's model is a BrainLM (forecast fine-tuning: every parameter replaced) or a head model
    (its ``backbone`` replaced; the head keeps its initialisation). Arrays are moved onto the fresh state's
    shardings, so the checkpoint may come from any mesh.
    """
    pretrained = nnx.to_pure_dict(nnx.state(loaded.backbone, nnx.Param))

    def apply(state: dict) -> dict:
        params = state["params"]
        pure = nnx.to_pure_dict(params)
        target = pure["backbone"] if "backbone" in pure else pure
        if jax.tree.structure(pretrained) != jax.tree.structure(target):
            raise CheckpointMismatchError("the pretrained checkpoint's parameters do not match the model being "
                                          "fine-tuned")
        placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), pretrained, target)
        if "backbone" in pure:
            pure["backbone"] = placed
        else:
            pure = placed
        nnx.replace_by_pure_dict(params, pure)
        return dict(state, params=params)
    return apply
