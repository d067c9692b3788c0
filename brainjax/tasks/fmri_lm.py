"""The fMRI-LM objective (stages 2 and 3) as a training objective (:class:`brainjax.tasks.base.Task`).

Three weighted losses (``language.*_weight``), each a mean over its own tokens:

* fMRI -> text: cross-entropy of the answer tokens (descriptor text in stage 2, the answer in stage 3) given
  the scan and the prompt; prompt tokens are never a target.
* next-patch codes: from each fMRI token of time patch n, the fMRI head predicts the tokenizer's VQ code of
  the same parcel at patch n + 1 (needs windows of at least two patches: checked when the task is built).
* text-only LM: plain next-token loss on text without a scan, so the LM keeps its language.

Metric sums: ``*_nll``, ``*_n`` and ``*_correct`` per loss, so perplexities and accuracies add up exactly
over micro-batches, devices and evaluation batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.config import Config, Lineage
from brainjax.errors import ConfigError
from brainjax.models.fmri_lm import FMRILM, lm_config_from_json, token_steps
from brainjax.models.inputs import WINDOW_KEYS
from brainjax.models.sequences import SEQUENCE_KEYS, SequenceSpec
from brainjax.nn.lora import lora_frozen_mask

LM_KEYS = ("lm_ids", "lm_mask")


def sequence_spec(cfg: Config, n_parcels: int, blocks: int = 1) -> SequenceSpec:
    """The sequence shape of a run: ``blocks`` fMRI blocks of ``n_parcels`` x (window / patch) tokens plus text."""
    steps = token_steps(cfg.language.fmri_time, cfg.data.window, cfg.model.patch)
    return SequenceSpec(n_parcels=n_parcels, n_patches=steps, blocks=blocks,
                        text_len=cfg.language.text_len, pool=cfg.language.fmri_pool)


def _token_nll(logits: jax.Array, targets: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed weighted NLL, weight total and weighted count of argmax hits; logits [..., V], targets [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(weight * nll), jnp.sum(weight), jnp.sum(weight * hits)


def fmri_lm_loss(model: FMRILM, batch: Mapping[str, jax.Array], cfg: Config) -> tuple[jax.Array, dict]:
    """Weighted sum of the three mean losses, and their metric sums. Batch: see :mod:`brainjax.models.sequences`."""
    language = cfg.language
    hidden, codes, real = model(batch)
    batch_size, width = hidden.shape[0], hidden.shape[-1]
    picked = jnp.take_along_axis(hidden, jnp.asarray(batch["loss_pos"])[..., None], axis=1)
    text = _token_nll(model.lm.logits(picked), jnp.asarray(batch["loss_target"]), batch["loss_weight"])
    sums = {"text_nll": text[0], "text_n": text[1], "text_correct": text[2]}
    loss = language.text_weight * text[0] / jnp.maximum(text[1], 1.0)
    _, blocks, n_patches, n_parcels = codes.shape
    if language.code_weight > 0 and n_patches > 1:
        fmri = jnp.take_along_axis(hidden, jnp.asarray(batch["fmri_pos"])[..., None], axis=1)
        fmri = fmri.reshape(batch_size, blocks, n_patches, n_parcels, width)
        weight = (real[:, :, 1:] & real[:, :, :-1]).astype(jnp.float32)
        weight = weight * jnp.asarray(batch["code_weight"])[:, :, None, None]
        code = _token_nll(model.code_logits(fmri[:, :, :-1]), codes[:, :, 1:], weight)
        sums.update(code_nll=code[0], code_n=code[1], code_correct=code[2])
        loss = loss + language.code_weight * code[0] / jnp.maximum(code[1], 1.0)
    if language.lm_weight > 0 and "lm_ids" in batch:
        ids, mask = jnp.asarray(batch["lm_ids"]), jnp.asarray(batch["lm_mask"]).astype(bool)
        logits = model.lm(ids, mask)
        weight = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
        plain = _token_nll(logits[:, :-1], ids[:, 1:], weight)
        sums.update(lm_nll=plain[0], lm_n=plain[1], lm_correct=plain[2])
        loss = loss + language.lm_weight * plain[0] / jnp.maximum(plain[1], 1.0)
    sums["loss"] = loss * batch_size  # summed over samples like every other metric; summarize divides
    sums["samples"] = jnp.asarray(batch_size, jnp.float32)
    return loss, sums


class FMRILMTask:
    """fMRI-LM stage 2 (``objective = "adapt"``) or 3 (``"instruct"``); batches from :mod:`brainjax.lm.batches`."""

    def __init__(self, cfg: Config, lineage: Lineage, spec: SequenceSpec):
        if cfg.language.code_weight > 0 and spec.n_patches < 2:
            raise ConfigError(f"next-patch code prediction needs windows of >= 2 token time steps; data.window / "
                             f"model.patch with language.fmri_time={cfg.language.fmri_time!r} gives "
                             f"{spec.n_patches} (set language.code_weight=0 to drop that loss)")
        if cfg.language.code_weight > 0 and cfg.language.fmri_pool:
            raise ConfigError("next-patch codes are per parcel, pooled fMRI tokens (language.fmri_pool="
                              f"{cfg.language.fmri_pool}) have none: set language.code_weight=0")
        self.cfg, self.spec = cfg, spec
        self.lm_cfg = lm_config_from_json(lineage.lm_architecture)
        uses_lm = cfg.language.lm_weight > 0
        self.input_keys = (*SEQUENCE_KEYS, *WINDOW_KEYS, *(LM_KEYS if uses_lm else ()))

    def init_model(self, rngs: nnx.Rngs) -> FMRILM:
        return FMRILM(self.lm_cfg, self.cfg.model, self.cfg.quantizer, self.cfg.language, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        return fmri_lm_loss(model, batch, self.cfg)

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        out = {"loss": float(sums["loss"]) / max(float(sums["samples"]), 1.0)}
        for part in ("text", "code", "lm"):
            if f"{part}_n" in sums:
                n = max(float(sums[f"{part}_n"]), 1.0)
                mean = float(sums[f"{part}_nll"]) / n
                out[f"{part}_loss"], out[f"{part}_acc"] = mean, float(sums[f"{part}_correct"]) / n
                out[f"{part}_ppl"] = float(math.exp(min(mean, 50.0)))
        return out

    def prepare_eval(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch  # the sequence builder already zeroed the weights of padding rows

    def tokens_per_sample(self) -> float:
        return float(self.spec.length)

    def flops_per_sample(self) -> float:
        """6 x (LM matmul parameters) x tokens + attention, for the trainable-LM case (an upper bound)."""
        c, length = self.lm_cfg, self.spec.length
        per_layer = c.hidden * (c.heads + 2 * c.kv_heads) * c.head_dim + c.heads * c.head_dim * c.hidden
        per_layer += (3 if c.family == "qwen3" else 2) * c.hidden * c.intermediate
        forward = 2 * length * c.layers * per_layer + 4 * c.layers * length ** 2 * c.heads * c.head_dim
        return float(3 * forward)

    def reconstruct(self, model, batch, rng) -> None:
        return None  # the LM predicts text and codes, not the signal

    def frozen_mask(self, params) -> Any:
        """True for what never trains: the tokenizer always; the LM's base weights unless ``train_lm=full``
        (with LoRA its adapters train); projector, parcel embedding and fMRI head always train."""
        mode = self.cfg.language.train_lm
        base = lora_frozen_mask(params)  # True for every non-adapter parameter

        def frozen(path, is_base):
            top = getattr(path[0], "key", None)
            if top == "tokenizer":
                return True
            if top != "lm":
                return False
            return {"lora": bool(is_base), "full": False, "frozen": True}[mode]
        return jax.tree_util.tree_map_with_path(frozen, base)
