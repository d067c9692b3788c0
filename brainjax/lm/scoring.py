"""Metrics for fMRI-LM stage 3 answers: label scoring from log-probabilities, numeric answers from generated text.

A classification question is scored by the model's log-probability of each label's answer continuation
(``logprob``), or by generation constrained to the labels (``constrained``, which arrives here as one-hot
log-probabilities). Softmax over the C label log-probabilities turns them into class probabilities, so AUROC
ranks scans by probability, not by the hard answer. Chance is what a model that ignores the scan achieves:
the training majority class (accuracy), 1/C (balanced accuracy), 0.5 (AUROC). Numeric answers are parsed
from generated text, or read as the mean of the model's distribution over the whole numbers of the training
range (each number scored like a label); chance predicts the training mean.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax, softmax
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

from brainjax.eval.bootstrap import paired_interval, weighted_auroc

# A sign counts only when it does not follow a word character, so "mid-30s" reads 30 and not -30.
_NUMBER = re.compile(r"(?:(?<!\w)[-+])?\d+(?:\.\d+)?")
_COLUMNS = (("target", "target"), ("setting", "setting"), ("scoring", "scoring"), ("n", "n"),
            ("accuracy", "accuracy"), ("balanced_accuracy", "bal. acc."), ("balanced_accuracy_ci", "95 %"),
            ("auroc", "AUROC"), ("auroc_ci", "95 %"), ("chance", "chance"),
            ("parse_rate", "parsed"), ("mae", "MAE"), ("r2", "R2"), ("r2_gain_ci", "R2 - chance 95 %"),
            ("r", "r"), ("r_ci", "95 %"), ("chance_mae", "chance MAE"),
            ("rouge_l", "ROUGE-L"), ("chance_rouge_l", "chance ROUGE-L"))
_ALWAYS = ("target", "setting", "scoring")


def _labels(y, n: int, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be an integer array of shape ({n},), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or (n_classes is not None and y.max() >= n_classes)):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _weighted_balanced_accuracy(w: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    recalls = [(w * (y == c) * (pred == c)).sum() / (w * (y == c)).sum() for c in range(n_classes)
               if (w * (y == c)).sum() > 0]
    return float(np.mean(recalls)) if recalls else math.nan


def label_metrics(logprobs: np.ndarray, y: np.ndarray, groups=None) -> dict:
    """Accuracy, balanced accuracy and AUROC of label scores, with bootstrap 95 % intervals.

    logprobs: float [N, C] log-probability of each label per scan (C >= 2); y: int [N] true class; groups: [N]
    resampling unit per scan (its subject; default: the scan). Returns n, accuracy, balanced_accuracy (mean
    recall over the classes present in y), auroc (positive class probability when C == 2, macro one-vs-rest
    otherwise; NaN when a class is absent from y), and ``balanced_accuracy_ci`` / ``auroc_ci``: [low, high]
    percentile intervals over resampled scans (NaN where undefined).
    """
    logprobs = np.asarray(logprobs, np.float64)
    if logprobs.ndim != 2 or logprobs.shape[0] == 0 or logprobs.shape[1] < 2:
        raise ValueError(f"logprobs must be [N, C] with N >= 1 and C >= 2, got {logprobs.shape}")
    if np.isnan(logprobs).any() or np.isposinf(logprobs).any():
        raise ValueError("logprobs hold NaN or +inf")
    if np.isneginf(logprobs).all(axis=1).any():
        raise ValueError("a row of logprobs gives every label zero probability")
    n, c = logprobs.shape
    y = _labels(y, n, c)
    probs = softmax(logprobs, axis=1)
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():  # predictions of a class absent from y are expected, not a problem
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(y, pred))
    if len(np.unique(y)) < c:
        auroc = math.nan
    elif c == 2:
        auroc = float(roc_auc_score(y, probs[:, 1]))
    else:
        auroc = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(c)))
    intervals = {}
    for key, score in (("balanced_accuracy_ci", lambda w: _weighted_balanced_accuracy(w, y, pred, c)),
                       ("auroc_ci", lambda w: weighted_auroc(w, y, probs))):
        draw = paired_interval(score, n, groups=groups)
        intervals[key] = [draw["low"], draw["high"]]
    return {"n": n, "accuracy": float(np.mean(pred == y)), "balanced_accuracy": balanced, "auroc": auroc,
            **intervals}


def chance_metrics(y_train: np.ndarray, y_test: np.ndarray, n_classes: int | None = None) -> dict:
    """What a scan-blind model scores: the training majority class on the test labels, 1/C, AUROC 0.5.

    y_train: int [M], y_test: int [N]; n_classes defaults to the largest label seen + 1. Ties between majority
    classes go to the lowest class index.
    """
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if y_train.ndim != 1 or y_train.size == 0 or y_test.ndim != 1 or y_test.size == 0:
        raise ValueError(f"need non-empty 1-D train and test labels, got {y_train.shape} and {y_test.shape}")
    y_train, y_test = _labels(y_train, len(y_train), n_classes), _labels(y_test, len(y_test), n_classes)
    c = n_classes if n_classes is not None else int(max(y_train.max(), y_test.max())) + 1
    majority = int(np.bincount(y_train, minlength=c).argmax())
    return {"accuracy": float(np.mean(y_test == majority)), "balanced_accuracy": 1.0 / c, "auroc": 0.5,
            "majority": majority}


# The number grammar constrained decoding follows: optional spaces, an optional sign, digits, at most one
# decimal point followed by digits ("37", " -2.5"; not "", ".5", "3.", "1e3", "37 years").
_NUMBER_PREFIX = re.compile(r"\s*[-+]?(\d+(\.\d*)?)?")
_NUMBER_WHOLE = re.compile(r"\s*[-+]?\d+(\.\d+)?")
_NUMERIC_PIECE = re.compile(r"[\s\d.+-]+")


def is_number_prefix(text: str) -> bool:
    """Whether ``text`` can still grow into a number of the grammar (the empty string can)."""
    return _NUMBER_PREFIX.fullmatch(text) is not None


def is_number(text: str) -> bool:
    """Whether ``text`` is a whole number of the grammar, so decoding may stop after it."""
    return _NUMBER_WHOLE.fullmatch(text) is not None


class NumberGrammar:
    """Which next tokens keep a generated answer inside the number grammar.

    token_texts: the decoded text of every token id (index = id); eos_id: the end token, allowed only once
    the answer so far is a whole number. Only tokens made of digits, signs, points and spaces can ever be
    allowed, so each step checks those few instead of the whole vocabulary.
    """

    def __init__(self, token_texts: Sequence[str], eos_id: int):
        self.size, self.eos_id = len(token_texts), int(eos_id)
        self.candidates = [(i, t) for i, t in enumerate(token_texts)
                           if i != self.eos_id and t and _NUMERIC_PIECE.fullmatch(t)]

    def allowed(self, answer: str) -> np.ndarray:
        """bool [vocab]: the tokens that may follow the answer text so far."""
        mask = np.zeros(self.size, bool)
        for i, text in self.candidates:
            mask[i] = is_number_prefix(answer + text) and not (answer + text).isspace()
        mask[self.eos_id] = is_number(answer)
        return mask


def label_scores(token_logps: Sequence[Sequence[np.ndarray]], normalise: bool = False) -> np.ndarray:
    """float [N, C] label scores from per-token log-probabilities (``token_logps[i][c]``: float [m_c] for scan
    i and label c): their sum (the sequence log-probability), or with ``normalise`` their mean per token, so a
    label split into more pieces is not penalised for its length."""
    reduce = np.mean if normalise else np.sum
    return np.array([[float(reduce(t)) for t in labels] for labels in token_logps], np.float64)


def calibrate(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Label scores with the model's label prior removed: ``log_softmax(scores) - mean(log_softmax(reference))``.

    scores: float [N, C]; reference: float [M, C], the same model's scores on M calibration scans (training
    split, never the evaluated ones). A model that ranks scans well but always prefers one label (balanced
    accuracy 1/C at a good AUROC) is re-centred so that no label wins by prior alone; the ranking within each
    label, hence a binary AUROC, is unchanged. Returns float [N, C].
    """
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if scores.ndim != 2 or reference.ndim != 2 or scores.shape[1] != reference.shape[1] or not len(reference):
        raise ValueError(f"need scores [N, C] and reference [M >= 1, C], got {scores.shape} and {reference.shape}")
    return log_softmax(scores, axis=1) - log_softmax(reference, axis=1).mean(axis=0)


