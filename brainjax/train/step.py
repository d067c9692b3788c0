"""The pure train and eval steps shared by every objective (a :class:`~brainjax.tasks.base.Task`).

A step is ``(graphdef, state, batch, rng) -> (state, metrics)``: the model is rebuilt from ``graphdef`` and the
state's arrays inside the traced function, so the step is a pure function of arrays that is jitted once with
explicit shardings (see :mod:`brainjax.train.trainer`). The train state is a dict::

    step             int32 []   optimizer updates done (the rng of update s is fold_in(base_rng, s))
    params           nnx.State  the nnx.Param variables
    rest             nnx.State  every other model variable (e.g. dropout RNG stream counters)
    opt              optax state
    skipped          int32 []   updates skipped because the loss or the gradient was not finite
    first_nonfinite  int32 []   first step whose loss was not finite (-1 = none)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from brainjax.config import Config
from brainjax.tasks.base import Task
from brainjax.train.optim import make_optimizer

NONFINITE_MODES = ("stop", "skip")


def optimizer_for(task: Task, cfg: Config, abstract_params: Any
                  ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """The run's optimizer and schedule; with a frozen partition only when the task freezes something, so the
    optimizer state of an objective that trains everything is AdamW's alone (as its checkpoints hold it)."""
    frozen = task.frozen_mask if task.frozen_mask(abstract_params) is not None else None
    return make_optimizer(cfg.optim, cfg.train.steps, cfg.data.batch_size, frozen=frozen)


# XLA:CPU schedules for concurrency by default and starts a rematerialised forward pass early, which keeps alive
# what remat dropped; with remat on, schedule for memory as GPU and TPU do (jax 0.10.2, ref_small batch 8 with
# remat_policy=attention: peak RSS 4.43 -> 3.72 GiB at the same step time, 2-core AMD EPYC).
_CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def step_compiler_options(remat: bool, platform: str) -> dict[str, str]:
    """``compiler_options`` for jitting the training step on ``platform`` ("cpu" | "gpu" | "tpu")."""
    return dict(_CPU_MEMORY_SCHEDULER) if remat and platform == "cpu" else {}


def init_train_state(task: Task, tx: optax.GradientTransformation, seed: int) -> Callable[[], dict]:
    """A function building the initial train state (run it under jit with out_shardings to create it sharded)."""
    def init() -> dict:
        model = task.init_model(nnx.Rngs(seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest, "opt": tx.init(params),
                "skipped": jnp.zeros((), jnp.int32), "first_nonfinite": jnp.full((), -1, jnp.int32)}
    return init


def _micro_batches(x: jax.Array, accum: int, sharding: NamedSharding | None) -> jax.Array:
    # [B, ...] -> [accum, B/accum, ...] taking every accum-th sample, so each micro-batch is spread over all
    # devices (a plain reshape would put micro-batch 0 on the first devices only).
    x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, sharding) if sharding is not None else x


def train_step(graphdef: nnx.GraphDef, state: dict, batch: Mapping[str, jax.Array], rng: jax.Array, *,
               task: Task, tx: optax.GradientTransformation, schedule: Callable[[jax.Array], jax.Array],
               accum_steps: int = 1, micro_sharding: NamedSharding | None = None) -> tuple[dict, dict]:
    """One optimizer update on a global batch; ``rng`` is the run's base key (folded with the step here).

    Gradient accumulation runs ``accum_steps`` micro-batches in a ``lax.scan`` inside this one step (one
    compiled program, one optimizer update, the step counter and lr schedule count updates, and the data
    loader and checkpoints are unaware of it); gradients are averaged over micro-batches.
    A non-finite loss or gradient norm leaves the parameters, optimizer and model state unchanged and is
    counted in ``skipped`` (``first_nonfinite`` records the first such step for ``train.nonfinite=stop``).
    """
    step_rng = jax.random.fold_in(rng, state["step"])
    params = state["params"]

    def loss_fn(params, rest, batch, rng):
        model = nnx.merge(graphdef, params, rest, copy=True)
        loss, sums = task.loss(model, batch, rng, deterministic=False)
        return loss, (sums, nnx.split(model, nnx.Param, ...)[2])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, (sums, rest)), grads = grad_fn(params, state["rest"], batch, step_rng)
    else:
        micro = {k: _micro_batches(v, accum_steps, micro_sharding) for k, v in batch.items()}

        def accumulate(carry, xs):
            grads, rest = carry
            mb, index = xs
            (loss, (sums, rest)), g = grad_fn(params, rest, mb, jax.random.fold_in(step_rng, index))
            return (jax.tree.map(jnp.add, grads, g), rest), (loss, sums)

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, rest), (losses, sums) = jax.lax.scan(
            accumulate, (zeros, state["rest"]), (micro, jnp.arange(accum_steps)))
        grads = jax.tree.map(lambda g: g / accum_steps, grads)
        loss = losses.mean()
        sums = jax.tree.map(lambda s: s.sum(0), sums)

    grad_norm = optax.tree.norm(grads)
    updates, opt = tx.update(grads, state["opt"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # lax.cond (not jnp.where) so typed PRNG keys in `rest` are selected too.
    new_params, opt, rest = jax.lax.cond(finite, lambda: (new_params, opt, rest),
                                         lambda: (params, state["opt"], state["rest"]))
    skipped = state["skipped"] + jnp.where(finite, 0, 1).astype(jnp.int32)
    first_bad = jnp.where((state["first_nonfinite"] < 0) & ~finite, state["step"], state["first_nonfinite"])
    # Skipped updates do not advance the optimizer count, so the lr of this update is at count step - skipped.
    lr = schedule(state["step"] - state["skipped"])
    new_state = {"step": state["step"] + 1, "params": new_params, "rest": rest, "opt": opt,
                 "skipped": skipped, "first_nonfinite": first_bad.astype(jnp.int32)}
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": skipped,
               "first_nonfinite": new_state["first_nonfinite"], "sums": sums}
    return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, batch: Mapping[str, jax.Array],
              rng: jax.Array, *, task: Task) -> dict[str, jax.Array]:
    """Metric sums of one evaluation batch (deterministic model; the caller fixes ``rng`` per batch)."""
    model = nnx.merge(graphdef, params, rest, copy=True)
    _, sums = task.loss(model, batch, rng, deterministic=True)
    return sums


def micro_batch_sharding(mesh, batch_axes) -> NamedSharding:
    return NamedSharding(mesh, P(None, batch_axes))
