"""Training objectives for :class:`brainjax.train.trainer.Trainer` (see :class:`brainjax.train.step.Task`).

:class:`BrainLMTask` is the masked autoencoder of BrainLM (Ortega Caro et al., ICLR 2024): reconstruct masked
parcel x time-patch tokens; metrics are the masked MSE and the R² pooled over all masked values, computed
from sums so that they add up over micro-batches, devices and evaluation batches exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from brainjax.config import MaskConfig, ModelConfig
from brainjax.eval.figures import save_figure
from brainjax.paths import workdir_path

FIGURE_NAME = "reconstruction.png"


class PatchTask:
    """What every objective over windows of parcel x time-patch tokens shares (signal [B,P,T],
    parcel_mask [B,P], coords [B,P,3], tr [B])."""

    input_keys = ("signal", "parcel_mask", "coords", "tr")

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


class BrainLMTask(PatchTask):
    """BrainLM MAE pretraining."""

    def __init__(self, model: ModelConfig, mask: MaskConfig, n_parcels: int, window: int):
        super().__init__(model, n_parcels, window)
        self.mask_cfg = mask

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        from brainjax.models.brainlm import BrainLM
        return BrainLM(self.model_cfg, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        from brainjax.models.brainlm import mae_loss
        return mae_loss(model, batch, rng, self.mask_cfg, deterministic=deterministic)

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        from brainjax.models.brainlm import pooled_r2
        n = max(float(sums["n"]), 1.0)
        return {"mse": float(sums["sse"]) / n, "r2": float(pooled_r2(dict(sums)))}

    def flops_per_sample(self) -> float:
        from brainjax.models.brainlm import model_flops_per_sample
        return float(model_flops_per_sample(self.model_cfg, self.n_parcels, self.window, self.mask_cfg))

    def finish(self, model, batch, rng, workdir: str, write: bool = True) -> dict[str, Any]:
        """Plot true vs reconstructed signal of a few parcels of the first validation window.

        Every process must call this (the model runs on global arrays); only ``write`` saves the figure.
        """
        # jitted: eager op-by-op calls on mesh-sharded arrays make XLA reshard every small op
        out = nnx.jit(lambda m, b, r: m(b, r, self.mask_cfg, deterministic=True))(model, batch, rng)
        pred, target, masked, mask = (_host(x) for x in (out["pred"], out["target"], out["masked"],
                                                        batch["parcel_mask"]))
        path = workdir_path(workdir) / FIGURE_NAME
        if write:
            save_reconstruction_figure(path, pred[0], target[0], masked[0], mask[0])
        return {"figure": str(path)}


def _host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1:  # global arrays span other hosts' devices
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_reconstruction_figure(path: Path, pred: np.ndarray, target: np.ndarray, masked: np.ndarray,
                               parcel_mask: np.ndarray, n_show: int = 4, what: str = "masked") -> None:
    """True vs reconstructed series of ``n_show`` parcels; the patches in ``masked`` are shaded and plotted
    (``what`` names them: "masked" for the MAE, "coded" for the tokenizer, which reconstructs every patch).

    pred/target: [P, N, patch] (one sample), masked: [P, N] bool, parcel_mask: [P] bool.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = np.flatnonzero(parcel_mask)
    # Prefer parcels with masked patches so the figure shows reconstructions, not copies of the input.
    order = sorted(real, key=lambda p: -int(masked[p].sum()))
    shown = sorted(order[:n_show])
    n_patches, patch = target.shape[1], target.shape[2]
    t = np.arange(n_patches * patch)
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.8 * len(shown)), sharex=True, squeeze=False)
    for ax, p in zip(axes[:, 0], shown):
        for k in np.flatnonzero(masked[p]):
            ax.axvspan(k * patch, (k + 1) * patch, color="0.9", lw=0)
        ax.plot(t, target[p].reshape(-1), color="k", lw=1, label="true")
        recon = np.where(np.repeat(masked[p], patch), pred[p].reshape(-1), np.nan)
        ax.plot(t, recon, color="tab:red", lw=1, label=f"reconstructed ({what})")
        ax.set_ylabel(f"parcel {p}")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel(f"time (TR) — shaded: {what} patches")
    fig.tight_layout()
    save_figure(fig, path)


class TokenizerTask(PatchTask):
    """fMRI-LM stage 1: train the neural tokenizer to reconstruct every real token through its codes.

    Metrics: reconstruction MSE and pooled R², and per batch (averaged over the batches summed) the
    codebook's perplexity, the fraction of codes used and the number of dead codes; with language alignment
    on, also the domain loss and discriminator accuracy and/or the SigLIP loss and text -> window retrieval.
    """

    def __init__(self, model: ModelConfig, quantizer, n_parcels: int, window: int):
        from brainjax.nn.alignment import alignment_keys

        super().__init__(model, n_parcels, window)
        self.quantizer_cfg = quantizer
        self.input_keys = PatchTask.input_keys + alignment_keys(quantizer.domain_weight > 0,
                                                               quantizer.text_weight > 0)

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        from brainjax.models.tokenizer import NeuralTokenizer
        return NeuralTokenizer(self.model_cfg, self.quantizer_cfg, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        from brainjax.models.tokenizer import tokenizer_loss
        return tokenizer_loss(model, batch, rng, train=not deterministic)

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        from brainjax.models.brainlm import pooled_r2
        from brainjax.nn.alignment import summarize_alignment
        n, batches = max(float(sums["n"]), 1.0), max(float(sums["batches"]), 1.0)
        return {"mse": float(sums["sse"]) / n, "r2": float(pooled_r2(dict(sums))),
                "perplexity": float(sums["perplexity"]) / batches, "usage": float(sums["usage"]) / batches,
                "dead": float(sums["dead"]) / batches, **summarize_alignment(dict(sums), batches)}

    def flops_per_sample(self) -> float:
        from brainjax.models.brainlm import _transformer_flops
        cfg, tokens = self.model_cfg, int(self.tokens_per_sample())
        forward = (4 * tokens * cfg.patch * cfg.width
                   + _transformer_flops(tokens, cfg.width, cfg.mlp, cfg.depth)
                   + _transformer_flops(tokens, cfg.dec_width, cfg.dec_mlp, cfg.dec_depth))
        return 3.0 * forward

    def finish(self, model, batch, rng, workdir: str, write: bool = True) -> dict[str, Any]:
        """True vs reconstructed series of a few parcels of the first validation window (every token coded)."""
        out = nnx.jit(lambda m, b: m(b))(model, batch)
        pred, target, real = (_host(x) for x in (out["pred"], out["target"], out["real"]))
        path = workdir_path(workdir) / FIGURE_NAME
        if write:
            save_reconstruction_figure(path, pred[0], target[0], real[0], real[0].any(-1), what="coded")
        return {"figure": str(path)}
