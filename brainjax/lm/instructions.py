"""Instruction-tuning data for fMRI-LM stage 3: targets, their question paraphrases and answers, and prompt layout.

Stage 3 tunes the language model on templated questions about each scan and evaluates it zero-shot (a target
never tuned on) and k-shot (k labelled example scans per class in the context). This module is the host-side
half: it decides which targets a dataset supports, words their questions and answers, draws examples and
shots reproducibly and lays out prompts. The model wiring turns segments into embeddings.

Targets (:func:`build_targets`), all from the training split only so evaluation rows never move a boundary:

* a 0/1 phenotype column is ``binary``; ``sex`` reads "female"/"male", ``diagnosis`` "control"/"patient",
  any other column "no"/"yes" with a question naming it;
* a non-numeric column (including the manifest's ``site``) is ``categorical`` over its sorted training values,
  skipped with fewer than 2 or more than 12 of them;
* any other numeric column is ``numeric`` (answer: the value rounded half up to an integer, "37") and gives a
  derived categorical ``<name>_group`` cut at the training tertiles (skipped when the cuts coincide);
* with descriptors: ``modularity`` and ``efficiency`` (descriptor key ``global_efficiency``) are categorical
  "lower"/"typical"/"higher" from the scan's z-score (``|z| < 0.5`` is typical), and ``description`` is a
  ``text`` target answered by the descriptor text.

Binary and categorical questions list their options, so a zero-shot question is well posed.

Prompt layout (:func:`prompt_segments`); a segment is ``("text", str)`` or ``("fmri", manifest index)`` and the
model replaces an fmri segment by that scan's tokens. Each shot ``(scan, question, answer)`` is followed by
the query::

    ("text", "fMRI: "), ("fmri", shot), ("text", "\\nQuestion: {q}\\nAnswer:"), ("text", " {a}\\n\\n"), ...
    ("text", "fMRI: "), ("fmri", scan), ("text", "\\nQuestion: {q}\\nAnswer:")

The answer continuation scored or generated after the prompt is :func:`continuation` (``" " + answer``); the
wiring appends the tokenizer's eos token to it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from brainjax.data.dataset import MISSING, Dataset

KINDS = ("binary", "categorical", "numeric", "text")
MAX_CATEGORIES = 12
TYPICAL_Z = 0.5
Segment = tuple[str, str | int]

# Binary columns whose 0/1 coding is known: words for class 0 and 1, and how to name the column in a question.
_BINARY_WORDS = {"sex": ("female", "male"), "diagnosis": ("control", "patient")}
_BINARY_QUESTIONS = {
    "sex": ("What is the sex of the participant in this scan?", "Is this scan from a male or a female participant?",
            "Was this scan acquired from a female or a male participant?"),
    "diagnosis": ("Is the participant in this scan a patient or a control?",
                  "What is the diagnostic group of the participant in this scan?",
                  "Does this scan come from a patient or from a healthy control participant?"),
}
_DESCRIPTOR_TARGETS = {"modularity": ("modularity", "the modularity of the functional connectivity network"),
                       "efficiency": ("global_efficiency", "the global efficiency of the functional connectivity "
                                                           "graph")}


@dataclass(frozen=True)
class Target:
    """One question family. ``codes`` maps a normalised manifest value to its class index (binary/categorical),
    ``cuts`` holds the two tertile boundaries of a ``_group`` target; ``source`` is "manifest" or "descriptor"
    and ``key`` the manifest column or descriptor feature read."""

    name: str
    kind: str
    labels: tuple[str, ...]
    questions: tuple[str, ...]
    source: str
    key: str
    codes: tuple[tuple[str, int], ...] = ()
    cuts: tuple[float, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"target {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.questions) < 3:
            raise ValueError(f"target {self.name!r}: needs at least 3 question paraphrases")


@dataclass(frozen=True)
class Example:
    """One tuning/evaluation item: manifest index of the scan, target name, question, answer text and class."""

    scan: int
    target: str
    question: str
    answer: str
    label: int | None


def _known(value) -> bool:
    return value is not None and str(value).strip() not in ("", MISSING)


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _normal(value) -> str:
    """Canonical form of a raw value, so "1" and "1.0" (or "Site-01" and "site-01") are one category."""
    x = _number(value)
    if x is not None:
        return str(int(x)) if x.is_integer() else repr(x)
    return str(value).strip().lower()


def _pretty(column: str) -> str:
    return column.replace("_", " ").strip()


def _options(labels: Sequence[str]) -> str:
    return f"Answer with one of: {', '.join(labels)}."


def _binary(column: str) -> Target:
    words = _BINARY_WORDS.get(column.lower(), ("no", "yes"))
    name = _pretty(column)
    base = _BINARY_QUESTIONS.get(column.lower(), (
        f"Is {name} present for the participant in this scan?", f"Does the participant in this scan have {name}?",
        f"For the participant in this scan, is {name} yes or no?"))
    return Target(column, "binary", words, tuple(f"{q} {_options(words)}" for q in base), "manifest", column,
                  codes=(("0", 0), ("1", 1)))


def _categorical(column: str, values: list[str]) -> Target:
    first = {}
    for v in values:  # the first spelling seen names a category that differs only in case or number format
        first.setdefault(_normal(v), v)
    labels = tuple(first[key] for key in sorted(first))
    name = "acquisition site" if column == "site" else _pretty(column)
    base = (f"What is the {name} of this scan?", f"Which {name} does this scan come from?",
            f"Identify the {name} of the participant in this scan.")
    return Target(column, "categorical", labels, tuple(f"{q} {_options(labels)}" for q in base), "manifest",
                  column, codes=tuple((_normal(v), i) for i, v in enumerate(labels)))


def _numeric(column: str, values: np.ndarray) -> list[Target]:
    name = _pretty(column)
    if column.lower() == "age":
        base = ("How old is the participant in this scan?", "What is the age of the participant in this scan?",
                "What age, in years, was the participant when this scan was acquired?")
        labels, group = ("younger", "middle", "older"), ("Is the participant in this scan younger, middle-aged or "
                                                         "older compared with the cohort?",
                                                         "Which age group does the participant in this scan "
                                                         "belong to?", "Relative to the other participants, how "
                                                         "old is the participant in this scan?")
    else:
        base = (f"What is the {name} of the participant in this scan?", f"What {name} value goes with this scan?",
                f"Report the {name} of the participant in this scan.")
        labels, group = ("low", "medium", "high"), (f"Is the {name} of the participant in this scan low, medium "
                                                    f"or high?", f"Which {name} group does this scan belong to?",
                                                    f"Compared with the cohort, how high is the {name} of the "
                                                    f"participant in this scan?")
    out = [Target(column, "numeric", (), tuple(f"{q} Answer with a whole number." for q in base), "manifest",
                  column)]
    cuts = np.quantile(values, [1 / 3, 2 / 3])
    if cuts[0] < cuts[1]:  # equal cuts leave the middle group empty: not a three-way question
        out.append(Target(f"{column}_group", "categorical", labels, tuple(f"{q} {_options(labels)}" for q in group),
                          "manifest", column, cuts=(float(cuts[0]), float(cuts[1]))))
    return out


def _descriptor_targets(descriptors: list[dict]) -> list[Target]:
    labels = ("lower", "typical", "higher")
    out = []
    for name, (key, what) in _DESCRIPTOR_TARGETS.items():
        if any(_number((d.get("z") or {}).get(key)) is not None for d in descriptors):
            base = (f"Compared with the cohort, is {what} in this scan lower, typical or higher?",
                    f"How does {what} of this scan compare with other scans?",
                    f"Relative to the training cohort, what is {what} of this scan like?")
            out.append(Target(name, "categorical", labels, tuple(f"{q} {_options(labels)}" for q in base),
                              "descriptor", key))
    if any(str(d.get("text") or "").strip() for d in descriptors):
        out.append(Target("description", "text", (), (
            "Describe this fMRI scan.", "What stands out in the functional connectivity of this scan?",
            "Summarise the imaging features of this scan in a few sentences."), "descriptor", "text"))
    return out


def question_documents(seed: int, n: int) -> list[str]:
    """``n`` question/answer texts in the prompt format (``"fMRI: \nQuestion: ...\nAnswer: ..."``) over the
    question families any cohort may ask (sex, diagnosis, age and age group, site, modularity, efficiency), with
    answers drawn uniformly: language-model corpus text that makes the answer words and the format familiar
    (the scan is absent, so nothing here says which answer is right)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    families = [_binary("sex"), _binary("diagnosis"), *_numeric("age", np.arange(8.0, 81.0)),
                _categorical("site", [str(i) for i in range(4)]),
                *_descriptor_targets([{"z": {"modularity": 0.0, "global_efficiency": 0.0}}])]
    rng = np.random.default_rng([seed, 7])
    out = []
    for _ in range(n):
        target = families[int(rng.integers(len(families)))]
        question = target.questions[int(rng.integers(len(target.questions)))]
        reply = str(int(rng.integers(8, 81))) if target.kind == "numeric" else \
            target.labels[int(rng.integers(len(target.labels)))]
        out.append(f"fMRI: \nQuestion: {question}\nAnswer:{continuation(reply)}")
    return out