def parse_number(text: str) -> float:
    """The first number in ``text`` ("about 37 years" -> 37.0), NaN when there is none."""
    match = _NUMBER.search(str(text))
    return float(match.group()) if match else math.nan


def numeric_metrics(texts: Sequence[str], y: np.ndarray, y_train: np.ndarray | None = None, groups=None) -> dict:
    """Parse rate, MAE and R^2 of numbers parsed from generated ``texts`` (N strings) against y: float [N].

    MAE and R^2 use the parsed answers only (NaN when none, R^2 NaN below 2). With y_train: float [M], chance
    (predicting the training mean) is reported on the same parsed scans as chance_mae and chance_r2. The
    correlation and intervals are :func:`value_metrics`'.
    """
    if len(texts) != len(np.atleast_1d(y)):
        raise ValueError(f"need one text per value, got {len(texts)} texts and y of shape {np.shape(y)}")
    return value_metrics(np.array([parse_number(t) for t in texts]), y, y_train, groups)


def _weighted_r2(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> float:
    mean = np.average(y, weights=w)
    total = np.sum(w * (y - mean) ** 2)
    return float(1 - np.sum(w * (y - pred) ** 2) / total) if total > 0 else math.nan


def _weighted_corr(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> float:
    drawn = w > 0
    if np.ptp(y[drawn]) == 0 or np.ptp(pred[drawn]) == 0:  # a constant has no correlation (not rounding noise)
        return math.nan
    dy, dp = y - np.average(y, weights=w), pred - np.average(pred, weights=w)
    return float(np.sum(w * dy * dp) / math.sqrt(np.sum(w * dy ** 2) * np.sum(w * dp ** 2)))


def value_metrics(pred: np.ndarray, y: np.ndarray, y_train: np.ndarray | None = None, groups=None) -> dict:
    """:func:`numeric_metrics` of predicted values pred: float [N] (NaN = no answer) against y: float [N], plus
    the Pearson correlation ``r`` of the answers with the truth (NaN for constant answers) and its bootstrap 95 %
    interval ``r_ci`` (groups: [N] resampling unit per scan, default the scan); with y_train, also
    ``r2_gain_ci``: the interval of R^2 minus the training mean's R^2 on the same draws (above 0: the answers
    beat the scan-blind baseline)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    if y.ndim != 1 or pred.shape != y.shape or y.size == 0:
        raise ValueError(f"need N >= 1 predictions and values, got {pred.shape} and {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("true values hold NaN or inf")
    ok = np.isfinite(pred)
    out = {"n": len(y), "parse_rate": float(ok.mean()),
           "mae": float(np.mean(np.abs(pred[ok] - y[ok]))) if ok.any() else math.nan,
           "r2": float(r2_score(y[ok], pred[ok])) if ok.sum() >= 2 else math.nan}
    sub = None if groups is None else np.asarray(groups)[ok]
    yo, po = y[ok], pred[ok]
    if ok.sum() >= 2:
        out["r"] = _weighted_corr(np.ones(len(yo)), yo, po)
        draw = paired_interval(lambda w: _weighted_corr(w, yo, po), len(yo), groups=sub)
        out["r_ci"] = [draw["low"], draw["high"]]
    else:
        out["r"], out["r_ci"] = math.nan, [math.nan, math.nan]
    if y_train is not None:
        y_train = np.asarray(y_train, np.float64)
        if y_train.ndim != 1 or y_train.size == 0 or not np.isfinite(y_train).all():
            raise ValueError("y_train must be a non-empty 1-D array of finite values")
        base = np.full(ok.sum(), y_train.mean())
        out["chance_mae"] = float(np.mean(np.abs(base - y[ok]))) if ok.any() else math.nan
        out["chance_r2"] = float(r2_score(y[ok], base)) if ok.sum() >= 2 else math.nan
        if ok.sum() >= 2:
            draw = paired_interval(lambda w: _weighted_r2(w, yo, po) - _weighted_r2(w, yo, base), len(yo),
                                   groups=sub)
            out["r2_gain_ci"] = [draw["low"], draw["high"]]
    return out


def number_candidates(y_train: np.ndarray, most: int = 128) -> np.ndarray:
    """The whole numbers an answer is scored over: every integer from the smallest to the largest training value
    (rounded), or ``most`` of them evenly spread when the range holds more. float [K]."""
    y_train = np.asarray(y_train, np.float64)
    if y_train.ndim != 1 or y_train.size == 0 or not np.isfinite(y_train).all():
        raise ValueError("need a non-empty 1-D array of finite training values")
    low, high = math.floor(y_train.min() + 0.5), math.floor(y_train.max() + 0.5)
    if high - low + 1 <= most:
        return np.arange(low, high + 1, dtype=np.float64)
    return np.unique(np.floor(np.linspace(low, high, most) + 0.5))


def expected_number(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The mean answer under the model: sum_k softmax(scores)[:, k] * values[k]; scores: float [N, K] (each
    candidate's answer log-probability), values: float [K]. Returns float [N]. Under squared error the mean,
    not the most probable number, is the best point answer a distribution gives (R^2 is squared error)."""
    scores, values = np.asarray(scores, np.float64), np.asarray(values, np.float64)
    if scores.ndim != 2 or values.shape != (scores.shape[1],) or not np.isfinite(scores).any(axis=1).all():
        raise ValueError(f"need scores [N, K] with a finite entry per row and values [K], got {scores.shape} "
                         f"and {values.shape}")
    return softmax(scores, axis=1) @ values


def text_metrics(texts: Sequence[str], references: Sequence[str], train_references: Sequence[str],
                 max_train: int = 64) -> dict:
    """Free-text answers against reference texts: mean ROUGE-L and ROUGE-1 F-measures (``rouge_score``; ROUGE-1
    F is the unigram token F1), beside chance: one scan-blind answer for every scan, the training reference
    closest to the others by ROUGE-L (the medoid of the first ``max_train`` training references).

    texts, references: [N] strings; train_references: [M] strings, M >= 1. Returns n, rouge_l, rouge_1,
    chance_rouge_l, chance_rouge_1 and the medoid text (``chance_text``).
    """
    from rouge_score import rouge_scorer

    if len(texts) != len(references) or not len(texts):
        raise ValueError(f"need as many answers as references (and at least one), got {len(texts)} and "
                         f"{len(references)}")
    train = [t for t in train_references if str(t).strip()][:max_train]
    if not train:
        raise ValueError("no training reference text for the chance answer")
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1"])

    def mean_scores(answers):
        scores = [scorer.score(ref, ans) for ans, ref in zip(answers, references)]
        return (float(np.mean([x["rougeL"].fmeasure for x in scores])),
                float(np.mean([x["rouge1"].fmeasure for x in scores])))
    closeness = [np.mean([scorer.score(b, a)["rougeL"].fmeasure for b in train if b is not a]) for a in train]
    medoid = train[int(np.argmax(closeness))]
    rouge_l, rouge_1 = mean_scores(texts)
    chance_l, chance_1 = mean_scores([medoid] * len(references))
    return {"n": len(texts), "rouge_l": rouge_l, "rouge_1": rouge_1, "chance_rouge_l": chance_l,
            "chance_rouge_1": chance_1, "chance_text": medoid}


def _cell(value) -> str:
    if isinstance(value, dict):  # a chance_metrics dict: its balanced accuracy is the fair comparison
        value = value.get("balanced_accuracy")
    if value is None:
        return "-"
    if isinstance(value, list | tuple):  # an interval
        return "[" + ", ".join(_cell(float(v)) for v in value) + "]"
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of result rows (target, setting, scoring and whichever metric columns rows hold).

    ``chance`` may be a number or a :func:`chance_metrics` dict (shown: its balanced accuracy). Missing cells
    read "-", NaN reads "nan".
    """
    for row in rows:
        if not isinstance(row, dict) or "target" not in row:
            raise ValueError(f"each row must be a dict with a 'target', got {row!r}")
    columns = [(key, head) for key, head in _COLUMNS if key in _ALWAYS or any(key in row for row in rows)]
    cells = [[head for _, head in columns]] + [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[j]) for line in cells) for j in range(len(columns))]
    lines = ["  ".join(text.ljust(w) if j < len(_ALWAYS) else text.rjust(w)
                       for j, (text, w) in enumerate(zip(line, widths))).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
