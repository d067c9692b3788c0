"""The model FLOP formula behind MFU (``brainlm.model_flops_per_sample``) against XLA's own count.

On a loop-free program (dense ``xla`` attention, no rematerialisation, layers unrolled in Python) XLA's cost
analysis counts every operation once, so it is an independent reference for the formula: the forward pass
(formula / 3) and the training gradient (the formula's 3 x forward) must agree within 10 % (XLA also counts
element-wise work the formula leaves out). Chunked attention and scans put work inside loop bodies that the
cost analysis counts once; those are not compared here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from brainjax.config import MaskConfig, load_config
from brainjax.models.brainlm import BrainLM, model_flops_per_sample

PARCELS, WINDOW, BATCH = 64, 200, 2


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / BATCH


QUALITY_PATHS = {"neighbour_context": True, "linear_skip": True, "factor_prior": 32, "parcel_identity": True,
                 "factor_dynamics": True}


@pytest.mark.parametrize("decoder,extra", [("full", {}), ("cross", {}), ("cross", QUALITY_PATHS), ("axial", {})],
                         ids=["full", "cross", "cross-linear-paths", "axial"])
def test_formula_matches_xla_cost_analysis_on_a_loop_free_program(decoder, extra):
    model_cfg = dataclasses.replace(load_config("default").model, width=128, mlp=512, depth=2, heads=4,
                                    dec_width=128, dec_mlp=512, dec_depth=1, dec_heads=4, attention="xla",
                                    patch=20, max_parcels=PARCELS, remat=False, decoder=decoder, **extra)
    mask = MaskConfig(strategy="random", ratio=0.75)
    model = BrainLM(model_cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = {"signal": jnp.ones((BATCH, PARCELS, WINDOW)), "parcel_mask": jnp.ones((BATCH, PARCELS), bool),
             "coords": jnp.zeros((BATCH, PARCELS, 3)), "tr": jnp.ones((BATCH,))}

    def loss(p, b, rng):
        out = nnx.merge(graphdef, p, rest)(b, rng, mask)
        return jnp.mean((out["pred"] - out["target"]) ** 2 * out["masked"][..., None])

    rng = jax.random.key(0)
    formula = model_flops_per_sample(model_cfg, PARCELS, WINDOW, mask)
    forward = _xla_flops(loss, params, batch, rng)
    train = _xla_flops(jax.value_and_grad(loss), params, batch, rng)
    assert forward == pytest.approx(formula / 3, rel=0.10)
    assert train == pytest.approx(formula, rel=0.10)
