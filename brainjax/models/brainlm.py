"""BrainLM masked autoencoder (Ortega Caro et al., ICLR 2024) in Flax NNX.

A token is one parcel x one time patch of ``cfg.patch`` TRs. Its embedding is a linear map of the patch
values plus a spatial embedding of the parcel's MNI coordinates plus a temporal embedding of the patch.
A pre-LN transformer encoder sees only the visible tokens (and a CLS token); a lighter decoder sees every
token (mask token at masked positions, positions re-added) and a linear head predicts the patch values.
The loss is the MSE over masked tokens of real (non-padded) parcels.

Batch (all models in brainjax read the same keys): ``signal`` float32 [B, P, T] normalised, ``parcel_mask``
bool [B, P] (False = padded parcel), ``coords`` float32 [B, P, 3] MNI mm, ``tr`` float32 [B] seconds.
Padded parcels are zeroed at the input, so whatever they hold (even NaN) cannot reach any output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.config import MaskConfig, ModelConfig
from brainjax.nn.embeddings import SpatialEmbedding, TemporalEmbedding
from brainjax.nn.layers import DECODER_AXES, ENCODER_AXES, Transformer, linear, logical
from brainjax.nn.masking import Masking, no_masking, sample_masking, visible_count

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _sanitize(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """signal [B,P,T], coords [B,P,3] with padded parcels zeroed; parcel_mask bool [B,P]; tr [B]."""
    mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
    signal = jnp.where(mask[:, :, None], batch["signal"], 0.0).astype(jnp.float32)
    coords = jnp.where(mask[:, :, None], batch["coords"], 0.0).astype(jnp.float32)
    return signal, mask, coords, jnp.asarray(batch["tr"], jnp.float32)


def patchify(signal: jax.Array, patch: int) -> jax.Array:
    """[B, P, T] -> [B, P, N, patch] with N = T / patch."""
    batch, parcels, length = signal.shape
    if length % patch:
        raise ValueError(f"window length {length} is not a multiple of model.patch={patch}")
    return signal.reshape(batch, parcels, length // patch, patch)


def patch_decoder(cfg: ModelConfig, common: dict) -> tuple[nnx.Module, ...]:
    """The decoder side shared by the MAE and the tokenizer: spatial and temporal position embeddings, the
    transformer and the linear head to ``cfg.patch`` values. ``common`` holds the Transformer keywords
    (dropout_rate, attn_impl, chunk, remat, dtype, rngs)."""
    dtype, rngs = common["dtype"], common["rngs"]
    return (SpatialEmbedding(cfg.fourier_features, cfg.dec_width, "dec_embed", dtype=dtype, rngs=rngs),
            TemporalEmbedding(cfg.time_embedding, cfg.dec_width, cfg.patch, cfg.max_patches, "dec_embed",
                              rngs=rngs),
            Transformer(cfg.dec_depth, cfg.dec_width, cfg.dec_heads, cfg.dec_mlp, DECODER_AXES, **common),
            linear(cfg.dec_width, cfg.patch, ("dec_embed", "patch"), dtype=dtype, rngs=rngs))


class BrainLM(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}")
        self.cfg = cfg
        dtype = self.dtype = DTYPES[cfg.dtype]
        common = dict(dropout_rate=cfg.dropout, attn_impl=cfg.attention, chunk=cfg.attention_chunk,
                      remat=cfg.remat, dtype=dtype, rngs=rngs)
        token_init = nnx.initializers.normal(0.02)

        self.patch_embed = linear(cfg.patch, cfg.width, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.spatial = SpatialEmbedding(cfg.fourier_features, cfg.width, "embed", dtype=dtype, rngs=rngs)
        self.temporal = TemporalEmbedding(cfg.time_embedding, cfg.width, cfg.patch, cfg.max_patches, "embed",
                                          rngs=rngs)
        self.cls_token = nnx.Param(logical(token_init, ("embed",))(rngs.params(), (cfg.width,)))
        self.encoder = Transformer(cfg.depth, cfg.width, cfg.heads, cfg.mlp, ENCODER_AXES, **common)

        self.dec_proj = linear(cfg.width, cfg.dec_width, ("embed", "dec_embed"), dtype=dtype, rngs=rngs)
        self.mask_token = nnx.Param(
            logical(token_init, ("dec_embed",))(rngs.params(), (cfg.dec_width,)))
        self.dec_spatial, self.dec_temporal, self.decoder, self.head = patch_decoder(cfg, common)

    def _positions(self, spatial: SpatialEmbedding, temporal: TemporalEmbedding, coords, tr, n_patches):
        """[B, P, N, width] spatial + temporal embedding in the compute dtype."""
        space = spatial(coords).astype(jnp.float32)[:, :, None, :]
        time = temporal(n_patches, tr)[:, None, :, :]
        return (space + time).astype(self.dtype)

    def _encode(self, batch: dict, masking: Masking, dropout_key: jax.Array | None):
        """Encoder over CLS + visible tokens: ([B, 1 + V, width], key_mask [B, 1 + V], patches [B,P,N,patch])."""
        tokens, key_mask, patches = self._encoder_inputs(batch, masking)
        return self.encoder(tokens, key_mask, dropout_key), key_mask, patches

    def _encoder_inputs(self, batch: dict, masking: Masking):
        """Embedded CLS + visible tokens [B, 1 + V, width], their key mask [B, 1 + V], patches [B,P,N,patch]."""
        signal, _, coords, tr = _sanitize(batch)
        patches = patchify(signal, self.cfg.patch)
        batch_size, n_parcels, n_patches, _ = patches.shape
        tokens = self.patch_embed(patches.astype(self.dtype))
        tokens = tokens + self._positions(self.spatial, self.temporal, coords, tr, n_patches)
        tokens = tokens.reshape(batch_size, n_parcels * n_patches, -1)
        visible = jnp.take_along_axis(tokens, masking.visible_idx[:, :, None], axis=1)
        visible = jnp.where(masking.visible_valid[:, :, None], visible, 0).astype(self.dtype)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (batch_size, 1, self.cfg.width))
        key_mask = jnp.concatenate([jnp.ones((batch_size, 1), bool), masking.visible_valid], axis=1)
        return jnp.concatenate([cls, visible], axis=1), key_mask, patches

    def __call__(self, batch: dict, masking: Masking | jax.Array | None = None, mask_cfg: MaskConfig | None = None,
                 *, deterministic: bool = True, dropout_rng: jax.Array | None = None) -> dict:
        """Reconstruct every token from the visible ones.

        masking: a :class:`Masking`, or None (every real token visible). With ``mask_cfg`` given, the
        second argument is instead a PRNG key and the masking is sampled here (``model(batch, rng, cfg)``).
        dropout_rng: key for dropout (ignored when ``deterministic``).
        Returns pred float32 [B,P,N,patch], target [B,P,N,patch] (per-patch normalised if
        ``cfg.norm_targets``), masked bool [B,P,N] (the loss set), cls float32 [B,width].
        """
        parcel_mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
        n_patches = batch["signal"].shape[-1] // self.cfg.patch
        if mask_cfg is not None:
            masking = sample_masking(masking, mask_cfg, parcel_mask, n_patches)
        elif masking is None:
            masking = no_masking(parcel_mask, n_patches)
        keys = (None, None) if deterministic or dropout_rng is None else tuple(jax.random.split(dropout_rng))
        hidden, _, patches = self._encode(batch, masking, keys[0])
        batch_size, n_parcels, n_patches, patch = patches.shape

        projected = self.dec_proj(hidden)
        mask_token = self.mask_token[...].astype(self.dtype)
        visible = jnp.where(masking.visible_valid[:, :, None], projected[:, 1:], mask_token)
        rows = jnp.arange(batch_size)[:, None]
        tokens = jnp.broadcast_to(mask_token, (batch_size, n_parcels * n_patches, self.cfg.dec_width))
        tokens = tokens.at[rows, masking.visible_idx].set(visible.astype(self.dtype))
        _, _, coords, tr = _sanitize(batch)
        positions = self._positions(self.dec_spatial, self.dec_temporal, coords, tr, n_patches)
        tokens = tokens + positions.reshape(batch_size, n_parcels * n_patches, -1)
        real = jnp.repeat(parcel_mask, n_patches, axis=1)
        key_mask = jnp.concatenate([jnp.ones((batch_size, 1), bool), real], axis=1)
        decoded = self.decoder(jnp.concatenate([projected[:, :1], tokens], axis=1), key_mask, keys[1])
        pred = self.head(decoded[:, 1:]).astype(jnp.float32).reshape(batch_size, n_parcels, n_patches, patch)

        target = patches
        if self.cfg.norm_targets:
            mean = target.mean(-1, keepdims=True)
            target = (target - mean) / jnp.sqrt(target.var(-1, keepdims=True) + 1e-6)
        return {"pred": pred, "target": target,
                "masked": masking.masked.reshape(batch_size, n_parcels, n_patches),
                "cls": hidden[:, 0].astype(jnp.float32)}

    def embed(self, batch: dict) -> dict:
        """Embeddings without masking: cls [B,width], mean over real tokens [B,width], tokens [B,P,N,width]."""
        parcel_mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
        n_patches = batch["signal"].shape[-1] // self.cfg.patch
        masking = no_masking(parcel_mask, n_patches)
        hidden, key_mask, _ = self._encode(batch, masking, None)
        hidden = hidden.astype(jnp.float32)
        tokens = hidden[:, 1:]
        weights = key_mask[:, 1:, None].astype(jnp.float32)
        mean = (tokens * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        batch_size, n_parcels = parcel_mask.shape
        return {"cls": hidden[:, 0], "mean": mean,
                "tokens": tokens.reshape(batch_size, n_parcels, n_patches, -1)}


    def attention_maps(self, batch: dict) -> dict:
        """Encoder attention without masking, summarised per parcel (for functional-network maps).

        Returns ``parcel`` float32 [B, depth, P, P]: attention from parcel i's tokens to parcel j's tokens,
        averaged over heads and query patches and summed over key patches (a row sums to 1 minus its
        attention to CLS); ``cls`` float32 [B, depth, P]: CLS attention to each parcel summed over patches.
        Padded parcels get zero rows and columns. Dense [L, L] maths: use small batches.
        """
        parcel_mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
        n_patches = batch["signal"].shape[-1] // self.cfg.patch
        tokens, key_mask, _ = self._encoder_inputs(batch, no_masking(parcel_mask, n_patches))
        batch_size, n_parcels = parcel_mask.shape
        parcel, cls = [], []
        for weights in self.encoder.attention_weights(tokens, key_mask):
            weights = weights.mean(1)  # over heads: [B, L, L]
            grid = weights[:, 1:, 1:].reshape(batch_size, n_parcels, n_patches, n_parcels, n_patches)
            parcel.append(grid.sum(-1).mean(2))
            cls.append(weights[:, 0, 1:].reshape(batch_size, n_parcels, n_patches).sum(-1))
        real = parcel_mask[:, None, :, None] & parcel_mask[:, None, None, :]
        return {"parcel": jnp.where(real, jnp.stack(parcel, 1), 0.0),
                "cls": jnp.where(parcel_mask[:, None], jnp.stack(cls, 1), 0.0)}


def mae_loss(model: BrainLM, batch: dict, rng: jax.Array, mask_cfg: MaskConfig, *,
             deterministic: bool = False) -> tuple[jax.Array, dict]:
    """Masked MSE of one batch and metric SUMS over masked values of real parcels.

    Returns (loss, {"loss", "sse", "n", "sum_y", "sum_y2"}); ``n`` counts values (tokens x patch), so
    sums add up exactly across micro-batches, devices and evaluation batches (see :func:`pooled_r2`).
    """
    mask_rng, dropout_rng = jax.random.split(rng)
    n_patches = batch["signal"].shape[-1] // model.cfg.patch
    masking = sample_masking(mask_rng, mask_cfg, jnp.asarray(batch["parcel_mask"]).astype(bool), n_patches)
    out = model(batch, masking, deterministic=deterministic, dropout_rng=dropout_rng)
    weight = out["masked"][..., None].astype(jnp.float32)
    target = out["target"].astype(jnp.float32)
    sse = jnp.sum(weight * (out["pred"] - target) ** 2)
    n = jnp.sum(weight) * out["pred"].shape[-1]
    loss = sse / jnp.maximum(n, 1.0)
    sums = {"loss": loss, "sse": sse, "n": n, "sum_y": jnp.sum(weight * target),
            "sum_y2": jnp.sum(weight * target ** 2)}
    return loss, sums


def pooled_r2(sums: dict) -> float:
    """R² pooled over all masked values: ``1 - sse / (sum_y2 - sum_y**2 / n)`` (NaN when undefined)."""
    sse, n, sum_y, sum_y2 = (float(np.asarray(sums[k], np.float64)) for k in ("sse", "n", "sum_y", "sum_y2"))
    total = sum_y2 - sum_y ** 2 / n if n > 0 else 0.0
    return 1.0 - sse / total if total > 0 else float("nan")


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves); works on abstract (eval_shape) models too."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _transformer_flops(tokens: int, width: int, mlp: int, depth: int) -> float:
    # Matmuls only (2 FLOPs per multiply-add): qkv + output projections, scores + weighted sum, MLP.
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    return float(depth * per_layer)


def model_flops_per_sample(cfg: ModelConfig, n_parcels: int, window: int, mask_cfg: MaskConfig) -> float:
    """Training FLOPs (forward + backward = 3 x forward matmul FLOPs) for one window of ``n_parcels``."""
    n_patches = window // cfg.patch
    tokens = n_parcels * n_patches
    visible = visible_count(mask_cfg, n_parcels, n_patches)
    spatial = lambda w: 2 * n_parcels * (6 * cfg.fourier_features * w + w * w)  # noqa: E731
    forward = (2 * tokens * cfg.patch * cfg.width + spatial(cfg.width) + spatial(cfg.dec_width)
               + _transformer_flops(visible + 1, cfg.width, cfg.mlp, cfg.depth)
               + 2 * (visible + 1) * cfg.width * cfg.dec_width
               + _transformer_flops(tokens + 1, cfg.dec_width, cfg.dec_mlp, cfg.dec_depth)
               + 2 * tokens * cfg.dec_width * cfg.patch)
    return 3.0 * forward
