"""The evaluation report: one JSON file (numbers beside their baselines) and a readable plain-text table.

Every table marks the best entry of a row with ``*`` so a reader sees at once where the model loses to a
baseline. Missing or undefined numbers (NaN) print as ``-``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from brainjax.paths import write_json


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


def _interval(comparison: dict) -> str:
    """``diff [low, high]`` of a bootstrap comparison; undefined ends print as ``-``."""
    return f"{_num(comparison['diff'])} [{_num(comparison['low'])}, {_num(comparison['high'])}]"


def reconstruction_table(rec: dict) -> str:
    names = ["model", "parcel_mean", "interpolation", "regression"]
    rows, level = [], 0.95
    for s, result in rec.items():
        if not (isinstance(result, dict) and "model" in result):
            continue
        c = result.get("comparison") or {}
        verdict = [c["baseline"], _interval(c), c["verdict"]] if "diff" in c else ["-", "-", "-"]
        level = c.get("level", level)
        rows.append([s, *_mark_best([result[n]["r2"] for n in names]), *verdict])
    return _table(f"reconstruction: pooled R² on masked values ({rec['windows']} windows; * = best; model - best "
                  f"baseline with its {level:.0%} scan-bootstrap interval)",
                  ["masking", *names, "best baseline", "model - best [CI]", "verdict"], rows)


def probe_table(probe: dict) -> str:
    if "skipped" in probe:
        return f"probes: skipped ({probe['skipped']})"
    names: list[str] = []  # feature sets in the order the probes ran (cls, mean, tokcov, fc)
    for by_features in probe["phenotypes"].values():
        names += [f for f in by_features if f not in names]
    comparisons = probe.get("comparison", {})
    rows = []
    for pheno, by_features in probe["phenotypes"].items():
        for model in ("ridge", "logistic", "knn"):
            cells, metric = [], None
            for features in names:
                result = by_features.get(features, {})
                entry = result.get("models", {}).get(model)
                if entry is None:
                    cells.append(None)
                    continue
                metric = "r2" if result["kind"] == "continuous" else "auroc"
                cells.append(entry[metric])
            if metric is not None:
                comparison = comparisons.get(pheno, {}).get(model) or {}
                if "diff" in comparison:
                    interval = f"{_num(comparison['diff'])} [{_num(comparison['low'])}, {_num(comparison['high'])}]"
                    verdict = [comparison["features"], interval, comparison["verdict"]]
                else:
                    verdict = ["-", "-", "-"]
                rows.append([pheno, model, metric, *_mark_best(cells), *verdict])
        skipped = {f: r["skipped"] for f, r in by_features.items() if "skipped" in r}
        if skipped:
            rows.append([pheno, "-", "-", *(skipped.get(f, "") and "skipped" for f in names), "", "", ""])
    level = next((c["level"] for by_model in comparisons.values() for c in by_model.values()
                  if isinstance(c, dict) and c.get("level")), 0.95)
    transfer = probe.get("transfer")
    scheme = (f"probes fitted on {transfer['train']} ({transfer['n_train']} scans), tested on the "
              f"{probe['n_scans']} scans evaluated" if transfer else
              f"probes: subject-level {probe.get('folds', '')}-fold CV over {probe['n_scans']} scans")
    return _table(f"{scheme} "
                  "(cls/mean = embeddings, tokcov = token covariance readout, factcov = factor-prior network coupling, "
                  "fc = connectivity baseline; "
                  f"best readout - fc with its {level:.0%} subject-bootstrap interval)",
                  ["phenotype", "probe", "metric", *names, "best", "best - fc [CI]", "verdict"], rows)


def forecast_table(fc: dict) -> str:
    methods = fc["methods"]
    mse = _mark_best([m["mse"] for m in methods.values()], higher=False)
    r2 = _mark_best([m["r2"] for m in methods.values()])
    first = _mark_best([m["mse_per_step"][0] for m in methods.values()], higher=False)
    last = _mark_best([m["mse_per_step"][-1] for m in methods.values()], higher=False)
    rows = [[name, mse[i], r2[i], first[i], last[i]] for i, name in enumerate(methods)]
    kind = "fine-tuned" if fc.get("finetuned") else "zero-shot"
    table = _table(f"forecast ({kind}): {fc['context_trs']} TRs context -> {fc['horizon_trs']} TRs "
                   f"({fc['windows']} windows)", ["method", "MSE", "R²", "MSE step 1", f"MSE step {fc['horizon_trs']}"],
                   rows)
    c = fc.get("comparison")
    if not c:
        return table
    lines = [table, f"MSE model - {c['baseline']} (best baseline): {_interval(c)} ({c['level']:.0%} scan-bootstrap "
             f"interval; < 0 = model better): {c['verdict']}"]
    if fc.get("vs"):
        lines.append("model vs each baseline: " + ", ".join(f"{v['verdict']} {name}" for name, v in fc["vs"].items()))
    if fc.get("per_step"):
        said = [step["verdict"] for step in fc["per_step"]]
        lines.append(f"per step vs the best baseline at that step: steps beaten: {said.count('beats')}/{len(said)}, "
                     f"tied {said.count('ties')}, lost {said.count('loses')}")
    return "\n".join(lines)


def networks_table(net: dict) -> str:
    if "skipped" in net:
        return f"networks: skipped ({net['skipped']})"
    sources = net["sources"]
    ari = _mark_best([s["clustering"]["ari"] for s in sources.values()])
    acc = _mark_best([s["clustering"]["accuracy"] for s in sources.values()])
    cls = _mark_best([s["classification"]["accuracy"] for s in sources.values()])
    chance = next(iter(sources.values()))["classification"]["chance"]
    rows = [[name, ari[i], acc[i], cls[i]] for i, name in enumerate(sources)]
    table = _table(f"networks: {net['n_networks']} atlas networks; clustering ARI / matched accuracy, "
                   f"CV classification accuracy (chance {_num(chance)})",
                   ["source", "ARI", "matched acc", "classif. acc"], rows)
    c = net.get("comparison")
    if not c:
        return table
    return (f"{table}\nARI {c['source']} - {c['baseline']}: {_num(c['diff'])} [{_num(c['low'])}, {_num(c['high'])}] "
            f"({c['level']:.0%} parcel-bootstrap interval): {c['verdict']}")


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
    baselines = report.get("baselines")
    if baselines and baselines["path"] != report["data"]:
        parts[0] += f"\nbaselines fitted on {baselines['path']} ({baselines['source']})"
    for task, result in report["tasks"].items():
        parts.append(TABLES[task](result))
    return "\n\n".join(parts)


def write_report(path: Path, report: dict) -> None:
    """Write ``report`` as strict JSON (NaN -> null) through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
