"""The protocol every training objective implements, and what the window objectives share.

An objective (a *task*) tells the one training loop (:mod:`brainjax.train`) what to build, what to minimise and
how to read its metrics. Its ``loss`` returns the scalar loss and a dict of metric *sums* over the batch: sums
add up over micro-batches, devices and evaluation batches exactly, and ``summarize`` turns the totals into
readable metrics. Tasks never draw or write anything; end-of-run figures are evaluation hooks that call
``reconstruct``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx

from brainjax.config import ModelConfig
from brainjax.models.inputs import WINDOW_KEYS


class Task(Protocol):
    """An objective the trainer can optimise (BrainLM MAE, heads, the neural tokenizer, fMRI-LM)."""

    input_keys: tuple[str, ...]  # batch entries the model reads (moved to devices)

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss(self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array,
             deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]: ...

    def prepare_eval(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Host-side fix-up of an evaluation batch (e.g. hide the repeats that pad the last batch)."""
        ...

    def tokens_per_sample(self) -> float: ...

    def flops_per_sample(self) -> float:
        """Training FLOPs (forward + backward) per sample, for MFU."""
        ...

    def frozen_mask(self, params: Any) -> Any | None:
        """A pytree of bools like ``params``, True for parameters the optimizer must leave untouched; or None
        when the objective trains every parameter (its optimizer then has no frozen partition)."""
        ...

    def reconstruct(self, model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array) -> dict | None:
        """True and reconstructed signal of a batch for end-of-run figures, or None when the objective
        reconstructs nothing: pred/target [B, P, N, patch], shown [B, P, N] bool (the patches reconstructed),
        parcel_mask [B, P] bool, what (a word naming the shown patches). Jitted inside; every process calls it."""
        ...


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as one numpy array on every process (gathered from the other hosts when there are any)."""
    if jax.process_count() > 1:  # global arrays span other hosts' devices
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


class PatchTask:
    """What every objective over windows of parcel x time-patch tokens shares (signal [B,P,T],
    parcel_mask [B,P], coords [B,P,3], tr [B])."""

    input_keys = WINDOW_KEYS

    def __init__(self, model: ModelConfig, n_parcels: int, window: int):
        if window % model.patch:
            raise ValueError(f"data.window={window} is not a multiple of model.patch={model.patch}")
        self.model_cfg, self.n_parcels, self.window = model, n_parcels, window

    def prepare_eval(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluation passes repeat windows to fill the last batch (``valid`` False): mask those rows out."""
        if "valid" in batch:
            batch = dict(batch, parcel_mask=batch["parcel_mask"] & batch["valid"][:, None])
        return batch

    def tokens_per_sample(self) -> float:
        return float(self.n_parcels * (self.window // self.model_cfg.patch))

    def frozen_mask(self, params: Any) -> None:
        return None

    def reconstruct(self, model, batch, rng) -> dict | None:
        return None
