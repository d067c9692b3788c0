"""The fMRI-LM stage-1 neural tokenizer: a ViT over parcel x time-patch tokens, a quantizer, a decoder.

A token is one parcel x one patch of ``model.patch`` TRs (a patch as long as the window gives one token per
parcel, as in fMRI-LM). The encoder (pre-LN transformer, every token visible) maps each token to a feature;
a linear map takes it to the code space, where :class:`~brainjax.nn.quantizers.VectorQuantizer` (or FSQ)
picks a discrete code; the decoder (positions re-added) reconstructs the normalised signal from the codes.
The spatial embedding is the MAE's (MNI coordinates through Fourier features), so one tokenizer serves any
atlas. Language alignment (``quantizer.domain_weight``: a domain-adversarial loss against the LM's input
embeddings; ``quantizer.text_weight``: a SigLIP loss against descriptor text; see
:mod:`brainjax.nn.alignment`) is optional; off, the model has exactly the parameters it had without it.

Loss = masked-free MSE over real tokens + the quantizer's commitment loss (+ ``spectrum_weight`` x MSE of
the patches' amplitude spectra, NeuroLM's option). Batches as for BrainLM: signal [B, P, T], parcel_mask
[B, P], coords [B, P, 3], tr [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.config import ModelConfig, QuantizerConfig
from brainjax.models.brainlm import _sanitize, patch_decoder, patchify
from brainjax.nn.alignment import Alignment
from brainjax.nn.embeddings import SpatialEmbedding, TemporalEmbedding
from brainjax.nn.layers import DTYPES, ENCODER_AXES, Transformer, linear
from brainjax.nn.quantizers import FSQ, VectorQuantizer

QUANTIZERS = ("vq", "fsq")


class NeuralTokenizer(nnx.Module):
    def __init__(self, cfg: ModelConfig, qcfg: QuantizerConfig, *, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}")
        if qcfg.kind not in QUANTIZERS:
            raise ValueError(f"quantizer.kind must be one of {QUANTIZERS}, got {qcfg.kind!r}")
        self.cfg, self.qcfg = cfg, qcfg
        dtype = self.dtype = DTYPES[cfg.dtype]
        common = dict(dropout_rate=cfg.dropout, attn_impl=cfg.attention, chunk=cfg.attention_chunk,
                      remat=cfg.remat_mode, dtype=dtype, rngs=rngs)
        self.patch_embed = linear(cfg.patch, cfg.width, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.spatial = SpatialEmbedding(cfg.fourier_features, cfg.width, "embed", dtype=dtype, rngs=rngs)
        self.temporal = TemporalEmbedding(cfg.time_embedding, cfg.width, cfg.patch, cfg.max_patches, "embed",
                                          rngs=rngs)
        self.encoder = Transformer(cfg.depth, cfg.width, cfg.heads, cfg.mlp, ENCODER_AXES, **common)
        if qcfg.kind == "vq":
            code_dim = qcfg.code_dim
            self.quantizer = VectorQuantizer(qcfg.codebook_size, code_dim, decay=qcfg.decay,
                                             commitment=qcfg.commitment, kmeans_iters=qcfg.kmeans_iters,
                                             dead_threshold=qcfg.dead_threshold, rngs=rngs)
        else:
            code_dim = len(qcfg.fsq_levels)
            self.quantizer = FSQ(tuple(qcfg.fsq_levels))
        self.to_code = linear(cfg.width, code_dim, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.from_code = linear(code_dim, cfg.dec_width, (None, "dec_embed"), dtype=dtype, rngs=rngs)
        self.dec_spatial, self.dec_temporal, self.decoder, self.head = patch_decoder(cfg, common)
        domain, text = qcfg.domain_weight > 0, qcfg.text_weight > 0
        self.alignment = Alignment(code_dim, qcfg.lm_width, domain=domain, text=text, rngs=rngs) if (
            domain or text) else None

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    def _positions(self, spatial, temporal, coords, tr, n_patches):
        space = spatial(coords).astype(jnp.float32)[:, :, None, :]
        return (space + temporal(n_patches, tr)[:, None, :, :]).astype(self.dtype)

    def encode(self, batch: dict, *, train: bool = False, rng: jax.Array | None = None):
        """Quantizer output for every token: codes int32 [B, P, N], quantized [B, P, N, code_dim], loss, stats;
        plus ``patches`` [B, P, N, patch] and ``real`` bool [B, P, N] (tokens of real parcels)."""
        features, patches, real = self.features(batch)
        out = self.quantizer(features, real, train=train, rng=rng)
        return out, patches, real

    def features(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Continuous encoder features before quantisation float32 [B, P, N, code_dim] (what fMRI-LM feeds the
        language model), the patches [B, P, N, patch] and ``real`` bool [B, P, N]."""
        signal, parcel_mask, coords, tr = _sanitize(batch)
        patches = patchify(signal, self.cfg.patch)
        batch_size, n_parcels, n_patches, _ = patches.shape
        tokens = self.patch_embed(patches.astype(self.dtype))
        tokens = tokens + self._positions(self.spatial, self.temporal, coords, tr, n_patches)
        real = jnp.broadcast_to(parcel_mask[:, :, None], (batch_size, n_parcels, n_patches))
        hidden = self.encoder(tokens.reshape(batch_size, n_parcels * n_patches, -1), real.reshape(batch_size, -1))
        features = self.to_code(hidden.astype(jnp.float32)).reshape(batch_size, n_parcels, n_patches, -1)
        return features, patches, real

    def decode(self, quantized: jax.Array, batch: dict) -> jax.Array:
        """quantized [B, P, N, code_dim] -> reconstructed patches float32 [B, P, N, patch]."""
        _, parcel_mask, coords, tr = _sanitize(batch)
        batch_size, n_parcels, n_patches, _ = quantized.shape
        tokens = self.from_code(quantized.astype(self.dtype))
        tokens = tokens + self._positions(self.dec_spatial, self.dec_temporal, coords, tr, n_patches)
        real = jnp.repeat(parcel_mask, n_patches, axis=1)
        decoded = self.decoder(tokens.reshape(batch_size, n_parcels * n_patches, -1), real)
        return self.head(decoded).astype(jnp.float32).reshape(batch_size, n_parcels, n_patches, -1)

    def __call__(self, batch: dict, *, train: bool = False, rng: jax.Array | None = None) -> dict:
        """Tokenize and reconstruct: pred / target [B, P, N, patch], real [B, P, N], codes, quantizer loss/stats."""
        features, patches, real = self.features(batch)
        out = self.quantizer(features, real, train=train, rng=rng)
        return {"pred": self.decode(out.quantized, batch), "target": patches, "real": real, "features": features,
                "codes": out.codes, "quantizer_loss": out.loss, "stats": out.stats}


