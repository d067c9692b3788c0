"""Vector quantizers for the fMRI neural tokenizer: an EMA-learned cosine codebook and FSQ (Flax NNX).

fMRI-LM's tokenizer turns encoder features of parcel x time-patch tokens into discrete codes a language model
can read. Both quantizers return a :class:`QuantizerOutput`, so the tokenizer can swap them:

* :class:`VectorQuantizer` -- an L2-normalised codebook (cosine nearest code, as in ViT-VQGAN / fMRI-LM),
  learned by exponential moving averages rather than by gradients, initialised by spherical k-means on the
  first training batch, with dead codes restarted from the batch's encoder vectors.
* :class:`FSQ` -- finite scalar quantisation (Mentzer et al. 2023): each channel is bounded and rounded to a
  few levels; the implicit codebook is the grid, so there is nothing to learn and no code can die.

Both run inside the trainer's pure, jitted step (brainjax/train/step.py). The VQ codebook and its EMA
statistics are :class:`CodebookState` variables, not ``nnx.Param``: the trainer does not differentiate them but
threads them through the step in ``rest`` -- the forward pass writes the updated values and the step carries
them to the next update (a skipped, non-finite step restores the old ones like everything else).

Masks: positions where ``mask`` is False (padded parcels) are replaced by zeros before any arithmetic, so even
NaN there cannot reach the codebook, the loss, the stats or the gradients. They still get a placeholder code
(the one a zero input maps to) and a zero gradient; callers ignore them through the same mask.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

_TINY = 1e-12  # squared norms below this count as zero vectors


class CodebookState(nnx.Variable):
    """Quantizer state learned without gradients (EMA, k-means, restarts); the trainer carries it in ``rest``."""


class QuantizerOutput(NamedTuple):
    """What both quantizers return (a pytree, so it passes through jit and ``value_and_grad`` aux)."""

    quantized: jax.Array  # [..., dim] the chosen codes' values, with the input's (straight-through) gradient
    codes: jax.Array  # int32 [...] code index per vector
    loss: jax.Array  # float32 [] commitment loss (0 for FSQ)
    stats: dict[str, jax.Array]  # float32 [] each: perplexity, usage, dead, restarted


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / ||x||`` along ``axis`` (x float [..., D] -> [..., D]); zero vectors stay zero, with a zero (not NaN)
    gradient (norms below 1e-6 are treated as 1e-6)."""
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, _TINY))


