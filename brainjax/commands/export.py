"""``brainjax export``: a trained model as a self-contained directory (config.json, model.safetensors, atlas.json,
stats.npz, preprocessing.json, README.md model card); see :mod:`brainjax.run.export` for the format.

The directory loads with ``brainjax.load_pretrained(DIR)`` and wherever a command takes ``--workdir`` to
evaluate or start from a model (``evaluate``, ``embed``, ``finetune``, ``tokenizer encode``, ``ask``). It holds
no optimizer state (about a third of a checkpoint under AdamW) and nothing that needs unpickling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "write a trained model as a self-contained directory (safetensors + config + atlas + model card)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the run to export (its checkpoints/)")
    parser.add_argument("--out", required=True, help="a new directory (an existing one is refused)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--data", help="the training dataset directory, when it has moved since training "
                                       "(default: the run's data.path)")
    parser.add_argument("--report", help="evaluation report for the model card (default: WORKDIR/eval/report.json "
                                         "when it exists)")


def model_card(config: dict, report: dict | None, report_path: Path | None) -> str:
    """The README.md of an export: what the model is, what it was trained on, how to load it, and the
    evaluation table (``brainjax evaluate``'s printed report) when there is one."""
    from brainjax.eval.report import format_report

    cfg = config["config"]
    model = cfg["model"]
    lines = [f"# brainjax {config['objective']} model ({cfg.get('name') or 'custom config'}), step {config['step']}",
             "", f"Exported by brainjax {config['brainjax_version']} from `{config['source']}`.", "",
             "| | |", "|---|---|", f"| parameters | {config['parameters']:,} |",
             f"| encoder | width {model['width']}, depth {model['depth']}, heads {model['heads']}, patch "
             f"{model['patch']} TRs |",
             f"| window | {cfg['data']['window']} TRs |", f"| training steps | {config['step']} |"]
    for data in config["training_data"]:
        lines.append(f"| training data | `{data['path']}`: {data['n_scans']} scans, atlas {data['atlas']} "
                     f"({data['n_parcels']} parcels) |")
    lines += ["", "## Loading", "", "```python", "import brainjax", "", "loaded = brainjax.load_pretrained(\"DIR\")",
              "model = loaded.backbone  # the BrainLM (or the tokenizer / fMRI-LM of those runs)", "```", "",
              "or pass the directory as `--workdir` to `brainjax evaluate`, `embed`, `finetune`, `tokenizer encode`.",
              "Inputs are parcel series of the atlas in `atlas.json`, preprocessed as `preprocessing.json` records "
              "and normalised per parcel by the dataset's own median and IQR (`stats.npz` holds the training "
              "cohort's).", ""]
    if report is None:
        lines += ["## Evaluation", "", "Not evaluated at export time (run `brainjax evaluate --workdir DIR`)."]
    else:
        lines += ["## Evaluation", "", f"From `{report_path}` (data `{report.get('data')}`, split "
                  f"`{report.get('split')}`, step {report.get('step')}):", "", "```", format_report(report), "```"]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from brainjax.errors import InputError
    from brainjax.run import export_run

    report_path = Path(args.report) if args.report else Path(args.workdir) / "eval" / "report.json"
    report = None
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{report_path}: not a readable evaluation report ({err})") from err
    elif args.report:
        raise InputError(f"{report_path}: evaluation report not found")
    card = lambda config: model_card(config, report, report_path if report else None)  # noqa: E731
    out = export_run(args.workdir, args.out, step=args.step, data=args.data, card=card)
    print(f"exported {args.workdir} -> {out}")
    return 0
