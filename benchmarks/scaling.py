"""Scaling table of ``brainjax pretrain`` over simulated CPU devices and processes, printed as one JSON object.

    python benchmarks/scaling.py --preset tiny --steps 6 [--devices 1,2,4,8] [--multi 2x4] [--data DIR]
                                 [--batch N] [--set KEY=VALUE ...] [--keep DIR]

Runs the real command (``python -m brainjax.cli pretrain``) once per configuration, each in a fresh work dir
with the same preset, global batch, seed and data: one process with ``D`` devices for every ``D`` of
``--devices`` (``XLA_FLAGS=--xla_force_host_platform_device_count=D``), and for ``--multi PxD`` ``P``
processes of ``D`` devices each (``--coordinator localhost:PORT --num-processes P --process-id I`` on a free
port; ``--multi none`` skips it). Every run logs every step (``train.log_every=1``), never evaluates or
checkpoints before its last step, and draws no figure. Rows (``{"rows": [...]}``), one per configuration::

    processes, devices (in all), wall_s (launch to exit of every process), step_s, overhead,
    max_abs_loss_diff, steps_compared, final_loss   (or error)

``step_s`` (4 significant digits) is the median over steps 2..N of ``1 / steps_per_s`` from the run's
``WORKDIR/metrics.jsonl`` (read with ``brainjax.train.logging.read_metrics``): with
``log_every=1`` the trainer's throughput meter covers exactly one step per record (it restarts at each
report), timing the loop as training runs it (batch fetch, dispatch, the step, the per-step metrics read);
step 1 carries compilation and has no rate. ``overhead = step_s / step_s(1 device)``.
``max_abs_loss_diff`` is the largest ``|loss - loss of the 1-device run|`` over every logged step:
the same global batches and rng should give the same losses up to float reduction order.

Simulated devices share the host's cores, so on a CPU the overhead measures partitioning and collective cost,
not a speed-up. Progress goes to stderr; stdout holds the JSON only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUIET = ("train.log_every=1", "train.eval_every=1000000000", "train.checkpoint_every=1000000000",
         "train.figure=false")


def parse_multi(text: str) -> tuple[int, int] | None:
    """``"2x4"`` -> (2 processes, 4 devices each); ``"none"`` / ``""`` -> None."""
    if text.strip().lower() in ("", "none"):
        return None
    try:
        processes, devices = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--multi must look like 2x4 (processes x devices per process), got {text!r}") from None
    if processes < 2 or devices < 1:
        raise ValueError(f"--multi needs >= 2 processes of >= 1 device, got {text!r}")
    return processes, devices


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def device_env(devices: int) -> dict[str, str]:
    """This environment on the CPU backend with ``devices`` simulated devices (other XLA flags kept)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def launch(args: argparse.Namespace, workdir: Path, processes: int, devices: int) -> tuple[float, str | None]:
    """Run one configuration to its end. Returns (wall seconds, None) or (wall seconds, error text)."""
    command = [sys.executable, "-m", "brainjax.cli", "pretrain", "--preset", args.preset, "--workdir",
               str(workdir), "--steps", str(args.steps)]
    command += [part for item in (*QUIET, *args.overrides) for part in ("--set", item)]
    command += ["--set", f"data.batch_size={args.batch}"]
    command += ["--data", args.data] if args.data else []
    port = free_port() if processes > 1 else None
    workdir.mkdir(parents=True)
    procs, logs = [], []
    start = time.perf_counter()
    for index in range(processes):
        extra = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                 "--process-id", str(index)] if port else []
        log = open(workdir.parent / f"{workdir.name}.process{index}.log", "w+")  # files: no pipe can fill up
        logs.append(log)
        procs.append(subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                      env=device_env(devices)))
    error = None
    try:
        while error is None:  # poll all: when one process fails, its peers wait on collectives forever
            codes = [proc.poll() for proc in procs]
            failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                logs[failed[0]].seek(0)
                last = (logs[failed[0]].read().strip().splitlines() or ["no output"])[-1]
                error = f"process {failed[0]} exit status {codes[failed[0]]}: {last[-300:]}"
            elif all(code == 0 for code in codes):
                break
            elif time.perf_counter() - start > args.timeout:
                error = f"timed out after {args.timeout:.0f} s"
            else:
                time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    return time.perf_counter() - start, error


