"""Turn the pipeline's window batches into fMRI-LM training batches (stages 2 and 3).

A *source* says what each window becomes: ``sample(scan, start) -> (segments, answer, plain)`` with text as
strings and ``("fmri", scan)`` where the window goes; ``answer`` None gives the window no loss; ``plain`` is
the text of the text-only loss (or None). A segment ``("fmri", other)`` for another scan (a support example
of a k-shot prompt) reads that scan's first window through the source's ``window(other)``.
What a window becomes depends only on (seed, scan, start), so a resumed run builds the same batches.

:func:`window_sequences` tokenizes, lays out (:func:`brainjax.models.sequences.layout`) and adds the window as
block 0, support scans as blocks 1.. (``signal`` [B, S, P, T] ...; blocks a prompt leaves unused repeat block 0
and are never placed in the sequence); :class:`brainjax.data.pipeline.MappedLoader` applies it to the
pipeline Loader (iterator state = the Loader's own).
Rows that only pad an evaluation batch get zero loss weights.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from brainjax.data.describe import rephrase
from brainjax.data.descriptors import DescriptorSettings
from brainjax.data.pipeline import ReadWindow
from brainjax.lm.instructions import answer, class_labels, prompt_segments, select_shots, shots_per_class
from brainjax.models.inputs import WINDOW_KEYS
from brainjax.models.sequences import SequenceSpec, layout, stack, text_row

DESCRIBE_PROMPT = "\nDescribe this scan:"


class Source(Protocol):
    def sample(self, scan: int, start: int) -> tuple[list, str | None, str | None]: ...


def draw(seed: int, scan: int, start: int, salt: int = 0) -> np.random.Generator:
    """The generator of one window's choices: a pure function of (seed, scan, start, salt)."""
    return np.random.default_rng(np.random.SeedSequence([seed, scan, start, salt]))


def rephrase_window(record: dict, seed: int, scan: int, start: int, low_band: tuple[float, float]) -> str:
    """The descriptor ``record``'s facts in the frames of one window (drawn from seed, scan, start)."""
    return rephrase(record, int(draw(seed, scan, start, salt=2).integers(2**31)), low_band)


def check_rephrasable(records: Sequence[dict | None], low_band: tuple[float, float]) -> None:
    """Rephrase every record that has a text once, so an edited record fails when a source is built, not at
    some training step (ValueError naming its scan)."""
    for record in records:
        if record and str(record.get("text") or "").strip():
            rephrase(record, 0, low_band)


class TextCodec:
    """A ``tokenizers.Tokenizer`` with an end-of-text id and a cache (descriptor texts repeat every epoch)."""

    def __init__(self, tokenizer, eos_id: int):
        self.tokenizer, self.eos_id = tokenizer, int(eos_id)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, directory: str | Path) -> TextCodec:
        """Load ``tokenizer.json`` and the eos id (``config.json``'s ``eos_token_id``, else ``<|endoftext|>``)."""
        from tokenizers import Tokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        tokenizer = Tokenizer.from_file(str(path))
        config = directory / "config.json"
        eos = json.loads(config.read_text()).get("eos_token_id") if config.exists() else None
        if isinstance(eos, list):
            eos = eos[0]
        if eos is None:
            eos = tokenizer.token_to_id("<|endoftext|>")
        if eos is None:
            raise ValueError(f"{directory}: no eos_token_id in config.json and no <|endoftext|> token")
        return cls(tokenizer, eos)

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) != self.eos_id])


def tokenize_segments(codec: TextCodec, segments: list, blocks: dict[int, int]) -> list:
    """Text segments -> token ids; ``("fmri", scan)`` -> ``("fmri", blocks[scan])``."""
    out = []
    for kind, part in segments:
        out.append(("text", codec.encode(part)) if kind == "text" else ("fmri", blocks[int(part)]))
    return out


