"""Losses that align the neural tokenizer's feature space with a language model's (fMRI-LM stage 1).

Two optional terms, both reading the tokenizer's continuous features mapped to the LM width by a linear
``align_proj``:

* Domain-adversarial (Ganin & Lempitsky, 2015): a small :class:`Discriminator` tells projected fMRI tokens
  from rows of the LM's input embedding table. A gradient-reversal layer sits between the projection and the
  discriminator on the fMRI side, so one loss trains the discriminator to separate the two and, with its
  gradient negated, the tokenizer and projection to make fMRI features look like word embeddings.
* Contrastive (SigLIP, Zhai et al. 2023): each window's mean projected feature against its scan's descriptor
  text vector, with a pairwise sigmoid loss. Two windows of the same scan in a batch are positives, since
  they share one text.

Metric values come back as SUMS (see :class:`brainjax.train.step.Task`) so they add up over batches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.nn.layers import linear

SIGLIP_SCALE = math.log(10.0)  # SigLIP's initial log temperature
SIGLIP_BIAS = -10.0  # and bias: start by calling every pair negative, as most pairs are


@jax.custom_vjp
def reverse_gradient(x: jax.Array) -> jax.Array:
    """Identity forward; the gradient passing back through it is multiplied by -1. x: any shape."""
    return x


def _reverse_fwd(x):
    return x, None


def _reverse_bwd(_, grad):
    return (-grad,)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


class Discriminator(nnx.Module):
    """MLP width -> hidden -> 1 giving the logit that a vector is an fMRI token rather than a word embedding."""

    def __init__(self, width: int, hidden: int = 64, *, rngs: nnx.Rngs):
        self.hidden = linear(width, hidden, (None, None), dtype=jnp.float32, rngs=rngs)
        self.out = linear(hidden, 1, (None, None), dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float [..., width] -> logits float32 [...]."""
        return self.out(jax.nn.gelu(self.hidden(x.astype(jnp.float32))))[..., 0]


