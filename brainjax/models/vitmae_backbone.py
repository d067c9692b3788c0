"""A BrainLM ViT-MAE checkpoint (:mod:`brainjax.models.vitmae`) behind the backbone interface that evaluation
reads from brainjax's own BrainLM, so ``brainjax evaluate`` and ``brainjax embed`` run on BrainLM's released
weights beside the same baselines.

The ViT-MAE tokens are square blocks of the padded ``[parcels, time]`` image, not brainjax's one-parcel time
patches, so the adapter reports at the finest grid both share: one "patch" per TR (``cfg.patch = 1``):

* ``model(batch, rng, mask_cfg)``: random block masking drawn from ``rng`` with ``mask_cfg.ratio`` (the only
  masking these checkpoints were trained with; other strategies are refused); ``pred`` / ``target``
  ``[B, P, T, 1]``, ``masked`` ``[B, P, T]`` = the TRs of the masked blocks on real parcels. The baselines of
  ``evaluate`` receive exactly those visible values.
* ``embed(batch)``: ``cls`` and ``mean`` (over the blocks that hold signal) ``[B, hidden]``; ``tokens``
  ``[B, P, C, hidden]``: each parcel's block row over the C block columns that hold signal (parcels that share
  a block row share its tokens).

Inputs are the batch's ``signal`` ``[B, P, T]`` in the dataset's parcel order, which must be the order the
checkpoint was trained with (BrainLM: the A424 atlas); brainjax normalises each parcel by the dataset's median
and IQR, BrainLM's own preprocessing additionally divided by a dataset constant (see the README).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.config import MaskConfig, ModelConfig
from brainjax.models.vitmae import ViTMAE

EVALUATE_TASKS = ("reconstruct", "probe")  # no attention maps (networks) and no future masking (forecast)


class ViTMAEBackbone(nnx.Module):
    """``vit`` (a loaded :class:`ViTMAE`) with BrainLM's backbone interface (see the module doc)."""

    evaluate_tasks = EVALUATE_TASKS
    mask_strategies = ("random",)

    def __init__(self, vit: ViTMAE, cfg: ModelConfig):
        self.vit, self.cfg = vit, cfg

    def _blocks(self, parcels: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Block row of each parcel [P] and the block columns that hold signal [C] (BrainLM's centred padding)."""
        (height, width), (ph, pw) = self.vit.cfg.image_size, self.vit.cfg.patch_size
        top, left = (height - parcels) // 2, (width - steps) // 2
        return (top + np.arange(parcels)) // ph, np.unique((left + np.arange(steps)) // pw)

    def __call__(self, batch: dict, rng: jax.Array, mask_cfg: MaskConfig) -> dict:
        """Mask random blocks and reconstruct: pred, target float32 [B, P, T, 1]; masked bool [B, P, T]."""
        if mask_cfg.strategy != "random":
            raise ValueError(f"{mask_cfg.strategy} masking: a ViT-MAE checkpoint masks random square blocks of "
                             f"the [parcels, time] image only; evaluate it with random masking")
        signal = jnp.asarray(batch["signal"], jnp.float32)
        out = self.vit.reconstruct(signal, rng=rng, mask_ratio=mask_cfg.ratio)
        masked = out["mask"] & jnp.asarray(batch["parcel_mask"], bool)[:, :, None]
        return {"pred": out["pred"][..., None], "target": signal[..., None], "masked": masked}

    def embed(self, batch: dict) -> dict:
        """cls, mean float32 [B, hidden]; tokens [B, P, C, hidden] (see the module doc)."""
        signal = jnp.asarray(batch["signal"], jnp.float32)
        out = self.vit.embed(signal)
        batch_size, parcels, steps = signal.shape
        rows, cols = self._blocks(parcels, steps)
        grid_h, grid_w = self.vit.cfg.grid
        tokens = out["tokens"].reshape(batch_size, grid_h, grid_w, -1)[:, rows][:, :, cols]
        return {"cls": out["cls"], "mean": out["mean_signal"], "tokens": tokens}


def backbone_configs(vit: ViTMAE, window: int) -> tuple[ModelConfig, MaskConfig]:
    """The brainjax model and masking sections that describe ``vit`` for evaluation (``patch = 1``: a TR)."""
    cfg = vit.cfg
    model = ModelConfig(patch=1, max_parcels=cfg.image_size[0], width=cfg.hidden_size, depth=cfg.num_hidden_layers,
                        heads=cfg.num_attention_heads, mlp=cfg.intermediate_size,
                        dec_width=cfg.decoder_hidden_size, dec_depth=cfg.decoder_num_hidden_layers,
                        dec_heads=cfg.decoder_num_attention_heads, dec_mlp=cfg.decoder_intermediate_size,
                        max_patches=max(window, 1))
    return model, MaskConfig(strategy="random", ratio=cfg.mask_ratio)
