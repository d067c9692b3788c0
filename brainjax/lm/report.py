"""The stage-3 evaluation table: every target, zero-shot and k-shot, scored by log-probability (summed over
the label's tokens, and per token), and by constrained decoding, beside chance; numeric targets by free
generation, by generation constrained to the number grammar and by the mean of the model's distribution over
the training range's whole numbers (see :mod:`brainjax.lm.evaluate` for how
answers are scored)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from brainjax.data.dataset import Dataset
from brainjax.eval.bootstrap import paired_interval
from brainjax.lm.batches import DescriptionSource, load_descriptor_texts
from brainjax.lm.evaluate import Prompter, constrained_choice, scan_windows
from brainjax.lm.instructions import build_targets, class_labels, make_examples, query_segments, select_shots
from brainjax.lm.scoring import (
    NumberGrammar,
    calibrate,
    chance_metrics,
    expected_number,
    label_metrics,
    label_scores,
    number_candidates,
    numeric_metrics,
    text_metrics,
    value_metrics,
)


def _subset(examples: list, max_scans: int) -> list:
    if max_scans and len(examples) > max_scans:
        keep = np.linspace(0, len(examples) - 1, max_scans).round().astype(int)
        examples = [examples[i] for i in keep]
    return examples


def evaluate_targets(loaded, codec, dataset, targets: dict, names: Sequence[str], *,
                     tuned: Sequence[str], shots: Sequence[int], split: str = "test", seed: int = 0,
                     descriptors: list[dict] | None = None, source_line: bool = False, max_scans: int = 0,
                     batch_size: int = 8, calibration_scans: int = 32, views: int = 1,
                     progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (target, setting, scoring): metrics on the ``split`` scans plus chance from the training
    split; ``tuned`` names the targets stage 3 trained on (the others are zero-shot targets); the calibrated
    row removes the label prior measured on ``calibration_scans`` training scans; ``progress`` receives one line
    per finished (target, setting).

    ``views``: label targets are asked about up to that many consecutive windows of each query scan (as many as
    the scan holds) and the label scores (``logprob`` rows) are averaged over them, as a whole-scan probe reads
    the whole scan; support examples, calibration scans, constrained decoding and generated answers read the
    first window."""
    start = time.perf_counter()
    window = loaded.cfg.data.window
    windows = scan_windows(dataset, dataset.indices("train") + dataset.indices(split), window)
    n_parcels = dataset.atlas.n_parcels
    later = []  # per later window: a Prompter whose query scans read that window (support scans their first)
    for view in range(1, views):
        held = scan_windows(dataset, dataset.indices(split), window, view)
        later.append((Prompter(loaded, codec, {**windows, **held}, n_parcels, batch_size), set(held)))
    subjects = [row["subject"] for row in dataset.manifest]
    train_pool = np.array([i for i in dataset.indices("train") if i in windows], np.int64)
    prompter = Prompter(loaded, codec, windows, n_parcels, batch_size)
    rows = []
    for name in names:
        target = targets[name]
        queries = [e for e in make_examples(dataset, targets, [name], split, seed=seed, source_line=source_line,
                                            descriptors=descriptors) if e.scan in windows]
        queries = _subset(queries, max_scans)
        if not queries:
            continue
        base = {"target": name, "tuned": name in tuned, "n": len(queries)}
        groups = [subjects[e.scan] for e in queries]  # bootstrap intervals resample subjects
        if target.kind == "numeric":
            prompts = [query_segments(e.question, e.scan) for e in queries]
            y = np.array([float(e.answer) for e in queries])
            # the training answers (chance, the number range) and the calibration scans from one example list
            support = make_examples(dataset, targets, [name], "train", seed=seed + 1, descriptors=descriptors)
            train = [float(e.answer) for e in support]
            grammar = NumberGrammar([codec.decode([i]) for i in range(codec.tokenizer.get_vocab_size())],
                                    codec.eos_id)
            for scoring, rule in (("generate", None), ("number grammar", grammar)):
                texts = prompter.generate(prompts, grammar=rule)
                rows.append({**base, "setting": "zero-shot", "scoring": scoring,
                             **numeric_metrics(texts, y, np.array(train), groups), "examples": texts[:3]})
            rows += _number_score_rows(prompter, base, prompts, y, train, groups,
                                       _subset([e for e in support if e.scan in windows], calibration_scans))
            if progress:
                progress(f"{name} zero-shot: {len(queries)} scans, {time.perf_counter() - start:.0f} s")
            continue
        if target.kind == "text":  # free text (the description): greedy answers scored by ROUGE
            train = [e.answer for e in make_examples(dataset, targets, [name], "train", seed=seed,
                                                     descriptors=descriptors)]
            longest = max(len(codec.encode(" " + t)) for t in train[:64]) + 1
            texts = prompter.generate([query_segments(e.question, e.scan) for e in queries], max_new=longest)
            metrics = text_metrics(texts, [e.answer for e in queries], train)
            rows.append({**base, "setting": "zero-shot", "scoring": "generate", **metrics, "examples": texts[:2]})
            if progress:
                progress(f"{name} zero-shot: {len(queries)} scans, {time.perf_counter() - start:.0f} s")
            continue
        labels = class_labels(dataset, target, descriptors)
        y = np.array([e.label for e in queries])
        chance = chance_metrics(labels[train_pool][labels[train_pool] >= 0], y, len(target.labels))
        support = make_examples(dataset, targets, [name], "train", seed=seed + 1, source_line=source_line,
                                descriptors=descriptors)
        support_question = {e.scan: e.question for e in support}
        label_tokens = [codec.encode(" " + label) + [codec.eos_id] for label in target.labels]
        asked = {subjects[e.scan] for e in queries}
        for k in shots:
            # One support set per target and k, shared by every query (so its keys and values are computed once);
            # never from a queried subject; drawn from (seed, k, target) alone, so it does not depend on which
            # other targets this evaluation asks (crc32: str hashes are salted per process).
            rng = np.random.default_rng([seed, k, zlib.crc32(name.encode())])
            chosen = select_shots(labels, train_pool, k, rng, classes=target.labels, subjects=subjects,
                                  exclude=asked) if k else []
            shot_list = [(s, support_question[s], target.labels[labels[s]]) for s in chosen]
            per = prompter.label_token_logprobs([query_segments(e.question, e.scan) for e in queries], target.labels,
                                                shot_list)
            extra = _later_views(later, queries, target.labels, shot_list)
            scores = {normalise: _view_average(per, extra, normalise) for normalise in (False, True)}
            # The label prior on training scans (none a support example): the calibrated row removes it.
            taken = {subjects[s] for s in chosen}
            calibration = _subset([e for e in support if e.scan in windows and subjects[e.scan] not in taken],
                                  calibration_scans)
            prior = label_scores(prompter.label_token_logprobs([query_segments(e.question, e.scan)
                                                                for e in calibration], target.labels,
                                                               shot_list)) if calibration else None
            choice = np.array([constrained_choice(labels_of, label_tokens) for labels_of in per])
            setting = "zero-shot" if k == 0 else f"{k}-shot"
            with_support = {**base, "support": [dataset.manifest[s]["scan_id"] for s in chosen]}
            for scoring, normalise in (("logprob", False), ("logprob/token", True)):
                rows.append({**with_support, "setting": setting, "scoring": scoring,
                             **label_metrics(scores[normalise], y, groups), "chance": chance})
            if prior is not None:  # no training scan left outside the support set: no calibrated row
                rows.append({**with_support, "setting": setting, "scoring": "logprob, calibrated",
                             **label_metrics(calibrate(scores[False], prior), y, groups), "chance": chance})
            onehot = np.where(np.eye(len(target.labels))[choice] > 0, 0.0, -np.inf)
            rows.append({**with_support, "setting": setting, "scoring": "constrained",
                         **label_metrics(onehot, y, groups), "chance": chance})
            if progress:
                progress(f"{name} {setting}: {len(queries)} scans, {time.perf_counter() - start:.0f} s")
    return rows


