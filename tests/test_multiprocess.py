"""Multi-host training with JAX's own runtime: two local CPU processes x 4 devices against one process x 8.

The multi-process runs are the real ``brainjax pretrain`` (or a loader script) in subprocesses joined through
``--coordinator localhost:PORT``; the one-process reference runs in this test process (8 simulated devices).
The mesh is data 4 x fsdp 2, so parameters are sharded across the two processes' devices and every step's
gradient is reduced across processes.
"""

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
from _trainer_utils import WINDOW, cli, cli_env, make_trainer, tiny_config, tiny_dataset, write_config_file

FIRST, SECOND, STEPS = 3, 6, 8
TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _process_env(devices: int, processes: int) -> dict:
    """The CLI's environment, without the suite's persistent compilation cache when several processes run: with
    jax 0.12 on CPU a process that loads the executable another process compiled and cached waits forever in
    the first collective (the cache key does not tell the processes apart)."""
    env = cli_env(devices)
    if processes > 1:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _run_processes(argv: list[str], processes: int, devices: int) -> list[str]:
    """Run ``argv`` in ``processes`` processes of ``devices`` CPU devices each; their stdout, or fail.

    Output goes to files, not pipes: a process whose pipe filled (64 KiB of runtime warnings) while this test
    waited on another would block in its write, and the other would wait for it in the next collective.
    """
    if processes == 1:
        commands = [argv]
    else:
        coordinator = ["--coordinator", f"localhost:{_free_port()}", "--num-processes", str(processes)]
        commands = [[*argv, *coordinator, "--process-id", str(i)] for i in range(processes)]
    with contextlib.ExitStack() as files:
        logs = [(files.enter_context(tempfile.TemporaryFile("w+")), files.enter_context(tempfile.TemporaryFile("w+")))
                for _ in commands]
        running = [subprocess.Popen(c, env=_process_env(devices, processes), stdout=out, stderr=err, text=True)
                   for c, (out, err) in zip(commands, logs)]
        try:
            for proc in running:
                proc.wait(timeout=TIMEOUT)
        finally:
            for proc in running:
                proc.kill()
        outputs = []
        for proc, (out, err) in zip(running, logs):
            out.seek(0)
            err.seek(0)
            assert proc.returncode == 0, f"process exited {proc.returncode}:\n{err.read()[-3000:]}"
            outputs.append(out.read())
    return outputs


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _continue(source, workdir, step: int) -> None:
    """``workdir`` = ``source`` cut back to its checkpoint at ``step`` (later checkpoints and metrics dropped)."""
    shutil.copytree(source, workdir)
    for later in (workdir / "checkpoints").iterdir():
        if later.name.isdigit() and int(later.name) > step:
            shutil.rmtree(later)
    metrics = (source / "metrics.jsonl").read_text().splitlines()
    (workdir / "metrics.jsonl").write_text("".join(m + "\n" for m in metrics if json.loads(m)["step"] <= step))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process x 8 devices (in this test process) runs 8 steps; two processes x 4 devices continue its
    step-3 checkpoint to step 6; one process x 8 continues the two-process checkpoint to step 8.

    The learning rate is constant (cosine floor = peak), so ``--steps`` can stop a run early without changing
    any update.
    """
    root = tmp_path_factory.mktemp("multiprocess")
    data = tiny_dataset(root / "data")
    cfg = tiny_config(STEPS, optim={"min_lr_frac": 1.0},
                      train={"checkpoint_every": FIRST, "eval_every": 100, "log_every": 1},
                      mesh={"data": -1, "fsdp": 2})
    config = write_config_file(root / "tiny.py", cfg)
    reference = root / "one_by_eight"
    make_trainer(cfg, data, reference).run()

    def pretrain(workdir, steps, processes, devices):
        argv = cli("--config", str(config), "--data", str(data), "--workdir", str(workdir), "--steps", str(steps))
        return _run_processes(argv, processes, devices)

    mixed = root / "one_two_one"
    _continue(reference, mixed, FIRST)
    two_out = pretrain(mixed, SECOND, 2, 4)
    two_checkpoints = sorted(int(p.name) for p in (mixed / "checkpoints").iterdir() if p.name.isdigit())
    pretrain(mixed, STEPS, 1, 8)
    return {"data": data, "reference": reference, "mixed": mixed, "two_out": two_out,
            "two_checkpoints": two_checkpoints}


@pytest.mark.slow
def test_two_processes_reproduce_one_process_losses(runs):
    reference, mixed = _losses(runs["reference"]), _losses(runs["mixed"])
    assert sorted(reference) == sorted(mixed) == list(range(1, STEPS + 1))
    for step in range(FIRST + 1, SECOND + 1):  # trained by 2 processes x 4 devices from a 1-process checkpoint
        assert mixed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6)
    assert len(set(reference.values())) == STEPS  # the losses move, so agreement is not trivial


@pytest.mark.slow
def test_only_process_zero_logs(runs):
    first, second = runs["two_out"]
    # the trainer's own lines; Gloo's connection messages interleave in both processes' stdout and can leave
    # fragments such as ": 3" on a line of their own, which would match anything
    ours = [line for line in first.splitlines() if line.startswith(("parameters:", "validation:"))]
    assert any("parameters:" in line and f"resuming from step {FIRST}" in line for line in ours)
    assert any(line.startswith("validation:") for line in ours)
    assert not any(line in second for line in ours)
    assert "parameters:" not in second and "validation:" not in second


@pytest.mark.slow
def test_two_process_checkpoint_restores_into_one_process_and_back(runs):
    # one Orbax checkpoint per step, written jointly by both processes (step 6), read by a single process
    assert runs["two_checkpoints"] == [FIRST, SECOND]
    reference, mixed = _losses(runs["reference"]), _losses(runs["mixed"])
    for step in range(SECOND + 1, STEPS + 1):
        assert mixed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6)


LOADER_SCRIPT = """
import argparse, json
from brainjax.commands.args import add_distributed_arguments, initialize_distributed
parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("batches", type=int)
add_distributed_arguments(parser)
args = parser.parse_args()
initialize_distributed(args)
import jax
from brainjax.data.pipeline import LoaderSpec, make_loader
out = {"process": jax.process_index(), "count": jax.process_count()}
for stride in (0, WINDOW):
    spec = LoaderSpec(paths=(args.data,), split="train", window=WINDOW, batch_size=8, stride=stride,
                      read_threads=1)
    with make_loader(spec) as loader:  # process index and count come from the JAX runtime
        batches = [next(loader) for _ in range(args.batches)]
    out[stride] = [[[int(d), int(s), int(t)] for d, s, t in zip(b["dataset"], b["scan"], b["start"])]
                   for b in batches]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_each_training_window_of_an_epoch_is_read_once_across_processes(runs):
    from brainjax.data.pipeline import LoaderSpec, make_loader

    data = str(runs["data"])
    n_batches = 8  # 12 train scans: 12 random crops or 36 strided windows per epoch, global batch 8
    script = LOADER_SCRIPT.replace("WINDOW", str(WINDOW))
    outs = [json.loads(o.splitlines()[-1])
            for o in _run_processes([sys.executable, "-c", script, data, str(n_batches)], 2, 4)]
    assert sorted(o["process"] for o in outs) == [0, 1] and {o["count"] for o in outs} == {2}
    for stride in (0, WINDOW):
        spec = LoaderSpec(paths=(data,), split="train", window=WINDOW, batch_size=8, stride=stride,
                          read_threads=1, process_index=0, process_count=1, num_epochs=1)
        with make_loader(spec) as single:
            epoch = [tuple(int(v) for v in row) for b in single for row in zip(b["dataset"], b["scan"], b["start"])]
        n = single.windows_per_epoch
        assert n_batches * 8 >= n and n % 8  # one epoch is covered, and it ends inside a global batch
        shares = {o["process"]: o[str(stride)] for o in outs}
        assembled = [tuple(w) for k in range(n_batches) for p in (0, 1) for w in shares[p][k]]
        assert len(set(assembled[:n])) == n and set(epoch) <= set(assembled[:n])  # each window once
        if stride == 0:  # one random crop per scan and epoch
            assert len({scan for _, scan, _ in assembled[:n]}) == n
        assert assembled[:len(epoch)] == epoch  # in the one-process order
        assert not set(map(tuple, shares[0][0])) & set(map(tuple, shares[1][0]))  # the processes split batches