def descriptor_rows(dataset: Dataset, descriptors: list[dict] | None) -> list[dict | None]:
    """Descriptors aligned to the manifest: one dict (or None when absent) per manifest index, matched by scan_id.

    Raises ValueError for a descriptor without a scan_id, a scan_id not in the manifest, or a duplicate.
    """
    aligned: list[dict | None] = [None] * len(dataset.manifest)
    if descriptors is None:
        return aligned
    index = {row["scan_id"]: i for i, row in enumerate(dataset.manifest)}
    for d in descriptors:
        sid = d.get("scan_id") if isinstance(d, dict) else None
        if sid not in index:
            raise ValueError(f"descriptor for scan {sid!r} does not match any scan of the dataset")
        if aligned[index[sid]] is not None:
            raise ValueError(f"two descriptors for scan {sid!r}")
        aligned[index[sid]] = d
    return aligned


def build_targets(dataset: Dataset, descriptors: list[dict] | None = None, *,
                  train_split: str = "train") -> dict[str, Target]:
    """Every target the dataset (and optional ``descriptors``, rows of ``descriptors.jsonl``) supports, by name.

    Types, categories and tertile cuts come from the rows of ``train_split`` only (see the module docstring).
    """
    train = [dataset.manifest[i] for i in dataset.indices(train_split)]
    if not train:
        raise ValueError(f"split {train_split!r} has no scans to define the targets from")
    descriptor_rows(dataset, descriptors)  # validates the scan ids
    targets: dict[str, Target] = {}
    columns = ["site"] + [c for c in dataset.phenotypes if c != "site"]
    for column in columns:
        values = [str(r.get(column)).strip() for r in train if _known(r.get(column))]
        numbers = [_number(v) for v in values]
        if len({_normal(v) for v in values}) < 2:
            continue  # nothing to ask about a constant (or absent) column
        if all(x is not None for x in numbers):
            if set(numbers) <= {0.0, 1.0}:
                found = [_binary(column)]
            else:
                found = _numeric(column, np.asarray(numbers, np.float64))
        elif len({_normal(v) for v in values}) <= MAX_CATEGORIES:
            found = [_categorical(column, values)]
        else:
            found = []
        targets.update({t.name: t for t in found})
    if descriptors:
        targets.update({t.name: t for t in _descriptor_targets(descriptors)})
    return targets


