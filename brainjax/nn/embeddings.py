"""Position embeddings for parcel x time-patch tokens: spatial (from MNI coordinates) and temporal.

Position comes from coordinates, not from a parcel index, so one model takes any atlas and any number of
parcels (BrainLM used an xyz projection; Fourier features let a small MLP resolve millimetre-scale detail).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.nn.layers import linear, logical

TIME_EMBEDDINGS = ("index", "learned", "seconds")
COORD_SCALE = 100.0  # mm; MNI brains span about +-100 mm, so scaled coordinates lie in about [-1, 1]


def fourier_features(xyz: jax.Array, n_freqs: int) -> jax.Array:
    """xyz: [..., 3] (already scaled to about [-1, 1]) -> [..., 3 * 2 * n_freqs] (sin, cos at 2^k pi)."""
    freqs = jnp.pi * 2.0 ** jnp.arange(n_freqs, dtype=jnp.float32)
    angles = xyz[..., :, None].astype(jnp.float32) * freqs  # [..., 3, F]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*xyz.shape[:-1], -1)


def sinusoid(position: jax.Array, width: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer sinusoidal embedding of real-valued positions: [...] -> [..., width] float32."""
    half = width // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angles = position.astype(jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, width - 2 * half)])


class SpatialEmbedding(nnx.Module):
    """MNI xyz (mm) -> Fourier features -> MLP -> [width] per parcel."""

    def __init__(self, n_freqs: int, width: int, embed_axis: str, *, dtype, rngs: nnx.Rngs):
        self.n_freqs, self.dtype = n_freqs, dtype
        self.fc1 = linear(6 * n_freqs, width, ("fourier", embed_axis), dtype=dtype, rngs=rngs)
        self.fc2 = linear(width, width, (None, embed_axis), dtype=dtype, rngs=rngs)

    def __call__(self, coords: jax.Array) -> jax.Array:
        """coords: [B, P, 3] mm -> [B, P, width]."""
        feats = fourier_features(coords / COORD_SCALE, self.n_freqs).astype(self.dtype)
        return self.fc2(jax.nn.gelu(self.fc1(feats)))


class TemporalEmbedding(nnx.Module):
    """Embedding of each time patch: ``index`` (sinusoid of the patch number), ``learned`` (a table over
    patch numbers), or ``seconds`` (sinusoid of the patch onset in seconds, ``index * patch * tr``, so scans
    with different TRs share one time scale)."""

    def __init__(self, kind: str, width: int, patch: int, max_patches: int, embed_axis: str, *, rngs: nnx.Rngs):
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"unknown model.time_embedding {kind!r}; expected one of {TIME_EMBEDDINGS}")
        self.kind, self.width, self.patch, self.max_patches = kind, width, patch, max_patches
        if kind == "learned":
            init = logical(nnx.initializers.normal(0.02), (None, embed_axis))
            self.table = nnx.Param(init(rngs.params(), (max_patches, width), jnp.float32))

    def __call__(self, n_patches: int, tr: jax.Array) -> jax.Array:
        """n_patches: N (static); tr: [B] seconds -> [B, N, width] float32."""
        index = jnp.arange(n_patches, dtype=jnp.float32)
        if self.kind == "seconds":
            return sinusoid(index[None, :] * self.patch * tr[:, None], self.width)
        if self.kind == "learned":
            if n_patches > self.max_patches:
                raise ValueError(f"window has {n_patches} patches but model.max_patches={self.max_patches}")
            table = self.table[...][:n_patches]
        else:
            table = sinusoid(index, self.width)
        return jnp.broadcast_to(table, (tr.shape[0], n_patches, self.width))