def window_sequences(batch: dict[str, np.ndarray], source: Source | Sequence[Source], codec: TextCodec,
                     spec: SequenceSpec, lm_len: int = 0, per_answer: bool = False) -> dict[str, np.ndarray]:
    """One pipeline batch (signal [B, P, T], scan [B], start [B], optional dataset [B] and valid [B]) -> an
    fMRI-LM batch. ``source``: one, or one per mixed dataset (a window's ``dataset`` index picks it, so its
    questions and answers come from its own manifest: scan indices are per dataset). ``per_answer``: an answer's
    tokens share a loss weight of 1 (``language.loss_per_answer``), else each token weighs 1."""
    samples, plains = [], []
    rows = np.asarray(batch["scan"])
    real_rows = np.asarray(batch.get("valid", np.ones(len(rows), bool)), bool)
    sources = list(source) if isinstance(source, Sequence) else None
    if sources is not None and "dataset" not in batch and len(sources) != 1:
        raise ValueError(f"{len(sources)} sources but the batch says no window's dataset")
    which = np.asarray(batch.get("dataset", np.zeros(len(rows), np.int64)))
    windows = []
    for i, scan in enumerate(rows):
        own = source if sources is None else sources[int(which[i])]
        segments, answer, plain = own.sample(int(scan), int(batch["start"][i]))
        support = [int(p) for kind, p in segments if kind == "fmri" and int(p) != int(scan)]
        if 1 + len(support) > spec.blocks:
            raise ValueError(f"scan {int(scan)}'s prompt has {len(support)} support scans; the sequence holds "
                             f"{spec.blocks - 1}")
        blocks = [{k: np.asarray(batch[k][i]) for k in WINDOW_KEYS}] + [own.window(s) for s in support]
        blocks += blocks[:1] * (spec.blocks - len(blocks))  # unused: never placed, a real window keeps them finite
        block = stack(blocks)
        tokens = tokenize_segments(codec, segments, {s: b for b, s in enumerate([int(scan), *support])})
        answer_ids = codec.encode(" " + answer) + [codec.eos_id] if answer else []
        sample = layout(tokens, answer_ids, block["parcel_mask"], spec, code_blocks=(0,))
        if not real_rows[i]:
            sample["loss_weight"][:] = 0.0
            sample["code_weight"][:] = 0.0
        elif per_answer and answer_ids:
            sample["loss_weight"] /= sample["loss_weight"].sum()
        samples.append(sample)
        windows.append(block)
        if lm_len:
            ids, mask = text_row(codec.encode(plain or "") + [codec.eos_id], lm_len)
            plains.append((ids, mask & real_rows[i]))
    out = stack(samples)
    out.update(stack(windows))
    if lm_len:
        out["lm_ids"] = np.stack([p[0] for p in plains])
        out["lm_mask"] = np.stack([p[1] for p in plains])
    return out


class DescriptionSource:
    """Stage 2: the scan, then its descriptor text as the answer; the text-only loss reads the same text.

    With ``records`` (descriptors.jsonl rows per manifest row, :func:`load_descriptor_texts`), each window's
    text is its record's facts in frames drawn from (seed, scan, start) (:func:`brainjax.data.describe.rephrase`;
    ``low_band`` as the descriptors were made with): a new crop, a new phrasing of the same facts."""

    def __init__(self, texts: list[str | None], records: list[dict | None] | None = None, seed: int = 0,
                 low_band: tuple[float, float] = DescriptorSettings.low_band):
        if records is not None and len(records) != len(texts):
            raise ValueError(f"{len(records)} descriptor records for {len(texts)} texts")
        self.texts, self.records, self.seed, self.low_band = texts, records, seed, tuple(low_band)
        check_rephrasable(records or [], self.low_band)

    def sample(self, scan: int, start: int) -> tuple[list, str, str | None]:
        text = self.texts[scan]
        if not text:
            raise ValueError(f"scan {scan} has no descriptor text")
        if self.records is not None:
            text = rephrase_window(self.records[scan], self.seed, scan, start, self.low_band)
        return [("text", "fMRI: "), ("fmri", scan), ("text", DESCRIBE_PROMPT)], text, text