def answer(target: Target, row: dict, descriptor: dict | None) -> tuple[str | None, int | None]:
    """Answer text and class index of one scan (manifest ``row``, its descriptor or None); None where unknown.

    Numeric and text targets have no class index; a category never seen in training has no answer.
    """
    if target.source == "descriptor":
        if descriptor is None:
            return None, None
        if target.kind == "text":
            text = str(descriptor.get("text") or "").strip()
            return (text, None) if text else (None, None)
        z = _number((descriptor.get("z") or {}).get(target.key))
        if z is None:
            return None, None
        label = 1 if abs(z) < TYPICAL_Z else (2 if z > 0 else 0)
        return target.labels[label], label
    value = row.get(target.key)
    if not _known(value):
        return None, None
    if target.cuts or target.kind == "numeric":
        x = _number(value)
        if x is None:
            return None, None
        if target.kind == "numeric":
            return str(math.floor(x + 0.5)), None
        label = int(np.digitize(x, target.cuts))  # [.., c1) -> 0, [c1, c2) -> 1, [c2, ..] -> 2
        return target.labels[label], label
    label = dict(target.codes).get(_normal(value))
    return (None, None) if label is None else (target.labels[label], label)


def _draw(seed: int, scan: int, name: str, n: int) -> int:
    # crc32 rather than hash(): Python salts str hashes per process, which would break reproducibility.
    return int(np.random.default_rng([seed, scan, zlib.crc32(name.encode())]).integers(n))


