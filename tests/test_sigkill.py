"""SIGKILL at a random moment never leaves a half-written output under its final name.

A few seeded draws per command: ``brainjax describe`` (JSON lines + JSON), ``brainjax synth`` (a dataset) and
``brainjax embed`` (an npz) are killed at a random point of their run; whatever exists afterwards under its
final name is complete, and running the command again finishes the job.
"""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _trainer_utils import cli_env

from brainjax.data.dataset import Dataset

pytestmark = pytest.mark.slow
DRAWS = 3


def _kill_at_random(argv: list[str], rng: random.Random, longest: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "brainjax.cli", *argv], env=cli_env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.0, longest))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _run(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "brainjax.cli", *argv], env=cli_env(1), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    _run(argv)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigkill")
    argv = ["synth", "--out", str(root / "data"), "--subjects", "8", "--timepoints", "64", "--atlas", "dosenbach160"]
    return root, _timed(argv), argv


def test_synth_is_all_or_nothing(cohort):
    root, seconds, argv = cohort
    rng = random.Random(0)
    for draw in range(DRAWS):
        out = root / f"synth{draw}"
        _kill_at_random([*argv[:2], str(out), *argv[3:]], rng, seconds)
        if (out / "dataset.json").exists():  # finished: every scan readable
            ds = Dataset(out)
            assert all(np.isfinite(ds.read(i)).all() for i in range(len(ds)))


def test_describe_outputs_are_whole(cohort):
    root, _, _ = cohort
    data, out = root / "data", root / "descriptors"
    seconds = _timed(["describe", "--data", str(data), "--out", str(root / "reference")])
    reference = (root / "reference" / "descriptors.jsonl").read_text()
    rng = random.Random(1)
    for _ in range(DRAWS):
        _kill_at_random(["describe", "--data", str(data), "--out", str(out)], rng, seconds)
        if (out / "descriptors.jsonl").exists():
            assert (out / "descriptors.jsonl").read_text() == reference
        if (out / "cohort.json").exists():
            json.loads((out / "cohort.json").read_text())
    _run(["describe", "--data", str(data), "--out", str(out)])
    assert (out / "descriptors.jsonl").read_text() == reference


def test_embed_npz_is_whole(cohort, tmp_path):
    from _trainer_utils import make_trainer, tiny_config

    root, _, _ = cohort
    data = root / "data"
    cfg = tiny_config(2, data={"window": 32}, model={"patch": 16, "max_parcels": 160},
                      train={"checkpoint_every": 2, "eval_every": 2})
    make_trainer(cfg, data, tmp_path / "run").run()
    argv = ["embed", "--workdir", str(tmp_path / "run"), "--data", str(data)]
    seconds = _timed([*argv, "--out", str(tmp_path / "reference.npz")])
    rng = random.Random(2)
    for draw in range(DRAWS):
        out = tmp_path / f"e{draw}.npz"
        _kill_at_random([*argv, "--out", str(out)], rng, seconds)
        if out.exists():
            with np.load(out, allow_pickle=False) as got, np.load(tmp_path / "reference.npz") as ref:
                np.testing.assert_array_equal(got["cls"], ref["cls"])
