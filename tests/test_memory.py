"""The analytic memory estimate (brainjax.train.memory) and `brainjax plan`.

The parameter terms are checked exactly against the real model and the trainer's real shardings. The whole
estimate is checked against XLA's own buffer assignment of the trainer's jitted step on CPU
(``compiled.memory_analysis()``): its ``argument_size`` is the state and batch passed in (parameters, AdamW
moments, step counters, the batch), and ``argument + temp + output - alias`` is the step's peak (``temp`` holds
gradients, activations, attention and the optimizer's new state; outputs alias the donated state).

Agreement: the estimate counts what XLA:CPU's buffer assignment holds (jax 0.12.1). With these small models
XLA's peak is 0.78x to 0.99x the estimate on jax 0.12.1 and 0.72x to 1.0x on jax 0.10.2 (whose XLA fuses the
softmax less, which the estimate models for CPU). The test asserts 2/3x to 1.25x. Two compile options are set.
``xla_backend_optimization_level=0`` touches LLVM only: the buffer assignment is identical and compiling is
about 2x faster. The memory-optimised
CPU scheduler: XLA:CPU's default, concurrency-optimised scheduler starts the rematerialised forward pass early,
so ``model.remat`` saves nothing there (its figure is byte-identical with and without remat, and dense attention
then reads up to 1.55x the estimate); GPU and TPU schedule for memory, as this option does.
"""

from __future__ import annotations

import math

import jax
import pytest
from flax import nnx

from brainjax import cli, sharding
from brainjax.config import Config, DataConfig, MaskConfig, MeshConfig, ModelConfig, load_config, override
from brainjax.models.brainlm import BrainLM, count_params
from brainjax.tasks import BrainLMTask
from brainjax.train import memory
from brainjax.train.optim import make_optimizer
from brainjax.train.plan import compiled_step_memory
from brainjax.train.step import init_train_state

PARCELS = 32
CPU_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}  # for every variant, remat or not
SMALL = Config(data=DataConfig(window=80, batch_size=8), mask=MaskConfig(ratio=0.75),
               model=ModelConfig(patch=10, width=32, depth=1, heads=2, mlp=64, dec_width=32, dec_depth=2, dec_heads=2,
                                 dec_mlp=64, fourier_features=2, attention="xla"))
VARIANTS = {"xla": {}, "remat": {"model.remat": True},
            "remat_attention": {"model.remat": True, "model.remat_policy": "attention"},
            "cross": {"model.decoder": "cross"}, "factorised": {"model.decoder": "factorised"},
            "axial": {"model.decoder": "axial"},
            "chunked_batch16": {"model.attention": "chunked", "model.attention_chunk": 64, "data.batch_size": 16}}


def _variant(changes: dict) -> Config:
    return override(SMALL, [f"{k}={v}" for k, v in changes.items()])


def _bytes_per_device(tree) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
               if x.ndim)  # scalars (step counters) are not modelled


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    """name -> (estimate, XLA's memory figures) for each VARIANTS config on one CPU device."""
    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=1), jax.devices()[:1])
    return {name: (memory.estimate(cfg, PARCELS, 1, 1, "cpu"),
                   compiled_step_memory(cfg, PARCELS, mesh, tmp_path_factory.mktemp(name), CPU_OPTIONS))
            for name, cfg in ((name, _variant(changes)) for name, changes in VARIANTS.items())}


@pytest.mark.parametrize("name, changes", [("tiny", []), ("tiny", ["model.time_embedding=learned"]),
                                           ("default", []), ("quality", []), ("default", ["model.decoder=axial"]),
                                           ("tiny", ["model.decoder=factorised", "model.contrastive_weight=1",
                                                     "model.parcel_trend=true", "model.linear_skip=true"]),
                                           pytest.param("brainlm_111m", [], marks=pytest.mark.slow)])