def tokenizer_loss(model: NeuralTokenizer, batch: dict, rng: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    """Reconstruction MSE over real tokens + quantizer loss (+ spectrum term, + weighted alignment terms, which
    read ``word_embeddings`` / ``text_embedding`` / ``scan`` from the batch); metric SUMS for the trainer."""
    out = model(batch, train=train, rng=rng)
    weight = out["real"][..., None].astype(jnp.float32)
    target, pred = out["target"], out["pred"]
    sse = jnp.sum(weight * (pred - target) ** 2)
    n = jnp.sum(weight) * target.shape[-1]
    mse = sse / jnp.maximum(n, 1.0)
    loss = mse + out["quantizer_loss"]
    if model.qcfg.spectrum_weight > 0:
        spectra = [jnp.abs(jnp.fft.rfft(x, axis=-1)) for x in (pred, target)]
        spec_err = jnp.sum(weight * (spectra[0] - spectra[1]) ** 2) / jnp.maximum(
            jnp.sum(weight) * spectra[0].shape[-1], 1.0)
        loss = loss + model.qcfg.spectrum_weight * spec_err
    stats = out["stats"]
    sums = {"loss": loss, "sse": sse, "n": n, "sum_y": jnp.sum(weight * target),
            "sum_y2": jnp.sum(weight * target ** 2), "batches": jnp.ones(()),
            "quantizer_loss": out["quantizer_loss"], "perplexity": stats["perplexity"], "usage": stats["usage"],
            "dead": stats.get("dead", jnp.zeros(())).astype(jnp.float32)}
    qcfg = model.qcfg
    if qcfg.domain_weight > 0:
        term, extra = model.alignment.domain(out["features"], out["real"], batch["word_embeddings"])
        loss, sums = loss + qcfg.domain_weight * term, {**sums, **extra}
    if qcfg.text_weight > 0:
        term, extra = model.alignment.text(out["features"], out["real"], batch["text_embedding"], batch["scan"])
        loss, sums = loss + qcfg.text_weight * term, {**sums, **extra}
    sums["loss"] = loss
    return loss, sums
