"""Load a pretraining checkpoint for evaluation: the model only, on whatever devices this process has.

The checkpoint's own ``config`` item rebuilds the model (so evaluation needs no preset or flags), and the
state is restored into an abstract target laid out on the current mesh, so a checkpoint written on 8
devices loads on 1 and the other way round. Nothing is trained and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flax import nnx

from brainjax.config import Config, MeshConfig, from_dict


class NoCheckpointError(FileNotFoundError):
    """The work dir holds no (readable) checkpoint."""


@dataclass
class LoadedModel:
    model: nnx.Module  # the BrainLM model, parameters on this process's devices
    cfg: Config  # the run configuration saved with the checkpoint
    step: int  # the checkpoint's step
    mesh: Any  # the mesh the parameters live on (batches go through ``pipeline.to_global(batch, mesh)``)


def load_for_eval(workdir: str | os.PathLike, step: int | None = None, mesh: Any = None) -> LoadedModel:
    """The model of checkpoint ``step`` (default: the latest readable one) in ``workdir/checkpoints``.

    mesh: where to put the parameters (default: every device of this process on the data axis).
    A pretraining (or forecast fine-tuning) checkpoint gives a BrainLM; a regress/classify fine-tuning
    checkpoint gives a :class:`~brainjax.models.heads.BrainLMWithHead` (its encoder is ``.backbone``).
    """
    import dataclasses

    from brainjax.paths import workdir_path
    from brainjax.train import checkpoint as ckpt_lib
    from brainjax.train import sharding
    from brainjax.train.finetune import task_for_config
    from brainjax.train.optim import make_optimizer
    from brainjax.train.step import init_train_state

    directory = workdir_path(workdir) / "checkpoints"  # a gs:// work dir stays a URI
    if not directory.is_dir():
        raise NoCheckpointError(f"{workdir}: no checkpoints/ directory (train with `brainjax pretrain --workdir`)")
    checkpointer = ckpt_lib.Checkpointer(directory, async_save=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise NoCheckpointError(f"{directory}: no checkpoint steps")
        if step is not None and step not in steps:
            raise NoCheckpointError(f"{directory}: no step {step}; available steps: {steps}")
        chosen = step if step is not None else steps[-1]
        cfg = from_dict(checkpointer.read_config(chosen))
        # the saved mesh described the training devices; evaluation uses every device here on the data axis
        cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=-1, fsdp=1))
        task = task_for_config(cfg, cfg.model.max_parcels)  # the model has no per-parcel weights
        tx, _ = make_optimizer(cfg.optim, cfg.train.steps, cfg.data.batch_size,
                               frozen=getattr(task, "frozen_mask", None))
        mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
        abstract = sharding.abstract_sharded(init_train_state(task, tx, cfg.train.seed), mesh)
        restored = checkpointer.restore(chosen, abstract)
    finally:
        checkpointer.close()
    graphdef = nnx.graphdef(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))))
    model = nnx.merge(graphdef, restored.state["params"], restored.state["rest"])
    return LoadedModel(model, cfg, chosen, mesh)


def encoder(loaded: LoadedModel) -> nnx.Module:
    """The BrainLM of a loaded checkpoint (the backbone of a fine-tuned head model)."""
    return getattr(loaded.model, "backbone", loaded.model)


def warm_start_from(loaded: LoadedModel) -> Callable[[dict], dict]:
    """A Trainer ``warm_start``: put the loaded BrainLM's parameters into a fresh state.

    The fresh state's model is a BrainLM (forecast fine-tuning: every parameter replaced) or a head model
    (its ``backbone`` replaced; the head keeps its initialisation). Arrays are moved onto the fresh state's
    shardings, so the checkpoint may come from any mesh.
    """
    import jax

    pretrained = nnx.to_pure_dict(nnx.state(encoder(loaded), nnx.Param))

    def apply(state: dict) -> dict:
        params = state["params"]
        pure = nnx.to_pure_dict(params)
        target = pure["backbone"] if "backbone" in pure else pure
        fresh = jax.tree.structure(target)
        if jax.tree.structure(pretrained) != fresh:
            raise ValueError("the pretrained checkpoint's parameters do not match the model being fine-tuned")
        placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), pretrained, target)
        if "backbone" in pure:
            pure["backbone"] = placed
        else:
            pure = placed
        nnx.replace_by_pure_dict(params, pure)
        return dict(state, params=params)
    return apply
