"""fMRI-LM stages 2-3: a decoder language model that reads scans as tokens next to text.

A scan window enters as the stage-1 tokenizer's *continuous* encoder features (one per parcel x time patch,
before quantisation), projected to the LM width by a two-layer MLP, plus a learned parcel embedding. Its VQ
codes are the fMRI targets: a separate head over the codebook predicts every parcel's code of the next time
patch. The tokenizer is frozen (its outputs pass through ``stop_gradient``, so no gradient is computed for it).

One sequence mixes text and fMRI blocks (see :mod:`brainjax.models.sequences` for how the host lays it out). Every
position carries a *group*: all tokens of one time patch of one block share a group, every text token has its
own, groups increase along the sequence. Query i may read key j when ``group[j] <= group[i]``: full attention
within a time patch, causal across patches, text causal and reading every earlier fMRI block. The group is
also the position id, so the parcels of one patch share a position. With ``language.scan_attention = "block"``
an fMRI token reads only its own block (``group[j] >= `` the block's first group, :func:`read_floor`): text still
reads everything before it, but a scan's hidden states no longer depend on what precedes it, and under RoPE its
keys at another offset are the same keys rotated, so evaluation computes each scan's keys and values once.

Two options change how many tokens a window is. ``language.fmri_time = "window"``: one token per parcel for the
whole window (its patches' features averaged, its connectivity row over the window, which a 300-TR scan estimates
far better than a 50-TR patch), so a block is one group; no next-patch code is left to predict. ``language.fmri_pool
= K``: K learned queries read each patch's parcel tokens (:mod:`brainjax.models.resampler`) in place of the P
parcels. The host lays a block out as N' x K' positions either way (:class:`~brainjax.models.sequences.SequenceSpec`
``n_patches`` = :func:`token_steps`, ``pool``).

Batch entries (B samples, L positions, S fMRI blocks of P parcels x T TRs, M loss positions)::

    ids       int32 [B, L]     text token ids (anything at fMRI positions)
    slot      int32 [B, L]     -1 for text; else the fMRI token read there: block * N * P + patch * P + parcel
                               (N token time steps, P tokens per step: parcels, or pooled tokens)
    group     int32 [B, L]     attention group = position id (non-decreasing along valid positions)
    valid     bool  [B, L]     real positions (False: padding and the tokens of padded parcels)
    signal    float [B, S, P, T], parcel_mask bool [B, S, P], coords float [B, S, P, 3], tr float [B, S]
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.config import LanguageConfig, ModelConfig, QuantizerConfig
from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.models.resampler import PatchResampler
from brainjax.models.tokenizer import NeuralTokenizer
from brainjax.nn.layers import linear, logical
from brainjax.nn.lora import add_lora
from brainjax.nn.quantizers import l2_normalize

TRAIN_LM = ("lora", "full", "frozen")
FMRI_FEATURES = ("tokenizer", "tokenizer+fc", "tokenizer+summary", "tokenizer+fc+summary")
SCAN_ATTENTION = ("causal", "block")
FMRI_TIME = ("patch", "window")
FC_REFERENCE = ("none", "cohort")
FC_STD_FLOOR = 1e-3  # the diagonal (always 1) and constant pairs have no spread


class CohortReference(nnx.Variable):
    """Statistics of the training cohort, set once before training (never optimised, saved with the run)."""


def token_steps(fmri_time: str, window: int, patch: int) -> int:
    """Token time steps of a ``window``-TR block: one per time patch, or 1 for ``fmri_time = "window"``."""
    return 1 if fmri_time == "window" else window // patch


def patch_connectivity(signal: jax.Array, real: jax.Array) -> jax.Array:
    """Each parcel's correlation with every parcel within one time patch.

    signal float [R, P, T] (R patches of T TRs), real bool [R, P] -> float32 [R, P, P]; rows and columns of
    padded parcels are 0, a constant parcel correlates 0 with everything (its z-score is 0, not NaN).
    """
    x = signal.astype(jnp.float32)
    x = x - x.mean(-1, keepdims=True)
    x = x / jnp.maximum(jnp.sqrt((x * x).mean(-1, keepdims=True)), 1e-6)
    x = jnp.where(real[..., None], x, 0.0)
    return jnp.einsum("rpt,rqt->rpq", x, x) / x.shape[-1]


class ConnectivitySummary(nnx.Module):
    """K learned bilinear readouts of a window's connectivity, projected to the LM width.

    ``s_k = a_k^T FC b_k`` (FC the correlation matrix over the window, padded parcels 0), then a linear map
    K -> width. With a_k, b_k the indicator vectors of two networks divided by their sizes, s_k is their mean
    coupling: the quantity a network-level probe reads, learnable from few scans (2 K P weights).
    """

    def __init__(self, max_parcels: int, rank: int, width: int, *, rngs: nnx.Rngs):
        if rank < 1:
            raise ValueError(f"language.summary_rank must be >= 1, got {rank}")
        init = nnx.initializers.normal(max_parcels ** -0.5)
        self.left = nnx.Param(init(rngs.params(), (rank, max_parcels), jnp.float32))
        self.right = nnx.Param(init(rngs.params(), (rank, max_parcels), jnp.float32))
        self.out = linear(rank, width, (None, "embed"), dtype=jnp.float32, rngs=rngs)

    def __call__(self, signal: jax.Array, real: jax.Array) -> jax.Array:
        """signal float [R, P, T], real bool [R, P] -> float32 [R, width]."""
        fc = patch_connectivity(signal, real)
        n = fc.shape[-1]
        forms = jnp.einsum("kp,rpq,kq->rk", self.left[...][:, :n], fc, self.right[...][:, :n])
        return self.out(forms)


def _unit_rms(x: jax.Array) -> jax.Array:
    """x [..., W] scaled to unit root-mean-square over W (no parameters; a zero vector stays zero)."""
    return l2_normalize(x) * math.sqrt(x.shape[-1])


def lm_config_from_json(text: str) -> LMConfig:
    """The :class:`LMConfig` stored as the run's ``Lineage.lm_architecture``."""
    if not text:
        raise ValueError("the run's lineage has no lm_architecture: it does not say which language model it uses")
    return LMConfig(**json.loads(text))


