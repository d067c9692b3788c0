"""Tests for tpu_scripts/launch.py: the exact gcloud argv of each action, slice shapes, and refused inputs.

No cloud access here, so the commands are checked as generated argv lists; subprocess is never reached.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "tpu_scripts" / "launch.py"
spec = importlib.util.spec_from_file_location("tpu_launch", PATH)
launch = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = launch  # dataclasses look their module up here
spec.loader.exec_module(launch)

ZONE = "us-central2-b"


def remote(argv: list[str]) -> str:
    """The --command=... payload of one ssh argv."""
    (payload,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    return payload


def test_create_v4_32_spot_tpu_vm():
    target = launch.Target("bj", ZONE, "proj")
    assert launch.create(target, "v4-32", spot=True) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "bj", "--zone=us-central2-b", "--project=proj",
        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]]


def test_create_v5e_256_queued_reserved():
    target = launch.Target("bj", "us-west4-a", queued=True)
    assert launch.create(target, "v5litepod-256", reserved=True) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "bj", "--zone=us-west4-a",
        "--accelerator-type=v5litepod-256", "--runtime-version=v2-alpha-tpuv5-lite", "--node-id=bj", "--reserved"]]


def test_create_multislice_uses_node_prefix_and_version_override():
    target = launch.Target("ms", ZONE, queued=True, node_count=2)
    assert launch.create(target, "v5p-128", version="custom-rt") == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "ms", "--zone=us-central2-b",
        "--accelerator-type=v5p-128", "--runtime-version=custom-rt", "--node-count=2", "--node-prefix=ms"]]
    assert target.nodes() == ["ms-0", "ms-1"]


@pytest.mark.parametrize("accelerator, n_hosts, chips", [
    ("v4-8", 1, 4), ("v4-32", 4, 16), ("v5litepod-256", 64, 256), ("v5p-128", 16, 64),
    ("v5litepod-8", 1, 8), ("v5litepod-4", 1, 4), ("v5litepod-16", 4, 16)])
def test_hosts_table(accelerator, n_hosts, chips):
    shape = launch.hosts(accelerator)
    assert (shape.hosts, shape.chips) == (n_hosts, chips)


@pytest.mark.parametrize("accelerator", ["v9-8", "v4-3", "v4-12", "v5litepod-12", "v5p", "V4-32", "v4-32 "])
def test_hosts_rejects_unknown_or_malformed(accelerator):
    with pytest.raises(ValueError, match="accelerator|multiple of 8|sizes"):
        launch.hosts(accelerator)


def test_setup_from_git_and_from_wheel():
    target = launch.Target("bj", ZONE, "proj")
    (cmd,) = launch.setup(target, repo="https://github.com/o/brainjax", ref="v1.2")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bj"]
    assert {"--zone=us-central2-b", "--project=proj", "--worker=all"} <= set(cmd)
    assert shlex.split(remote(cmd)) == ["python3", "-m", "pip", "install", "--upgrade", "jax[tpu]",
                                        "git+https://github.com/o/brainjax@v1.2"]
    scp, install = launch.setup(target, wheel="dist/brainjax-0.1-py3-none-any.whl")
    assert scp[4:7] == ["scp", "dist/brainjax-0.1-py3-none-any.whl", "bj:brainjax-0.1-py3-none-any.whl"]
    assert "--worker=all" in scp and shlex.split(remote(install))[-1] == "./brainjax-0.1-py3-none-any.whl"
    with pytest.raises(ValueError, match="exactly one"):
        launch.setup(target)


def test_run_command_is_quoted_nohup_with_env_and_distributed():
    target = launch.Target("bj", ZONE, "proj")
    env = {"XLA_FLAGS": "--xla_a=1 --xla_b='x y'", "TPU_STDERR_LOG_LEVEL": "0"}
    user = ["brainjax", "pretrain", "--preset", "brainlm_111m", "--set", "train.steps=10"]
    (cmd,) = launch.run(target, "v4-32", "gs://bucket/run 1", user, env)
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd and "--project=proj" in cmd
    words = shlex.split(remote(cmd))
    start, redirect = words.index("nohup"), words.index(">")
    assert words[start + 1:redirect] == ["env", "XLA_FLAGS=--xla_a=1 --xla_b='x y'", "TPU_STDERR_LOG_LEVEL=0",
                                         *user, "--workdir", "gs://bucket/run 1", "--distributed"]
    assert words[redirect + 1:] == ["$HOME/brainjax.log", "2>&1", "<", "/dev/null", "&"]


def test_run_keeps_single_distributed_and_one_ssh_per_slice():
    target = launch.Target("ms", ZONE, queued=True, node_count=2)
    cmds = launch.run(target, "v5litepod-256", "gs://b/r", ["brainjax", "pretrain", "--distributed"])
    assert [c[5] for c in cmds] == ["ms-0", "ms-1"]
    assert all(shlex.split(remote(c)).count("--distributed") == 1 for c in cmds)


def test_run_refusals():
    target = launch.Target("bj", ZONE)
    with pytest.raises(ValueError, match="gs://"):
        launch.run(target, "v4-32", "/home/me/run", ["brainjax", "pretrain"])
    with pytest.raises(ValueError, match="gs://"):  # multislice of single-host slices is still multi-host
        launch.run(launch.Target("ms", ZONE, queued=True, node_count=2), "v4-8", "runs/x", ["brainjax"])
    assert launch.run(target, "v4-8", "runs/x", ["brainjax", "pretrain"])  # one host: a local dir is fine
    with pytest.raises(ValueError, match="once"):
        launch.run(target, "v4-32", "gs://b/r", ["brainjax", "pretrain", "--workdir=gs://b/other"])
    with pytest.raises(ValueError, match="after '--'"):
        launch.run(target, "v4-32", "gs://b/r", [])
    with pytest.raises(ValueError, match="not a valid"):
        launch.run(target, "v4-32", "gs://b/r", ["brainjax"], {"A B": "1"})


def test_logs_stop_delete():
    target = launch.Target("bj", ZONE, "proj")
    (cmd,) = launch.logs(target, worker=3)
    assert cmd[5] == "bj" and "--worker=3" in cmd and shlex.split(remote(cmd))[:2] == ["tail", "-n"]
    assert "$HOME/brainjax.log" in shlex.split(remote(cmd))
    (cmd,) = launch.stop(target)
    assert "--worker=all" in cmd and shlex.split(remote(cmd))[:4] == ["pkill", "-TERM", "-f", "[b]rainjax pretrain"]
    assert launch.delete(target) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "bj", "--zone=us-central2-b",
                                      "--project=proj", "--quiet"]]
    queued = launch.Target("bj", ZONE, queued=True, node_count=2)
    (cmd,) = launch.delete(queued)
    assert cmd[3:6] == ["queued-resources", "delete", "bj"] and "--force" in cmd
    assert launch.logs(queued, worker=1, node=1)[0][5] == "bj-1"
    with pytest.raises(ValueError, match="no worker"):
        launch.logs(queued, node=2)


def test_target_and_create_refusals():
    with pytest.raises(ValueError, match="--queued"):
        launch.Target("bj", ZONE, node_count=2)
    with pytest.raises(ValueError, match="exclusive"):
        launch.create(launch.Target("bj", ZONE), "v4-32", spot=True, reserved=True)


def test_cli_dry_run_prints_without_subprocess(monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("subprocess.run called during --dry-run")

    monkeypatch.setattr(launch.subprocess, "run", forbidden)
    argv = ["run", "--name", "bj", "--zone", ZONE, "--accelerator", "v4-32", "--workdir", "gs://b/r",
            "--env", "A=x y", "--dry-run", "--", "brainjax", "pretrain", "--preset", "brainlm_111m"]
    assert launch.main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    expected = launch.run(launch.Target("bj", ZONE), "v4-32", "gs://b/r",
                          ["brainjax", "pretrain", "--preset", "brainlm_111m"], {"A": "x y"})
    assert shlex.split(line) == expected[0]
    assert launch.main(["hosts", "v5litepod-256"]) == 0
    assert "64 hosts, 256 chips" in capsys.readouterr().out


def test_cli_runs_commands_and_rejects_bad_flags(monkeypatch):
    calls = []
    monkeypatch.setattr(launch.subprocess, "run", lambda argv, check: calls.append((argv, check)))
    assert launch.main(["stop", "--name", "ms", "--zone", ZONE, "--queued", "--node-count", "2"]) == 0
    assert [(argv[5], check) for argv, check in calls] == [("ms-0", True), ("ms-1", True)]
    for argv in (["create", "--name", "bj", "--zone", ZONE, "--accelerator", "v4-32", "--spot", "--reserved"],
                 ["create", "--name", "bj", "--zone", ZONE, "--accelerator", "v4-32", "--node-count", "2"],
                 ["run", "--name", "bj", "--zone", ZONE, "--accelerator", "v4-32", "--workdir", "/tmp/r", "--", "x"],
                 ["run", "--name", "bj", "--zone", ZONE, "--accelerator", "v4-8", "--workdir", "r", "--env", "NOEQ",
                  "--", "brainjax"]):
        with pytest.raises(SystemExit) as err:
            launch.main(argv)
        assert err.value.code == 2
    assert len(calls) == 2
