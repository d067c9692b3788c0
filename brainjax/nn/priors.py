"""Linear priors a decoder can add its correction to: factor-analysis imputation across parcels.

The reconstruction baseline that masked models lose to is a Gaussian conditional mean: the hidden parcels
regressed on the visible ones at the same time point. A factor model ``x = L z + e`` (loadings L [P, r],
z ~ N(0, I), independent noise e_p ~ N(0, psi_p)) gives that conditional mean in closed form through an
r x r system instead of a P x P one (Woodbury):

    E[z | x_v] = (I + L_vᵀ Ψ_v⁻¹ L_v)⁻¹ L_vᵀ Ψ_v⁻¹ x_v,      E[x_h | x_v] = L_h E[z | x_v],

so a model that learns L and Ψ from its own parcel embeddings starts every masked token from the linear
answer and spends its capacity on what a linear map of the same time point cannot see (time, non-linearity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def factor_scores(loadings: jax.Array, noise: jax.Array, values: jax.Array, seen: jax.Array) -> jax.Array:
    """E[z | the seen parcels of each time patch]: float32 [B, N, r, T] (zero for a patch with nothing seen).

    loadings: float [B, P, r]; noise: float [B, P] > 0 (Ψ's diagonal); values: float [B, P, N, T] (anything where
    not seen); seen: bool [B, P, N] (visible tokens of real parcels). Each TR of a patch shares its patch's
    visible set, so one r x r Cholesky factor serves all T of them.
    """
    loadings = loadings.astype(jnp.float32)
    precision = jnp.where(seen, 1.0 / noise.astype(jnp.float32)[:, :, None], 0.0)  # Ψ⁻¹ on the seen set [B,P,N]
    values = jnp.where(seen[..., None], values.astype(jnp.float32), 0.0)
    rank = loadings.shape[-1]
    gram = jnp.einsum("bpr,bpn,bps->bnrs", loadings, precision, loadings) + jnp.eye(rank)  # [B, N, r, r]
    rhs = jnp.einsum("bpr,bpn,bpnt->bnrt", loadings, precision, values)  # [B, N, r, T]
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(gram), True), rhs)


def factor_posterior_mean(loadings: jax.Array, noise: jax.Array, values: jax.Array, seen: jax.Array) -> jax.Array:
    """Factor-model conditional mean of every token given the seen ones of the same time patch.

    Arguments as :func:`factor_scores`. Returns float32 [B, P, N, T]: L E[z | the seen parcels of patch n] for
    every parcel and patch (zero for a patch with nothing seen).
    """
    factors = factor_scores(loadings, noise, values, seen)
    return jnp.einsum("bpr,bnrt->bpnt", loadings.astype(jnp.float32), factors)
