"""Analytic per-device memory of one BrainLM MAE training step, so a run can be sized before it is launched.

The estimate adds up, in bytes per device, what the trainer's jitted step holds at its peak:

Held for the whole step:

* ``params``       float32 parameters, split over ``fsdp`` exactly as :mod:`brainjax.sharding` splits them
                   (its own :func:`~brainjax.sharding.logical_to_spec` on the analytic parameter list),
                   replicated over ``data``;
* ``optimizer``    AdamW's two float32 moments, sharded likewise (clipping, masking and the schedule keep scalars);
* ``batch``        the per-device input arrays and the masking's index arrays.

Live during the forward and backward pass, for one micro-batch of ``batch / (data * fsdp) / accum_steps``
windows at the compute dtype:

* ``grads``        float32 gradients, sharded like the parameters;
* ``accumulation`` the gradient sum carried through the micro-batch scan when ``optim.accum_steps > 1``;
* ``activations``  what the backward pass reads: every block's inputs and internals (encoder over CLS + visible
                   tokens, decoder over CLS + all tokens), or with ``model.remat`` each block's input (and with
                   ``remat_policy=attention`` its attention output) plus one block's internals while it is
                   recomputed; plus the embedding, decoder-input and head tensors;
* ``attention``    ``xla`` keeps the float32 probabilities [B, H, L, L] of every layer (of one layer under remat)
                   and one more in the backward pass; ``chunked`` holds one block of ``attention_chunk``
                   queries at a time; ``cudnn`` / ``splash`` keep only the per-row softmax statistics;
* ``gathered``     with ``fsdp > 1``, the all-gathered weights at the compute dtype: XLA keeps the forward pass's
                   gathered copy for the backward pass (seen on CPU with and without remat), so about the whole
                   model at the compute dtype.

Live during the optimizer update (after the backward pass has freed its activations):

* ``update``       the new parameters and moments next to the old ones (the non-finite guard's ``lax.cond``
                   chooses between them, so they cannot be written in place): 3 x the parameter shard.

``total = params + optimizer + batch + max(grads + accumulation + activations + attention + gathered, update)``.

It is a model of the program, not a measurement: XLA fuses, reorders and adds workspace (cuDNN, collectives).
What a block and an attention keep was counted in XLA:CPU's buffer assignment of the compiled step (jax 0.12.1),
where XLA's own peak is 0.91x to 1.04x this estimate for the presets (``benchmarks/plan_vs_xla.py``) and 0.78x
to 0.99x for the small models of tests/test_memory.py; GPU and TPU compilers fuse differently and add workspace
of their own, so keep a margin: the verdict calls a plan above 85 % of the usable memory tight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import jax
import jax.numpy as jnp

from brainjax.config import Config, MeshConfig, ModelConfig
from brainjax.models.brainlm import DYNAMICS_EDGE, linear_path_widths
from brainjax.nn.attention import resolve_impl
from brainjax.nn.layers import DECODER_AXES, ENCODER_AXES, AxisNames
from brainjax.nn.masking import visible_count
from brainjax.sharding import logical_to_spec, mesh_shape

PLATFORMS = ("cpu", "gpu", "tpu")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
GIB = 2.0 ** 30
DEFAULT_GPU_FRACTION = 0.75  # JAX preallocates this share of GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION)

ParamSpec = tuple[str, tuple[int, ...], tuple[str | None, ...]]  # name, shape, logical axis names
# XLA:CPU before jax 0.11 fuses the softmax less (see _attention_bytes) and does not keep the layer order that
# brainjax.nn.layers.rematerialise asks for with optimization barriers, so with remat it rebuilds a whole stack at
# once (see estimate); the plan models both (jax 0.10.2: XLA 0.90-0.96x the plan for eight presets, but 2.0x for
# the 650m ones, whose 32-layer encoder it schedules otherwise). GPU and TPU were not measured: the plan assumes
# current XLA there.
_OLD_XLA = tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 11)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step (see the module docstring for what each term holds)."""

    params: int
    optimizer: int
    batch: int
    grads: int
    accumulation: int
    activations: int
    attention: int
    gathered: int
    update: int
    n_params: int  # total parameters of the model (all devices)
    mesh: tuple[int, int]  # (data, fsdp)
    micro_batch: int  # windows per device per micro-step
    accum_steps: int
    lengths: tuple[int, int]  # encoder (CLS + visible) and decoder queries (CLS + all tokens; cross: all tokens)
    impls: tuple[str, str]  # attention implementation of the encoder and of the decoder
    dtype: str
    remat: str | None  # the remat policy, None when off

    @property
    def held(self) -> int:
        """Bytes held for the whole step: parameters, moments, batch."""
        return self.params + self.optimizer + self.batch

    @property
    def backward(self) -> int:
        """Bytes live at the peak of the forward / backward pass, beyond :attr:`held`."""
        return self.grads + self.accumulation + self.activations + self.attention + self.gathered

    @property
    def total(self) -> int:
        """Peak bytes per device: held + the larger of the backward pass and the optimizer update."""
        return self.held + max(self.backward, self.update)


