"""Load a pretraining checkpoint for evaluation: the model only, on whatever devices this process has.

The checkpoint's own ``config`` item rebuilds the model (so evaluation needs no preset or flags), and the
state is restored into an abstract target laid out on the current mesh, so a checkpoint written on 8
devices loads on 1 and the other way round. Nothing is trained and nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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


def load_for_eval(workdir: str | os.PathLike, step: int | None = None) -> LoadedModel:
    """The model of checkpoint ``step`` (default: the latest readable one) in ``workdir/checkpoints``."""
    import dataclasses

    from brainjax.train import checkpoint as ckpt_lib
    from brainjax.train import sharding
    from brainjax.train.optim import make_optimizer
    from brainjax.train.step import init_train_state
    from brainjax.train.tasks import BrainLMTask

    directory = Path(workdir) / "checkpoints"
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
        task = BrainLMTask(cfg.model, cfg.mask, n_parcels=cfg.model.max_parcels,
                           window=cfg.data.window)  # the model has no per-parcel weights
        tx, _ = make_optimizer(cfg.optim, cfg.train.steps, cfg.data.batch_size)
        mesh = sharding.make_mesh(cfg.mesh)
        abstract = sharding.abstract_sharded(init_train_state(task, tx, cfg.train.seed), mesh)
        restored = checkpointer.restore(chosen, abstract)
    finally:
        checkpointer.close()
    graphdef = nnx.graphdef(sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0))))
    model = nnx.merge(graphdef, restored.state["params"], restored.state["rest"])
    return LoadedModel(model, cfg, chosen, mesh)