def domain_loss(fmri_logits: jax.Array, word_logits: jax.Array, fmri_weight: jax.Array,
                word_weight: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Class-balanced binary cross-entropy of the discriminator (fMRI = 1, word = 0) and accuracy sums.

    fmri_logits: float [...]; fmri_weight: same shape (1 for real tokens); word_logits / word_weight: float
    [...] for the embedding rows. The two sides weigh half each, as fMRI tokens far outnumber word rows.
    Returns (loss [], sums: correct and count of each side).
    """
    fmri_weight = fmri_weight.astype(jnp.float32)
    word_weight = word_weight.astype(jnp.float32)
    n_fmri, n_word = jnp.sum(fmri_weight), jnp.sum(word_weight)
    fmri_bce = jnp.sum(fmri_weight * jax.nn.softplus(-fmri_logits)) / jnp.maximum(n_fmri, 1.0)
    word_bce = jnp.sum(word_weight * jax.nn.softplus(word_logits)) / jnp.maximum(n_word, 1.0)
    loss = 0.5 * (fmri_bce + word_bce)
    sums = {"disc_fmri_correct": jnp.sum(fmri_weight * (fmri_logits > 0)), "disc_fmri_n": n_fmri,
            "disc_word_correct": jnp.sum(word_weight * (word_logits < 0)), "disc_word_n": n_word}
    return loss, sums


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def siglip_loss(fmri: jax.Array, text: jax.Array, scan: jax.Array, log_scale: jax.Array, bias: jax.Array,
                valid: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pairwise sigmoid loss between windows and texts, and in-batch text -> window retrieval sums.

    fmri: float [B, H] and text: float [B, H] (both L2-normalised here); scan: int [B] (rows of the same scan
    are positive pairs); log_scale, bias: float [] (learnable); valid: bool [B] (rows taking part).
    Loss = mean over valid pairs (i, j) of -log sigmoid(label_ij * logit_ij), logit = exp(log_scale) f_i.t_j
    + bias, label +1 for the same scan and -1 otherwise. Retrieval: for each valid text j, the window i with
    the highest logit is correct when it shows the same scan. Returns (loss [], sums).
    """
    logits = jnp.exp(log_scale) * _normalize(fmri) @ _normalize(text).T + bias
    labels = jnp.where(scan[:, None] == scan[None, :], 1.0, -1.0)
    pairs = (valid[:, None] & valid[None, :]).astype(jnp.float32)
    loss = jnp.sum(pairs * -jax.nn.log_sigmoid(labels * logits)) / jnp.maximum(jnp.sum(pairs), 1.0)
    best = jnp.argmax(jnp.where(valid[:, None], logits, -jnp.inf), axis=0)  # best window per text
    hits = (scan[best] == scan) & valid
    return loss, {"retrieval_correct": jnp.sum(hits.astype(jnp.float32)),
                  "retrieval_n": jnp.sum(valid.astype(jnp.float32))}


class Alignment(nnx.Module):
    """The alignment heads of a tokenizer: ``align_proj`` (code_dim -> H), and per enabled term the
    discriminator or ``text_proj`` (H -> H) with SigLIP's learnable scale and bias."""

    def __init__(self, code_dim: int, lm_width: int, *, domain: bool, text: bool, rngs: nnx.Rngs):
        if lm_width < 1:
            raise ValueError(f"quantizer.lm_width must be the LM's hidden size (> 0) when alignment is on, "
                             f"got {lm_width}")
        self.align_proj = linear(code_dim, lm_width, (None, None), dtype=jnp.float32, rngs=rngs)
        self.discriminator = Discriminator(lm_width, rngs=rngs) if domain else None
        self.text_proj = linear(lm_width, lm_width, (None, None), dtype=jnp.float32, rngs=rngs) if text else None
        self.log_scale = nnx.Param(jnp.asarray(SIGLIP_SCALE, jnp.float32)) if text else None
        self.bias = nnx.Param(jnp.asarray(SIGLIP_BIAS, jnp.float32)) if text else None

    def domain(self, features: jax.Array, real: jax.Array, words: jax.Array) -> tuple[jax.Array, dict]:
        """features float [B, P, N, code_dim], real bool [B, P, N], words float [B, S, H] -> (loss, sums)."""
        projected = reverse_gradient(self.align_proj(features))
        rows = jnp.any(real, axis=(1, 2))  # windows that only pad an evaluation batch add no words either
        word_weight = jnp.broadcast_to(rows[:, None], words.shape[:2])
        loss, sums = domain_loss(self.discriminator(projected), self.discriminator(words), real, word_weight)
        return loss, {"domain_loss": loss, **sums}

    def text(self, features: jax.Array, real: jax.Array, text: jax.Array, scan: jax.Array) -> tuple[jax.Array, dict]:
        """features [B, P, N, code_dim], real [B, P, N], text float [B, H] (all zero: scan without text),
        scan int [B] -> (loss, sums)."""
        weight = real[..., None].astype(jnp.float32)
        count = jnp.sum(weight, axis=(1, 2))
        pooled = jnp.sum(weight * self.align_proj(features), axis=(1, 2)) / jnp.maximum(count, 1.0)
        valid = (count[:, 0] > 0) & (jnp.linalg.norm(text, axis=-1) > 0)
        loss, sums = siglip_loss(pooled, self.text_proj(text.astype(jnp.float32)), scan, self.log_scale.get_value(),
                                 self.bias.get_value(), valid)
        return loss, {"siglip_loss": loss, **sums}


def alignment_keys(domain: bool, text: bool) -> tuple[str, ...]:
    """Batch entries the enabled terms read: word_embeddings [B, S, H], text_embedding [B, H], scan [B]."""
    return (("word_embeddings",) if domain else ()) + (("text_embedding", "scan") if text else ())


def summarize_alignment(sums: dict, batches: float) -> dict[str, float]:
    """Readable metrics from summed totals: domain loss, balanced discriminator accuracy, SigLIP loss,
    text -> window top-1 retrieval accuracy (only those whose sums are present)."""
    out = {}
    if "domain_loss" in sums:
        rates = [float(sums[f"disc_{s}_correct"]) / max(float(sums[f"disc_{s}_n"]), 1.0) for s in ("fmri", "word")]
        out.update(domain_loss=float(sums["domain_loss"]) / batches, disc_accuracy=0.5 * sum(rates))
    if "siglip_loss" in sums:
        out.update(siglip_loss=float(sums["siglip_loss"]) / batches,
                   retrieval_top1=float(sums["retrieval_correct"]) / max(float(sums["retrieval_n"]), 1.0))
    return out
