"""The BrainLM masked autoencoder (Ortega Caro et al., ICLR 2024) as a training objective.

Reconstruct masked parcel x time-patch tokens; metrics are the masked MSE and the R² pooled over all masked
values, computed from sums so that they add up over micro-batches, devices and evaluation batches exactly.
Forecast fine-tuning is this objective with ``mask.strategy = future``; only its warm start differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx

from brainjax.config import MaskConfig, ModelConfig
from brainjax.models.brainlm import BrainLM, mae_loss, model_flops_per_sample, pooled_r2
from brainjax.tasks.base import PatchTask, to_host


class BrainLMTask(PatchTask):
    """BrainLM MAE pretraining (and forecast fine-tuning)."""

    def __init__(self, model: ModelConfig, mask: MaskConfig, n_parcels: int, window: int):
        super().__init__(model, n_parcels, window)
        self.mask_cfg = mask

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return BrainLM(self.model_cfg, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        return mae_loss(model, batch, rng, self.mask_cfg, deterministic=deterministic)

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = max(float(sums["n"]), 1.0)
        return {"mse": float(sums["sse"]) / n, "r2": float(pooled_r2(dict(sums)))}

    def flops_per_sample(self) -> float:
        return float(model_flops_per_sample(self.model_cfg, self.n_parcels, self.window, self.mask_cfg))

    def reconstruct(self, model, batch, rng) -> dict:
        # jitted: eager op-by-op calls on mesh-sharded arrays make XLA reshard every small op
        out = nnx.jit(lambda m, b, r: m(b, r, self.mask_cfg, deterministic=True))(model, batch, rng)
        return {"pred": to_host(out["pred"]), "target": to_host(out["target"]), "shown": to_host(out["masked"]),
                "parcel_mask": to_host(batch["parcel_mask"]), "what": "masked"}
