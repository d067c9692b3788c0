"""`brainjax pretrain` in subprocesses: run, extend, refuse a changed model, kill -9 and SIGTERM resumes."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _trainer_utils import cli, cli_env, tiny_config, tiny_dataset, write_config_file

STEPS = 200
pytestmark = pytest.mark.slow  # `brainjax pretrain` subprocesses of up to STEPS steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = tiny_dataset(root / "data")
    cfg = tiny_config(STEPS, train={"checkpoint_every": 10, "eval_every": 100, "figure": True},
                      mesh={"data": -1, "fsdp": 1})
    config = write_config_file(root / "tiny.py", cfg)
    reference = root / "reference"
    proc = subprocess.run(cli("--config", str(config), "--data", str(data), "--workdir", str(reference)),
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "data": data, "config": config, "reference": reference, "stdout": proc.stdout}


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _args(setup, workdir, *extra):
    return cli("--config", str(setup["config"]), "--data", str(setup["data"]), "--workdir", str(workdir), *extra)


def _start_and_wait_for_checkpoint(setup, workdir, min_step: int) -> subprocess.Popen:
    """Start a run whose stdout / stderr go to files beside ``workdir`` (``_output`` reads them): a pipe nobody
    reads while we wait would block the run once its buffer fills."""
    with open(f"{workdir}.out", "w") as out, open(f"{workdir}.err", "w") as err:
        proc = subprocess.Popen(_args(setup, workdir), env=cli_env(), stdout=out, stderr=err, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps and max(steps) >= min_step:
            return proc
        if proc.poll() is not None:
            pytest.fail(f"pretrain exited ({proc.returncode}) before a checkpoint: {_output(workdir)[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def _output(workdir) -> tuple[str, str]:
    """(stdout, stderr) of the run started by ``_start_and_wait_for_checkpoint``."""
    return Path(f"{workdir}.out").read_text(), Path(f"{workdir}.err").read_text()


def test_run_prints_and_writes_artefacts_then_extends_and_refuses_changes(setup):
    out, reference = setup["stdout"], setup["reference"]
    assert "parameters:" in out and "validation: mse=" in out
    assert (reference / "reconstruction.png").exists() and (reference / "config.json").exists()
    assert len(_losses(reference)) == STEPS
    saved = json.loads((reference / "config.json").read_text())
    assert saved["data"]["path"] == str(setup["data"].resolve()) and saved["train"]["steps"] == STEPS

    extended = setup["root"] / "extended"
    subprocess.run(["cp", "-r", str(reference), str(extended)], check=True)
    proc = subprocess.run(_args(setup, extended, "--steps", str(STEPS + 5)), env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from step {STEPS}" in proc.stdout
    assert _losses(extended)[:STEPS] == _losses(reference) and len(_losses(extended)) == STEPS + 5

    proc = subprocess.run(_args(setup, extended, "--set", "model.width=32"), env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "model.width: checkpoint 16 vs now 32" in proc.stderr


def test_kill9_then_rerun_matches_uninterrupted_run(setup):
    workdir = setup["root"] / "killed"
    proc = _start_and_wait_for_checkpoint(setup, workdir, min_step=20)
    assert proc.poll() is None, "the run finished before it could be killed; raise STEPS"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(_losses(workdir))
    assert done < STEPS
    rerun = subprocess.run(_args(setup, workdir), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    assert _losses(workdir) == _losses(setup["reference"])


def test_sigterm_saves_exits_zero_and_resumes(setup):
    workdir = setup["root"] / "terminated"
    proc = _start_and_wait_for_checkpoint(setup, workdir, min_step=10)
    assert proc.poll() is None, "the run finished before SIGTERM; raise STEPS"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stdout, stderr = _output(workdir)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = int(stderr.split("stopped at step ")[1].split()[0]) if "stopped at step" in stderr else \
        int(stdout.split("stopped at step ")[1].split()[0])
    assert stopped < STEPS and (workdir / "checkpoints" / str(stopped)).is_dir()
    assert len(_losses(workdir)) == stopped
    rerun = subprocess.run(_args(setup, workdir), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from step {stopped}" in rerun.stdout
    assert _losses(workdir) == _losses(setup["reference"])