def _linear(name: str, d_in: int, d_out: int, axes: tuple[str | None, str | None], bias: bool = True
            ) -> list[ParamSpec]:
    return [(f"{name}.kernel", (d_in, d_out), axes)] + ([(f"{name}.bias", (d_out,), (axes[1],))] if bias else [])


def _norm(name: str, width: int, axis: str) -> list[ParamSpec]:
    return [(f"{name}.scale", (width,), (axis,)), (f"{name}.bias", (width,), (axis,))]


def _transformer(name: str, depth: int, width: int, mlp: int, axes: AxisNames) -> list[ParamSpec]:
    specs: list[ParamSpec] = []
    for i in range(depth):
        specs += _block(f"{name}.blocks.{i}", width, mlp, axes)
    return specs + _norm(f"{name}.norm", width, axes.embed)


def _block(block: str, width: int, mlp: int, axes: AxisNames) -> list[ParamSpec]:
    return (_norm(f"{block}.norm1", width, axes.embed)
            + _linear(f"{block}.attn.qkv", width, 3 * width, (axes.embed, axes.qkv), bias=False)
            + _linear(f"{block}.attn.out", width, width, (axes.qkv, axes.embed))
            + _mlp(block, width, mlp, axes))


def _mlp(block: str, width: int, mlp: int, axes: AxisNames) -> list[ParamSpec]:
    return (_norm(f"{block}.norm2", width, axes.embed)
            + _linear(f"{block}.fc1", width, mlp, (axes.embed, axes.mlp))
            + _linear(f"{block}.fc2", mlp, width, (axes.mlp, axes.embed)))


def _cross_block(block: str, width: int, mlp: int, axes: AxisNames) -> list[ParamSpec]:
    return (_norm(f"{block}.norm_q", width, axes.embed) + _norm(f"{block}.norm_kv", width, axes.embed)
            + _linear(f"{block}.q", width, width, (axes.embed, axes.qkv), bias=False)
            + _linear(f"{block}.kv", width, 2 * width, (axes.embed, axes.qkv), bias=False)
            + _linear(f"{block}.out", width, width, (axes.qkv, axes.embed))
            + _mlp(block, width, mlp, axes))


def _decoder(cfg: ModelConfig) -> list[ParamSpec]:
    """The decoder stack of ``cfg.decoder`` (full: Transformer; cross: CrossDecoder; factorised: a time Block and
    a CrossBlock per layer; axial: a space Block and a time Block per layer)."""
    width, mlp, axes = cfg.dec_width, cfg.dec_mlp, DECODER_AXES
    if cfg.decoder == "full":
        return _transformer("decoder", cfg.dec_depth, width, mlp, axes)
    specs: list[ParamSpec] = []
    if cfg.decoder == "axial":
        for i in range(cfg.dec_depth):
            specs += _block(f"decoder.space_blocks.{i}", width, mlp, axes)
            specs += _block(f"decoder.time_blocks.{i}", width, mlp, axes)
        return specs + _norm("decoder.norm", width, axes.embed)
    for i in range(cfg.dec_depth):
        if cfg.decoder == "factorised":
            specs += _block(f"decoder.time_blocks.{i}", width, mlp, axes)
        blocks = "cross_blocks" if cfg.decoder == "factorised" else "blocks"
        specs += _cross_block(f"decoder.{blocks}.{i}", width, mlp, axes)
    return specs + _norm("decoder.norm", width, axes.embed)