def summarize(records: list[dict], reference: dict[int, float] | None) -> dict:
    """Step time and loss agreement of one run from its metrics records (see the module docstring).

    reference: {step: loss} of the 1-device run (None: this run is the reference, difference 0).
    Raises ValueError when a logged step of the reference or a step rate is missing.
    """
    losses = {r["step"]: float(r["loss"]) for r in records if "loss" in r}
    rates = [float(r["steps_per_s"]) for r in records if r["step"] >= 2 and "steps_per_s" in r]
    if not losses or not rates:
        raise ValueError(f"metrics.jsonl holds {len(losses)} losses and {len(rates)} step rates; need both")
    reference = reference if reference is not None else losses
    missing = sorted(set(reference) - set(losses))
    if missing:
        raise ValueError(f"steps {missing} of the 1-device run are not logged")
    diff = max(abs(losses[s] - reference[s]) for s in reference)
    return {"step_s": float(f"{statistics.median(1 / r for r in rates):.4g}"),
            "max_abs_loss_diff": diff if math.isfinite(diff) else None, "steps_compared": len(reference),
            "final_loss": losses[max(losses)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--devices", default="1,2,4,8", help="device counts of the one-process runs (1 needed)")
    parser.add_argument("--multi", default="2x4", help="PROCESSESxDEVICES multi-process run, or none")
    parser.add_argument("--data", help="dataset dir (default: pretrain's, the embedded synthetic dataset)")
    parser.add_argument("--batch", type=int, help="global batch (default: the preset's data.batch_size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra pretrain config override (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per configuration")
    parser.add_argument("--keep", help="write the work dirs and logs here and keep them (default: a temp dir)")
    args = parser.parse_args(argv)
    from brainjax.config import load_config, override
    from brainjax.train.logging import read_metrics

    try:
        devices = sorted({int(d) for d in args.devices.split(",") if d.strip()})
        multi = parse_multi(args.multi)
    except ValueError as err:
        parser.error(str(err))
    if 1 not in devices or min(devices) < 1 or args.steps < 2:
        parser.error(f"--devices must include 1 (the reference) and --steps must be >= 2 (got {args.devices}, "
                     f"{args.steps})")
    configs = [(1, d) for d in devices] + ([multi] if multi else [])
    taken = [f"p{p}_d{d}" for p, d in configs if args.keep and (Path(args.keep) / f"p{p}_d{d}").exists()]
    if taken:
        parser.error(f"--keep {args.keep} already holds {taken}: runs must start in fresh work dirs")
    try:  # a typo in an override fails here, not once per configuration
        args.batch = args.batch or override(load_config(args.preset), args.overrides).data.batch_size
    except ValueError as err:
        parser.error(str(err))

    with tempfile.TemporaryDirectory(prefix="brainjax-scaling-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        rows, reference, base_step = [], None, None
        for processes, per_process in configs:
            name = f"p{processes}_d{per_process}"
            print(f"scaling: {processes} process(es) x {per_process} device(s) ...", file=sys.stderr, flush=True)
            wall, error = launch(args, root / name, processes, per_process)
            row = {"processes": processes, "devices": processes * per_process, "wall_s": round(wall, 2)}
            if error is None and (not rows or reference is not None):
                try:
                    records = read_metrics(root / name)
                    row.update(summarize(records, reference))
                except ValueError as err:
                    error = str(err)
            elif error is None:
                error = "no 1-device reference run to compare with"
            if error is not None:
                row["error"] = error
            elif reference is None:
                reference = {r["step"]: float(r["loss"]) for r in records if "loss" in r}
                base_step = row["step_s"]
            if "step_s" in row and base_step:
                row["overhead"] = round(row["step_s"] / base_step, 3)
            rows.append(row)
            print(f"scaling: {name}: {error or row}", file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "scaling", "preset": args.preset, "steps": args.steps, "batch": args.batch,
                      "data": args.data or "embedded synthetic dataset", "overrides": args.overrides, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
