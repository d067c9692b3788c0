"""Training objectives, one module each, behind one protocol (:class:`Task`) and one registry (:func:`task_for`).

=============  ============================================  =================================
objective      what trains                                   module
=============  ============================================  =================================
mae            BrainLM masked autoencoder (and forecasting)  :mod:`brainjax.tasks.mae`
mae + head     a phenotype head on the encoder (finetune)    :mod:`brainjax.tasks.head`
tokenizer      fMRI-LM stage 1: ViT + quantizer              :mod:`brainjax.tasks.tokenizer`
adapt/instruct fMRI-LM stages 2 and 3: LM reading scans      :mod:`brainjax.tasks.fmri_lm`
=============  ============================================  =================================
"""

from __future__ import annotations

from collections.abc import Callable

from brainjax.config import Config, Lineage
from brainjax.errors import ConfigError
from brainjax.tasks.base import Task
from brainjax.tasks.fmri_lm import FMRILMTask, sequence_spec
from brainjax.tasks.head import FINETUNE_TASKS, HEAD_TASKS, HeadTask
from brainjax.tasks.mae import BrainLMTask
from brainjax.tasks.tokenizer import TokenizerTask


def _mae(cfg: Config, lineage: Lineage, n_parcels: int) -> Task:
    if cfg.finetune.task in HEAD_TASKS:
        return HeadTask(cfg.model, cfg.finetune, lineage, n_parcels=n_parcels, window=cfg.data.window)
    if cfg.finetune.task not in ("", "forecast"):
        raise ConfigError(f"finetune.task must be one of {('',) + FINETUNE_TASKS}, got {cfg.finetune.task!r}")
    return BrainLMTask(cfg.model, cfg.mask, n_parcels=n_parcels, window=cfg.data.window)


def _tokenizer(cfg: Config, lineage: Lineage, n_parcels: int) -> Task:
    return TokenizerTask(cfg.model, cfg.quantizer, n_parcels=n_parcels, window=cfg.data.window)


def _fmri_lm(cfg: Config, lineage: Lineage, n_parcels: int) -> Task:
    return FMRILMTask(cfg, lineage, sequence_spec(cfg, n_parcels))


OBJECTIVES: dict[str, Callable[[Config, Lineage, int], Task]] = {
    "mae": _mae, "tokenizer": _tokenizer, "adapt": _fmri_lm, "instruct": _fmri_lm}


def task_for(cfg: Config, lineage: Lineage | None = None, n_parcels: int | None = None) -> Task:
    """The objective a run trains: ``cfg.objective`` (and ``finetune.task`` for heads) with the run's lineage
    (head classes, LM architecture). ``n_parcels`` defaults to ``model.max_parcels`` (the models hold no
    per-parcel weights, except ``model.parcel_identity``'s table, which is sized by max_parcels)."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {sorted(OBJECTIVES)}, got {cfg.objective!r}")
    n_parcels = cfg.model.max_parcels if n_parcels is None else n_parcels
    return OBJECTIVES[cfg.objective](cfg, lineage or Lineage(), n_parcels)


__all__ = ["OBJECTIVES", "Task", "task_for", "BrainLMTask", "HeadTask", "TokenizerTask", "FMRILMTask"]