def _options(cfg: ModelConfig) -> list[ParamSpec]:
    """The parameters of BrainLM's optional paths (neighbour context, linear skip, factor prior and its
    dynamics, parcel identity, the contrastive projection), as :class:`~brainjax.models.brainlm.BrainLM`
    builds them."""
    specs: list[ParamSpec] = []
    n_context, n_skip = linear_path_widths(cfg)
    if cfg.neighbour_context:
        specs += _linear("neighbours", n_context, cfg.dec_width, (None, "dec_embed"))
    if cfg.linear_skip:
        specs += _linear("skip", n_skip, cfg.patch, (None, "patch"))
    if cfg.factor_prior:
        specs += (_linear("factor_loadings", cfg.dec_width, cfg.factor_prior, ("dec_embed", None))
                  + _linear("factor_noise", cfg.dec_width, 1, ("dec_embed", None))
                  + _linear("prior_context", cfg.patch, cfg.dec_width, ("patch", "dec_embed")))
    if cfg.factor_dynamics:
        rank = cfg.factor_prior
        specs += _linear("dynamics", 2 * DYNAMICS_EDGE * rank, cfg.patch * rank, (None, None))
    if cfg.parcel_identity:
        specs += [("parcel_table", (cfg.max_parcels, cfg.width), (None, "embed")),
                  ("dec_parcel_table", (cfg.max_parcels, cfg.dec_width), (None, "dec_embed"))]
    if cfg.contrastive_weight > 0:
        specs += (_linear("cls_proj1", cfg.width, cfg.width, ("embed", None))
                  + _linear("cls_proj2", cfg.width, cfg.contrastive_dim, (None, None)))
    return specs


def _positions(prefix: str, cfg: ModelConfig, width: int, axis: str) -> list[ParamSpec]:
    specs = (_linear(f"{prefix}spatial.fc1", 6 * cfg.fourier_features, width, ("fourier", axis))
             + _linear(f"{prefix}spatial.fc2", width, width, (None, axis)))
    if cfg.time_embedding == "learned":
        specs.append((f"{prefix}temporal.table", (cfg.max_patches, width), (None, axis)))
    return specs


def param_specs(cfg: ModelConfig) -> list[ParamSpec]:
    """Every parameter of :class:`brainjax.models.brainlm.BrainLM` as (name, shape, logical axes), derived from
    the config alone (no model is built)."""
    width, dec = cfg.width, cfg.dec_width
    return (_linear("patch_embed", cfg.patch, width, ("patch", "embed"))
            + _positions("", cfg, width, "embed")
            + [("cls_token", (width,), ("embed",))]
            + _transformer("encoder", cfg.depth, width, cfg.mlp, ENCODER_AXES)
            + _linear("dec_proj", width, dec, ("embed", "dec_embed"))
            + [("mask_token", (dec,), ("dec_embed",))]
            + _positions("dec_", cfg, dec, "dec_embed")
            + _decoder(cfg)
            + _linear("head", dec, cfg.patch, ("dec_embed", "patch"))
            + _options(cfg))


def count_parameters(cfg: ModelConfig) -> int:
    """Total scalar parameters of the BrainLM MAE built from ``cfg``."""
    return sum(math.prod(shape) for _, shape, _ in param_specs(cfg))


def sharded_param_count(cfg: ModelConfig, data: int, fsdp: int) -> int:
    """Parameters held by ONE device of a (data, fsdp) mesh under :data:`brainjax.sharding.LOGICAL_RULES`."""
    mesh = SimpleNamespace(shape={"data": data, "fsdp": fsdp})  # logical_to_spec only reads axis sizes
    total = 0
    for _, shape, names in param_specs(cfg):
        spec = logical_to_spec(names, shape, mesh)
        split = math.prod(mesh.shape[axis] for axis in spec if axis is not None)
        total += math.prod(shape) // split
    return total


def resolve_mesh(cfg: MeshConfig, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) for ``n_devices`` devices, exactly as the trainer's mesh resolves them."""
    if n_devices < 1:
        raise ValueError(f"need at least one device, got {n_devices}")
    return mesh_shape(cfg, n_devices)


