"""The evaluation report: one JSON file (numbers beside their baselines) and a readable plain-text table.

Every table marks the best entry of a row with ``*`` so a reader sees at once where the model loses to a
baseline. Missing or undefined numbers (NaN) print as ``-``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _mark_best(values: list[float | None], higher: bool = True) -> list[str]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    best = (max if higher else min)(finite) if finite else None
    return [_num(v) + ("*" if best is not None and v == best else "") for v in values]


def reconstruction_table(rec: dict) -> str:
    names = ["model", "parcel_mean", "interpolation", "regression"]
    rows = [[s, *_mark_best([rec[s][n]["r2"] for n in names])] for s in rec if isinstance(rec[s], dict)
            and "model" in rec[s]]
    return _table(f"reconstruction: pooled R² on masked values ({rec['windows']} windows; * = best)",
                  ["masking", *names], rows)


def probe_table(probe: dict) -> str:
    if "skipped" in probe:
        return f"probes: skipped ({probe['skipped']})"
    rows = []
    for pheno, by_features in probe["phenotypes"].items():
        for model in ("ridge", "logistic", "knn"):
            cells, metric = [], None
            for features in ("cls", "mean", "fc"):
                result = by_features.get(features, {})
                entry = result.get("models", {}).get(model)
                if entry is None:
                    cells.append(None)
                    continue
                metric = "r2" if result["kind"] == "continuous" else "auroc"
                cells.append(entry[metric])
            if metric is not None:
                rows.append([pheno, model, metric, *_mark_best(cells)])
        skipped = {f: r["skipped"] for f, r in by_features.items() if "skipped" in r}
        if skipped:
            rows.append([pheno, "-", "-", *(skipped.get(f, "") and "skipped" for f in ("cls", "mean", "fc"))])
    return _table(f"probes: subject-level {probe.get('folds', '')}-fold CV over {probe['n_scans']} scans "
                  "(cls/mean = embeddings, fc = connectivity baseline)",
                  ["phenotype", "probe", "metric", "cls", "mean", "fc"], rows)


def forecast_table(fc: dict) -> str:
    methods = fc["methods"]
    mse = _mark_best([m["mse"] for m in methods.values()], higher=False)
    r2 = _mark_best([m["r2"] for m in methods.values()])
    first = _mark_best([m["mse_per_step"][0] for m in methods.values()], higher=False)
    last = _mark_best([m["mse_per_step"][-1] for m in methods.values()], higher=False)
    rows = [[name, mse[i], r2[i], first[i], last[i]] for i, name in enumerate(methods)]
    kind = "fine-tuned" if fc.get("finetuned") else "zero-shot"
    return _table(f"forecast ({kind}): {fc['context_trs']} TRs context -> {fc['horizon_trs']} TRs "
                  f"({fc['windows']} windows)", ["method", "MSE", "R²", "MSE step 1", f"MSE step {fc['horizon_trs']}"],
                  rows)


def networks_table(net: dict) -> str:
    if "skipped" in net:
        return f"networks: skipped ({net['skipped']})"
    sources = net["sources"]
    ari = _mark_best([s["clustering"]["ari"] for s in sources.values()])
    acc = _mark_best([s["clustering"]["accuracy"] for s in sources.values()])
    cls = _mark_best([s["classification"]["accuracy"] for s in sources.values()])
    chance = next(iter(sources.values()))["classification"]["chance"]
    rows = [[name, ari[i], acc[i], cls[i]] for i, name in enumerate(sources)]
    return _table(f"networks: {net['n_networks']} atlas networks; clustering ARI / matched accuracy, "
                  f"CV classification accuracy (chance {_num(chance)})",
                  ["source", "ARI", "matched acc", "classif. acc"], rows)


def head_table(head: dict) -> str:
    rows = [[k, _num(v), _num(head["chance"].get(k))] for k, v in head["metrics"].items()]
    return _table(f"fine-tuned {head['task']}:{head['target']} on {head['n_scans']} {head['split']} scans",
                  ["metric", "model", "chance"], rows)


TABLES = {"reconstruct": reconstruction_table, "probe": probe_table, "forecast": forecast_table,
          "networks": networks_table, "finetuned": head_table}


def format_report(report: dict) -> str:
    """All task tables of a report, in task order."""
    parts = [f"checkpoint {report['workdir']} step {report['step']} | data {report['data']} | "
             f"split {report['split']}"]
    for task, result in report["tasks"].items():
        parts.append(TABLES[task](result))
    return "\n\n".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    return value


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` as strict JSON (NaN -> null) through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False))
    os.replace(tmp, path)
