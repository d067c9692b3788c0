"""Turn the pipeline's window batches into fMRI-LM training batches (stages 2 and 3).

A *source* says what each window becomes: ``sample(scan, start) -> (segments, answer, plain)`` with text as
strings and ``("fmri", scan)`` where the window goes; ``answer`` None gives the window no loss; ``plain`` is
the text of the text-only loss (or None).
What a window becomes depends only on (seed, scan, start), so a resumed run builds the same batches.

:func:`window_sequences` tokenizes, lays out (:func:`brainjax.models.sequences.layout`) and adds the window as
block 0 (``signal`` [B, 1, P, T] ...); :class:`brainjax.data.pipeline.MappedLoader` applies it to the pipeline
Loader (iterator state = the Loader's own).
Rows that only pad an evaluation batch get zero loss weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from brainjax.lm.instructions import answer, prompt_segments
from brainjax.models.inputs import WINDOW_KEYS
from brainjax.models.sequences import SequenceSpec, layout, stack, text_row

DESCRIBE_PROMPT = "\nDescribe this scan:"


class Source(Protocol):
    def sample(self, scan: int, start: int) -> tuple[list, str | None, str | None]: ...


def draw(seed: int, scan: int, start: int, salt: int = 0) -> np.random.Generator:
    """The generator of one window's choices: a pure function of (seed, scan, start, salt)."""
    return np.random.default_rng(np.random.SeedSequence([seed, scan, start, salt]))


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
                     spec: SequenceSpec, lm_len: int = 0) -> dict[str, np.ndarray]:
    """One pipeline batch (signal [B, P, T], scan [B], start [B], optional dataset [B] and valid [B]) -> an
    fMRI-LM batch. ``source``: one, or one per mixed dataset (a window's ``dataset`` index picks it, so its
    questions and answers come from its own manifest: scan indices are per dataset)."""
    samples, plains = [], []
    rows = np.asarray(batch["scan"])
    real_rows = np.asarray(batch.get("valid", np.ones(len(rows), bool)), bool)
    sources = list(source) if isinstance(source, Sequence) else None
    if sources is not None and "dataset" not in batch and len(sources) != 1:
        raise ValueError(f"{len(sources)} sources but the batch says no window's dataset")
    which = np.asarray(batch.get("dataset", np.zeros(len(rows), np.int64)))
    for i, scan in enumerate(rows):
        own = source if sources is None else sources[int(which[i])]
        segments, answer, plain = own.sample(int(scan), int(batch["start"][i]))
        tokens = tokenize_segments(codec, segments, {int(scan): 0})
        answer_ids = codec.encode(" " + answer) + [codec.eos_id] if answer else []
        sample = layout(tokens, answer_ids, batch["parcel_mask"][i][None], spec, code_blocks=(0,))
        if not real_rows[i]:
            sample["loss_weight"][:] = 0.0
            sample["code_weight"][:] = 0.0
        samples.append(sample)
        if lm_len:
            ids, mask = text_row(codec.encode(plain or "") + [codec.eos_id], lm_len)
            plains.append((ids, mask & real_rows[i]))
    out = stack(samples)
    out.update({k: np.asarray(batch[k])[:, None] for k in WINDOW_KEYS})
    if lm_len:
        out["lm_ids"] = np.stack([p[0] for p in plains])
        out["lm_mask"] = np.stack([p[1] for p in plains])
    return out


class DescriptionSource:
    """Stage 2: the scan, then its descriptor text as the answer; the text-only loss reads the same text."""

    def __init__(self, texts: list[str | None]):
        self.texts = texts

    def sample(self, scan: int, start: int) -> tuple[list, str, str | None]:
        text = self.texts[scan]
        if not text:
            raise ValueError(f"scan {scan} has no descriptor text")
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
    targets the scan can answer) and its answer; no text-only loss."""

    def __init__(self, dataset, targets: dict, names: list[str], descriptors: list[dict | None], seed: int,
                 source_line: bool = False):
        self.targets, self.seed, self.source_line = targets, seed, source_line
        self.answers: list[list[tuple[str, str]]] = []  # per manifest row: (target, answer) it can answer
        for row, descriptor in zip(dataset.manifest, descriptors):
            known = [(n, answer(targets[n], row, descriptor)[0]) for n in names]
            self.answers.append([(n, a) for n, a in known if a is not None])
        self.sites = [str(row.get("site") or "").strip() for row in dataset.manifest]
        if not any(self.answers[i] for i in dataset.indices("train")):
            raise ValueError(f"no training scan has an answer for any of the targets {names}")

    def sample(self, scan: int, start: int) -> tuple[list, str, str | None]:
        options = self.answers[scan]
        if not options:  # every tuned answer of this scan is missing: the window carries no loss
            return prompt_segments(self.targets[next(iter(self.targets))].questions[0], scan), None, None
        rng = draw(self.seed, scan, start)
        name, reply = options[int(rng.integers(len(options)))]
        target = self.targets[name]
        question = target.questions[int(rng.integers(len(target.questions)))]
        if self.source_line and self.sites[scan] and target.key != "site":
            question = f"Source: {self.sites[scan]}. {question}"
        return prompt_segments(question, scan), reply, None