def _number_score_rows(prompter, base: dict, prompts: list, y: np.ndarray, train: list[float], groups: list,
                       calibration: list) -> list[dict]:
    """Numeric rows read from the model's distribution over the whole numbers of the training range (each scored
    like a label, answer + eos): its mean (``number scores, mean``), and the same with the prior over numbers
    measured on the ``calibration`` training scans removed (``..., calibrated``), as for labels."""
    values = number_candidates(np.array(train))
    labels = [str(int(v)) for v in values]
    scores = label_scores(prompter.label_token_logprobs(prompts, labels))
    readings = [("number scores, mean", scores)]
    if calibration:
        prior = label_scores(prompter.label_token_logprobs([query_segments(e.question, e.scan)
                                                            for e in calibration], labels))
        readings.append(("number scores, mean, calibrated", calibrate(scores, prior)))
    rows = []
    for scoring, read in readings:
        pred = expected_number(read, values)
        rows.append({**base, "setting": "zero-shot", "scoring": scoring,
                     **value_metrics(pred, y, np.array(train), groups), "examples": [f"{v:.1f}" for v in pred[:3]]})
    return rows


def _later_views(later: Sequence[tuple[Prompter, set]], queries: list, labels: Sequence[str], shots: list) -> list:
    """Per later window (its :class:`Prompter` and the scans long enough to hold it): (the queries whose scan
    holds it, their per-label token log-probabilities)."""
    out = []
    for prompter, holding in later:
        held = [i for i, e in enumerate(queries) if e.scan in holding]
        prompts = [query_segments(queries[i].question, queries[i].scan) for i in held]
        out.append((held, prompter.label_token_logprobs(prompts, labels, shots) if held else []))
    return out