def test_distributed_flags_are_checked():
    from brainjax.commands.args import UsageError, detected_cluster, initialize_distributed

    def ns(**kw):
        import argparse
        return argparse.Namespace(**{"distributed": False, "coordinator": None, "num_processes": None,
                                     "process_id": None, **kw})

    with pytest.raises(UsageError, match="needs --num-processes"):
        initialize_distributed(ns(coordinator="localhost:1"), env={})
    with pytest.raises(UsageError, match="need --coordinator"):
        initialize_distributed(ns(num_processes=2, process_id=0), env={})
    with pytest.raises(UsageError, match="outside 0..1"):
        initialize_distributed(ns(coordinator="localhost:1", num_processes=2, process_id=2), env={})
    assert initialize_distributed(ns(), env={}) is False  # one host: nothing started
    assert detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "Slurm job 7 with 4 tasks"
    assert detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert "2 workers" in detected_cluster({"TPU_WORKER_HOSTNAMES": "t-0,t-1"})
    assert detected_cluster({"TPU_WORKER_HOSTNAMES": "t-0"}) is None
    assert "3 slices" in detected_cluster({"MEGASCALE_NUM_SLICES": "3"})
    proc = subprocess.run([*cli("--coordinator", "localhost:1")], env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "needs --num-processes" in proc.stderr
