"""Fewer fMRI tokens per time patch: K learned queries read a patch's parcel tokens by cross-attention.

Why: with one token per parcel a scan window is N x P LM positions (600 on the default data: 300 parcels x 2
patches), which is what a k-shot prompt's questions attend over and what bounds the evaluation's time; and the
phenotypes live in a few between-network couplings, not in 300 separate parcels. A resampler (one Perceiver
cross-attention layer plus an MLP, as fMRI-LM's and Flamingo's) hands the LM K << P tokens per patch, so a
longer window (the whole scan, whose connectivity the descriptors and the FC probes read) fits in fewer
positions than one 100-TR window did.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from brainjax.nn.attention import attention
from brainjax.nn.layers import linear


class PatchResampler(nnx.Module):
    """K queries x [K, W] read the parcel tokens of one time patch: x [R, P, W] (R patches), real bool [R, P]
    (padded parcels are never read) -> [R, K, W]. Pre-norm cross-attention and MLP, each with a residual."""

    def __init__(self, width: int, queries: int, heads: int, *, rngs: nnx.Rngs):
        if queries < 1:
            raise ValueError(f"language.fmri_pool must be >= 1 to pool, got {queries}")
        if width % heads:
            raise ValueError(f"LM width {width} is not a multiple of the resampler's {heads} heads")
        self.heads = heads
        self.queries = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (queries, width), jnp.float32))
        self.norm_q = nnx.RMSNorm(width, rngs=rngs)
        self.norm_kv = nnx.RMSNorm(width, rngs=rngs)
        self.q = linear(width, width, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.k = linear(width, width, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.v = linear(width, width, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.o = linear(width, width, (None, "embed"), dtype=jnp.float32, rngs=rngs)
        self.norm_mlp = nnx.RMSNorm(width, rngs=rngs)
        self.up = linear(width, 4 * width, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.down = linear(4 * width, width, (None, "embed"), dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array, real: jax.Array) -> jax.Array:
        rows, width = x.shape[0], x.shape[-1]
        head_dim = width // self.heads

        def split(t):  # [R, L, W] -> [R, L, H, D]
            return t.reshape(*t.shape[:2], self.heads, head_dim)
        queries = jnp.broadcast_to(self.queries[...], (rows, *self.queries.shape))
        keys = self.norm_kv(x)
        read = attention(split(self.q(self.norm_q(queries))), split(self.k(keys)), split(self.v(keys)),
                         key_mask=real, impl="xla")
        out = queries + self.o(read.reshape(rows, -1, width))
        return out + self.down(jax.nn.gelu(self.up(self.norm_mlp(out))))