def attention_impl(impl: str, length: int, dtype: str, chunk: int, platform: str) -> str:
    """The implementation :func:`brainjax.nn.attention.attention` runs for ``impl`` on ``platform`` at ``length``
    tokens (:func:`brainjax.nn.attention.resolve_impl` for another platform than this one)."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; expected one of {PLATFORMS}")
    return resolve_impl(impl, length, jnp.dtype(dtype), chunk, platform)


def _attention_bytes(impl: str, batch: int, heads: int, q_len: int, k_len: int, chunk: int, c: int,
                     old_cpu: bool = False, remat: bool = False) -> tuple[int, int]:
    """(bytes one layer keeps for the backward pass, bytes of its backward workspace) beyond q, k, v, output;
    ``old_cpu``: XLA:CPU before jax 0.11, which fuses the softmax less (counted in its buffer assignment of the
    tiny and default presets: three probabilities-sized arrays kept per dense layer, three chunk blocks; two
    blocks with ``remat``, in ref_small's)."""
    if impl == "xla":
        probs = batch * heads * q_len * k_len
        # f32 probs (+ cast) kept (on old XLA:CPU also the scores and their exponentials); the backward's
        # d(probs) -> d(scores) is one fused, in-place f32 array
        return probs * ((3 if old_cpu else 1) * 4 + (c if c != 4 else 0)), 4 * probs
    if impl == "chunked":
        # One query block at a time: its f32 scores / probs and their gradient, each computed in place (two
        # blocks; a third with a low-precision compute dtype or on old XLA:CPU), and the block's bool key mask.
        # Counted in XLA:CPU's buffer assignment of tiny, ref_small, brainlm_13m and gpu_local (jax 0.12.1).
        block = batch * heads * min(chunk, q_len) * k_len
        return 0, block * ((3 if (old_cpu and not remat) or c != 4 else 2) * 4 + 1)
    lse = 4 * batch * heads * q_len  # fused kernels keep the per-row log-sum-exp only
    if impl == "cudnn":  # the key mask goes in as a [B, 1, Lq, Lk] bias in the compute dtype, kept for backward
        return lse + c * batch * q_len * k_len, 0
    return lse, 0


class _Stack(NamedTuple):
    """Layers of one kind: ``depth`` blocks over ``batch`` sequences of ``q_len`` queries reading ``k_len`` keys;
    ``memory_len`` > 0 for cross-attention (keys normed and projected from a memory of that length)."""
    depth: int
    batch: int
    q_len: int
    k_len: int
    width: int
    mlp: int
    heads: int
    impl: str
    memory_len: int = 0


def _decoder_stacks(model: ModelConfig, b: int, n_parcels: int, n_patches: int, enc_len: int, impl: str,
                    platform: str) -> list[_Stack]:
    """The decoder's layers for ``model.decoder``: full self-attention over CLS + every token; cross: every
    token reads CLS + the visible tokens; factorised: per layer a time block within each parcel and a cross
    block; axial: per layer a block over CLS + the parcels of each time patch and a time block within each
    parcel."""
    tokens, w, m, h, d = n_parcels * n_patches, model.dec_width, model.dec_mlp, model.dec_heads, model.dec_depth
    cross = _Stack(d, b, tokens, enc_len, w, m, h, impl, memory_len=enc_len)
    if model.decoder == "cross":
        return [cross]
    if model.decoder == "factorised":
        time_impl = attention_impl(model.attention, n_patches, model.dtype, model.attention_chunk, platform)
        return [_Stack(d, b * n_parcels, n_patches, n_patches, w, m, h, time_impl), cross]
    if model.decoder == "axial":
        time_impl = attention_impl(model.attention, n_patches, model.dtype, model.attention_chunk, platform)
        space_impl = attention_impl(model.attention, n_parcels + 1, model.dtype, model.attention_chunk, platform)
        return [_Stack(d, b * n_patches, n_parcels + 1, n_parcels + 1, w, m, h, space_impl),
                _Stack(d, b * n_parcels, n_patches, n_patches, w, m, h, time_impl)]
    return [_Stack(d, b, tokens + 1, tokens + 1, w, m, h, impl)]


def _block_bytes(batch: int, length: int, width: int, mlp: int, c: int) -> int:
    # What XLA:CPU keeps of one block for its backward pass, counted in the buffer assignment of brainlm_13m's
    # encoder (jax 0.12.1): 13 width-sized arrays (the norms' inputs and outputs, q / k / v and the attention
    # output in both the token-major and the head-major layout, the residual sums) and 3 MLP-sized ones (the
    # first projection's output, the tanh of the GELU and its output), plus the float32 LayerNorm statistics
    # (mean, 1/std) of both norms. (Counting only what the maths needs, 8 and 2, put XLA at 1.06-1.3x the plan.)
    # With a 16-bit compute dtype 7 of the width-sized arrays stay float32 (gpu_local and pod_111m compiled for
    # CPU: the residual stream's gradients and the norms' float32 side).
    return batch * length * (c * (13 * width + 3 * mlp) + (4 - c) * 7 * width + 4 * 4)


def estimate(cfg: Config, n_parcels: int, data: int, fsdp: int, platform: str) -> MemoryEstimate:
    """Per-device memory of one MAE training step of ``cfg`` on windows of ``n_parcels`` over a (data, fsdp) mesh.

    platform: "cpu" | "gpu" | "tpu" (decides what ``model.attention = auto`` runs). Raises ValueError for a batch
    that does not split evenly over devices and micro-steps, as the trainer would.
    """
    if cfg.objective != "mae" or cfg.finetune.task not in ("", "forecast"):
        raise ValueError(f"the memory estimate covers BrainLM MAE pretraining only, not objective={cfg.objective!r}"
                         + (f" with finetune.task={cfg.finetune.task!r}" if cfg.finetune.task else ""))
    model, accum = cfg.model, cfg.optim.accum_steps
    if model.dtype not in DTYPE_BYTES:
        raise ValueError(f"model.dtype must be one of {tuple(DTYPE_BYTES)}, got {model.dtype!r}")
    if n_parcels < 1 or cfg.data.window % model.patch:
        raise ValueError(f"need >= 1 parcel and data.window={cfg.data.window} a multiple of patch={model.patch}")
    devices = data * fsdp
    if accum < 1 or cfg.data.batch_size % (accum * devices):
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by optim.accum_steps={accum} x "
                         f"{devices} devices on the batch axes")
    per_device = cfg.data.batch_size // devices
    b, c = per_device // accum, DTYPE_BYTES[model.dtype]
    n_patches = cfg.data.window // model.patch
    tokens = n_parcels * n_patches
    visible = visible_count(cfg.mask, n_parcels, n_patches)
    enc_len, dec_len = visible + 1, tokens + 1
    dec_queries = dec_len if model.decoder == "full" else tokens
    impls = tuple(attention_impl(model.attention, n, model.dtype, model.attention_chunk, platform)
                  for n in (enc_len, dec_queries))
    stacks = [_Stack(model.depth, b, enc_len, enc_len, model.width, model.mlp, model.heads, impls[0]),
              *_decoder_stacks(model, b, n_parcels, n_patches, enc_len, impls[1], platform)]
    old_cpu = _OLD_XLA and platform == "cpu"
    kept = [_attention_bytes(s.impl, s.batch, s.heads, s.q_len, s.k_len, model.attention_chunk, c, old_cpu,
                             model.remat) for s in stacks]
    # + the padded query blocks of chunked attention, + the keep masks (bool) of the three dropouts, + a cross
    # block's memory side (its norm's input and output, keys and values)
    internals = [_block_bytes(s.batch, s.q_len, s.width, s.mlp, c) + (s.batch * s.q_len * s.width * c
                 if s.impl == "chunked" else 0) + (s.batch * s.q_len * (2 * s.width + s.mlp) if model.dropout > 0
                 else 0) + 4 * s.batch * s.memory_len * s.width * c for s in stacks]
    workspace = max(k[1] for k in kept)
    if model.remat:  # block inputs stay; one block (the largest) is rebuilt, with its attention, at a time
        kept_per_block = 2 if model.remat_policy == "attention" else 1  # + each attention's output
        blocks = sum(kept_per_block * s.depth * s.batch * s.q_len * s.width * c for s in stacks)
        largest = max((i for i, s in enumerate(stacks) if s.depth > 0), key=lambda i: internals[i] + kept[i][0],
                      default=0)
        # XLA:CPU before jax 0.11 does not keep the rebuilt layers in order (their optimization barriers): it
        # rebuilds every layer of the largest stack before the first one's backward (ref_small's buffer
        # assignment at the peak: both decoder layers' internals, 6 MLP-sized arrays)
        blocks += (stacks[largest].depth if old_cpu else 1) * internals[largest]
        attention = kept[largest][0] + workspace
    else:
        blocks = sum(s.depth * i for s, i in zip(stacks, internals))
        attention = sum(s.depth * k[0] for s, k in zip(stacks, kept)) + workspace
    # Token grid and its gradient (embedding side), the decoder's input grid and positions, final norm and head
    # inputs, prediction / target / error in float32, and the encoder's output and projection.
    glue = b * (c * (2 * tokens * model.width + 4 * dec_len * model.dec_width + enc_len * (2 * model.width
                + model.dec_width)) + 4 * 3 * tokens * model.patch)

    shard = sharded_param_count(model, data, fsdp) * 4
    window_bytes = n_parcels * (cfg.data.window * 4 + 1 + 3 * 4) + 4  # signal, parcel_mask, coords, tr
    masking = b * (tokens * (4 + 4 + 1) + visible * (4 + 1))  # priorities, order, masked; visible idx / valid
    gathered = count_parameters(model) * c if fsdp > 1 else 0
    return MemoryEstimate(
        params=shard, optimizer=2 * shard, batch=per_device * window_bytes + masking,
        grads=shard, accumulation=shard if accum > 1 else 0, activations=blocks + glue, attention=attention,
        gathered=gathered, update=3 * shard,
        n_params=count_parameters(model), mesh=(data, fsdp), micro_batch=b, accum_steps=accum,
        lengths=(enc_len, dec_queries), impls=impls, dtype=model.dtype, remat=model.remat_mode)


