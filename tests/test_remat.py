"""Rematerialisation policies (brainjax.nn.layers.rematerialise): the same values and gradients as no remat, and
the trade each policy promises, read from XLA's own cost and memory analyses of the compiled gradient.

``full`` keeps each block's input and recomputes the block, attention included; ``attention`` also keeps every
attention output, so the backward pass recomputes norms, projections and the MLP but not the attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from brainjax.config import ConfigError, check, load_config, override
from brainjax.nn.layers import DECODER_AXES, AxialDecoder, CrossDecoder, FactorisedDecoder, Transformer, rematerialise
from brainjax.train.step import step_compiler_options

WIDTH, HEADS, MLP = 16, 2, 64
POLICIES = (None, "full", "attention")


def _stack(kind: str, policy: str | None, impl: str):
    common = dict(dropout_rate=0.0, attn_impl=impl, chunk=8, remat=policy, dtype=jnp.float32, rngs=nnx.Rngs(0))
    cls = {"self": Transformer, "cross": CrossDecoder, "factorised": FactorisedDecoder, "axial": AxialDecoder}[kind]
    return cls(2, WIDTH, HEADS, MLP, DECODER_AXES, **common)


def _inputs(kind: str):
    rng = np.random.default_rng(0)
    shape = (2, 3, 6, WIDTH) if kind in ("factorised", "axial") else (2, 18, WIDTH)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    memory = jnp.asarray(rng.normal(size=(2, 5, WIDTH)), jnp.float32)
    mask = jnp.asarray(rng.random((2, {"self": 18, "axial": 3}.get(kind, 5))) > 0.2).at[:, 0].set(True)
    if kind == "axial":  # its memory is CLS [B, W] and its mask the parcels'
        memory = memory[:, 0]
    return x, memory, mask


def _loss_and_grads(kind: str, policy: str | None, impl: str):
    model = _stack(kind, policy, impl)
    x, memory, mask = _inputs(kind)

    def loss(model, x):
        out = model(x, mask) if kind == "self" else model(x, memory, mask)
        return jnp.mean(jnp.sin(out) * out)

    value, (grads, dx) = jax.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(model, x)
    return value, jax.tree.leaves(nnx.state(grads)) + [dx]


@pytest.mark.parametrize("kind, impl", [("self", "chunked"), pytest.param("self", "xla", marks=pytest.mark.slow),
                                        *(pytest.param(k, i, marks=pytest.mark.slow)
                                          for k in ("cross", "factorised") for i in ("xla", "chunked")),
                                        pytest.param("axial", "chunked", marks=pytest.mark.slow)])
def test_every_policy_gives_the_values_and_gradients_of_no_remat(kind, impl):
    reference, ref_grads = _loss_and_grads(kind, None, impl)
    for policy in POLICIES[1:]:
        value, grads = _loss_and_grads(kind, policy, impl)
        np.testing.assert_allclose(value, reference, rtol=1e-6)
        assert len(grads) == len(ref_grads)
        for got, want in zip(grads, ref_grads):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _compiled_gradient(policy: str | None):
    """The compiled gradient of a four-layer stack at a length where attention is the costliest part."""
    model = Transformer(4, WIDTH, HEADS, MLP, DECODER_AXES, dropout_rate=0.0, attn_impl="xla", chunk=512,
                        remat=policy, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    x = jnp.ones((2, 512, WIDTH), jnp.float32)

    def loss(params, x):
        return jnp.mean(nnx.merge(graphdef, params)(x, None) ** 2)

    # scheduled for memory, as the trainer compiles a remat step on CPU (XLA:CPU's default scheduler would start
    # the recomputation early and keep what remat dropped)
    return jax.jit(jax.grad(loss)).lower(params, x).compile(step_compiler_options(True, "cpu"))


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_attention_policy_recomputes_less_than_full_and_keeps_less_than_none():
    none, full, keep = (_compiled_gradient(p) for p in POLICIES)
    # full remat runs each attention forward a second time in the backward pass; the attention policy does not
    assert _flops(none) <= _flops(keep) < _flops(full)
    # with dense attention the kept probabilities [B, H, L, L] dominate: remat (either policy) drops them
    temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in zip(("none", "full", "keep"),
                                                                         (none, full, keep))}
    assert temp["keep"] < temp["none"] and temp["full"] < temp["none"]


def test_unknown_policy_is_refused_by_the_layers_and_the_config():
    with pytest.raises(ValueError, match="remat policy must be one of"):
        _stack("self", "some", "xla")
    with pytest.raises(ValueError, match="remat policy must be one of"):
        rematerialise(lambda x: x, "selective")
    with pytest.raises(ConfigError, match="model.remat_policy='selective'"):
        check(override(load_config("tiny"), ["model.remat_policy=selective"]))
    assert override(load_config("tiny"), ["model.remat=false"]).model.remat_mode is None
    assert override(load_config("tiny"), ["model.remat=true", "model.remat_policy=attention"]).model.remat_mode \
        == "attention"


def test_dropout_under_every_policy_draws_the_masks_of_no_remat():
    x, _, mask = _inputs("self")
    key = jax.random.key(3)

    def loss_and_grads(policy):
        model = Transformer(2, WIDTH, HEADS, MLP, DECODER_AXES, dropout_rate=0.3, attn_impl="chunked", chunk=8,
                            remat=policy, dtype=jnp.float32, rngs=nnx.Rngs(0))
        value, (grads, dx) = jax.jit(nnx.value_and_grad(lambda m, x: jnp.mean(m(x, mask, key) ** 2),
                                                        argnums=(0, 1)))(model, x)
        return value, jax.tree.leaves(nnx.state(grads)) + [dx]

    reference, ref_grads = loss_and_grads(None)
    for policy in POLICIES[1:]:
        value, grads = loss_and_grads(policy)
        np.testing.assert_allclose(value, reference, rtol=1e-6)
        for got, want in zip(grads, ref_grads):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _free_order(fn, policy):  # the previous rematerialisation: nnx.remat alone, XLA free to reorder layers
    return nnx.remat(fn, policy=jax.checkpoint_policies.save_only_these_names("attention_out"))


@pytest.mark.slow
def test_backward_pass_holds_one_layers_internals_at_a_time(monkeypatch):
    """XLA's temporaries for a three-layer stack whose MLP dominates (``remat_policy=attention``, as ``ref_small``),
    against plain ``nnx.remat``: never more, and on JAX whose XLA keeps the order the barriers ask for (0.11 and
    later) a fifth less or better (0.12.1: 13.8 -> 9.5 MiB; without the order XLA recomputed the next layer while
    the last one's weight and bias gradients were pending)."""
    import brainjax.nn.layers as layers

    def temp_bytes():
        model = Transformer(3, WIDTH, HEADS, 512, DECODER_AXES, dropout_rate=0.0, attn_impl="chunked", chunk=128,
                            remat="attention", dtype=jnp.float32, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        x, mask = jnp.ones((2, 512, WIDTH), jnp.float32), jnp.ones((2, 512), bool)

        def loss(params, x):
            return jnp.mean(nnx.merge(graphdef, params)(x, mask) ** 2)
        compiled = jax.jit(jax.grad(loss)).lower(params, x).compile(step_compiler_options(True, "cpu"))
        return compiled.memory_analysis().temp_size_in_bytes

    in_order = temp_bytes()
    monkeypatch.setattr(layers, "rematerialise", _free_order)
    free = temp_bytes()
    assert in_order <= free
    if tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11):
        assert in_order <= 0.8 * free, (in_order, free)