def load_descriptor_texts(path: str | Path, manifest: list[dict]) -> tuple[list[str | None], list[dict | None]]:
    """Descriptor text and record per manifest row from ``brainjax describe``'s descriptors.jsonl."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (run `brainjax describe --data DATA`)")
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                records[record["scan_id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a descriptor record ({err})") from None
    rows = [records.get(row["scan_id"]) for row in manifest]
    if not any(rows):
        raise ValueError(f"{path}: no record matches a scan of the dataset")
    return [r["text"] if r else None for r in rows], rows


class InstructionSource:
    """Stage 3: a question about the window's scan (target and paraphrase drawn per window among the tuned
    targets the scan can answer) and its answer; no text-only loss.

    ``support`` > 0 trains k-shot prompts as the evaluation asks them: each window draws k per class uniformly
    from 0 .. support // classes (a binary target with support 4: k = 0, 1 or 2), the support scans from
    training scans of other subjects that answer the target, each asked a drawn paraphrase and answered with its
    label; a support scan enters as its first window (``window``, as the evaluation's support examples do).
    Numeric and free-text targets stay zero-shot. ``window``: the run's window length and ``n_parcels`` the
    padded parcel count of a batch (both needed only with ``support``).

    ``rephrase_band`` (the descriptors' low-frequency band; None = off): a descriptor-text answer (the
    ``description`` target) is its record's facts in frames drawn from (seed, scan, start), as stage 2's
    :class:`DescriptionSource` draws them, so stage 3 cannot learn a training scan's wording by heart either."""

    def __init__(self, dataset, targets: dict, names: list[str], descriptors: list[dict | None], seed: int,
                 source_line: bool = False, support: int = 0, window: int = 0, n_parcels: int = 0,
                 rephrase_band: tuple[float, float] | None = None):
        if support < 0:
            raise ValueError(f"support must be >= 0, got {support}")
        if support and window < 1:
            raise ValueError("support examples need the run's window length")
        self.targets, self.seed, self.source_line, self.support = targets, seed, source_line, support
        self.descriptors = descriptors
        self.rephrase_band = None if rephrase_band is None else tuple(rephrase_band)
        if any(self._rephrased(targets[n]) for n in names):
            check_rephrasable(descriptors, self.rephrase_band)
        self.answers: list[list[tuple[str, str]]] = []  # per manifest row: (target, answer) it can answer
        for row, descriptor in zip(dataset.manifest, descriptors):
            known = [(n, answer(targets[n], row, descriptor)[0]) for n in names]
            self.answers.append([(n, a) for n, a in known if a is not None])
        self.sites = [str(row.get("site") or "").strip() for row in dataset.manifest]
        if not any(self.answers[i] for i in dataset.indices("train")):
            raise ValueError(f"no training scan has an answer for any of the targets {names}")
        self.subjects = [str(row["subject"]) for row in dataset.manifest]
        long_enough = [i for i in dataset.indices("train") if int(dataset.manifest[i]["length"]) >= window]
        self.pool = np.array(long_enough, np.int64)
        # class per manifest row (-1 unknown) of each tuned target that support examples can be drawn for
        self.labels = {n: class_labels(dataset, targets[n], aligned=descriptors) for n in names
                       if shots_per_class(targets[n], support)}
        for n, labels in self.labels.items():  # every class must offer k scans outside any one subject
            k = shots_per_class(targets[n], support)
            for c, label in enumerate(targets[n].labels):
                found = self.pool[labels[self.pool] == c]
                per_subject = max(Counter(self.subjects[i] for i in found).values(), default=0)
                if len(found) - per_subject < k:
                    raise ValueError(f"support={support}: target {n!r} class {label!r} has {len(found)} training "
                                     f"scans, {k} outside one subject needed")
        self.reader = ReadWindow([dataset], window, n_parcels or dataset.atlas.n_parcels) if support else None
        self._windows: dict[int, dict[str, np.ndarray]] = {}

    def _rephrased(self, target) -> bool:
        return self.rephrase_band is not None and target.source == "descriptor" and target.kind == "text"

    def _question(self, target, scan: int, rng: np.random.Generator) -> str:
        question = target.questions[int(rng.integers(len(target.questions)))]
        if self.source_line and self.sites[scan] and target.key != "site":
            question = f"Source: {self.sites[scan]}. {question}"
        return question

    def _shots(self, name: str, scan: int, rng: np.random.Generator) -> list[tuple[int, str, str]]:
        """k per class of support examples ``(scan, question, answer)`` for one window (k drawn, may be 0)."""
        if name not in self.labels:
            return []
        target, labels = self.targets[name], self.labels[name]
        k = int(rng.integers(shots_per_class(target, self.support) + 1))
        if k == 0:
            return []
        chosen = select_shots(labels, self.pool, k, rng, classes=target.labels, subjects=self.subjects,
                              exclude=self.subjects[scan])
        return [(s, self._question(target, s, rng), target.labels[labels[s]]) for s in chosen]

    def window(self, scan: int) -> dict[str, np.ndarray]:
        """The first window of a support scan (WINDOW_KEYS, no batch axis), read once and kept."""
        if self.reader is None:
            raise ValueError("this source was built without support examples")
        if scan not in self._windows:
            example = self.reader.map(np.array([0, scan, 0]))
            self._windows[scan] = {k: np.asarray(example[k]) for k in WINDOW_KEYS}
        return self._windows[scan]

    def sample(self, scan: int, start: int) -> tuple[list, str, str | None]:
        options = self.answers[scan]
        if not options:  # every tuned answer of this scan is missing: the window carries no loss
            return prompt_segments(self.targets[next(iter(self.targets))].questions[0], scan), None, None
        rng = draw(self.seed, scan, start)
        name, reply = options[int(rng.integers(len(options)))]
        question = self._question(self.targets[name], scan, rng)
        if self._rephrased(self.targets[name]):  # its own stream: the draws above stay those of the stored text
            reply = rephrase_window(self.descriptors[scan], self.seed, scan, start, self.rephrase_band)
        # a second stream, so the target and question drawn above stay those of a run without support examples
        shots = self._shots(name, scan, draw(self.seed, scan, start, salt=1)) if self.support else []
        return prompt_segments(question, scan, shots), reply, None
