"""Fine-tuning heads as a training objective: a head on the pretrained encoder for one phenotype.

:class:`HeadTask` regresses a continuous phenotype (standardised with the training split's mean and
standard deviation, so the R² in the logs is the R² of the raw value) or classifies a categorical one
(softmax cross-entropy). Every window of a scan carries the scan's label; scans without a label keep their
place in the batch with ``label_valid = False`` (static shapes, exact resume) and add nothing to the loss.
The classes and target statistics are derived from the training split once (:func:`describe_target`) and
kept as the run's :class:`~brainjax.config.Lineage`.

Forecasting fine-tunes the masked autoencoder itself with future masking
(:class:`~brainjax.tasks.mae.BrainLMTask` with ``mask.strategy = future``); only the warm start differs.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from brainjax.config import FinetuneConfig, Lineage, ModelConfig
from brainjax.data.dataset import MISSING, Dataset
from brainjax.errors import ConfigError, DatasetError
from brainjax.models.brainlm import pooled_r2, transformer_flops
from brainjax.models.heads import BrainLMWithHead
from brainjax.models.inputs import WINDOW_KEYS

HEAD_TASKS = ("regress", "classify")
FINETUNE_TASKS = HEAD_TASKS + ("forecast",)


def n_outputs(cfg: FinetuneConfig, lineage: Lineage) -> int:
    return len(lineage.classes) if cfg.task == "classify" else 1


class HeadTask:
    """Regress or classify ``cfg.target`` from one window: batches add label float32 [B], label_valid bool [B]."""

    input_keys = (*WINDOW_KEYS, "label", "label_valid")

    def __init__(self, model: ModelConfig, cfg: FinetuneConfig, lineage: Lineage, n_parcels: int, window: int):
        if cfg.task not in HEAD_TASKS:
            raise ConfigError(f"HeadTask needs finetune.task in {HEAD_TASKS}, got {cfg.task!r}")
        if cfg.task == "classify" and len(lineage.classes) < 2:
            raise ConfigError(f"classifying {cfg.target!r} needs at least 2 classes, got {lineage.classes}")
        if window % model.patch:
            raise ConfigError(f"data.window={window} is not a multiple of model.patch={model.patch}")
        self.model_cfg, self.cfg, self.lineage, self.n_parcels, self.window = model, cfg, lineage, n_parcels, window

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return BrainLMWithHead(self.model_cfg, n_outputs(self.cfg, self.lineage), pool=self.cfg.pool,
                               head_dropout=self.cfg.head_dropout, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        out = model(batch, None if deterministic else rng, frozen=self.cfg.freeze_backbone)
        weight = jnp.asarray(batch["label_valid"]).astype(jnp.float32)
        n = weight.sum()
        if self.cfg.task == "regress":
            target = jnp.asarray(batch["label"], jnp.float32)
            error = (out[:, 0] - target) ** 2
            sums = {"sse": (weight * error).sum(), "n": n, "sum_y": (weight * target).sum(),
                    "sum_y2": (weight * target ** 2).sum()}
            total = sums["sse"]
        else:
            target = jnp.asarray(batch["label"]).astype(jnp.int32)
            nll = optax.softmax_cross_entropy_with_integer_labels(out, target)
            correct = (jnp.argmax(out, -1) == target).astype(jnp.float32)
            sums = {"nll": (weight * nll).sum(), "n": n, "correct": (weight * correct).sum()}
            total = sums["nll"]
        loss = total / jnp.maximum(n, 1.0)
        return loss, {"loss": loss, **sums}

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = max(float(sums["n"]), 1.0)
        if self.cfg.task == "regress":
            return {"mse": float(sums["sse"]) / n, "r2": pooled_r2(dict(sums))}
        return {"nll": float(sums["nll"]) / n, "accuracy": float(sums["correct"]) / n}

    def prepare_eval(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "valid" in batch:
            batch = dict(batch, label_valid=batch["label_valid"] & batch["valid"])
        return batch

    def tokens_per_sample(self) -> float:
        return float(self.n_parcels * (self.window // self.model_cfg.patch))

    def flops_per_sample(self) -> float:
        cfg, tokens = self.model_cfg, self.tokens_per_sample()
        forward = 2 * tokens * cfg.patch * cfg.width + transformer_flops(int(tokens) + 1, cfg.width, cfg.mlp,
                                                                           cfg.depth)
        return float(forward if self.cfg.freeze_backbone else 3 * forward)

    def reconstruct(self, model, batch, rng) -> None:
        return None  # a head predicts a phenotype, not the signal

    def frozen_mask(self, params):
        """True for parameters the optimizer must leave untouched (the backbone when frozen)."""
        frozen = self.cfg.freeze_backbone
        return jax.tree_util.tree_map_with_path(
            lambda path, _: frozen and getattr(path[0], "key", None) == "backbone", params)


# ----------------------------------------------------------------------------------------------- labels
def label_table(dataset: Dataset, cfg: FinetuneConfig, lineage: Lineage) -> tuple[np.ndarray, np.ndarray]:
    """Per manifest row: the label (standardised value, or class index) float32 [S] and valid bool [S]."""
    values = [row.get(cfg.target, MISSING) for row in dataset.manifest]
    valid = np.array([v not in (MISSING, "") for v in values])
    labels = np.zeros(len(values), np.float32)
    if cfg.task == "regress":
        for i in np.flatnonzero(valid):
            labels[i] = (float(values[i]) - lineage.target_mean) / lineage.target_std
    else:
        index = {c: k for k, c in enumerate(lineage.classes)}
        unknown = sorted({values[i] for i in np.flatnonzero(valid)} - set(index))
        if unknown:
            raise DatasetError(f"{dataset.path}: {cfg.target} values {unknown} are not among the classes "
                               f"{list(lineage.classes)} the head was built for")
        for i in np.flatnonzero(valid):
            labels[i] = index[values[i]]
    return labels, valid


def describe_target(dataset: Dataset, task: str, target: str) -> dict:
    """Classes (classify) or training-split mean/std (regress) of phenotype ``target``, as :class:`Lineage`
    fields; errors name the column."""
    if target not in dataset.phenotypes:
        raise DatasetError(f"{dataset.path}: no phenotype {target!r}; the manifest has {dataset.phenotypes}")
    train = [row[target] for row in dataset.manifest if row["split"] == "train" and row[target] not in (MISSING, "")]
    if len(train) < 2:
        raise DatasetError(f"{dataset.path}: only {len(train)} training scans have a {target!r} value")
    if task == "classify":
        classes = tuple(sorted(set(train)))
        if len(classes) < 2:
            raise DatasetError(f"{dataset.path}: {target!r} takes one value ({classes[0]}) in the training split")
        return {"classes": classes}
    try:
        values = np.array([float(v) for v in train])
    except ValueError:
        raise DatasetError(f"{dataset.path}: {target!r} is not numeric; use --task classify:{target}") from None
    std = float(values.std())
    if not np.isfinite(values).all() or std == 0:
        raise DatasetError(f"{dataset.path}: {target!r} is constant or non-finite over the training split")
    return {"target_mean": float(values.mean()), "target_std": std}


def with_labels(batch: dict[str, np.ndarray], labels: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Add ``label`` / ``label_valid`` [B] to a pipeline batch through its ``scan`` (manifest row) index."""
    rows = np.asarray(batch["scan"])
    return dict(batch, label=labels[rows], label_valid=valid[rows])