def make_examples(dataset: Dataset, targets: dict[str, Target], names: Iterable[str], split: str, *, seed: int,
                  source_line: bool = False, descriptors: list[dict] | None = None) -> list[Example]:
    """One :class:`Example` per (scan of ``split``, target in ``names``) with a known answer, scan-major order.

    The paraphrase is drawn from a generator seeded by (seed, scan, target), so it does not depend on which
    other scans or targets are asked. With ``source_line`` the question starts with "Source: <site>." when
    the scan has a site (never for the site target itself, whose answer it would give away).
    """
    names = list(names)
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; available: {sorted(targets)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if descriptors is None and any(targets[n].source == "descriptor" for n in names):
        raise ValueError("descriptor targets were asked for but no descriptors were given")
    aligned = descriptor_rows(dataset, descriptors)
    out = []
    for i in dataset.indices(split):
        row = dataset.manifest[i]
        for name in names:
            target = targets[name]
            text, label = answer(target, row, aligned[i])
            if text is None:
                continue
            question = target.questions[_draw(seed, i, name, len(target.questions))]
            site = str(row.get("site") or "").strip()
            if source_line and site and target.key != "site":
                question = f"Source: {site}. {question}"
            out.append(Example(i, name, question, text, label))
    return out


def class_labels(dataset: Dataset, target: Target, descriptors: list[dict] | None = None, *,
                 aligned: list[dict | None] | None = None) -> np.ndarray:
    """Class index of every manifest row for a binary/categorical target: int [N], -1 where unknown.
    ``aligned``: the descriptors already aligned to the manifest (:func:`descriptor_rows`), in place of
    ``descriptors``."""
    if target.kind not in ("binary", "categorical"):
        raise ValueError(f"target {target.name!r} is {target.kind}, not a classification target")
    if aligned is None:
        aligned = descriptor_rows(dataset, descriptors)
    labels = [answer(target, row, d)[1] for row, d in zip(dataset.manifest, aligned)]
    return np.array([-1 if y is None else y for y in labels], np.int64)


def shots_per_class(target: Target, support: int) -> int:
    """The most support examples per class a prompt with at most ``support`` support scans holds for ``target``
    (0 for numeric and free-text targets, which are asked zero-shot)."""
    return support // len(target.labels) if target.kind in ("binary", "categorical") else 0


def select_shots(labels: np.ndarray, pool: np.ndarray, k: int, rng: np.random.Generator, *,
                 classes: Sequence[str], subjects: Sequence[str], exclude: str | Iterable[str] = ()) -> list[int]:
    """Exactly ``k`` support scans per class, drawn from ``pool`` without the ``exclude`` subject(s), shuffled.

    labels: int [N] class per manifest index (negative = unknown); pool: int [M] candidate manifest indices;
    classes: the target's labels (their count is the number of classes); subjects: [N] subject per index.
    Returns k * len(classes) manifest indices. Raises ValueError naming a class with fewer than k candidates.
    """
    labels = np.asarray(labels)
    pool = np.asarray(pool)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(subjects) != len(labels):
        raise ValueError(f"subjects has {len(subjects)} entries, labels {len(labels)}")
    if pool.ndim != 1 or (pool.size and not np.issubdtype(pool.dtype, np.integer)):
        raise ValueError(f"pool must be a 1-D array of manifest indices, got {pool.dtype} {pool.shape}")
    pool = pool.astype(np.int64)
    if pool.size and (pool.min() < 0 or pool.max() >= len(labels)):
        raise ValueError(f"pool indices must lie in [0, {len(labels)})")
    if len(np.unique(pool)) != len(pool):
        raise ValueError("pool holds a scan twice")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    excluded = {exclude} if isinstance(exclude, str) else set(exclude)
    pool = pool[[subjects[i] not in excluded for i in pool]] if pool.size else pool
    chosen = []
    for c, name in enumerate(classes):
        candidates = pool[labels[pool] == c]
        if len(candidates) < k:
            raise ValueError(f"class {name!r} has {len(candidates)} support scans outside the query's subject, "
                             f"{k} needed")
        chosen.extend(rng.choice(candidates, size=k, replace=False).tolist())
    return [int(chosen[i]) for i in rng.permutation(len(chosen))]


def query_segments(question: str, scan: int) -> list[Segment]:
    """The segments that ask ``question`` about ``scan``: "fMRI: ", the scan, "\nQuestion: ...\nAnswer:"."""
    if isinstance(scan, bool) or not isinstance(scan, int | np.integer) or scan < 0:
        raise ValueError(f"scan must be a non-negative manifest index, got {scan!r}")
    if not str(question).strip():
        raise ValueError("question is empty")
    return [("text", "fMRI: "), ("fmri", int(scan)), ("text", f"\nQuestion: {question}\nAnswer:")]


def shot_segments(shots: Sequence[tuple[int, str, str]]) -> list[Segment]:
    """The segments of k-shot examples ``(scan, question, answer)``, each asked and answered, in order."""
    segments: list[Segment] = []
    for shot in shots:
        if len(shot) != 3:
            raise ValueError(f"a shot is (scan, question, answer), got {shot!r}")
        index, q, a = shot
        segments += query_segments(q, index) + [("text", f"{continuation(a)}\n\n")]
    return segments


def prompt_segments(question: str, scan: int, shots: Sequence[tuple[int, str, str]] = ()) -> list[Segment]:
    """Segments of a prompt: each shot ``(scan, question, answer)`` in order, then the query (module docstring)."""
    return shot_segments(shots) + query_segments(question, scan)


def continuation(text: str) -> str:
    """The answer as it follows "Answer:" in a prompt (leading space); the wiring appends eos."""
    if not str(text).strip():
        raise ValueError("answer is empty")
    return " " + str(text).strip()
