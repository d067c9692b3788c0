"""``brainjax adapt``: fMRI-LM stage 2 — teach a language model to read scans through the stage-1 tokenizer.

Inputs: a tokenizer work dir (``brainjax tokenizer train``), a local Hugging Face LM directory (``--lm``;
default: the embedded small LM that brainjax trains itself, since no weights can be downloaded), and the
dataset's descriptors (``brainjax describe``; computed here when missing). Each training window becomes
``"fMRI: " <scan tokens> "\\nDescribe this scan:" <descriptor text>``; the losses are the descriptor text
given the scan, the next time patch's VQ codes, and plain language modelling on the descriptor text
(``language.*_weight``). The tokenizer stays frozen; the LM trains through LoRA adapters by default
(``--set language.train_lm=full|frozen``). Runs through the shared Trainer: rerun to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from brainjax.commands.args import add_distributed_arguments, initialize_distributed

HELP = "fMRI-LM stage 2: align a language model with scans through the tokenizer (rerun to resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/adapt", help="the run's work dir (default: %(default)s)")
    parser.add_argument("--tokenizer", default="runs/tokenizer",
                        help="stage-1 tokenizer work dir (default: %(default)s)")
    parser.add_argument("--lm", help="local Hugging Face LM directory (default: the embedded small LM)")
    parser.add_argument("--data", help="dataset directory (default: the embedded synthetic dataset)")
    parser.add_argument("--descriptors", help="descriptors.jsonl (default: DATA/descriptors/descriptors.jsonl, "
                                              "computed when missing)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of the tokenizer run's config (repeatable)")
    add_distributed_arguments(parser)


def ensure_descriptors(data: Path, path: str | None) -> Path:
    """The descriptors file to use; ``brainjax describe`` runs first when the default one is missing."""
    if path:
        return Path(path)
    from brainjax.distributed import main_first

    default = data / "descriptors" / "descriptors.jsonl"

    def describe_once() -> Path:
        if not default.exists():
            from brainjax.commands import describe
            print(f"no descriptors at {default}: running `brainjax describe --data {data}` first")
            code = describe.main(argparse.Namespace(data=str(data), out=None, density=0.10, seed=0,
                                                    max_sentences=6))
            if code:
                raise ValueError(f"brainjax describe failed on {data} (exit {code})")
        return default
    return main_first("descriptors", describe_once, lambda: default)  # one process writes, all read


def stage2_config(tokenizer_run, args: argparse.Namespace, data: str, lm_dir: Path, descriptors: Path):
    """The tokenizer run's config with the adapt objective, language section, optimizer and schedule."""
    from brainjax.config import LanguageConfig, OptimConfig, override
    from brainjax.lm.runs import architecture_json

    cfg = tokenizer_run.cfg
    language = LanguageConfig(lm_path=str(lm_dir), architecture=architecture_json(lm_dir),
                              tokenizer_workdir=str(Path(args.tokenizer).resolve()),
                              tokenizer_step=tokenizer_run.step, descriptors=str(descriptors.resolve()))
    steps = args.steps
    cfg = dataclasses.replace(
        cfg, name="adapt", objective="adapt", language=language,
        data=dataclasses.replace(cfg.data, path=data, batch_size=args.batch),
        optim=OptimConfig(base_lr=args.lr, scale_lr=False, weight_decay=0.0, warmup_frac=0.05),
        train=dataclasses.replace(cfg.train, steps=steps, eval_every=max(1, min(cfg.train.eval_every, steps)),
                                  checkpoint_every=max(1, min(cfg.train.checkpoint_every, steps)), figure=False))
    return override(cfg, args.overrides)


def main(args: argparse.Namespace) -> int:
    initialize_distributed(args)  # first: nothing may touch a device before it
    from brainjax.data.dataset import Dataset
    from brainjax.data.synthetic import default_dataset
    from brainjax.distributed import is_main
    from brainjax.eval.restore import load_for_eval
    from brainjax.lm.batches import DescriptionSource, TextCodec, load_descriptor_texts, window_sequences
    from brainjax.lm.runs import (
        COMMAND_ERRORS,
        command_error,
        keep_lm_files,
        lm_dir_or_default,
        sequence_spec,
        stage2_warm_start,
        train_stage,
    )

    out = Path(args.workdir)
    try:
        data = Path(args.data).expanduser().resolve() if args.data else default_dataset()
        dataset = Dataset(data)
        tokenizer_run = load_for_eval(args.tokenizer)
        if tokenizer_run.cfg.objective != "tokenizer":
            raise ValueError(f"{args.tokenizer} is a {tokenizer_run.cfg.objective!r} run, not a tokenizer run")
        descriptors = ensure_descriptors(data, args.descriptors)
        texts, _ = load_descriptor_texts(descriptors, dataset.manifest)
        lm_dir = lm_dir_or_default(args.lm)
        cfg = stage2_config(tokenizer_run, args, str(data), lm_dir, descriptors)
        codec = TextCodec.from_dir(keep_lm_files(lm_dir, out))
        spec = sequence_spec(cfg, dataset.atlas.n_parcels)
        source = DescriptionSource(texts)
        lm_len = cfg.language.lm_len if cfg.language.lm_weight > 0 else 0

        def build(batch):
            return window_sequences(batch, source, codec, spec, lm_len)
        train_stage(cfg, out, str(data), build, spec, stage2_warm_start(tokenizer_run, lm_dir), tokenizer_run.mesh)
    except COMMAND_ERRORS as err:
        return command_error(err)
    if is_main():
        print(f"stage 2 done -> {out}; instruction-tune with `brainjax instruct --adapt {out}`")
    return 0

