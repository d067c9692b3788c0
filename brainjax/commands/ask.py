"""``brainjax ask``: ask an instruction-tuned fMRI-LM (``brainjax instruct``) a question about one scan.

Prints the model's greedy answer and, when the answer options are known (``--labels``, or a question that
lists every label of a known target, as the templates do), each label's probability: the softmax over the
labels' summed answer log-probabilities, the same scoring as the evaluation table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "ask an instruction-tuned fMRI-LM a question about a scan"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/instruct", help="the stage-3 work dir (default: %(default)s)")
    parser.add_argument("--data", help="dataset directory (default: the run's)")
    parser.add_argument("--scan", required=True, help="scan_id of the manifest")
    parser.add_argument("--question", required=True, help="the question, in plain English")
    parser.add_argument("--labels", help="comma-separated answer options to score (default: from the question)")
    parser.add_argument("--max-tokens", type=int, default=24, help="longest free answer (default: %(default)s)")


def options_in(question: str, targets: dict) -> tuple[str, ...]:
    """The labels of the first binary/categorical target whose every label appears in the question."""
    lowered = question.lower()
    for target in targets.values():
        if target.labels and all(label.lower() in lowered for label in target.labels):
            return tuple(target.labels)
    return ()


def main(args: argparse.Namespace) -> int:
    import numpy as np
    from scipy.special import softmax

    from brainjax.errors import CheckpointMismatchError, DatasetError
    from brainjax.lm.batches import TextCodec
    from brainjax.lm.evaluate import Prompter, scan_windows
    from brainjax.lm.instructions import query_segments
    from brainjax.lm.report import load_question_setup
    from brainjax.run import load_model

    loaded = load_model(args.workdir)
    if loaded.cfg.objective not in ("adapt", "instruct"):
        raise CheckpointMismatchError(f"{args.workdir} is a {loaded.cfg.objective!r} run, not an fMRI-LM run")
    data = args.data or loaded.cfg.data.path
    for path in [Path(p).resolve() for p in data.split(",")]:  # several datasets: the one holding the scan
        dataset, targets, _ = load_question_setup(loaded.cfg, path, several="," in data)
        index = {row["scan_id"]: i for i, row in enumerate(dataset.manifest)}
        if args.scan in index:
            break
    else:
        raise DatasetError(f"{data}: no scan {args.scan!r} in the manifest")
    scan = index[args.scan]
    split = dataset.manifest[scan]["split"]
    windows = scan_windows(dataset, [scan], loaded.cfg.data.window)
    if scan not in windows:
        raise DatasetError(f"scan {args.scan} is shorter than one window ({loaded.cfg.data.window} TRs)")
    codec = TextCodec.from_dir(Path(args.workdir) / "lm")
    prompter = Prompter(loaded, codec, windows, dataset.atlas.n_parcels, batch_size=1)
    prompt = query_segments(args.question, scan)
    answer = prompter.generate([prompt], max_new=args.max_tokens)[0]
    labels = tuple(x.strip() for x in args.labels.split(",") if x.strip()) if args.labels else \
        options_in(args.question, targets)
    scores = prompter.label_token_logprobs([prompt], labels)[0] if labels else []
    print(f"scan {args.scan} ({split} split), {args.workdir} step {loaded.step}")
    print(f"Q: {args.question}\nA: {answer}")
    if labels:
        probs = softmax(np.array([float(s.sum()) for s in scores]))
        for label, p in sorted(zip(labels, probs), key=lambda x: -x[1]):
            print(f"  P({label}) = {p:.3f}")
    return 0