def test_parameter_count_equals_the_real_model(name, changes):
    cfg = override(load_config(name), changes).model
    abstract = sharding.abstract_model(lambda: BrainLM(cfg, rngs=nnx.Rngs(0)))  # shapes only, no allocation
    assert memory.count_parameters(cfg) == count_params(abstract)


@pytest.mark.parametrize("fsdp", [2, 4, 8])
def test_parameter_and_moment_bytes_equal_the_trainer_shardings(fsdp):
    # width 20 splits over 2 and 4 devices but not 8, so the replication fallback is exercised too
    cfg = override(load_config("tiny"), ["model.width=20", "model.heads=2", "model.dec_width=16"])
    task = BrainLMTask(cfg.model, cfg.mask, 16, cfg.data.window)
    tx = make_optimizer(cfg.optim, cfg.train.steps, cfg.data.batch_size)[0]
    mesh = sharding.make_mesh(MeshConfig(data=8 // fsdp, fsdp=fsdp))
    state = sharding.abstract_sharded(init_train_state(task, tx, 0), mesh)
    est = memory.estimate(cfg, 16, 8 // fsdp, fsdp, "cpu")
    assert est.params == _bytes_per_device(state["params"])
    assert est.optimizer == _bytes_per_device(state["opt"])


def test_parameter_terms_scale_as_one_over_fsdp_and_activations_do_not():
    cfg = load_config("brainlm_111m")
    one = memory.estimate(override(cfg, ["data.batch_size=16"]), 424, 1, 1, "tpu")
    for fsdp in (2, 4, 16):
        split = memory.estimate(override(cfg, [f"data.batch_size={16 * fsdp}"]), 424, 1, fsdp, "tpu")
        # only vectors over mlp / patch dimensions stay replicated: well under 1 % of the parameters
        assert split.params * fsdp == pytest.approx(one.params, rel=0.01)
        assert split.optimizer == 2 * split.params and split.grads == split.params
        assert split.activations == one.activations and split.micro_batch == one.micro_batch
        assert split.gathered == one.n_params * 2  # the bf16 copy of the whole model
    assert one.gathered == 0


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.slow
def test_estimate_agrees_with_xla_memory_analysis(measured, name):
    est, xla = measured[name]
    # arguments are the state and the batch, give or take the step counters, the rng key and ``tr`` (unused by
    # the index time embedding, so jit drops it)
    assert abs(xla["argument"] - (est.params + est.optimizer + xla["inputs"])) <= 64
    assert 2 / 3 <= xla["peak"] / est.total <= 1.25, (name, xla["peak"], est.total)
    assert 2 / 3 <= xla["temp"] / (max(est.backward, est.update) + est.batch) <= 1.25


@pytest.mark.slow
def test_remat_attention_and_batch_move_estimate_and_xla_together(measured):
    (base, xla_base), (remat, xla_remat) = measured["xla"], measured["remat"]
    assert remat.total < base.total and xla_remat["temp"] < xla_base["temp"]
    # twice the windows with chunked instead of dense attention: the estimate's ratio tracks XLA's
    chunked, xla_chunked = measured["chunked_batch16"]
    assert chunked.micro_batch == 2 * base.micro_batch
    est_ratio = chunked.total / base.total
    xla_ratio = xla_chunked["temp"] / xla_base["temp"]
    assert 0.75 <= est_ratio / xla_ratio <= 1.33, (est_ratio, xla_ratio)


def test_remat_shrinks_and_dense_attention_grows_at_brainlm_length():
    cfg = override(load_config("brainlm_111m"), ["data.batch_size=8", "model.attention=chunked"])
    remat = memory.estimate(cfg, 424, 1, 1, "gpu")
    full = memory.estimate(override(cfg, ["model.remat=false"]), 424, 1, 1, "gpu")
    assert remat.activations < full.activations / 4
    dense = memory.estimate(override(cfg, ["model.attention=xla", "model.remat=false"]), 424, 1, 1, "gpu")
    n = dense.lengths[1]
    # every decoder layer keeps its float32 probabilities and a bfloat16 copy: 8 x [8, 16, 4241, 4241] x 6 bytes
    assert dense.attention - full.attention >= 8 * 8 * 16 * n * n * 6
    assert dense.impls == ("xla", "xla") and full.impls == ("chunked", "chunked")


def test_attention_impl_for_another_platform():
    assert memory.attention_impl("auto", 4241, "bfloat16", 512, "tpu") == "splash"  # padded to 128 by the kernel
    assert memory.attention_impl("auto", 4241, "bfloat16", 512, "gpu") == "cudnn"
    assert memory.attention_impl("cudnn", 4241, "bfloat16", 512, "tpu") == "chunked"  # what attention() runs
    with pytest.raises(ValueError, match="platform"):
        memory.attention_impl("auto", 100, "float32", 512, "quantum")


def test_resolve_mesh_matches_make_mesh():
    for data, fsdp in ((-1, 1), (-1, 2), (2, 4), (1, 8), (-1, 8)):
        mesh = sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp))
        assert memory.resolve_mesh(MeshConfig(data=data, fsdp=fsdp), 8) == (mesh.shape["data"], mesh.shape["fsdp"])
    for bad in (MeshConfig(data=-1, fsdp=16), MeshConfig(data=3, fsdp=4), MeshConfig(fsdp=0)):
        with pytest.raises(ValueError):
            memory.resolve_mesh(bad, 8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="divisible"):
        memory.estimate(_variant({"data.batch_size": 6}), PARCELS, 4, 1, "cpu")
    with pytest.raises(ValueError, match="MAE"):
        memory.estimate(load_config("tokenizer"), 300, 1, 1, "cpu")
    with pytest.raises(ValueError, match="platform"):
        memory.estimate(SMALL, PARCELS, 1, 1, "npu")


def test_plan_cli_prints_the_table_and_exits_1_when_it_does_not_fit(capsys):
    args = ["plan", "--preset", "tiny", "--devices", "2", "--platform", "cpu", "--parcels", "40"]
    assert cli.main(args + ["--device-memory", "0.001"]) == 1
    text = capsys.readouterr().out
    assert "memory per device" in text and "DOES NOT FIT" in text and "mesh data 2 x fsdp 1" in text
    est = memory.estimate(load_config("tiny"), 40, 2, 1, "cpu")
    total = next(line for line in text.splitlines() if line.strip().startswith("total"))
    assert float(total.split()[-2]) == pytest.approx(est.total / memory.GIB, abs=6e-4)
    assert cli.main(args + ["--device-memory", "64"]) == 0
    assert "verdict: fits" in capsys.readouterr().out
    assert cli.main(args[:-4] + ["--platform", "quantum"]) == 2
    assert "platform" in capsys.readouterr().err


def test_gpu_verdict_uses_the_preallocated_fraction(monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert memory.usable_fraction("gpu") == 0.5 and memory.usable_fraction("tpu") == 1.0
    est = memory.estimate(load_config("brainlm_111m"), 424, 128, 1, "gpu")
    assert memory.fits(est, 2 * est.total / memory.GIB, 0.5) and not memory.fits(est, 1.9 * est.total / memory.GIB, 0.5)


@pytest.mark.parametrize("preset, devices, platform, gib", [
    ("gpu_local", 1, "gpu", 24), ("pod_111m", 16, "tpu", 32), ("pod_650m", 256, "tpu", 16)])
def test_launch_presets_fit_their_hardware_with_margin(preset, devices, platform, gib):
    cfg = load_config(preset)
    data, fsdp = memory.resolve_mesh(cfg.mesh, devices)
    est = memory.estimate(cfg, cfg.model.max_parcels, data, fsdp, platform)
    # at most 2/3 of the usable memory: room for what GPU/TPU compilers add beyond the estimate (not measured)
    assert est.total <= 2 / 3 * gib * memory.GIB * (memory.DEFAULT_GPU_FRACTION if platform == "gpu" else 1.0)