def usable_fraction(platform: str) -> float:
    """Share of device memory a JAX process may use: on GPU the preallocated fraction, elsewhere all of it."""
    if platform != "gpu":
        return 1.0
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() == "false":
        return 1.0
    return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_GPU_FRACTION))


def fits(est: MemoryEstimate, device_memory_gib: float, fraction: float = 1.0) -> bool:
    """Whether the estimated total is within ``fraction`` of ``device_memory_gib``."""
    return est.total <= device_memory_gib * fraction * GIB


def format_table(est: MemoryEstimate, device_memory_gib: float | None = None, fraction: float = 1.0) -> str:
    """A short table of the terms in GiB per device, its inputs, and (given a device size) a verdict line.

    fraction: share of ``device_memory_gib`` the process may use (see :func:`usable_fraction`).
    """
    data, fsdp = est.mesh
    rows = [("held through the step", None),
            (f"  parameters (f32, {'1/' + str(fsdp) + ' of ' if fsdp > 1 else ''}{est.n_params:,})", est.params),
            ("  AdamW moments (2 x f32)", est.optimizer), ("  batch + masks", est.batch),
            ("forward / backward pass", est.backward),
            ("  gradients (f32)", est.grads), (f"  gradient accumulator (accum {est.accum_steps})", est.accumulation),
            (f"  activations ({est.dtype}, remat {est.remat or 'off'})", est.activations),
            (f"  attention ({est.impls[0]} / {est.impls[1]})", est.attention),
            (f"  fsdp-gathered weights ({est.dtype})", est.gathered),
            ("optimizer update (new params + moments)", est.update),
            ("total = held + max(backward, update)", est.total)]
    lines = [f"memory per device (estimate, mesh data {data} x fsdp {fsdp}):"]
    lines += [f"  {name:<44}{value / GIB:>9.3f} GiB" if value is not None else f"  {name}" for name, value in rows]
    lines.append(f"  inputs: {est.n_params:,} params x 4 B; micro-batch {est.micro_batch} window(s) per device x "
                 f"{est.accum_steps} step(s); {est.lengths[0]:,} encoder tokens (with CLS) / "
                 f"{est.lengths[1]:,} decoder queries")
    if device_memory_gib is not None:
        usable = device_memory_gib * fraction
        share = est.total / (usable * GIB) if usable > 0 else math.inf
        verdict = "fits" if share <= 0.85 else "fits, tight" if share <= 1.0 else "DOES NOT FIT"
        of = f" ({fraction:.0%} of {device_memory_gib:g})" if fraction < 1.0 else ""
        lines.append(f"verdict: {verdict}: {est.total / GIB:.2f} GiB of {usable:.3g} GiB usable{of} "
                     f"per device ({share:.0%})")
    return "\n".join(lines)
