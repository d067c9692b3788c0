"""The training loop every brainjax objective uses: sharded state, one jitted step, eval, logs, checkpoints.

Everything outside the jitted step lives here: creating the state already sharded (or restoring it onto the
current mesh), feeding global batches, logging on process 0, periodic evaluation with a fixed rng,
checkpointing (every ``checkpoint_every`` steps, at the end, and on SIGTERM), and the non-finite-loss policy.

Resuming is exact: the state, the data-iterator state and the step are restored together and the rng of
update s is ``fold_in(base_rng, s)``, so a resumed run computes the same losses as an uninterrupted one.

The work dir may be a local directory or an object-store URI (``gs://bucket/run``): it is an
``etils.epath.Path`` throughout (see :mod:`brainjax.paths`), and every process writes its shards of the one
Orbax checkpoint there.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from brainjax import sharding
from brainjax.config import Config, Lineage, from_saved, param_fields, to_dict
from brainjax.distributed import is_main
from brainjax.errors import CheckpointMismatchError, DataChangeError, NonFiniteLossError
from brainjax.paths import atomic_write_text, workdir_path
from brainjax.train import checkpoint as ckpt_lib
from brainjax.train import logging as log_lib
from brainjax.train.step import (
    NONFINITE_MODES,
    Task,
    eval_step,
    init_train_state,
    micro_batch_sharding,
    optimizer_for,
    step_compiler_options,
    train_step,
)

EVAL_RNG_SALT = 0x5EED  # eval masks come from fold_in(key(seed), salt): identical at every evaluation


@dataclass
class RunResult:
    start_step: int  # step the run started (or resumed) from
    final_step: int  # last completed step
    preempted: bool = False  # stopped by SIGTERM (a checkpoint at final_step was saved)
    eval: dict[str, float] = field(default_factory=dict)  # last validation metrics
    params: Any = None  # final parameters (nnx.State, sharded)
    model: Any = None  # the final model (those parameters merged into the task's module)


class Trainer:
    """Train ``task`` on ``train_data`` with the run configuration ``cfg``, logging to ``workdir``.

    ``train_data`` is an iterator of host-local numpy batches with ``get_state()``/``set_state()`` (the
    data pipeline's Loader). ``eval_data()`` returns one fresh pass over validation batches (or None to skip
    evaluation). ``to_global(batch, mesh)`` turns a host batch into global ``jax.Array``s sharded over the
    batch axes (the pipeline's ``to_global``). ``warm_start(state) -> state`` replaces parameters of a fresh
    state (fine-tuning from a pretrained checkpoint); it is not applied when resuming this run's checkpoint.
    Parameters the task's ``frozen_mask`` marks True get zero updates. ``lineage`` is saved with every
    checkpoint (and its parameter-shaping fields checked on resume). ``on_finish(model, batch, rng, write) ->
    facts`` runs once at the end on the first validation batch (every process calls it, ``write`` on the one
    that writes files; see :func:`brainjax.eval.figures.reconstruction_hook`); its facts are printed.
    """

    def __init__(self, cfg: Config, task: Task, workdir: str | os.PathLike, train_data: Iterator[dict],
                 eval_data: Callable[[], Iterable[dict]] | None, to_global: Callable[[dict, Mesh], dict],
                 mesh: Mesh | None = None, warm_start: Callable[[dict], dict] | None = None,
                 lineage: Lineage | None = None, on_finish: Callable[..., dict] | None = None):
        if cfg.train.nonfinite not in NONFINITE_MODES:
            raise ValueError(f"train.nonfinite must be one of {NONFINITE_MODES}, got {cfg.train.nonfinite!r}")
        self.cfg, self.task, self.workdir = cfg, task, workdir_path(workdir)
        self.train_data, self.eval_data, self.to_global = train_data, eval_data, to_global
        self.mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
        accum, batch = cfg.optim.accum_steps, cfg.data.batch_size
        per_batch = sharding.devices_per_batch(self.mesh)
        if accum < 1 or batch % (accum * per_batch) != 0:
            raise ValueError(f"data.batch_size={batch} must be divisible by optim.accum_steps={accum} x "
                             f"{per_batch} devices on the batch axes")
        self.is_main = is_main()
        abstract_model = sharding.abstract_model(lambda: task.init_model(nnx.Rngs(0)))
        self.graphdef = nnx.split(abstract_model, nnx.Param, ...)[0]
        self.tx, self.schedule = optimizer_for(task, cfg, nnx.state(abstract_model, nnx.Param))
        self.warm_start, self.lineage, self.on_finish = warm_start, lineage or Lineage(), on_finish
        self.base_rng = jax.random.key(cfg.train.seed)
        self.eval_rng = jax.random.fold_in(self.base_rng, EVAL_RNG_SALT)
        self._init_fn = init_train_state(task, self.tx, cfg.train.seed)
        self.abstract_state = sharding.abstract_sharded(self._init_fn, self.mesh)
        self.state_shardings = jax.tree.map(lambda a: a.sharding, self.abstract_state)
        self._stop_requested = threading.Event()

    # ----------------------------------------------------------------------------------------- compiled steps
    @functools.cached_property
    def batch_shardings(self) -> dict:
        return {k: sharding.batch_sharding(self.mesh) for k in self.task.input_keys}

    @functools.cached_property
    def train_step(self):
        micro = micro_batch_sharding(self.mesh, sharding.BATCH_AXES) if self.cfg.optim.accum_steps > 1 else None
        fn = functools.partial(train_step, self.graphdef, task=self.task, tx=self.tx, schedule=self.schedule,
                               accum_steps=self.cfg.optim.accum_steps, micro_sharding=micro)
        replicated = sharding.replicated(self.mesh)
        options = step_compiler_options(self.cfg.model.remat, self.mesh.devices.flat[0].platform)
        return jax.jit(fn, in_shardings=(self.state_shardings, self.batch_shardings, replicated),
                       out_shardings=(self.state_shardings, replicated), donate_argnums=0, compiler_options=options)

    @functools.cached_property
    def eval_step(self):
        fn = functools.partial(eval_step, self.graphdef, task=self.task)
        replicated = sharding.replicated(self.mesh)
        return jax.jit(fn, in_shardings=(self.state_shardings["params"], self.state_shardings["rest"],
                                         self.batch_shardings, replicated), out_shardings=replicated)

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        missing = [k for k in self.task.input_keys if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it has {sorted(batch)}")
        return self.to_global({k: batch[k] for k in self.task.input_keys}, self.mesh)

    # ------------------------------------------------------------------------------------------- state
    def initial_state(self) -> dict:
        """The freshly initialised train state, created directly in its sharded layout."""
        return sharding.init_sharded(self._init_fn, self.mesh)

    def _check_config(self, saved: dict, saved_lineage: dict, step: int) -> None:
        """Refuse a checkpoint whose parameters were built from other values of the fields that shape them."""
        saved_cfg, saved_lineage = from_saved(saved, saved_lineage)
        old = {**param_fields(saved_cfg), **param_fields(saved_lineage, "lineage.")}
        new = {**param_fields(self.cfg), **param_fields(self.lineage, "lineage.")}
        diff = [f"{k}: checkpoint {old[k]!r} vs now {new[k]!r}" for k in new if old[k] != new[k]]
        if diff:
            raise CheckpointMismatchError(
                f"{self.workdir}: the checkpoint at step {step} was trained with a different model "
                f"configuration ({'; '.join(diff)}). Use a new --workdir, or the checkpoint's model config.")

    def restore_or_init(self, checkpointer: ckpt_lib.Checkpointer) -> tuple[dict, int]:
        restored = checkpointer.restore_latest(self.abstract_state, self._check_config)
        if restored is None:
            state = self.initial_state()
            return (self.warm_start(state) if self.warm_start else state), 0
        try:  # the loader itself warns when its setup (batch, window, seed...) differs from the saved one
            self.train_data.set_state(restored.data)
        except DataChangeError as err:
            if not self.cfg.train.allow_data_change:
                raise DataChangeError(f"{self.workdir}: {err}. Resume on the same data, use a new --workdir, or "
                                      f"pass --allow-data-change to continue on this data") from err
            self._print(f"note: {err}; continuing on the new data (--allow-data-change), the data order restarts")
        except ValueError as err:
            self._print(f"note: cannot continue the checkpoint's data order ({err}); the data order restarts")
        return restored.state, restored.step

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, state: dict) -> dict[str, float]:
        """Task metrics over up to ``data.eval_batches`` validation batches (all when 0), prefixed ``val_``."""
        if self.eval_data is None:
            return {}
        totals: dict[str, float] = {}
        limit = self.cfg.data.eval_batches
        for index, batch in enumerate(self.eval_data()):
            if limit and index >= limit:
                break
            batch = self.task.prepare_eval(batch)
            sums = self.eval_step(state["params"], state["rest"], self.global_batch(batch),
                                  jax.random.fold_in(self.eval_rng, index))
            for key, value in jax.device_get(sums).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        if not totals:
            return {}
        return {f"val_{k}": v for k, v in self.task.summarize(totals).items()}

    # ------------------------------------------------------------------------------------------- main loop
    def run(self, until: int | None = None) -> RunResult:
        """Train to ``train.steps`` (resuming from the latest checkpoint in the workdir).

        ``until`` stops early after that step with a checkpoint, as a preemption would (for chunked jobs and
        tests). A SIGTERM does the same after the current step. Returns where the run ended.
        """
        cfg, tcfg = self.cfg, self.cfg.train
        self.workdir.mkdir(parents=True, exist_ok=True)
        checkpointer = ckpt_lib.Checkpointer(self.workdir / "checkpoints", tcfg.keep_last, tcfg.keep_every,
                                             tcfg.async_checkpoint)
        metrics_log = log_lib.MetricsLog(self.workdir, enabled=self.is_main)
        config_json = _jsonify(to_dict(cfg))
        try:
            state, start = self.restore_or_init(checkpointer)
            metrics_log.truncate_after(start)
            if self.is_main:
                atomic_write_text(self.workdir / "config.json", json.dumps(config_json, indent=2, sort_keys=True))
            n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state["params"]))
            self._print(f"parameters: {n_params:,} | mesh {dict(self.mesh.shape)} | "
                        + (f"resuming from step {start}" if start else "starting from scratch")
                        + f" | workdir {self.workdir}")
            result = RunResult(start, start)
            if start >= tcfg.steps:
                self._print(f"checkpoint is at step {start} >= train.steps={tcfg.steps}: nothing to train")
                result.params, result.model = state["params"], self._model(state)
                return result
            with _sigterm_handler(self._stop_requested):
                state, result = self._loop(state, start, checkpointer, metrics_log, config_json, until)
            result.params, result.model = state["params"], self._model(state)
            if not result.preempted:
                self._report(state, result)
            return result
        finally:
            checkpointer.close()
            metrics_log.close()

    def _loop(self, state, start, checkpointer, metrics_log, config_json, until) -> tuple[dict, RunResult]:
        cfg, tcfg = self.cfg, self.cfg.train
        batch_size = cfg.data.batch_size
        # only process 0 logs MFU, so only it measures (and caches) the peak; the others never report it
        peak = tcfg.peak_flops or (log_lib.measure_peak_flops(cfg.model.dtype, self.workdir) if self.is_main
                                   else 0.0)
        meter = log_lib.Throughput(self.task.tokens_per_sample() * batch_size,
                                   self.task.flops_per_sample() * batch_size, peak * self.mesh.size)
        progress = log_lib.Progress(tcfg.steps, start, enabled=self.is_main)
        result, window, record = RunResult(start, start), [], {}
        data_iter = iter(self.train_data)
        # training wall time since step 0 (a resumed run continues its log's clock), validation and checkpoint
        # saves left out: the x axis of a time-to-quality curve (compiling each invocation's first step is in it)
        train_s, clock = float(metrics_log.last("train_s") or 0.0) if start else 0.0, time.perf_counter()
        try:
            for step in range(start, tcfg.steps):
                batch = self.global_batch(next(data_iter))
                state, metrics = self.train_step(state, batch, self.base_rng)
                done = step + 1
                window.append(metrics)
                if step == start:  # exclude compilation from the throughput
                    jax.block_until_ready(metrics)
                    meter.restart()
                else:
                    meter.tick()
                last = done == tcfg.steps
                preempt = (self._stop_requested.is_set() or checkpointer.reached_preemption(done)
                           or (until is not None and done >= until))
                record, paused = {}, False
                if done % tcfg.log_every == 0 or last or preempt:
                    record.update(self._summarize_window(window, done))
                    record.update(meter.report())
                    window = []
                evaluating = last or bool(tcfg.eval_every and done % tcfg.eval_every == 0)
                saving = last or preempt or done % tcfg.checkpoint_every == 0
                if record or evaluating or saving:  # the clock stops before validation and saves
                    jax.block_until_ready(metrics)
                    train_s, clock = train_s + time.perf_counter() - clock, time.perf_counter()
                if record or evaluating:
                    record["train_s"] = train_s
                if evaluating:
                    record.update(self.evaluate(state))
                    result.eval = {k: v for k, v in record.items() if k.startswith("val_")}
                    paused = True
                if record:
                    metrics_log.write(done, record)
                    shown = ("loss", "val_r2", "tokens_per_s", "mfu")
                    progress.update(1, **{k: record[k] for k in shown if k in record})
                else:
                    progress.update(1)
                if saving:
                    self._raise_if_nonfinite(metrics, done)
                    checkpointer.save(done, state, self.train_data.get_state(), config_json, record,
                                      _jsonify(to_dict(self.lineage)))
                    metrics_log.sync()  # a remote log is uploaded at least as often as checkpoints are taken
                    paused = True
                if paused:  # evaluation and checkpoint time do not count as training throughput
                    meter.restart()
                    clock = time.perf_counter()
                result.final_step = done
                if preempt:
                    checkpointer.wait()
                    result.preempted = True
                    progress.write(f"stopped at step {done} and saved a checkpoint; run the same command again "
                                   f"to resume")
                    break
        finally:
            progress.close()
        return state, result

    def _summarize_window(self, window: list[dict], step: int) -> dict[str, float]:
        """Mean loss/grad-norm over the steps since the last log, last lr, task metrics over the window."""
        host = jax.device_get(window)
        self._raise_if_nonfinite(host[-1], step)
        sums: dict[str, float] = {}
        for m in host:
            for key, value in m["sums"].items():
                sums[key] = sums.get(key, 0.0) + float(value)
        record = {"loss": float(np.mean([float(m["loss"]) for m in host])),
                  "lr": float(host[-1]["lr"]),
                  "grad_norm": float(np.mean([float(m["grad_norm"]) for m in host])),
                  "skipped": int(host[-1]["skipped"])}
        record.update({f"train_{k}": v for k, v in self.task.summarize(sums).items()})
        return record

    def _raise_if_nonfinite(self, metrics: dict, step: int) -> None:
        if self.cfg.train.nonfinite != "stop":
            return
        first = int(jax.device_get(metrics["first_nonfinite"]))
        if first >= 0:
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {first + 1} (update {first}; detected by step {step}); "
                f"train.nonfinite=stop, so training stops and no checkpoint after step {first} is written. "
                f"Lower optim.base_lr, check the data, or use --set train.nonfinite=skip")

    def _report(self, state: dict, result: RunResult) -> None:
        if result.eval:
            self._print("validation: " + ", ".join(f"{k[4:]}={v:.4f}" for k, v in result.eval.items()))
        if self.on_finish is None or self.eval_data is None:
            return
        batch = next(iter(self.eval_data()), None)
        if batch is None:
            return
        model = self._model(state)
        facts = self.on_finish(model, self.global_batch(self.task.prepare_eval(batch)),
                               jax.random.fold_in(self.eval_rng, 0), self.is_main)
        for key, value in (facts or {}).items():
            self._print(f"{key}: {value}")

    def _model(self, state: dict) -> nnx.Module:
        return nnx.merge(self.graphdef, state["params"], state["rest"])

    def _print(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)


def _jsonify(value: Any) -> Any:
    return json.loads(json.dumps(value))


class _sigterm_handler:
    """On SIGTERM set ``event`` (the loop then saves and stops after the current step) instead of dying.

    Installed only in a single-process run on the main thread: with several processes JAX's preemption
    service owns SIGTERM and :meth:`Checkpointer.reached_preemption` gives every process the same stop step.
    """

    def __init__(self, event: threading.Event):
        self.event, self.previous = event, None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False

