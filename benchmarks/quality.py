"""Model quality against the baselines, per preset, printed as one JSON object (the README's quality table).

    python benchmarks/quality.py [--presets default,quality] [--data DIR] [--root DIR] [--set KEY=VALUE ...]
                                 [--eval-args "--max-windows 96"] [--reuse]

For each preset: ``brainjax pretrain --preset P`` in ``ROOT/P`` (timed), then ``brainjax evaluate`` on the
test split (timed). Every row is one comparison from the evaluation report: the model's number, the best
baseline's, the difference with its paired bootstrap 95 % interval and the verdict (beats / ties / loses):

- ``reconstruct/<strategy>``   pooled R² of masked values vs the best reconstruction baseline
- ``forecast``                 forecast MSE vs the best forecasting baseline (and ``forecast/<name>`` vs each,
                               plus the number of horizon steps beaten / tied / lost)
- ``probe/<phenotype>/<model>`` the best embedding readout vs functional connectivity
- ``networks``                 clustering ARI of the best model-derived source vs FC

Output: {"cpu", "presets": {P: {"train_s", "eval_s", "steps", "rows": [...]}}}. ``--reuse`` evaluates existing
work dirs without training again (no ``train_s`` then). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name (lscpu's ``Model name``), for the figures' context."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _brainjax(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "brainjax.cli", *args], cwd=REPO, stdout=sys.stderr,
                          stderr=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"brainjax {' '.join(args[:1])} exited {proc.returncode}")
    return time.perf_counter() - start


def _row(task: str, model: float | None, baseline: str, base_value: float | None, cmp: dict, **extra) -> dict:
    return {"task": task, "model": model, "baseline": baseline, "baseline_value": base_value,
            "diff": cmp.get("diff"), "low": cmp.get("low"), "high": cmp.get("high"), "verdict": cmp.get("verdict"),
            **extra}


def summarize(report: dict) -> list[dict]:
    """Comparison rows of an evaluation report (see the module docstring)."""
    rows, tasks = [], report["tasks"]
    for strategy, result in tasks.get("reconstruct", {}).items():
        if isinstance(result, dict) and "comparison" in result and "skipped" not in result["comparison"]:
            cmp = result["comparison"]
            rows.append(_row(f"reconstruct/{strategy}", result["model"]["r2"], cmp["baseline"],
                             result[cmp["baseline"]]["r2"], cmp, metric="r2"))
    forecast = tasks.get("forecast")
    if forecast:
        methods, steps = forecast["methods"], forecast["per_step"]
        verdicts = [s["verdict"] for s in steps]
        counts = {k: verdicts.count(k) for k in ("beats", "ties", "loses")}
        cmp = forecast["comparison"]
        rows.append(_row("forecast", methods["model"]["mse"], cmp["baseline"], methods[cmp["baseline"]]["mse"], cmp,
                         metric="mse", steps=counts, horizon_trs=forecast["horizon_trs"]))
        for name, vs in forecast["vs"].items():
            rows.append(_row(f"forecast/{name}", methods["model"]["mse"], name, methods[name]["mse"], vs, metric="mse"))
    probe = tasks.get("probe", {})
    for pheno, by_model in probe.get("comparison", {}).items():
        for model, cmp in by_model.items():
            if "skipped" in cmp:
                continue
            rows.append(_row(f"probe/{pheno}/{model}", cmp["score"], cmp["baseline"], cmp["baseline_score"], cmp,
                             metric=cmp["metric"], readout=cmp["features"]))
    networks = tasks.get("networks", {})
    if "comparison" in networks and "skipped" not in networks["comparison"]:
        cmp, sources = networks["comparison"], networks["sources"]
        rows.append(_row("networks", sources[cmp["source"]]["clustering"]["ari"], cmp["baseline"],
                         sources[cmp["baseline"]]["clustering"]["ari"], cmp, metric="ari", readout=cmp["source"]))
    return rows


def _last_step(workdir: Path) -> int:
    """The last logged step of a work dir's metrics.jsonl."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return int(records[-1]["step"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="default,quality")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--root", default="runs/quality", help="work dirs go to ROOT/PRESET")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every preset")
    parser.add_argument("--eval-args", default="", help="extra arguments for brainjax evaluate (quoted)")
    parser.add_argument("--reuse", action="store_true", help="evaluate existing work dirs, do not train")
    args = parser.parse_args(argv)
    data = ["--data", args.data] if args.data else []
    sets = [x for kv in args.set for x in ("--set", kv)]
    out = {"cpu": cpu_model(), "presets": {}}
    for preset in [p for p in args.presets.split(",") if p]:
        workdir = Path(args.root) / preset
        entry = {}
        if not args.reuse:
            entry["train_s"] = round(_brainjax("pretrain", "--preset", preset, "--workdir", str(workdir), *data,
                                               *sets), 1)
        entry["steps"] = _last_step(workdir)
        report_path = workdir / "eval" / "report.json"
        entry["eval_s"] = round(_brainjax("evaluate", "--workdir", str(workdir), "--out", str(report_path),
                                          "--no-figures", *data, *shlex.split(args.eval_args)), 1)
        entry["rows"] = summarize(json.loads(report_path.read_text()))
        out["presets"][preset] = entry
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