def lookup(codebook: jax.Array, codes: jax.Array) -> jax.Array:
    """Decode codes: codebook [K, dim], codes int [...] -> [..., dim] (out-of-range codes give NaN rows)."""
    codebook, codes = jnp.asarray(codebook), jnp.asarray(codes)
    if codebook.ndim != 2:
        raise ValueError(f"codebook must be [K, dim], got shape {codebook.shape}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    return jnp.take(codebook, codes, axis=0, mode="fill", fill_value=jnp.nan)


def _flatten(z: jax.Array, mask: jax.Array | None, dim: int) -> tuple[jax.Array, jax.Array]:
    """z [..., dim], mask bool [...] -> float32 [N, dim] (zeros where masked), valid bool [N]."""
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[-1] != dim:
        raise ValueError(f"expected inputs of shape [..., {dim}], got {z.shape}")
    lead = z.shape[:-1]
    if mask is None:
        mask = jnp.ones(lead, bool)
    mask = jnp.asarray(mask)
    if mask.shape != lead:
        raise ValueError(f"mask shape {mask.shape} does not match the inputs' leading shape {lead}")
    valid = mask.reshape(-1).astype(bool)
    flat = jnp.where(valid[:, None], z.reshape(-1, dim).astype(jnp.float32), 0.0)
    return flat, valid


def _code_stats(codes: jax.Array, valid: jax.Array, size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """codes int [N], valid bool [N] -> counts float32 [size], perplexity [], usage [] (over valid vectors)."""
    counts = jax.ops.segment_sum(valid.astype(jnp.float32), codes, num_segments=size)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    perplexity = jnp.exp(-jnp.sum(jax.scipy.special.xlogy(probs, probs)))
    return counts, perplexity, jnp.mean(counts > 0).astype(jnp.float32)


def _sample_valid(key: jax.Array, valid: jax.Array, count: int) -> jax.Array:
    """int32 [count] indices of valid rows: distinct while there are enough, the rest drawn with replacement.

    Distinct rows spread k-means seeds and restarted codes over the batch; with fewer valid rows than ``count``
    every valid row is used once and the remaining slots repeat uniformly chosen valid rows. One uniform draw
    serves both (a random order of the rows by Gumbel scores, then uniform picks among the valid ones).
    """
    n = valid.shape[0]
    uniform = jax.random.uniform(key, (n + count,), minval=1e-7, maxval=1.0)
    scores = jnp.where(valid, -jnp.log(-jnp.log(uniform[:n])), -jnp.inf)
    order = jnp.argsort(-scores)  # valid rows first, in random order
    n_valid = valid.sum()
    slots = jnp.arange(count)
    picks = jnp.minimum(jnp.floor(uniform[n:] * n_valid).astype(jnp.int32), jnp.maximum(n_valid - 1, 0))
    return order[jnp.where(slots < n_valid, jnp.minimum(slots, n - 1), picks)].astype(jnp.int32)


def _nearest(unit: jax.Array, codebook: jax.Array) -> jax.Array:
    """unit [N, dim], codebook [K, dim] (both unit norm) -> int32 [N]: max cosine = min Euclidean distance."""
    return jnp.argmax(unit @ codebook.T, axis=-1).astype(jnp.int32)


class _Codebook(NamedTuple):
    codebook: jax.Array  # [K, dim] unit rows
    ema_sum: jax.Array  # [K, dim]
    ema_count: jax.Array  # [K]
    usage: jax.Array  # [K] EMA of each code's share of the assignments
    initialized: jax.Array  # bool []


def _spherical_kmeans(unit: jax.Array, valid: jax.Array, key: jax.Array, size: int, iters: int) -> _Codebook:
    """Lloyd iterations on the unit sphere, seeded from random valid rows; EMA state as if the batch was seen.

    Centroid = normalised sum of its members; a code with no members keeps its previous centroid (its zero
    count marks it dead, so the restart that follows in the same call re-seeds it).
    """
    seeds = unit[_sample_valid(key, valid, size)]
    weights = valid.astype(jnp.float32)

    def lloyd(_, carry):
        centroids = carry[0]
        codes = _nearest(unit, centroids)
        sums = jax.ops.segment_sum(unit, codes, num_segments=size)  # masked rows of ``unit`` are zero
        counts = jax.ops.segment_sum(weights, codes, num_segments=size)
        return jnp.where(counts[:, None] > 0, l2_normalize(sums), centroids), sums, counts

    zeros = jnp.zeros(size, jnp.float32)
    centroids, sums, counts = jax.lax.fori_loop(0, iters, lloyd, (seeds, jnp.zeros_like(seeds), zeros))
    return _Codebook(centroids, sums, counts, counts / jnp.maximum(counts.sum(), 1.0), jnp.ones((), bool))


# The state updates are jitted functions with static settings: inside the trainer's jit they are inlined, and an
# eager call (a notebook, a host-side check) compiles each once instead of dispatching ~100 ops and re-tracing
# the lax.cond on every call.
@functools.partial(jax.jit, static_argnames=("iters",))
def _initialize(state: _Codebook, unit: jax.Array, valid: jax.Array, key: jax.Array, *, iters: int) -> _Codebook:
    """``state`` after k-means on the batch, unless already initialised or the batch has no valid vector."""
    size = state.codebook.shape[0]
    return jax.lax.cond(state.initialized | ~valid.any(), lambda: state,
                        lambda: _spherical_kmeans(unit, valid, key, size, iters))


@functools.partial(jax.jit, static_argnames=("commitment",))
def _assign(unit: jax.Array, valid: jax.Array, codebook: jax.Array, *, commitment: float) -> tuple[jax.Array, ...]:
    """Nearest codes of unit [N, dim] -> codes int32 [N], chosen codes [N, dim], commitment loss [], and the
    batch's code counts [K], perplexity [] and usage [] over valid rows."""
    codes = _nearest(jax.lax.stop_gradient(unit), codebook)
    chosen = jax.lax.stop_gradient(codebook[codes])  # the codebook learns by EMA, never by gradient
    errors = jnp.sum((chosen - unit) ** 2, axis=-1)
    loss = commitment * jnp.sum(jnp.where(valid, errors, 0.0)) / jnp.maximum(valid.sum(), 1)
    return codes, chosen, loss, *_code_stats(codes, valid, codebook.shape[0])


@functools.partial(jax.jit, static_argnames=("decay", "eps", "dead_threshold"))
def _ema_step(old: _Codebook, unit: jax.Array, valid: jax.Array, codes: jax.Array, counts: jax.Array,
              key: jax.Array, *, decay: float, eps: float, dead_threshold: float
              ) -> tuple[_Codebook, jax.Array, jax.Array]:
    """EMA step and dead-code restart (see :class:`VectorQuantizer`) -> (new state, dead [], restarted [])."""
    size = old.codebook.shape[0]
    n_valid = counts.sum()
    sums = jax.ops.segment_sum(unit, codes, num_segments=size)  # masked rows of ``unit`` are zero
    ema_count = decay * old.ema_count + (1 - decay) * counts
    ema_sum = decay * old.ema_sum + (1 - decay) * sums
    total = ema_count.sum()
    smoothed = (ema_count + eps) / (total + size * eps) * total
    means = ema_sum / jnp.maximum(smoothed, _TINY)[:, None]
    finite = jnp.sum(means * means, axis=-1, keepdims=True) > _TINY
    codebook = jnp.where(finite, l2_normalize(means), old.codebook)
    usage = decay * old.usage + (1 - decay) * counts / jnp.maximum(n_valid, 1.0)

    dead = usage < dead_threshold / size
    fresh = unit[_sample_valid(key, valid, size)]
    share = n_valid / size
    new = _Codebook(jnp.where(dead[:, None], fresh, codebook),
                    jnp.where(dead[:, None], share * fresh, ema_sum),
                    jnp.where(dead, share, ema_count),
                    jnp.where(dead, 1.0 / size, usage),
                    old.initialized)
    # An all-masked batch carries no evidence: keep everything (its zero counts would only decay the EMAs).
    seen = n_valid > 0
    new = jax.tree.map(lambda a, b: jnp.where(seen, a, b), new, old)
    dead_count = jnp.where(seen, dead.sum(), jnp.sum(old.usage < dead_threshold / size))
    return new, dead_count, jnp.where(seen, dead.sum(), 0)


class VectorQuantizer(nnx.Module):
    """Cosine-similarity vector quantizer with an EMA codebook, k-means init and dead-code restarts.

    EMA update (train=True), with ``A`` the one-hot assignments of the valid unit vectors ``z_i``::

        ema_count_k <- decay * ema_count_k + (1 - decay) * sum_i A_ik
        ema_sum_k   <- decay * ema_sum_k   + (1 - decay) * sum_i A_ik z_i
        n           =  sum_k ema_count_k
        smoothed_k  =  (ema_count_k + eps) / (n + K * eps) * n            (Laplace smoothing)
        codebook_k  =  normalize(ema_sum_k / smoothed_k)

    For a unit-norm codebook the division only rescales a row, which the normalisation undoes; the smoothing
    keeps it finite for codes without assignments (a row whose mean is numerically zero keeps its old code).
    ``usage_k <- decay * usage_k + (1 - decay) * (share of this batch's vectors on code k)``; codes with
    ``usage_k < dead_threshold / K`` are *dead* and restarted: each becomes a random valid unit vector of the
    batch, with ``ema_count = n_valid / K`` (a uniform share), ``ema_sum = ema_count * vector`` and
    ``usage = 1 / K``, so it is neither pulled back to its old direction nor declared dead again at once.

    The first training call (``initialized`` False) first runs ``kmeans_iters`` spherical k-means iterations
    on the batch's valid vectors, seeded from distinct random vectors (with replacement when the batch holds
    fewer valid vectors than codes), and sets ``ema_sum`` / ``ema_count`` / ``usage`` to the final clusters'
    sums, sizes and shares; the call then quantizes and updates as any other. A training batch without valid
    vectors changes nothing (and does not initialise).
    """

    def __init__(self, codebook_size: int, dim: int, *, decay: float = 0.99, commitment: float = 0.25,
                 kmeans_iters: int = 10, dead_threshold: float = 0.03, eps: float = 1e-5, rngs: nnx.Rngs):
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size} and {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if commitment < 0 or dead_threshold < 0 or eps <= 0:
            raise ValueError(f"need commitment >= 0, dead_threshold >= 0 and eps > 0, got {commitment}, "
                             f"{dead_threshold}, {eps}")
        if kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {kmeans_iters}")
        self.codebook_size, self.dim, self.decay, self.commitment = codebook_size, dim, decay, commitment
        self.kmeans_iters, self.dead_threshold, self.eps = kmeans_iters, dead_threshold, eps
        # Replicated: the codebook is small next to the transformer and every device searches all of it.
        matrix = dict(out_sharding=(None, None), eager_sharding=False)
        vector = dict(out_sharding=(None,), eager_sharding=False)
        start = l2_normalize(jax.random.normal(rngs.params(), (codebook_size, dim), jnp.float32))
        self.codebook = CodebookState(start, **matrix)
        self.ema_sum = CodebookState(jnp.zeros((codebook_size, dim), jnp.float32), **matrix)
        self.ema_count = CodebookState(jnp.zeros(codebook_size, jnp.float32), **vector)
        # Uniform usage until data says otherwise: no code is dead before it has had a chance.
        self.usage = CodebookState(jnp.full(codebook_size, 1.0 / codebook_size, jnp.float32), **vector)
        self.initialized = CodebookState(jnp.zeros((), bool))

    def _state(self) -> _Codebook:
        return _Codebook(*(getattr(self, name).get_value() for name in _Codebook._fields))

    def __call__(self, z: jax.Array, mask: jax.Array | None = None, *, train: bool,
                 rng: jax.Array | None = None) -> QuantizerOutput:
        """Quantize z float [..., dim] (mask bool [...], False = ignore) -> :class:`QuantizerOutput`.

        ``quantized`` [..., dim] (z's dtype) equals the chosen unit codes in value and passes the gradient to
        ``z`` unchanged (``z + stop_gradient(q - z)``); ``codes`` int32 [...]; ``loss`` =
        ``commitment * mean_i ||stop_gradient(q_i) - normalize(z_i)||^2`` over valid vectors; ``stats``:
        ``perplexity`` (exp entropy of the batch's code histogram), ``usage`` (fraction of codes used by the
        batch), ``dead`` (codes below the usage threshold after the EMA step, before restarting them; with
        train=False, in the current state) and ``restarted``. train=True needs ``rng`` (k-means seeds,
        restarts) and updates the state; train=False is a pure lookup.
        """
        if train and rng is None:
            raise ValueError("VectorQuantizer needs an rng key when train=True (k-means seeds, code restarts)")
        lead = jnp.shape(z)[:-1]
        flat, valid = _flatten(z, mask, self.dim)
        unit = l2_normalize(flat)
        state = self._state()
        if train:
            seed_key, restart_key = jax.random.split(rng)
            evidence = jax.lax.stop_gradient(unit)
            state = _initialize(state, evidence, valid, seed_key, iters=self.kmeans_iters)

        codes, chosen, loss, counts, perplexity, used = _assign(unit, valid, state.codebook,
                                                                commitment=self.commitment)

        if train:
            state, dead, restarted = _ema_step(state, evidence, valid, codes, counts, restart_key, decay=self.decay,
                                               eps=self.eps, dead_threshold=self.dead_threshold)
            for name, value in state._asdict().items():
                getattr(self, name).set_value(value)
        else:
            dead = jnp.sum(state.usage < self.dead_threshold / self.codebook_size)
            restarted = jnp.zeros((), jnp.int32)
        quantized = flat + jax.lax.stop_gradient(chosen - flat)  # straight-through: identity gradient to z
        stats = {"perplexity": perplexity, "usage": used, "dead": dead.astype(jnp.float32),
                 "restarted": restarted.astype(jnp.float32)}
        return QuantizerOutput(quantized.reshape(*lead, self.dim).astype(jnp.result_type(z)),
                               codes.reshape(lead), loss, stats)


class FSQ(nnx.Module):
    """Finite scalar quantisation: channel ``c`` is bounded, rounded to ``levels[c]`` values, scaled to [-1, 1].

    Bound (the paper's): ``half = (L - 1) (1 - eps) / 2``, ``offset = 0`` (odd L) or ``0.5`` (even L),
    ``bound(z) = tanh(z + shift) * half - offset``, whose range covers exactly the L rounding cells
    ``{-(L // 2), ..., L - 1 - L // 2}`` (``eps`` keeps the saturated ends strictly inside the outer cells).
    The shift re-centres even levels so a zero input lands on the grid point 0: ``shift = atanh(offset /
    half)`` (exact; the paper's reference uses ``tan``, nearly equal for small arguments). A 2-level channel
    has no such point (0 is the edge of its range), so it keeps ``shift = 0`` and acts as a sign quantizer.
    Rounding uses a straight-through estimator, and the result is divided by ``L // 2``.
    """

    def __init__(self, levels: tuple[int, ...], *, eps: float = 1e-3):
        levels = tuple(int(n) for n in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty tuple of integers >= 2, got {levels}")
        if math.prod(levels) >= 2**31:
            raise ValueError(f"FSQ levels {levels} give {math.prod(levels)} codes, more than int32 indices hold")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.levels, self.eps = levels, eps

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def dim(self) -> int:
        return len(self.levels)

    def _half_width(self) -> jax.Array:
        return jnp.asarray([n // 2 for n in self.levels], jnp.float32)

    def _basis(self) -> jax.Array:
        return jnp.asarray([math.prod(self.levels[:c]) for c in range(self.dim)], jnp.int32)

    def bound(self, z: jax.Array) -> jax.Array:
        """z float [..., C] -> float32 [..., C] inside each channel's rounding range (before scaling)."""
        half = [(n - 1) * (1 - self.eps) / 2 for n in self.levels]
        offset = [0.0 if n % 2 else 0.5 for n in self.levels]
        shift = [math.atanh(o / h) if o < h else 0.0 for o, h in zip(offset, half)]
        const = lambda values: jnp.asarray(values, jnp.float32)
        return jnp.tanh(jnp.asarray(z, jnp.float32) + const(shift)) * const(half) - const(offset)

    def __call__(self, z: jax.Array, mask: jax.Array | None = None, *, train: bool = False,
                 rng: jax.Array | None = None) -> QuantizerOutput:
        """Quantize z float [..., C] (mask bool [...]) -> :class:`QuantizerOutput` (loss 0; train/rng unused).

        ``quantized`` float32 [..., C] on the grid ``k / (L // 2)``; ``codes`` int32 [...] mixed-radix indices;
        stats as for :class:`VectorQuantizer` over valid vectors, with ``dead = restarted = 0`` (nothing learned).
        """
        del train, rng  # same interface as VectorQuantizer; FSQ has no state
        lead = jnp.shape(z)[:-1]
        flat, valid = _flatten(z, mask, self.dim)
        bounded = self.bound(flat)
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
        quantized = rounded / self._half_width()
        codes = self.codes_to_indices(jax.lax.stop_gradient(quantized))
        _, perplexity, used = _code_stats(codes, valid, self.codebook_size)
        zero = jnp.zeros((), jnp.float32)
        stats = {"perplexity": perplexity, "usage": used, "dead": zero, "restarted": zero}
        return QuantizerOutput(quantized.reshape(*lead, self.dim), codes.reshape(lead), zero, stats)

    def codes_to_indices(self, codes: jax.Array) -> jax.Array:
        """Grid values float [..., C] -> int32 [...]: digit ``k + L // 2`` of channel c, channel 0 fastest."""
        codes = jnp.asarray(codes)
        if codes.ndim < 1 or codes.shape[-1] != self.dim:
            raise ValueError(f"expected codes of shape [..., {self.dim}], got {codes.shape}")
        half = self._half_width()
        digits = jnp.round(codes * half + half).astype(jnp.int32)
        return jnp.sum(digits * self._basis(), axis=-1).astype(jnp.int32)

    def indices_to_codes(self, indices: jax.Array) -> jax.Array:
        """int [...] -> grid values float32 [..., C] (the inverse of :meth:`codes_to_indices`)."""
        indices = jnp.asarray(indices)
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        digits = (indices[..., None] // self._basis()) % jnp.asarray(self.levels, jnp.int32)
        half = self._half_width()
        return (digits.astype(jnp.float32) - half) / half
