"""ViT-MAE for pretraining (Hugging Face ``ViTMAEForPreTraining``) in Flax NNX, and BrainLM's use of it.

BrainLM's released checkpoints (``vitmae_111M``, ``vitmae_650M`` in the Hugging Face repo vandijklab/brainlm)
are stock Hugging Face ViT-MAE weights. BrainLM's "with padding" wrapper
(``brainlm_mae/modeling_vit_mae_with_padding.py`` in github.com/vandijklab/BrainLM) pads to 432 x 432 for
16-pixel patches and 434 x 434 for 14-pixel ones (third-party wrappers report 768 / 1280 hidden and 730 / 962
tokens for the 111M / 650M models), and turns a recording into an image and back around the unchanged network:

* a window ``[424 parcels, 200 TRs]`` is repeated over the 3 colour channels and padded with the constant
  ``-1`` to the square image, half of the padding on each side (rows = parcels, columns = time);
* the stock encoder / decoder run on that image (2-D sin-cos positions, random masking by argsort of
  ``noise``, pre-LN blocks with GELU MLPs and q/k/v biases, mask tokens unshuffled with ``ids_restore``,
  linear ``decoder_pred`` to ``patch**2 * channels`` pixels);
* the prediction is unpatchified, the padding cropped off and the channels averaged; the loss is the MSE over
  the masked *pixels* of the unpadded ``[parcels, time]`` region (with ``norm_pix_loss`` each parcel's time
  course is standardised instead of each patch).

This module implements the stock network exactly (:meth:`ViTMAE.__call__` matches ``ViTMAEForPreTraining``
given the same ``noise``, including ``interpolate_pos_encoding``) and the BrainLM signal <-> image mapping
(:meth:`ViTMAE.image_from_signal`, :meth:`ViTMAE.embed`, :meth:`ViTMAE.reconstruct`). A signal whose shape is
the image's (one channel) needs no padding and is then the stock model on a ``[parcels, time]`` image.

Input layout: ``signal`` float ``[B, P, T]``, parcels along the image height in the order the caller gives.
BrainLM's preprocessing (per-parcel robust scaling, division by a dataset constant, parcels of the A424
atlas sorted by their MNI y coordinate, 200-TR windows at about 1 s TR) happens before this module; see
:func:`parcel_order_by_y`.

Parameters are float32; ``dtype`` sets the compute dtype of the dense layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.nn.attention import attention

Pair = tuple[int, int]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
NORM_PIX_EPS = 1.0e-6  # the epsilon of HF's (and BrainLM's) norm_pix_loss


def _pair(value: Any, name: str) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")


@dataclass(frozen=True)
class ViTMAEConfig:
    """The fields of a Hugging Face ``vit_mae`` config.json this model reads (others are ignored).

    ``image_size`` and ``patch_size`` are (height, width) pairs; config.json may give one integer (square).
    Height is the parcel axis, width the time axis. ``pad_value`` is not an HF field: the value BrainLM pads
    the signal with (-1) when it is smaller than the image.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: Pair = (224, 224)
    patch_size: Pair = (16, 16)
    num_channels: int = 3
    qkv_bias: bool = True
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    pad_value: float = -1.0

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patch_size"))
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels",
                     "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                     "decoder_intermediate_size"):
            value = getattr(self, name)
            least = 0 if "layers" in name else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(f"decoder_hidden_size={self.decoder_hidden_size} is not a multiple of "
                             f"decoder_num_attention_heads={self.decoder_num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; one of {sorted(ACTIVATIONS)}")
        if any(i % p or i < p for i, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> ViTMAEConfig:
        """From a config.json dict; missing fields take HF's ViTMAEConfig defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in hf.items() if k in known})

    @property
    def grid(self) -> Pair:
        """Patches along (height, width) of the configured image."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        """Pixels per patch over all channels (decoder_pred's output width)."""
        return self.patch_size[0] * self.patch_size[1] * self.num_channels


def sincos_table(grid: Pair, dim: int, cls_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sin-cos positions, float32 ``[(1 +) gh * gw, dim]``, patches row-major (height outer).

    Each row is ``[sin(w w_k), cos(w w_k), sin(h w_k), cos(h w_k)]`` with ``w_k = 10000 ** (-k / (dim/4))``
    (the original MAE code's layout: the column index first); the CLS row is zeros."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float64), np.arange(grid[1], dtype=np.float64),
                             indexing="ij")
    eh, ew = rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega
    table = np.concatenate([np.sin(ew), np.cos(ew), np.sin(eh), np.cos(eh)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of PyTorch's bicubic resize (``align_corners=False``, A = -0.75, edge-clamped
    taps), so that ``M @ x`` resizes ``x`` along one axis as ``torch.nn.functional.interpolate`` does."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    scale = np.float32(n_in) / np.float32(n_out)
    out = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = float(scale * np.float32(i + 0.5) - np.float32(0.5))
        base = math.floor(src)
        t = src - base
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            out[i, min(max(base + offset, 0), n_in - 1)] += weight
    return out.astype(np.float32)


def random_masking(tokens: jax.Array, noise: jax.Array | None, keep: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """HF's per-sample masking: tokens ``[B, N, D]`` sorted by ``noise`` ``[B, N]`` (small = kept), the first
    ``keep`` kept. Returns (kept ``[B, keep, D]``, mask float32 ``[B, N]`` 1 = masked, ids_restore int32
    ``[B, N]``). ``noise=None`` keeps the token order (identity shuffle)."""
    batch, n, _ = tokens.shape
    if noise is None:
        shuffle = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    else:
        shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
    kept = jnp.take_along_axis(tokens, shuffle[:, :keep, None], axis=1)
    return kept, (restore >= keep).astype(jnp.float32), restore


def patchify(pixels: jax.Array, patch: Pair) -> jax.Array:
    """``[B, C, H, W]`` -> ``[B, N, ph * pw * C]``, each patch's pixels in HF's (row, column, channel) order."""
    b, c, h, w = pixels.shape
    ph, pw = patch
    if h % ph or w % pw:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch {ph}x{pw}")
    x = pixels.reshape(b, c, h // ph, ph, w // pw, pw).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: jax.Array, patch: Pair, grid: Pair, channels: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``[B, gh * gw, ph * pw * C]`` -> ``[B, C, gh * ph, gw * pw]``."""
    b, n, _ = patches.shape
    (ph, pw), (gh, gw) = patch, grid
    if n != gh * gw:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, ph, pw, channels).transpose(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * ph, gw * pw)


def parcel_order_by_y(coords: np.ndarray) -> np.ndarray:
    """Row order BrainLM's ViT-MAE inputs use, as reported by third-party re-implementations of its data
    pipeline (not in the BrainLM repository itself): parcels sorted by MNI y (``coords[:, 1]``, ascending;
    ties keep atlas order). ``signal[:, parcel_order_by_y(coords)]`` puts an atlas-ordered recording in it."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [parcels, 3] (x, y, z), got shape {coords.shape}")
    return np.argsort(coords[:, 1], kind="stable")


class FixedTable(nnx.Variable):
    """A stored, not trained, array (the sin-cos position tables; HF keeps them with requires_grad=False)."""


def _layer_norm(width: int, eps: float) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as torch computes it, not E[x^2] - mean^2
    return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=nnx.Rngs(0))


class Block(nnx.Module):
    """HF ViTMAELayer: x + o(attn(LN(x))), then x + fc2(act(fc1(LN(x)))); dropout-free (inference)."""

    def __init__(self, width: int, heads: int, mlp: int, act: str, eps: float, qkv_bias: bool, *, dtype,
                 attn_impl: str, rngs: nnx.Rngs):
        dense = partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32,
                        kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)
        self.heads, self.act, self.attn_impl = heads, act, attn_impl
        self.layernorm_before = _layer_norm(width, eps)
        self.q = dense(width, width, use_bias=qkv_bias)
        self.k = dense(width, width, use_bias=qkv_bias)
        self.v = dense(width, width, use_bias=qkv_bias)
        self.o = dense(width, width)
        self.layernorm_after = _layer_norm(width, eps)
        self.fc1 = dense(width, mlp)
        self.fc2 = dense(mlp, width)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, width = x.shape
        h = self.layernorm_before(x)
        q, k, v = (proj(h).reshape(b, n, self.heads, width // self.heads) for proj in (self.q, self.k, self.v))
        x = x + self.o(attention(q, k, v, impl=self.attn_impl).reshape(b, n, width)).astype(x.dtype)
        h = self.fc2(ACTIVATIONS[self.act](self.fc1(self.layernorm_after(x))))
        return x + h.astype(x.dtype)


class ViTMAE(nnx.Module):
    """``ViTMAEForPreTraining``: encoder on the visible patches (+ CLS), decoder on all of them, pixel head.

    ``attn_impl`` is passed to :func:`brainjax.nn.attention.attention` (``auto``: dense maths on CPU and for
    fp32, flash kernels for half precision on GPU).
    """

    def __init__(self, cfg: ViTMAEConfig, *, rngs: nnx.Rngs, dtype: str = "float32", attn_impl: str = "auto"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.cfg = cfg
        compute = DTYPES[dtype]
        width, dec = cfg.hidden_size, cfg.decoder_hidden_size
        normal = nnx.initializers.normal(0.02)
        block = partial(Block, act=cfg.hidden_act, eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias, dtype=compute,
                        attn_impl=attn_impl, rngs=rngs)
        # the patch Conv2d as a Linear over each patch's pixels in (channel, row, column) order
        self.patch_embed = nnx.Linear(cfg.num_channels * cfg.patch_size[0] * cfg.patch_size[1], width,
                                      dtype=compute, param_dtype=jnp.float32,
                                      kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)
        self.cls_token = nnx.Param(normal(rngs.params(), (width,)))
        self.position_embeddings = FixedTable(jnp.asarray(sincos_table(cfg.grid, width)))
        self.layers = nnx.List([block(width, cfg.num_attention_heads, cfg.intermediate_size)
                                for _ in range(cfg.num_hidden_layers)])
        self.layernorm = _layer_norm(width, cfg.layer_norm_eps)

        self.decoder_embed = nnx.Linear(width, dec, dtype=compute, param_dtype=jnp.float32,
                                        kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)
        self.mask_token = nnx.Param(normal(rngs.params(), (dec,)))
        self.decoder_pos_embed = FixedTable(jnp.asarray(sincos_table(cfg.grid, dec)))
        self.decoder_layers = nnx.List([block(dec, cfg.decoder_num_attention_heads, cfg.decoder_intermediate_size)
                                        for _ in range(cfg.decoder_num_hidden_layers)])
        self.decoder_norm = _layer_norm(dec, cfg.layer_norm_eps)
        self.decoder_pred = nnx.Linear(dec, cfg.patch_dim, dtype=compute, param_dtype=jnp.float32,
                                       kernel_init=nnx.initializers.xavier_uniform(), rngs=rngs)

    # ---- positions --------------------------------------------------------------------------------------
    def _grid_of(self, height: int, width: int) -> Pair:
        return (height // self.cfg.patch_size[0], width // self.cfg.patch_size[1])

    def encoder_positions(self, height: int, width: int, interpolate: bool) -> jax.Array:
        """``[1 + N, hidden]`` positions for an image of ``height x width`` pixels.

        Without ``interpolate`` the image must be the configured size. With it, HF's rule: the stored table is
        used as it is when it has the right length and the image is square; otherwise its patch rows, read as
        a square grid, are resized bicubically to the image's grid (the CLS row is kept)."""
        table = self.position_embeddings[...]
        if not interpolate:
            if (height, width) != self.cfg.image_size:
                raise ValueError(f"image {height}x{width} is not the model's {self.cfg.image_size[0]}x"
                                 f"{self.cfg.image_size[1]}; pad it or pass interpolate_pos_encoding=True")
            return table
        gh, gw = self._grid_of(height, width)
        stored = table.shape[0] - 1
        if gh * gw == stored and height == width:
            return table
        side = math.isqrt(stored)
        if side * side != stored:
            raise ValueError(f"cannot interpolate {stored} stored positions: not a square grid")
        grid = table[1:].reshape(side, side, -1)
        resized = jnp.einsum("ah,hwd,bw->abd", jnp.asarray(bicubic_matrix(side, gh)), grid,
                             jnp.asarray(bicubic_matrix(side, gw)))
        return jnp.concatenate([table[:1], resized.reshape(gh * gw, -1)], axis=0)

    def decoder_positions(self, n_patches: int, interpolate: bool) -> jax.Array:
        """``[1 + N, decoder_hidden]``; HF's decoder interpolation resizes the stored rows as one 1-D line."""
        table = self.decoder_pos_embed[...]
        if not interpolate:
            if n_patches != table.shape[0] - 1:
                raise ValueError(f"{n_patches} patches but the decoder has {table.shape[0] - 1} positions")
            return table
        line = jnp.asarray(bicubic_matrix(table.shape[0] - 1, n_patches)) @ table[1:]
        return jnp.concatenate([table[:1], line], axis=0)

    # ---- network ----------------------------------------------------------------------------------------
    def _keep(self, n: int, mask_ratio: float | None) -> int:
        ratio = self.cfg.mask_ratio if mask_ratio is None else float(mask_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
        return int(n * (1 - ratio))  # HF's (truncating) rule

    def _noise(self, batch: int, n: int, keep: int, noise: jax.Array | None, rng: jax.Array | None):
        if noise is not None:
            noise = jnp.asarray(noise)
            if noise.shape != (batch, n):
                raise ValueError(f"noise must be [batch, patches] = [{batch}, {n}], got {list(noise.shape)}")
            return noise
        if rng is not None:
            return jax.random.uniform(rng, (batch, n))
        if keep == n:
            return None
        raise ValueError("masking needs noise ([batch, patches], small = kept) or an rng key")

    def encode(self, pixel_values: jax.Array, noise: jax.Array | None = None, *, rng: jax.Array | None = None,
               mask_ratio: float | None = None, interpolate_pos_encoding: bool = False) -> dict[str, Any]:
        """HF ``ViTMAEModel``: pixels ``[B, C, H, W]`` -> ``last_hidden_state`` ``[B, 1 + keep, hidden]`` (after
        the final LayerNorm), ``hidden_states`` (the embeddings and each layer's output, before that norm:
        ``num_hidden_layers + 1`` arrays), ``mask`` float32 ``[B, N]`` (1 = masked), ``ids_restore`` int32
        ``[B, N]``. Tokens are in the shuffled (kept-first) order HF uses; with nothing masked and no
        ``noise`` they stay in patch order."""
        cfg = self.cfg
        pixel_values = jnp.asarray(pixel_values, jnp.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != cfg.num_channels:
            raise ValueError(f"pixel_values must be [batch, {cfg.num_channels}, height, width], "
                             f"got {list(pixel_values.shape)}")
        b, c, height, width = pixel_values.shape
        gh, gw = self._grid_of(height, width)
        (ph, pw), n = cfg.patch_size, gh * gw
        positions = self.encoder_positions(height, width, interpolate_pos_encoding)
        pixels = pixel_values[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
        pixels = pixels.transpose(0, 2, 4, 1, 3, 5).reshape(b, n, c * ph * pw)
        tokens = self.patch_embed(pixels).astype(jnp.float32) + positions[1:]
        keep = self._keep(n, mask_ratio)
        tokens, mask, ids_restore = random_masking(tokens, self._noise(b, n, keep, noise, rng), keep)
        cls = jnp.broadcast_to(self.cls_token[...] + positions[0], (b, 1, cfg.hidden_size))
        x = jnp.concatenate([cls, tokens], axis=1)
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x)
            hidden_states.append(x)
        return {"last_hidden_state": self.layernorm(x).astype(jnp.float32), "hidden_states": tuple(hidden_states),
                "mask": mask, "ids_restore": ids_restore}

    def decode(self, latent: jax.Array, ids_restore: jax.Array, *, interpolate_pos_encoding: bool = False
               ) -> jax.Array:
        """HF ``ViTMAEDecoder``: ``latent`` ``[B, 1 + keep, hidden]`` -> logits ``[B, N, patch_dim]`` (every patch's
        predicted pixels, HF's patchify order)."""
        x = self.decoder_embed(latent).astype(jnp.float32)
        b, n = ids_restore.shape
        masked = jnp.broadcast_to(self.mask_token[...], (b, n + 1 - x.shape[1], x.shape[2]))
        tokens = jnp.take_along_axis(jnp.concatenate([x[:, 1:], masked], axis=1), ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1], tokens], axis=1) + self.decoder_positions(n, interpolate_pos_encoding)
        for layer in self.decoder_layers:
            x = layer(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:].astype(jnp.float32)

    def __call__(self, pixel_values: jax.Array, noise: jax.Array | None = None, *, rng: jax.Array | None = None,
                 mask_ratio: float | None = None, interpolate_pos_encoding: bool = False) -> dict[str, Any]:
        """HF ``ViTMAEForPreTraining.forward`` on pixels ``[B, C, H, W]`` with ``noise`` ``[B, N]`` (or ``rng``).

        Returns ``loss`` (MSE per patch, averaged over masked patches; 0 when none is masked, where HF gives
        NaN), ``logits`` ``[B, N, patch_dim]``, ``mask``, ``ids_restore``, ``last_hidden_state`` and
        ``hidden_states`` (see :meth:`encode`). ``mask_ratio`` overrides the config's."""
        out = self.encode(pixel_values, noise, rng=rng, mask_ratio=mask_ratio,
                          interpolate_pos_encoding=interpolate_pos_encoding)
        logits = self.decode(out["last_hidden_state"], out["ids_restore"],
                             interpolate_pos_encoding=interpolate_pos_encoding)
        target = self.patch_target(jnp.asarray(pixel_values, jnp.float32))
        if self.cfg.norm_pix_loss:
            target = _standardise(target)[0]
        per_patch = jnp.mean((logits - target) ** 2, axis=-1)
        loss = jnp.sum(per_patch * out["mask"]) / jnp.maximum(jnp.sum(out["mask"]), 1.0)
        return {"loss": loss, "logits": logits, **out}

    def patch_target(self, pixel_values: jax.Array) -> jax.Array:
        """The pixels the decoder predicts, ``[B, N, patch_dim]`` (HF ``patchify``)."""
        return patchify(pixel_values, self.cfg.patch_size)

    # ---- BrainLM signal <-> image -----------------------------------------------------------------------
    def image_from_signal(self, signal: jax.Array, pad_value: float | None = None
                          ) -> tuple[jax.Array, tuple[int, int]]:
        """``[B, P, T]`` -> (pixels ``[B, C, H, W]``, (top, left)): the signal centred in the image (half of the
        padding before, the rest after, filled with ``pad_value``, default ``cfg.pad_value`` = BrainLM's -1)
        and repeated over the channels."""
        signal = jnp.asarray(signal, jnp.float32)
        height, width = self.cfg.image_size
        if signal.ndim != 3:
            raise ValueError(f"signal must be [batch, parcels, timepoints], got shape {list(signal.shape)}")
        _, parcels, steps = signal.shape
        if parcels > height or steps > width:
            raise ValueError(f"signal of {parcels} parcels x {steps} timepoints does not fit the model's "
                             f"{height} x {width} image; use at most {height} parcels and windows of at most "
                             f"{width} timepoints")
        top, left = (height - parcels) // 2, (width - steps) // 2
        value = self.cfg.pad_value if pad_value is None else float(pad_value)
        image = jnp.pad(signal, ((0, 0), (top, height - parcels - top), (left, width - steps - left)),
                        constant_values=value)
        return jnp.broadcast_to(image[:, None], (signal.shape[0], self.cfg.num_channels, height, width)), (top, left)

    def signal_patches(self, parcels: int, steps: int) -> np.ndarray:
        """bool ``[N]``: the patches holding at least one pixel of a ``parcels x steps`` signal (not padding only)."""
        height, width = self.cfg.image_size
        top, left = (height - parcels) // 2, (width - steps) // 2
        inside = np.zeros((height, width), bool)
        inside[top:top + parcels, left:left + steps] = True
        (ph, pw), (gh, gw) = self.cfg.patch_size, self.cfg.grid
        return inside.reshape(gh, ph, gw, pw).any(axis=(1, 3)).reshape(-1)

    def embed(self, signal: jax.Array, *, normed: bool = True, pad_value: float | None = None) -> dict[str, jax.Array]:
        """Embeddings of ``signal`` ``[B, P, T]`` with nothing masked, tokens in patch order.

        Returns ``cls`` ``[B, hidden]``, ``mean`` ``[B, hidden]`` (all patch tokens), ``mean_signal``
        ``[B, hidden]`` (the patches that hold signal, not padding only), ``tokens`` ``[B, N, hidden]`` and
        ``token_mask`` bool ``[N]`` (True = holds signal). ``normed``: after the encoder's final LayerNorm
        (HF's ``last_hidden_state``); False: the last layer's output before it (``hidden_states[-1]``).
        BrainLM's own code with ``mask_ratio=0`` still shuffles the tokens by random noise; the CLS and the
        means do not depend on that order, and here tokens stay in patch order."""
        image, _ = self.image_from_signal(signal, pad_value)
        out = self.encode(image, None, mask_ratio=0.0)
        hidden = out["last_hidden_state"] if normed else out["hidden_states"][-1].astype(jnp.float32)
        tokens = hidden[:, 1:]
        inside = jnp.asarray(self.signal_patches(*signal.shape[1:]))
        weights = inside.astype(jnp.float32)[None, :, None]
        return {"cls": hidden[:, 0], "mean": tokens.mean(axis=1),
                "mean_signal": (tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(), 1.0),
                "tokens": tokens, "token_mask": inside}

    def reconstruct(self, signal: jax.Array, noise: jax.Array | None = None, *, rng: jax.Array | None = None,
                    mask_ratio: float | None = None, pad_value: float | None = None) -> dict[str, jax.Array]:
        """Mask and reconstruct ``signal`` ``[B, P, T]`` (``noise`` ``[B, N]`` or ``rng`` picks the patches).

        Returns ``pred`` ``[B, P, T]`` in signal space (with ``norm_pix_loss`` the prediction is un-normalised
        with the input's own statistics, as MAE's visualisations do), ``mask`` bool ``[B, P, T]`` (True =
        hidden from the encoder), ``loss`` and ``logits`` ``[B, N, patch_dim]``. When the signal is smaller
        than the image (BrainLM's padding) the loss is BrainLM's: MSE over the masked pixels of the signal
        region, channels averaged (``norm_pix_loss``: each parcel's time course standardised); otherwise it
        is HF's loss (:meth:`__call__`)."""
        cfg = self.cfg
        signal = jnp.asarray(signal, jnp.float32)
        image, (top, left) = self.image_from_signal(signal, pad_value)
        out = self(image, noise, rng=rng, mask_ratio=mask_ratio)
        _, parcels, steps = signal.shape
        logits, mask = out["logits"], out["mask"]
        padded = (parcels, steps) != cfg.image_size
        if cfg.norm_pix_loss and not padded:
            _, mean, scale = _standardise(self.patch_target(image))
            logits = logits * scale + mean
        predicted = unpatchify(logits, cfg.patch_size, cfg.grid, cfg.num_channels)
        pred = predicted[:, :, top:top + parcels, left:left + steps].mean(axis=1)
        pixel_mask = unpatchify(jnp.broadcast_to(mask[:, :, None], logits.shape), cfg.patch_size, cfg.grid,
                                cfg.num_channels)[:, 0, top:top + parcels, left:left + steps]
        loss = out["loss"]
        if padded:
            target = signal
            if cfg.norm_pix_loss:
                target, mean, scale = _standardise(signal)
                pred_space = pred
                pred = pred * scale + mean
            else:
                pred_space = pred
            loss = jnp.sum((pred_space - target) ** 2 * pixel_mask) / jnp.maximum(jnp.sum(pixel_mask), 1.0)
        return {"pred": pred, "mask": pixel_mask > 0.5, "loss": loss, "logits": out["logits"]}


def _standardise(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x standardised over its last axis, mean, scale) with torch's unbiased variance and HF's epsilon."""
    mean = x.mean(axis=-1, keepdims=True)
    scale = jnp.sqrt(jnp.var(x, axis=-1, ddof=1, keepdims=True) + NORM_PIX_EPS)
    return (x - mean) / scale, mean, scale


@partial(nnx.jit, static_argnames=("normed",))
def embed(model: ViTMAE, signal: jax.Array, normed: bool = True) -> dict[str, jax.Array]:
    """:meth:`ViTMAE.embed`, compiled once per input shape (eager calls compile every small op)."""
    return model.embed(signal, normed=normed)


@partial(nnx.jit, static_argnames=("mask_ratio",))
def reconstruct(model: ViTMAE, signal: jax.Array, noise: jax.Array | None = None, rng: jax.Array | None = None,
                mask_ratio: float | None = None) -> dict[str, jax.Array]:
    """:meth:`ViTMAE.reconstruct`, compiled once per input shape and ``mask_ratio``."""
    return model.reconstruct(signal, noise, rng=rng, mask_ratio=mask_ratio)