def _view_average(per: list, later: list, normalise: bool) -> np.ndarray:
    """Label scores float [N, C] averaged over each query's windows: ``per`` from the first window, ``later``
    from :func:`_later_views` (a scan too short for a window is left out of that window's mean)."""
    total = label_scores(per, normalise)
    count = np.ones(len(total))
    for held, logps in later:
        if held:
            total[held] += label_scores(logps, normalise)
            count[held] += 1
    return total / count[:, None]


def partners(scans: Sequence[int], subjects: Sequence[str]) -> list[int]:
    """For each scan, the next scan in ``scans`` (cyclically) from another subject: a pairing in which no scan
    meets its own subject. Raises ValueError when all scans share one subject."""
    scans = list(scans)
    if len({subjects[s] for s in scans}) < 2:
        raise ValueError("a mismatched pairing needs scans from at least two subjects")
    out = []
    for i, scan in enumerate(scans):
        j = (i + 1) % len(scans)
        while subjects[scans[j]] == subjects[scan]:
            j = (j + 1) % len(scans)
        out.append(scans[j])
    return out


def describe_scans(loaded, codec, dataset, texts: Sequence[str | None], *, split: str = "test", max_scans: int = 0,
                   generate: bool = True, batch_size: int = 8) -> dict:
    """Stage 2's test that the LM reads the scan: the NLL per token of each ``split`` scan's own description given
    that scan, against the same description given another subject's scan (:func:`partners`), with a bootstrap
    95 % interval of the difference (subjects resampled); with ``generate``, greedy descriptions scored by ROUGE
    against the reference (:func:`~brainjax.lm.scoring.text_metrics`). texts: description per manifest row."""
    window = loaded.cfg.data.window
    subjects = [row["subject"] for row in dataset.manifest]
    scans = [i for i in dataset.indices(split) if texts[i]]
    windows = scan_windows(dataset, scans, window)
    scans = _subset([i for i in scans if i in windows], max_scans)
    if len(scans) < 2:
        raise ValueError(f"the {split} split has {len(scans)} described scans of one window or more; need 2")
    prompter = Prompter(loaded, codec, windows, dataset.atlas.n_parcels, batch_size)
    source = DescriptionSource(texts)

    def prompt(scan):  # the stage-2 training prompt
        return source.sample(scan, 0)[0]
    answers = [[codec.encode(" " + texts[s]) + [codec.eos_id]] for s in scans]
    own = [-float(np.mean(lp[0])) for lp in prompter.continuation_logprobs([prompt(s) for s in scans], answers)]
    other = [-float(np.mean(lp[0])) for lp in prompter.continuation_logprobs(
        [prompt(p) for p in partners(scans, subjects)], answers)]
    own, other = np.array(own), np.array(other)
    interval = paired_interval(lambda w: float(np.average(other - own, weights=w)), len(scans),
                               groups=[subjects[s] for s in scans])
    out = {"split": split, "n": len(scans), "nll_own_scan": float(own.mean()), "nll_other_scan": float(other.mean()),
           "difference": interval["diff"], "difference_ci": [interval["low"], interval["high"]]}
    if generate:
        train = [texts[i] for i in dataset.indices("train") if texts[i]]
        longest = max(len(a[0]) for a in answers)
        made = prompter.generate([prompt(s) for s in scans], max_new=longest)
        out.update(text_metrics(made, [texts[s] for s in scans], train), examples=made[:2])
    return out


def descriptors_path(cfg, data: Path, several: bool = False) -> Path:
    """The descriptors.jsonl a language run reads for ``data``: ``language.descriptors`` when it names one file
    for one dataset, else DATA/descriptors/descriptors.jsonl (which may not exist)."""
    own = Path(data) / "descriptors" / "descriptors.jsonl"
    return Path(cfg.language.descriptors) if cfg.language.descriptors and not several else own


def load_question_setup(cfg, data: Path, several: bool = False):
    """(dataset, targets, descriptor records aligned to the manifest or None) for a language run's data; with
    ``several`` datasets each reads its own DATA/descriptors/descriptors.jsonl (``language.descriptors`` names
    one file)."""
    dataset = Dataset(data)
    records = None
    path = descriptors_path(cfg, data, several)
    if path.exists():
        records = [r for r in load_descriptor_texts(path, dataset.manifest)[1] if r is not None]
    return dataset, build_targets(dataset, records), records
