"""fMRI-LM stage 1 as a training objective: the neural tokenizer reconstructs every real token through its codes.

Metrics: reconstruction MSE and pooled R², and per batch (averaged over the batches summed) the codebook's
perplexity, the fraction of codes used and the number of dead codes; with language alignment on, also the
domain loss and discriminator accuracy and/or the SigLIP loss and text -> window retrieval.
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx

from brainjax.config import ModelConfig, QuantizerConfig
from brainjax.models.brainlm import pooled_r2, transformer_flops
from brainjax.models.tokenizer import NeuralTokenizer, tokenizer_loss
from brainjax.nn.alignment import alignment_keys, summarize_alignment
from brainjax.tasks.base import PatchTask, to_host


class TokenizerTask(PatchTask):
    """Train the tokenizer (``objective = "tokenizer"``); alignment inputs join the batch when their weight > 0."""

    def __init__(self, model: ModelConfig, quantizer: QuantizerConfig, n_parcels: int, window: int):
        super().__init__(model, n_parcels, window)
        self.quantizer_cfg = quantizer
        self.input_keys = PatchTask.input_keys + alignment_keys(quantizer.domain_weight > 0,
                                                               quantizer.text_weight > 0)

    def init_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return NeuralTokenizer(self.model_cfg, self.quantizer_cfg, rngs=rngs)

    def loss(self, model, batch, rng, deterministic):
        return tokenizer_loss(model, batch, rng, train=not deterministic)

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        n, batches = max(float(sums["n"]), 1.0), max(float(sums["batches"]), 1.0)
        return {"mse": float(sums["sse"]) / n, "r2": float(pooled_r2(dict(sums))),
                "perplexity": float(sums["perplexity"]) / batches, "usage": float(sums["usage"]) / batches,
                "dead": float(sums["dead"]) / batches, **summarize_alignment(dict(sums), batches)}

    def flops_per_sample(self) -> float:
        cfg, tokens = self.model_cfg, int(self.tokens_per_sample())
        forward = (4 * tokens * cfg.patch * cfg.width
                   + transformer_flops(tokens, cfg.width, cfg.mlp, cfg.depth)
                   + transformer_flops(tokens, cfg.dec_width, cfg.dec_mlp, cfg.dec_depth))
        return 3.0 * forward

    def reconstruct(self, model, batch, rng) -> dict:
        out = nnx.jit(lambda m, b: m(b))(model, batch)
        real = to_host(out["real"])
        return {"pred": to_host(out["pred"]), "target": to_host(out["target"]), "shown": real,
                "parcel_mask": real.any(-1), "what": "coded"}
