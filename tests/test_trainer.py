import jax
import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config, tiny_dataset

from brainjax.config import MeshConfig
from brainjax.sharding import make_mesh
from brainjax.train.checkpoint import Checkpointer
from brainjax.train.logging import read_metrics
from brainjax.train.trainer import NonFiniteLossError

# tests/conftest.py simulates 8 CPU devices; fail loudly (not skip) if that did not take effect
assert jax.device_count() >= 8, f"needs 8 simulated devices (tests/conftest.py), found {jax.device_count()}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"), subjects=12)


class PoisonedLoader:
    """Wraps a loader and puts a NaN into the batch of one step (0-based), as a corrupt scan would."""

    def __init__(self, loader, poison_step: int):
        self.loader, self.poison_step, self.position = loader, poison_step, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.loader)
        if self.position == self.poison_step:
            batch = dict(batch, signal=batch["signal"].copy())
            batch["signal"][0, 0, :] = np.nan
        self.position += 1
        return batch

    def get_state(self):
        return {"inner": self.loader.get_state(), "position": self.position}

    def set_state(self, state):
        self.loader.set_state(state["inner"])
        self.position = state["position"]


@pytest.mark.slow
def test_loss_falls_and_run_reports(data, tmp_path, capsys):
    cfg = tiny_config(40, train={"eval_every": 20, "checkpoint_every": 20, "log_every": 5, "figure": True,
                                 "peak_flops": 0.0}, optim={"base_lr": 1e-2, "warmup_frac": 0.1})
    result = make_trainer(cfg, data, tmp_path).run()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    # From a badly calibrated start (R² far below 0) to at least the per-value mean (R² ~ 0); escaping that
    # plateau towards R² > 0 takes this tiny model several hundred steps, too long for a unit test.
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    assert records[0]["train_r2"] < -0.5 and records[-1]["val_r2"] > -0.1
    for key in ("lr", "grad_norm", "steps_per_s", "tokens_per_s", "mfu", "train_r2"):
        assert np.isfinite(records[-1][key]), key
    assert "val_r2" in records[3] and "val_r2" in records[-1] and "val_r2" not in records[2]
    assert result.final_step == 40 and result.eval["val_r2"] == records[-1]["val_r2"]
    out = capsys.readouterr().out
    assert "parameters:" in out and "validation: mse=" in out
    assert (tmp_path / "reconstruction.png").stat().st_size > 1000
    assert (tmp_path / "peak_flops.json").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch(data, tmp_path):
    # "future" masking is deterministic, dropout is off: 2 micro-batches of 4 must equal one batch of 8.
    common = {"mask": {"strategy": "future", "future_patches": 1},
              "train": {"eval_every": 0, "checkpoint_every": 100}}
    mesh = make_mesh(MeshConfig(data=2, fsdp=2), devices=jax.devices()[:4])  # micro-batches of 4 split 4 ways
    full_trainer = make_trainer(tiny_config(3, **common), data, tmp_path / "full", mesh=mesh)
    full = full_trainer.run()
    accum_cfg = tiny_config(3, optim={"accum_steps": 2, "base_lr": 3e-3, "scale_lr": False, "warmup_frac": 0.0},
                            **common)
    accum_trainer = make_trainer(accum_cfg, data, tmp_path / "accum", mesh=mesh)
    accum = accum_trainer.run()

    def program(trainer):
        batch = trainer.global_batch(next(trainer.train_data))
        return trainer.train_step.lower(trainer.abstract_state, batch, trainer.base_rng).as_text()
    # the micro-batch scan is really there (the model may have loops of its own)
    assert program(accum_trainer).count("stablehlo.while") > program(full_trainer).count("stablehlo.while")
    np.testing.assert_allclose([r["loss"] for r in read_metrics(tmp_path / "accum")],
                               [r["loss"] for r in read_metrics(tmp_path / "full")], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(accum.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_nonfinite_stop_names_step_and_writes_no_nan_checkpoint(data, tmp_path):
    trainer = make_trainer(tiny_config(6), data, tmp_path)
    trainer.train_data = PoisonedLoader(trainer.train_data, poison_step=3)  # the 4th update
    with pytest.raises(NonFiniteLossError, match="at step 4 "):
        trainer.run()
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.steps() == [2]
    restored = ckpt.restore(2, trainer.abstract_state)
    ckpt.close()
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.state["params"]))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.slow
def test_nonfinite_skip_keeps_state_and_counts(data, tmp_path):
    cfg = tiny_config(4, train={"nonfinite": "skip", "eval_every": 0})
    reference = make_trainer(cfg, data, tmp_path / "ref").run(until=3)  # same lr schedule, 3 clean updates
    trainer = make_trainer(cfg, data, tmp_path / "skip")
    trainer.train_data = PoisonedLoader(trainer.train_data, poison_step=3)
    result = trainer.run()
    records = read_metrics(tmp_path / "skip")
    assert [r["skipped"] for r in records] == [0, 0, 0, 1]
    assert records[3]["loss"] == "nan"
    # the poisoned 4th update was skipped: parameters equal those after 3 clean updates
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_training_clock_rises_and_continues_on_resume(data, tmp_path):
    cfg = tiny_config(6, train={"eval_every": 3, "checkpoint_every": 3, "log_every": 1})
    make_trainer(cfg, data, tmp_path).run()
    first = read_metrics(tmp_path)
    clock = [r["train_s"] for r in first]
    assert [r["step"] for r in first] == list(range(1, 7)) and clock[0] > 0
    assert all(b > a for a, b in zip(clock, clock[1:]))
    make_trainer(tiny_config(9, train={"eval_every": 3, "checkpoint_every": 3, "log_every": 1}), data,
                 tmp_path).run()
    later = read_metrics(tmp_path)
    assert [r["train_s"] for r in later[:6]] == clock  # the first run's records are kept as they were
    assert later[6]["step"] == 7 and later[6]["train_s"] > clock[-1]  # the clock goes on from step 6
    assert all(b > a for a, b in zip([r["train_s"] for r in later], [r["train_s"] for r in later][1:]))
