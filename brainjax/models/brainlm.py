"""BrainLM masked autoencoder (Ortega Caro et al., ICLR 2024) in Flax NNX.

A token is one parcel x one time patch of ``cfg.patch`` TRs. Its embedding is a linear map of the patch
values plus a spatial embedding of the parcel's MNI coordinates plus a temporal embedding of the patch.
A pre-LN transformer encoder sees only the visible tokens (and a CLS token); a lighter decoder sees every
token (mask token at masked positions, positions re-added) and a linear head predicts the patch values.
The loss is the MSE over masked tokens of real (non-padded) parcels.

Options beyond BrainLM (``experiments/quality.py`` logs what each is worth): a CrossMAE decoder, decoder
queries that embed their parcel's visible neighbouring patches, and two linear paths the decoder's output
is added to — a learnt factor-analysis prior (:mod:`brainjax.nn.priors`: the conditional mean of every token
given the visible parcels of its time patch; where a patch has nothing visible, as in forecasting, a learnt
map of the factor scores at the edges of its neighbouring patches) and a linear map of the visible
neighbouring patches.

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
from brainjax.nn.layers import (
    DECODER_AXES,
    DTYPES,
    ENCODER_AXES,
    AxialDecoder,
    CrossDecoder,
    FactorisedDecoder,
    Transformer,
    linear,
    logical,
)
from brainjax.nn.masking import Masking, no_masking, sample_masking, visible_count
from brainjax.nn.priors import factor_scores

DYNAMICS_EDGE = 2  # TRs of factor scores at each edge of the neighbouring patches that the latent dynamics read

DECODERS = ("full", "cross", "factorised", "axial")


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


def linear_path_widths(cfg: ModelConfig) -> tuple[int, int]:
    """Input widths of the neighbour-context map (:meth:`BrainLM._neighbour_features`: previous and next patch,
    their seen flags, the parcel trend) and of the linear skip (:meth:`BrainLM._skip_features`)."""
    n_context = 2 * cfg.patch + 2 + (4 if cfg.parcel_trend else 0)
    return n_context, (n_context + 2 * cfg.patch + 1) * (2 if cfg.factor_dynamics else 1)


def patch_decoder(cfg: ModelConfig, common: dict, kind: str = "full") -> tuple[nnx.Module, ...]:
    """The decoder side shared by the MAE and the tokenizer: spatial and temporal position embeddings, the
    transformer (``kind`` full: self-attention; cross: :class:`CrossDecoder`; factorised:
    :class:`FactorisedDecoder`; axial: :class:`AxialDecoder`) and the linear head to
    ``cfg.patch`` values. ``common`` holds the Transformer keywords (dropout_rate, attn_impl, chunk, remat,
    dtype, rngs)."""
    if kind not in DECODERS:
        raise ValueError(f"model.decoder must be one of {DECODERS}, got {kind!r}")
    dtype, rngs = common["dtype"], common["rngs"]
    stack = {"full": Transformer, "cross": CrossDecoder, "factorised": FactorisedDecoder, "axial": AxialDecoder}[kind]
    return (SpatialEmbedding(cfg.fourier_features, cfg.dec_width, "dec_embed", dtype=dtype, rngs=rngs),
            TemporalEmbedding(cfg.time_embedding, cfg.dec_width, cfg.patch, cfg.max_patches, "dec_embed",
                              rngs=rngs),
            stack(cfg.dec_depth, cfg.dec_width, cfg.dec_heads, cfg.dec_mlp, DECODER_AXES, **common),
            linear(cfg.dec_width, cfg.patch, ("dec_embed", "patch"), dtype=dtype, rngs=rngs))


class BrainLM(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {cfg.dtype!r}")
        self.cfg = cfg
        dtype = self.dtype = DTYPES[cfg.dtype]
        common = dict(dropout_rate=cfg.dropout, attn_impl=cfg.attention, chunk=cfg.attention_chunk,
                      remat=cfg.remat_mode, dtype=dtype, rngs=rngs)
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
        self.dec_spatial, self.dec_temporal, self.decoder, self.head = patch_decoder(cfg, common, cfg.decoder)
        self.neighbours = nnx.data(None)
        n_context, n_skip = linear_path_widths(cfg)
        if cfg.neighbour_context:  # [previous patch, seen?, next patch, seen?, (trend)] -> decoder width
            self.neighbours = linear(n_context, cfg.dec_width, (None, "dec_embed"), dtype=dtype, rngs=rngs)
        if (cfg.factor_prior or cfg.linear_skip) and cfg.norm_targets:
            raise ValueError("model.factor_prior / model.linear_skip predict raw values: not with model.norm_targets")
        if cfg.factor_dynamics and not cfg.factor_prior:
            raise ValueError("model.factor_dynamics extends the factor prior: set model.factor_prior to a rank")
        self.skip = nnx.data(None)
        if cfg.linear_skip:  # the neighbour features gated by which neighbours are seen -> a patch of values
            self.skip = linear(n_skip, cfg.patch, (None, "patch"), dtype=jnp.float32, rngs=rngs,
                               init=nnx.initializers.zeros_init())
        self.factor_loadings = self.factor_noise = self.prior_context = nnx.data(None)
        if cfg.factor_prior:  # loadings and noise variance of each parcel from its decoder parcel embedding
            self.factor_loadings = linear(cfg.dec_width, cfg.factor_prior, ("dec_embed", None), dtype=jnp.float32,
                                          rngs=rngs)
            self.factor_noise = linear(cfg.dec_width, 1, ("dec_embed", None), dtype=jnp.float32, rngs=rngs)
            self.prior_context = linear(cfg.patch, cfg.dec_width, ("patch", "dec_embed"), dtype=dtype, rngs=rngs)
        self.dynamics = nnx.data(None)
        if cfg.factor_dynamics:  # edge factor scores of the previous and next patch -> every TR's factor scores
            rank = cfg.factor_prior
            self.dynamics = linear(2 * DYNAMICS_EDGE * rank, cfg.patch * rank, (None, None), dtype=jnp.float32,
                                   rngs=rngs, init=nnx.initializers.zeros_init())
        self.parcel_table = self.dec_parcel_table = nnx.data(None)
        if cfg.parcel_identity:
            self.parcel_table = nnx.Param(logical(token_init, (None, "embed"))(
                rngs.params(), (cfg.max_parcels, cfg.width)))
            self.dec_parcel_table = nnx.Param(logical(token_init, (None, "dec_embed"))(
                rngs.params(), (cfg.max_parcels, cfg.dec_width)))
        if cfg.contrastive_weight > 0:  # SimCLR's projection head: the loss acts on z, probes read the CLS
            self.cls_proj1 = linear(cfg.width, cfg.width, ("embed", None), dtype=dtype, rngs=rngs)
            self.cls_proj2 = linear(cfg.width, cfg.contrastive_dim, (None, None), dtype=dtype, rngs=rngs)

    def project_cls(self, cls: jax.Array) -> jax.Array:
        """CLS [B, width] -> projection [B, contrastive_dim] float32 (only with contrastive_weight > 0)."""
        return self.cls_proj2(jax.nn.gelu(self.cls_proj1(cls.astype(self.dtype)))).astype(jnp.float32)

    @staticmethod
    def _parcel_embedding(spatial: SpatialEmbedding, coords, table: nnx.Param | None = None) -> jax.Array:
        """[B, P, width] float32: the coordinate embedding (+ the parcel-slot ``table``)."""
        space = spatial(coords).astype(jnp.float32)
        if table is not None:
            n_parcels = coords.shape[1]
            if n_parcels > table.shape[0]:
                raise ValueError(f"{n_parcels} parcels but model.max_parcels={table.shape[0]}")
            space = space + table[...][:n_parcels][None]
        return space

    def _positions(self, spatial: SpatialEmbedding, temporal: TemporalEmbedding, coords, tr, n_patches,
                   table: nnx.Param | None = None):
        """[B, P, N, width] spatial + temporal embedding in the compute dtype (+ the parcel-slot ``table``)."""
        space = self._parcel_embedding(spatial, coords, table)[:, :, None, :]
        time = temporal(n_patches, tr)[:, None, :, :]
        return (space + time).astype(self.dtype)

    def factor_model(self, coords: jax.Array, parcel_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The learnt factor prior's loadings float32 [B, P, r] (zero on padded parcels) and noise variances
        float32 [B, P] (only with ``model.factor_prior``); coords [B, P, 3] as in a batch."""
        parcels = self._parcel_embedding(self.dec_spatial, coords, self.dec_parcel_table)
        loadings = jnp.where(parcel_mask[:, :, None], self.factor_loadings(parcels), 0.0)
        noise = jax.nn.softplus(self.factor_noise(parcels)[..., 0]) + 1e-2  # floor: no parcel is noise-free
        return loadings, noise

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
        tokens = tokens + self._positions(self.spatial, self.temporal, coords, tr, n_patches,
                                          self.parcel_table)
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
        _, _, coords, tr = _sanitize(batch)
        positions = self._positions(self.dec_spatial, self.dec_temporal, coords, tr, n_patches,
                                    self.dec_parcel_table)
        base = 0.0  # the linear part of the prediction, if any
        seen = parcel_mask[:, :, None] & ~masking.masked.reshape(batch_size, n_parcels, n_patches)
        empty = ~seen.any(1)  # [B, N]: time patches with nothing seen (forecast / time-block targets)
        if self.neighbours is not None or self.skip is not None:
            neighbours = self._neighbour_features(patches, seen)
            if self.neighbours is not None:
                positions = positions + self.neighbours(neighbours.astype(self.dtype))
            if self.skip is not None:
                base = base + self.skip(self._skip_features(neighbours, empty))
        if self.factor_loadings is not None:
            loadings, noise = self.factor_model(coords, parcel_mask)
            scores = factor_scores(loadings, noise, patches, seen)  # [B, N, r, patch]
            prior = jnp.einsum("bpr,bnrt->bpnt", loadings, scores)
            if self.dynamics is not None:
                prior = prior + self._latent_dynamics(loadings, scores, empty)
            positions = positions + self.prior_context(prior.astype(self.dtype))
            base = base + prior
        positions = positions.reshape(batch_size, n_parcels * n_patches, -1)
        if self.cfg.decoder == "cross":
            decoded = self._cross_decode(projected, positions, masking, mask_token, keys[1])
        elif self.cfg.decoder == "factorised":
            decoded = self._factorised_decode(projected, positions, masking, mask_token, n_parcels, keys[1])
        elif self.cfg.decoder == "axial":
            decoded = self._axial_decode(projected, positions, masking, mask_token, parcel_mask, keys[1])
        else:
            decoded = self._full_decode(projected, positions, masking, mask_token, parcel_mask, keys[1])
        pred = self.head(decoded).astype(jnp.float32).reshape(batch_size, n_parcels, n_patches, patch) + base

        target = patches
        if self.cfg.norm_targets:
            mean = target.mean(-1, keepdims=True)
            target = (target - mean) / jnp.sqrt(target.var(-1, keepdims=True) + 1e-6)
        return {"pred": pred, "target": target,
                "masked": masking.masked.reshape(batch_size, n_parcels, n_patches),
                "cls": hidden[:, 0].astype(jnp.float32)}

    def _neighbour_features(self, patches: jax.Array, seen: jax.Array) -> jax.Array:
        """patches [B, P, N, patch], seen bool [B, P, N] (visible tokens of real parcels) ->
        [B, P, N, F] float32: each token's previous patch of the same parcel, its seen flag, the next patch
        and its flag (F = 2 * patch + 2), and with ``model.parcel_trend`` 4 more: the parcel's level and slope
        over its seen patches (:func:`_parcel_trend`). Hidden patches contribute zeros and a 0 flag, so nothing
        masked reaches the decoder this way.
        """
        n_patches = patches.shape[2]
        seen = seen.astype(jnp.float32)[..., None]  # [B, P, N, 1]
        values = jnp.where(seen > 0, patches, 0.0)

        def shift(x, by):  # x[:, :, n - by] at position n (zeros where that patch does not exist)
            pad = [(0, 0), (0, 0), (max(by, 0), max(-by, 0)), (0, 0)]
            padded = jnp.pad(x, pad)
            return padded[:, :, :n_patches] if by > 0 else padded[:, :, -n_patches:]

        feats = [shift(values, 1), shift(seen, 1), shift(values, -1), shift(seen, -1)]
        if self.cfg.parcel_trend:
            feats.append(_parcel_trend(values.mean(-1, keepdims=True), seen))
        return jnp.concatenate(feats, -1)

    def _skip_features(self, neighbours: jax.Array, empty: jax.Array) -> jax.Array:
        """What the linear skip reads [B, P, N, F']: the gated neighbours (:func:`_gated_neighbours`), and with
        ``model.factor_dynamics`` those again split by whether the token's time patch has anything seen (with
        same-time parcels the factor prior carries most of the signal and the skip learns a residual; without,
        the skip is the parcel's own autoregression, a different map)."""
        gated = _gated_neighbours(neighbours, self.cfg.patch)
        if not self.cfg.factor_dynamics:
            return gated
        empty = empty[:, None, :, None]  # [B, 1, N, 1]: nothing seen in the token's time patch
        return jnp.concatenate([jnp.where(empty, 0.0, gated), jnp.where(empty, gated, 0.0)], -1)

    def _latent_dynamics(self, loadings: jax.Array, scores: jax.Array, empty: jax.Array) -> jax.Array:
        """The factor prior of tokens whose time patch has nothing seen: L times a learnt linear map of the
        factor scores at the last ``DYNAMICS_EDGE`` TRs of the previous patch and the first of the next one
        (zero where that patch has nothing seen or does not exist), one map per TR of the patch — forward and
        backward latent dynamics, shared by every parcel through its loadings.

        loadings [B, P, r]; scores [B, N, r, patch] (:func:`~brainjax.nn.priors.factor_scores`); empty bool
        [B, N] (patches with nothing seen). Returns float32 [B, P, N, patch], zero at patches with anything seen.
        """
        batch_size, n_patches, rank, patch = scores.shape
        pad = jnp.zeros_like(scores[:, :1, :, :DYNAMICS_EDGE])
        before = jnp.concatenate([pad, scores[:, :-1, :, -DYNAMICS_EDGE:]], 1)  # previous patch's last TRs at n
        after = jnp.concatenate([scores[:, 1:, :, :DYNAMICS_EDGE], pad], 1)  # next patch's first TRs at n
        edges = jnp.concatenate([before, after], -1).reshape(batch_size, n_patches, -1)
        latent = self.dynamics(edges).reshape(batch_size, n_patches, patch, rank)
        latent = jnp.where(empty[:, :, None, None], latent, 0.0)
        return jnp.einsum("bpr,bntr->bpnt", loadings, latent)

    def _token_grid(self, projected, positions, masking: Masking, mask_token):
        """Every token for the decoder [B, L, dw]: the encoder output where visible, the mask token where
        hidden, plus its position."""
        batch_size, n_tokens, width = positions.shape
        visible = jnp.where(masking.visible_valid[:, :, None], projected[:, 1:], mask_token)
        rows = jnp.arange(batch_size)[:, None]
        tokens = jnp.broadcast_to(mask_token, (batch_size, n_tokens, width))
        return tokens.at[rows, masking.visible_idx].set(visible.astype(self.dtype)) + positions

    def _visible_memory(self, projected, positions, masking: Masking):
        """What cross-attention reads: CLS + the visible tokens with their positions [B, 1 + V, dw], and its
        key mask bool [B, 1 + V]."""
        seen = jnp.take_along_axis(positions, masking.visible_idx[:, :, None], axis=1)
        memory = jnp.concatenate([projected[:, :1], projected[:, 1:] + seen], axis=1)
        ones = jnp.ones((positions.shape[0], 1), bool)
        return memory, jnp.concatenate([ones, masking.visible_valid], axis=1)

    def _full_decode(self, projected, positions, masking: Masking, mask_token, parcel_mask, dropout_key):
        """BrainLM's decoder: self-attention over CLS + every token (mask token where hidden) -> [B, L, dw]."""
        tokens = self._token_grid(projected, positions, masking, mask_token)
        real = jnp.repeat(parcel_mask, tokens.shape[1] // parcel_mask.shape[1], axis=1)
        key_mask = jnp.concatenate([jnp.ones((tokens.shape[0], 1), bool), real], axis=1)
        return self.decoder(jnp.concatenate([projected[:, :1], tokens], axis=1), key_mask, dropout_key)[:, 1:]

    def _cross_decode(self, projected, positions, masking: Masking, mask_token, dropout_key):
        """CrossMAE decoder: a query per token (mask token + position) attends to CLS + visible tokens."""
        memory, memory_mask = self._visible_memory(projected, positions, masking)
        return self.decoder(mask_token + positions, memory, memory_mask, dropout_key)

    def _factorised_decode(self, projected, positions, masking: Masking, mask_token, n_parcels, dropout_key):
        """Every token (encoder output where visible, mask token where hidden) attends over time within its
        parcel and across to CLS + the visible tokens, layer by layer -> [B, L, dw]."""
        batch_size, n_tokens, width = positions.shape
        tokens = self._token_grid(projected, positions, masking, mask_token)
        memory, memory_mask = self._visible_memory(projected, positions, masking)
        grid = tokens.reshape(batch_size, n_parcels, n_tokens // n_parcels, width)
        return self.decoder(grid, memory, memory_mask, dropout_key).reshape(batch_size, n_tokens, width)

    def _axial_decode(self, projected, positions, masking: Masking, mask_token, parcel_mask, dropout_key):
        """Every token (encoder output where visible, mask token where hidden) attends across the parcels of its
        time patch (with CLS) and over the time patches of its parcel, layer by layer -> [B, L, dw]."""
        batch_size, n_tokens, width = positions.shape
        n_parcels = parcel_mask.shape[1]
        tokens = self._token_grid(projected, positions, masking, mask_token)
        grid = tokens.reshape(batch_size, n_parcels, n_tokens // n_parcels, width)
        return self.decoder(grid, projected[:, 0], parcel_mask, dropout_key).reshape(batch_size, n_tokens, width)

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


def _gated_neighbours(feats: jax.Array, patch: int) -> jax.Array:
    """[..., F] neighbour features -> [..., F + 2 * patch + 1]: the previous and next patch split by which
    of the two are seen (previous only, next only, both) with their flags, then any trend features, so one
    linear map is three: extrapolation forwards, backwards, and interpolation between the two."""
    prev, prev_seen = feats[..., :patch], feats[..., patch:patch + 1]
    nxt, next_seen = feats[..., patch + 1:2 * patch + 1], feats[..., 2 * patch + 1:2 * patch + 2]
    both, prev_only, next_only = prev_seen * next_seen, prev_seen * (1 - next_seen), next_seen * (1 - prev_seen)
    return jnp.concatenate([prev * prev_only, nxt * next_only, prev * both, nxt * both, prev_only, next_only, both,
                            feats[..., 2 * patch + 2:]], -1)


def _parcel_trend(patch_means: jax.Array, seen: jax.Array) -> jax.Array:
    """[B, P, N, 4]: a least-squares line through each parcel's seen patch means over the window (slow drift
    and 1/f power that no single neighbouring patch shows): level at the token, slope, slope x the token's
    offset from the seen patches' centre, and the fraction of patches seen. A parcel with one seen patch gets
    its value as the level and slope 0; none seen, zeros.

    patch_means: [B, P, N, 1] (zero where hidden); seen: [B, P, N, 1] 0/1.
    """
    n_patches = seen.shape[2]
    time = (jnp.arange(n_patches, dtype=jnp.float32) / max(n_patches - 1, 1))[None, None, :, None]  # 0..1
    count = seen.sum(2, keepdims=True)
    centre = (seen * time).sum(2, keepdims=True) / jnp.maximum(count, 1.0)
    mean = (seen * patch_means).sum(2, keepdims=True) / jnp.maximum(count, 1.0)
    offset = time - centre
    spread = (seen * offset ** 2).sum(2, keepdims=True)
    slope = jnp.where(spread > 1e-6, (seen * offset * patch_means).sum(2, keepdims=True) / jnp.maximum(spread, 1e-6),
                      0.0)
    shape = patch_means.shape
    return jnp.concatenate([jnp.broadcast_to(mean, shape) + slope * offset, jnp.broadcast_to(slope, shape),
                            slope * offset, jnp.broadcast_to(count / n_patches, shape)], -1)


def info_nce(z1: jax.Array, z2: jax.Array, valid: jax.Array, temperature: float) -> jax.Array:
    """Symmetric InfoNCE (SimCLR's NT-Xent between two views, in-batch negatives) over ``valid`` rows.

    z1, z2: [B, D] projections of two views of the same B windows; valid: bool [B]. Row i's positive is
    z2[i]; its negatives are z2[j] (j != i) of valid rows, and symmetrically. Returns the mean over valid rows
    of the two cross-entropies (0 when fewer than two rows are valid: nothing to contrast).
    """
    def unit(z):
        return z / jnp.sqrt(jnp.sum(z * z, -1, keepdims=True) + 1e-12)

    logits = unit(z1) @ unit(z2).T / temperature
    logits = jnp.where(valid[None, :], logits, -1e9)
    diag = jnp.diagonal(logits)
    loss_12 = jax.nn.logsumexp(logits, axis=1) - diag
    loss_21 = jax.nn.logsumexp(jnp.where(valid[:, None], logits, -1e9), axis=0) - diag
    count = valid.sum()
    total = jnp.sum(jnp.where(valid, loss_12 + loss_21, 0.0)) / 2
    return jnp.where(count >= 2, total / jnp.maximum(count, 1), 0.0)


def mae_loss(model: BrainLM, batch: dict, rng: jax.Array, mask_cfg: MaskConfig, *,
             deterministic: bool = False) -> tuple[jax.Array, dict]:
    """Masked MSE of one batch (+ ``contrastive_weight`` x InfoNCE) and metric SUMS over masked values.

    Returns (loss, {"loss", "sse", "n", "sum_y", "sum_y2"} and, with the scan-level objective, "contrast"
    (the batch's InfoNCE)); ``n`` counts values (tokens x patch), so sums add up exactly across
    micro-batches, devices and evaluation batches (see :func:`pooled_r2`).
    """
    mask_rng, dropout_rng, view_rng = jax.random.split(rng, 3)
    n_patches = batch["signal"].shape[-1] // model.cfg.patch
    parcel_mask = jnp.asarray(batch["parcel_mask"]).astype(bool)
    masking = sample_masking(mask_rng, mask_cfg, parcel_mask, n_patches)
    out = model(batch, masking, deterministic=deterministic, dropout_rng=dropout_rng)
    weight = out["masked"][..., None].astype(jnp.float32)
    target = out["target"].astype(jnp.float32)
    sse = jnp.sum(weight * (out["pred"] - target) ** 2)
    n = jnp.sum(weight) * out["pred"].shape[-1]
    loss = sse / jnp.maximum(n, 1.0)
    sums = {"loss": loss, "sse": sse, "n": n, "sum_y": jnp.sum(weight * target),
            "sum_y2": jnp.sum(weight * target ** 2)}
    if model.cfg.contrastive_weight > 0:
        # A second, independent masking of the same windows: what both CLS share is the window's content
        # beyond the visible tokens (its connectivity, its subject), not the tokens themselves.
        k_mask, k_drop = jax.random.split(view_rng)
        other = sample_masking(k_mask, mask_cfg, parcel_mask, n_patches)
        hidden, _, _ = model._encode(batch, other, None if deterministic else k_drop)
        contrast = info_nce(model.project_cls(out["cls"]), model.project_cls(hidden[:, 0]), parcel_mask.any(-1),
                            model.cfg.contrastive_temperature)
        loss = loss + model.cfg.contrastive_weight * contrast
        sums.update(loss=loss, contrast=contrast)
    return loss, sums


def pooled_r2(sums: dict) -> float:
    """R² pooled over all masked values: ``1 - sse / (sum_y2 - sum_y**2 / n)`` (NaN when undefined)."""
    sse, n, sum_y, sum_y2 = (float(np.asarray(sums[k], np.float64)) for k in ("sse", "n", "sum_y", "sum_y2"))
    total = sum_y2 - sum_y ** 2 / n if n > 0 else 0.0
    return 1.0 - sse / total if total > 0 else float("nan")


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves); works on abstract (eval_shape) models too."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def transformer_flops(tokens: int, width: int, mlp: int, depth: int) -> float:
    # Matmuls only (2 FLOPs per multiply-add): qkv + output projections, scores + weighted sum, MLP.
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    return float(depth * per_layer)


def model_flops_per_sample(cfg: ModelConfig, n_parcels: int, window: int, mask_cfg: MaskConfig) -> float:
    """Training FLOPs (forward + backward = 3 x forward matmul FLOPs) for one window of ``n_parcels``."""
    n_patches = window // cfg.patch
    tokens = n_parcels * n_patches
    visible = visible_count(mask_cfg, n_parcels, n_patches)
    spatial = lambda w: 2 * n_parcels * (6 * cfg.fourier_features * w + w * w)  # noqa: E731
    encoder = transformer_flops(visible + 1, cfg.width, cfg.mlp, cfg.depth)
    if cfg.decoder == "cross":  # per layer: q and output projections of every token, k/v of the memory
        per_layer = (2 * tokens * (2 * cfg.dec_width ** 2 + 2 * cfg.dec_width * cfg.dec_mlp)
                     + 4 * (visible + 1) * cfg.dec_width ** 2 + 4 * tokens * (visible + 1) * cfg.dec_width)
        decoder = float(cfg.dec_depth * per_layer)
    elif cfg.decoder == "factorised":  # cross layers as above + self-attention over N patches per parcel
        per_layer = (2 * tokens * (2 * cfg.dec_width ** 2 + 2 * cfg.dec_width * cfg.dec_mlp)
                     + 4 * (visible + 1) * cfg.dec_width ** 2 + 4 * tokens * (visible + 1) * cfg.dec_width)
        time = n_parcels * transformer_flops(n_patches, cfg.dec_width, cfg.dec_mlp, 1)
        decoder = float(cfg.dec_depth * (per_layer + time))
    elif cfg.decoder == "axial":  # per layer: CLS + P parcels per time patch, then N patches per parcel
        space = n_patches * transformer_flops(n_parcels + 1, cfg.dec_width, cfg.dec_mlp, 1)
        time = n_parcels * transformer_flops(n_patches, cfg.dec_width, cfg.dec_mlp, 1)
        decoder = float(cfg.dec_depth * (space + time))
    else:
        decoder = transformer_flops(tokens + 1, cfg.dec_width, cfg.dec_mlp, cfg.dec_depth)
    if cfg.factor_prior:  # loadings, the r x r systems' Gram matrices and right-hand sides, L z, the query embedding
        rank = cfg.factor_prior
        decoder += (2 * n_parcels * cfg.dec_width * rank + 2 * tokens * rank * rank + 4 * tokens * rank * cfg.patch
                    + 2 * tokens * cfg.patch * cfg.dec_width)
    if cfg.neighbour_context:  # previous / next patch and their flags -> the decoder query
        decoder += 2 * tokens * (2 * cfg.patch + 2) * cfg.dec_width
    if cfg.linear_skip:  # previous / next / both patches and their flags (x 2: empty patch or not) -> a patch
        decoder += 2 * tokens * (4 * cfg.patch + 3) * cfg.patch * (2 if cfg.factor_dynamics else 1)
    if cfg.factor_dynamics:  # edge scores -> every TR's factor scores per patch, then L times them
        rank = cfg.factor_prior
        decoder += 2 * n_patches * (2 * DYNAMICS_EDGE * rank) * (cfg.patch * rank) + 2 * tokens * rank * cfg.patch
    views = 2 if cfg.contrastive_weight > 0 else 1  # the scan-level objective encodes a second masking
    forward = (views * (2 * tokens * cfg.patch * cfg.width + encoder) + spatial(cfg.width) + spatial(cfg.dec_width)
               + 2 * (visible + 1) * cfg.width * cfg.dec_width + decoder + 2 * tokens * cfg.dec_width * cfg.patch)
    return 3.0 * forward
