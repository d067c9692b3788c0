"""Start or resume training: the one entry every training command calls (pretrain, tokenizer, finetune, adapt,
instruct), so a command is argument parsing plus a :class:`~brainjax.config.Config`.

``launch`` opens the datasets of ``cfg.data.path`` (the shuffled training loader of this process's share and a
fresh validation pass each evaluation), maps every batch through ``build`` (labels, text sequences, alignment
inputs), picks the objective from the registry (:func:`brainjax.tasks.task_for`) and runs the Trainer, which
resumes the work dir's checkpoint when there is one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import jax

from brainjax.config import Config, Lineage, check
from brainjax.data.pipeline import (
    LoaderSpec,
    MappedLoader,
    check_windows,
    eval_batches,
    make_loader,
    mapped_passes,
    to_global,
)
from brainjax.distributed import is_main
from brainjax.errors import DatasetError
from brainjax.tasks import Task, task_for
from brainjax.train.plan import memory_report
from brainjax.train.trainer import RunResult, Trainer

# finish(task, workdir) -> on_finish(model, batch, rng, write) -> facts: an end-of-run evaluation hook
FinishHook = Callable[[Task, Any], Callable[..., dict]]


def _validation_holdout(cfg: Config, paths: tuple[str, ...]) -> float | None:
    """The time hold-out fraction of ``cfg.data.validation`` (0 = the val split, None = no validation), checked
    against the data before the first step, so a run never dies at its first evaluation."""
    mode, window = cfg.data.validation, cfg.data.window
    if mode == "none":
        return None
    holdout = cfg.data.holdout if mode == "holdout" else 0.0
    try:
        check_windows(paths, "train" if holdout else "val", window, holdout)
    except DatasetError as err:
        if holdout:
            raise DatasetError(f"validation by time hold-out: {err} (raise data.holdout, shorten data.window, or "
                               f"train without validation: --validation none)") from err
        raise DatasetError(f"no validation data: {err}. Choose --validation holdout (the last "
                           f"{cfg.data.holdout:.0%} of every training scan by time, at least one window, never "
                           f"trained on) or --validation none (train without validation), or prepare the "
                           f"dataset with a val split") from err
    return holdout


def data_loaders(cfg: Config, build: Callable[[dict], dict] | None = None):
    """(training loader, validation passes or None, parcels per window) for ``cfg.data``; several
    comma-separated datasets are mixed by ``data.mix_weights`` and padded to ``model.max_parcels``.
    ``data.validation`` picks the validation windows: the val split, the held-out tails of the training scans
    (the training loader then reads only their heads), or none."""
    paths = tuple(cfg.data.path.split(","))
    holdout = _validation_holdout(cfg, paths)
    loader = make_loader(LoaderSpec(
        paths=paths, split="train", window=cfg.data.window, batch_size=cfg.data.batch_size,
        stride=cfg.data.stride, seed=cfg.train.seed, weights=cfg.data.mix_weights, workers=cfg.data.workers,
        max_parcels=cfg.model.max_parcels if len(paths) > 1 else None,  # mixed atlases pad to one size
        process_index=jax.process_index(), process_count=jax.process_count(), holdout=holdout or 0.0))
    n_parcels = loader.n_parcels
    if loader.windows_per_epoch < cfg.data.batch_size:
        warnings.warn(f"data.batch_size={cfg.data.batch_size} is larger than the {loader.windows_per_epoch} training "
                      f"windows per epoch of {cfg.data.path}: every step repeats windows (lower data.batch_size, "
                      f"or set data.stride to take more windows per scan)", stacklevel=2)

    def validation():
        split = "train" if holdout else "val"
        return eval_batches(paths, split, cfg.data.window, cfg.data.batch_size, max_parcels=n_parcels,
                            holdout=holdout or 0.0)

    if holdout is None:
        validation = None
    if build is None:
        return loader, validation, n_parcels
    return MappedLoader(loader, build), validation and mapped_passes(validation, build), n_parcels


def launch(cfg: Config, workdir: str | os.PathLike, *, lineage: Lineage | None = None,
           build: Callable[[dict], dict] | None = None, warm_start: Callable[[dict], dict] | None = None,
           mesh: Any = None, finish: FinishHook | None = None, until: int | None = None) -> RunResult:
    """Train ``cfg``'s objective in ``workdir`` (resuming its latest checkpoint) and return where it ended.

    lineage: saved with every checkpoint (classes, LM architecture, parents); build(batch) -> batch: adds what
    the objective reads beyond the window; warm_start(state) -> state: fills a fresh state from a parent run
    (not applied when resuming); mesh: default ``cfg.mesh`` over every device; finish: the end-of-run hook
    factory (e.g. :func:`brainjax.eval.figures.reconstruction_hook`), used when ``train.figure``.
    """
    check(cfg)  # nonsense numbers fail here with the field named, before any data is read
    loader, validation, n_parcels = data_loaders(cfg, build)
    task = task_for(cfg, lineage, n_parcels)
    if is_main() and cfg.objective == "mae" and not cfg.finetune.task:
        try:  # the expected memory per device, before anything is compiled
            print(memory_report(cfg, n_parcels, jax.device_count(), jax.devices()[0].platform), flush=True)
        except ValueError:  # a config the trainer refuses: it says why when it is built
            pass
    on_finish = finish(task, workdir) if finish is not None and cfg.train.figure else None
    trainer = Trainer(cfg, task, workdir, loader, validation, to_global, mesh=mesh, warm_start=warm_start,
                      lineage=lineage, on_finish=on_finish)
    return trainer.run(until)