def allowed_mask(group: jax.Array, valid: jax.Array, floor: jax.Array | None = None,
                 key_group: jax.Array | None = None) -> jax.Array:
    """Queries' group int [B, T] and floor (:func:`read_floor`, or None), keys' key_group int [B, S] (default: the
    queries' own) and valid bool [B, S] -> bool [B, T, S]: query i reads key j iff key_group[j] <= group[i], j is
    valid and, with a floor, key_group[j] >= floor[i]."""
    key_group = group if key_group is None else key_group
    allowed = (key_group[:, None, :] <= group[:, :, None]) & valid[:, None, :]
    return allowed if floor is None else allowed & (key_group[:, None, :] >= floor[:, :, None])


def read_floor(slot: jax.Array, group: jax.Array, n_patches: int, per_patch: int) -> jax.Array:
    """The lowest group each position reads under block-local scan attention, int [B, L]: for an fMRI token
    (``slot >= 0``, patch-major within its block, ``per_patch`` tokens per patch) the first group of its own
    block, for text 0 (everything)."""
    patch = (slot % (n_patches * per_patch)) // per_patch
    return jnp.where(slot >= 0, group - patch, 0)


class FMRILM(nnx.Module):
    """The frozen neural tokenizer, the decoder LM (optionally with LoRA adapters), the fMRI projector, the
    parcel embedding and the fMRI code head."""

    def __init__(self, lm_cfg: LMConfig, tok_model: ModelConfig, tok_quantizer: QuantizerConfig,
                 language: LanguageConfig, *, rngs: nnx.Rngs):
        if language.train_lm not in TRAIN_LM:
            raise ValueError(f"language.train_lm must be one of {TRAIN_LM}, got {language.train_lm!r}")
        if language.scan_attention not in SCAN_ATTENTION:
            raise ValueError(f"language.scan_attention must be one of {SCAN_ATTENTION}, got "
                             f"{language.scan_attention!r}")
        self.scan_attention = language.scan_attention
        if language.fmri_time not in FMRI_TIME:
            raise ValueError(f"language.fmri_time must be one of {FMRI_TIME}, got {language.fmri_time!r}")
        self.fmri_time = language.fmri_time
        if language.fmri_features not in FMRI_FEATURES:
            raise ValueError(f"language.fmri_features must be one of {FMRI_FEATURES}, got "
                             f"{language.fmri_features!r}")
        if language.fc_reference not in FC_REFERENCE:
            raise ValueError(f"language.fc_reference must be one of {FC_REFERENCE}, got {language.fc_reference!r}")
        self.tokenizer = NeuralTokenizer(tok_model, tok_quantizer, rngs=rngs)
        self.lm = DecoderLM(lm_cfg, rngs=rngs)
        if language.train_lm == "lora":
            add_lora(self.lm, targets=tuple(language.lora_targets), rank=language.lora_rank,
                     alpha=language.lora_alpha, rngs=rngs)
        code_dim = tok_quantizer.code_dim if tok_quantizer.kind == "vq" else len(tok_quantizer.fsq_levels)
        width = lm_cfg.hidden
        self.fmri_in = linear(code_dim, width, (None, "embed"), dtype=jnp.float32, rngs=rngs)
        self.fmri_out = linear(width, width, ("embed", "embed"), dtype=jnp.float32, rngs=rngs)
        self.parcel_embed = nnx.Embed(tok_model.max_parcels, width,
                                      embedding_init=logical(nnx.initializers.normal(0.02), (None, "embed")),
                                      rngs=rngs)
        self.fmri_head = linear(width, self.tokenizer.codebook_size, ("embed", None), dtype=jnp.float32, rngs=rngs)
        # Phenotypes live in between-network coupling (the FC probe's strength); a token's own connectivity row
        # hands it to the LM directly instead of leaving the LM to correlate 600 time-course codes itself.
        parts = language.fmri_features.split("+")
        self.fmri_fc = linear(tok_model.max_parcels, width, (None, "embed"), dtype=jnp.float32, rngs=rngs,
                              use_bias=False) if "fc" in parts else None
        # Descriptors and phenotypes are deviations from the cohort, which a raw row hides under the connectivity
        # every scan shares; with fc_reference = "cohort" a row enters as z-scores against the training scans.
        cohort = language.fc_reference == "cohort"
        if cohort and self.fmri_fc is None:
            raise ValueError(f"language.fc_reference=cohort scores connectivity rows: it needs 'fc' in "
                             f"language.fmri_features, got {language.fmri_features!r}")
        pairs = (tok_model.max_parcels, tok_model.max_parcels)
        self.fc_mean = CohortReference(jnp.zeros(pairs, jnp.float32)) if cohort else None
        self.fc_std = CohortReference(jnp.ones(pairs, jnp.float32)) if cohort else None
        # Unnormalised projector outputs sat ~400x above the text embeddings (norm 337 vs 0.84 after stage 2):
        # pre-norm blocks then cannot change an fMRI position's state, so the LM never mixes parcels. Within a
        # token, the parts were as unequal (RMS: tokenizer features 26, connectivity row 3, parcel embedding
        # 0.04), which hid which parcel a token is. With fmri_norm each part enters at unit RMS, and the sum at
        # the text embeddings' scale.
        self.fmri_norm = nnx.RMSNorm(width, epsilon=lm_cfg.norm_eps, rngs=rngs) if language.fmri_norm else None
        # A phenotype such as sex is one mean coupling between two networks: a bilinear form a^T FC b over the
        # whole window. K learned forms, read once per window, reach the LM as one vector on the last patch.
        self.summary = ConnectivitySummary(tok_model.max_parcels, language.summary_rank, width, rngs=rngs) \
            if "summary" in parts else None
        if language.fmri_pool < 0:
            raise ValueError(f"language.fmri_pool must be >= 0, got {language.fmri_pool}")
        self.pool = PatchResampler(width, language.fmri_pool, lm_cfg.heads, rngs=rngs) \
            if language.fmri_pool else None

    def per_patch(self, n_parcels: int) -> int:
        """LM positions per time patch of a window of ``n_parcels``: the pooled tokens, or one per parcel."""
        return self.pool.queries.shape[0] if self.pool is not None else n_parcels

    def fmri_tokens(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """LM-width embeddings of every fMRI token float32 [B, S * N * K, W] (block, patch, token order; K =
        :meth:`per_patch`: P parcels, or the pooled tokens), the VQ codes int32 [B, S, N, P] and ``real``
        bool [B, S, N, P] (tokens of real parcels).

        Every time patch goes through the tokenizer on its own: the stage-1 encoder attends across the whole
        window, so features of patch n encoded jointly would already carry patch n + 1 — the very code the
        next-patch loss asks for, and the future that the patch-causal mask is meant to hide.
        """
        signal = jnp.asarray(batch["signal"])
        batch_size, blocks, n_parcels, length = signal.shape
        patch = self.tokenizer.cfg.patch
        n_patches = length // patch
        if n_patches * patch != length:
            raise ValueError(f"window of {length} TRs is not a multiple of the tokenizer's patch {patch}")
        rows = batch_size * blocks * n_patches
        patches = signal.reshape(batch_size, blocks, n_parcels, n_patches, patch).transpose(0, 1, 3, 2, 4)

        def repeat(key):  # [B, S, ...] -> [B * S * N, ...]: one row per time patch
            x = jnp.asarray(batch[key])
            return jnp.repeat(x.reshape(batch_size * blocks, *x.shape[2:]), n_patches, axis=0)
        flat = {"signal": patches.reshape(rows, n_parcels, patch), "parcel_mask": repeat("parcel_mask"),
                "coords": repeat("coords"), "tr": repeat("tr")}
        features, _, real = self.tokenizer.features(flat)  # [rows, P, 1, C]
        codes = self.tokenizer.quantizer(features, real, train=False).codes
        features = jax.lax.stop_gradient(features[:, :, 0])
        balance = _unit_rms if self.fmri_norm is not None else (lambda v: v)
        x = balance(self.fmri_out(jax.nn.gelu(self.fmri_in(features))))  # [rows, P, W]
        # Rows of token time steps: one per time patch, or one per window (fmri_time = "window")
        steps = token_steps(self.fmri_time, length, patch)
        if steps == 1 and n_patches > 1:  # a parcel's patches averaged into one token
            x = x.reshape(batch_size * blocks, n_patches, n_parcels, -1).mean(1)
        whole = signal.reshape(batch_size * blocks, n_parcels, length)
        block_mask = jnp.asarray(batch["parcel_mask"]).astype(bool).reshape(batch_size * blocks, n_parcels)
        step_signal = flat["signal"] if steps == n_patches else whole
        step_mask = jnp.repeat(block_mask, steps, axis=0)
        if self.fmri_fc is not None:  # per token time step: a per-patch token never carries the next patch's code
            fc = patch_connectivity(step_signal, step_mask)
            if self.fc_mean is not None:  # padded parcels: mean 0, spread 1, row 0 -> stays 0
                pair = step_mask[:, :, None] & step_mask[:, None, :]
                z = (fc - self.fc_mean[...][:n_parcels, :n_parcels]) / self.fc_std[...][:n_parcels, :n_parcels]
                fc = jnp.where(pair, z, 0.0)
            width = self.fmri_fc.in_features
            x = x + balance(self.fmri_fc(jnp.pad(fc, ((0, 0), (0, 0), (0, width - n_parcels)))))
        x = x + balance(self.parcel_embed(jnp.arange(n_parcels))[None].astype(x.dtype))
        if self.pool is not None:  # [rows, P, W] -> [rows, K, W]
            x = balance(self.pool(x, step_mask))
        per_step = x.shape[1]
        if self.summary is not None:  # the last patch predicts no code, so the whole window can reach it
            window = balance(self.summary(whole, block_mask))
            last = (jnp.arange(steps) == steps - 1)[None, :, None, None]
            x = x.reshape(batch_size * blocks, steps, per_step, -1) + last * window[:, None, None, :]
        if self.fmri_norm is not None:  # at the RMS of the LM's own token embeddings (not trained through here)
            table = jax.lax.stop_gradient(self.lm.embed.embedding[...].astype(jnp.float32))
            x = self.fmri_norm(x) * jnp.sqrt(jnp.mean(table * table))
        x = x.reshape(batch_size, blocks * steps * per_step, -1)
        shape = (batch_size, blocks, n_patches, n_parcels)
        return x, codes.reshape(shape), real.reshape(shape)

    def embed_inputs(self, batch: dict) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """LM input embeddings float [B, L, W] of a mixed sequence (text ids, fMRI tokens at ``slot >= 0``), plus
        the blocks' codes and ``real`` [B, S, N, P]; a batch without ``signal`` is text only (codes None)."""
        text = self.lm.embed(jnp.asarray(batch["ids"]))
        if "signal" not in batch:
            return text, None, None
        fmri, codes, real = self.fmri_tokens(batch)
        slot = jnp.asarray(batch["slot"])
        gathered = jnp.take_along_axis(fmri, jnp.maximum(slot, 0)[..., None], axis=1)
        return jnp.where(slot[..., None] >= 0, gathered.astype(text.dtype), text), codes, real

    def floor(self, batch: dict) -> jax.Array | None:
        """:func:`read_floor` of a batch under ``scan_attention = "block"``; None when every position may read
        everything before it (causal scan attention, or a text-only batch)."""
        if self.scan_attention == "causal" or "signal" not in batch:
            return None
        _, _, n_parcels, length = jnp.shape(batch["signal"])
        return read_floor(jnp.asarray(batch["slot"]), jnp.asarray(batch["group"]),
                          token_steps(self.fmri_time, length, self.tokenizer.cfg.patch), self.per_patch(n_parcels))

    def __call__(self, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Hidden states float [B, L, W] of the mixed sequence, plus the blocks' codes and ``real`` [B, S, N, P]."""
        x, codes, real = self.embed_inputs(batch)
        group, valid = jnp.asarray(batch["group"]), jnp.asarray(batch["valid"]).astype(bool)
        return self.lm.hidden(x, allowed_mask(group, valid, self.floor(batch)), group), codes, real

    def code_logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., W] -> logits over the tokenizer's codebook float32 [..., K]."""
        return self.fmri_head(hidden.astype(jnp.float32))
