"""Validation R² against training wall time for BrainLM's full decoder and the cheaper decoders, as one JSON object.

    python benchmarks/time_to_quality.py [--preset default] [--decoders full,factorised] [--steps 600]
                                         [--eval-every 50] [--root runs/ttq] [--data DIR] [--set KEY=VALUE ...]

For each decoder: ``brainjax pretrain --preset P --set model.decoder=D`` in ``ROOT/D`` on the embedded data
(the same seed, data order and validation windows for every decoder), then the curve read back from its
``metrics.jsonl``: (training wall time ``train_s``, step, ``val_r2``) at every validation, where ``train_s`` leaves
validation and checkpoint saves out. The full decoder's best validation R² is the target; for every decoder the
output gives the first time its curve reaches it (null if never) and that time over the full decoder's. Run it
alone on the machine: the curves are wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from quality import cpu_model  # noqa: E402


def curve(workdir: Path) -> list[dict]:
    """[{train_s, step, val_r2}] at every validation of ``workdir``'s metrics log."""
    from brainjax.train.logging import read_metrics

    return [{"train_s": round(r["train_s"], 2), "step": r["step"], "val_r2": round(r["val_r2"], 4)}
            for r in read_metrics(workdir) if "val_r2" in r and "train_s" in r]


def time_to_reach(points: list[dict], target: float) -> float | None:
    """Training seconds at the first point whose val_r2 is at least ``target`` (None if none is)."""
    return next((p["train_s"] for p in points if p["val_r2"] >= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--decoders", default="full,factorised")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--root", default="runs/ttq")
    parser.add_argument("--data", help="dataset dir(s) (default: the embedded synthetic data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    decoders = [d for d in args.decoders.split(",") if d]
    if "full" not in decoders:
        raise SystemExit("error: --decoders must include full (its best validation R² is the target)")

    runs = {}
    for decoder in decoders:
        workdir = Path(args.root) / decoder
        if workdir.exists():
            raise SystemExit(f"error: {workdir} exists; choose another --root (curves need a fresh run)")
        command = [sys.executable, "-m", "brainjax.cli", "pretrain", "--preset", args.preset, "--workdir",
                   str(workdir), "--steps", str(args.steps), "--set", f"model.decoder={decoder}", "--set",
                   f"train.eval_every={args.eval_every}", "--set", "train.figure=false"]
        for item in args.overrides:
            command += ["--set", item]
        if args.data:
            command += ["--data", args.data]
        start = time.perf_counter()
        if subprocess.run(command, cwd=REPO, stdout=sys.stderr, stderr=sys.stderr).returncode != 0:
            raise SystemExit(f"error: brainjax pretrain with model.decoder={decoder} failed")
        runs[decoder] = {"wall_s": round(time.perf_counter() - start, 1), "curve": curve(workdir)}

    target = max(p["val_r2"] for p in runs["full"]["curve"])
    full_time = time_to_reach(runs["full"]["curve"], target)
    for run in runs.values():
        reached = time_to_reach(run["curve"], target)
        run.update(best_val_r2=max(p["val_r2"] for p in run["curve"]), reaches_target_s=reached,
                   time_ratio=round(reached / full_time, 3) if reached is not None else None)
    print(json.dumps({"benchmark": "time_to_quality", "preset": args.preset, "steps": args.steps,
                      "overrides": args.overrides, "cpu": cpu_model(), "target_val_r2": target, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
