"""Stage-3 metrics: label scoring against sklearn and hand computations, numeric parsing, the results table."""

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from brainjax.lm.scoring import (
    NumberGrammar,
    calibrate,
    chance_metrics,
    expected_number,
    format_table,
    is_number,
    is_number_prefix,
    label_metrics,
    label_scores,
    number_candidates,
    numeric_metrics,
    parse_number,
    text_metrics,
    value_metrics,
)


@pytest.mark.parametrize("c", [2, 4])
def test_label_metrics_match_sklearn(c):
    rng = np.random.default_rng(c)
    logprobs = rng.normal(size=(60, c)) * 2 - 3
    y = np.concatenate([np.arange(c), rng.integers(0, c, 60 - c)])
    out = label_metrics(logprobs, y)
    probs = np.exp(logprobs) / np.exp(logprobs).sum(axis=1, keepdims=True)
    pred = logprobs.argmax(axis=1)
    assert out["n"] == 60
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    expected = roc_auc_score(y, probs[:, 1]) if c == 2 else roc_auc_score(y, probs, multi_class="ovr")
    assert out["auroc"] == pytest.approx(expected)


def test_label_metric_intervals_resample_subjects():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    signal = rng.normal(size=60) + 1.5 * y  # informative scores: AUROC well above 0.5
    out = label_metrics(np.stack([np.zeros(60), signal], axis=1), y)
    for key in ("auroc", "balanced_accuracy"):
        low, high = out[f"{key}_ci"]
        assert low < out[key] < high and low > 0.5
    # Every scan from one subject: a single independent unit, so no interval can be claimed.
    one = label_metrics(np.stack([np.zeros(60), signal], axis=1), y, groups=np.zeros(60))
    assert all(math.isnan(v) for v in one["auroc_ci"] + one["balanced_accuracy_ci"])
    perfect = label_metrics(np.stack([np.zeros(60), 10.0 * (2 * y - 1)], axis=1), y)
    assert perfect["auroc_ci"] == [1.0, 1.0] and perfect["balanced_accuracy_ci"] == [1.0, 1.0]


def test_text_metrics_against_rouge_by_hand():
    refs = ["weaker coupling between visual and somatomotor networks", "typical global efficiency"]
    # ROUGE-L by hand: LCS of 4 of the 7 reference tokens and the 4 answer tokens -> F = 2 * 4/7 * 1 / (4/7 + 1)
    out = text_metrics(["weaker coupling between networks", refs[1]], refs,
                       train_references=["typical global efficiency", "typical efficiency", "strong coupling"])
    first = 2 * (4 / 7) * 1.0 / (4 / 7 + 1.0)
    assert out["rouge_l"] == pytest.approx((first + 1.0) / 2)
    assert out["chance_text"] == "typical global efficiency"  # closest to the other training texts
    assert out["chance_rouge_l"] == pytest.approx((0.0 + 1.0) / 2)
    with pytest.raises(ValueError, match="as many answers"):
        text_metrics(["a"], refs, refs)


def test_calibration_removes_the_label_prior_measured_on_reference_scans():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    # The model prefers label 0 by 3 nats everywhere; on top, a weak scan-dependent push towards the truth.
    scores = np.stack([np.full(40, 3.0), 1.0 * (y + rng.normal(0, 0.3, 40))], axis=1)
    reference = np.stack([np.full(30, 3.0), rng.normal(0.5, 0.3, 30)], axis=1)
    before, after = label_metrics(scores, y), label_metrics(calibrate(scores, reference), y)
    assert before["balanced_accuracy"] == 0.5 and after["balanced_accuracy"] > 0.9
    assert after["auroc"] == pytest.approx(before["auroc"])  # the ranking is untouched
    logp = reference - reference.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(calibrate(reference, reference).mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(calibrate(scores, reference), np.log(softmax(scores, 1)) - logp.mean(0))
    with pytest.raises(ValueError, match="reference"):
        calibrate(scores, reference[:, :1])


def test_auroc_ranks_probabilities_not_hard_labels():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.45])  # every argmax says class 0: hard-label AUROC is 0.5
    out = label_metrics(np.log(np.stack([1 - p, p], axis=1)), y)
    # positives beat negatives in 3 of the 4 pairs: 0.35 > 0.1, 0.45 > 0.1, 0.45 > 0.4 (0.35 < 0.4)
    assert out["auroc"] == pytest.approx(0.75)
    assert out["accuracy"] == 0.5 and out["balanced_accuracy"] == 0.5


def test_balanced_accuracy_by_hand_absent_class_and_constrained_scores():
    y = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 1, 0, 1, 2, 0])
    onehot = np.where(np.eye(3)[pred] > 0, 0.0, -np.inf)  # constrained decoding: one label, log-prob 0
    out = label_metrics(onehot, y)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)
    absent = label_metrics(onehot[:4], y[:4])  # class 2 absent: no AUROC, recall averaged over present classes
    assert math.isnan(absent["auroc"])
    assert absent["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_chance_metrics():
    out = chance_metrics(np.array([0, 1, 1, 2]), np.array([1, 0, 1, 1]), n_classes=3)
    assert out["majority"] == 1 and out["accuracy"] == 0.75
    assert out["balanced_accuracy"] == pytest.approx(1 / 3) and out["auroc"] == 0.5
    assert chance_metrics(np.array([1, 0]), np.array([0, 1, 1]))["majority"] == 0  # tie: lowest class
    assert chance_metrics(np.array([0, 0]), np.array([1, 1]))["balanced_accuracy"] == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        chance_metrics(np.array([], int), np.array([0]))


def test_parse_number():
    assert parse_number("about 37 years") == 37.0
    assert math.isnan(parse_number("unknown"))
    assert parse_number("-4.5 degrees") == -4.5
    assert parse_number("in her mid-30s, maybe 36") == 30.0  # a hyphen after a word is not a minus sign
    assert parse_number("age37") == 37.0
    assert parse_number(" 62.") == 62.0


def test_numeric_metrics_by_hand():
    texts = ["about 30 years", "unknown", "50", "He is 44 years old"]
    y = np.array([32.0, 60.0, 45.0, 40.0])
    out = numeric_metrics(texts, y, y_train=np.array([40.0, 50.0]))
    ok_y, ok_pred = np.array([32.0, 45.0, 40.0]), np.array([30.0, 50.0, 44.0])
    assert out["parse_rate"] == 0.75 and out["n"] == 4
    assert out["mae"] == pytest.approx((2 + 5 + 4) / 3)
    r2 = 1 - np.sum((ok_y - ok_pred) ** 2) / np.sum((ok_y - ok_y.mean()) ** 2)
    assert out["r2"] == pytest.approx(r2)
    assert out["chance_mae"] == pytest.approx((13 + 0 + 5) / 3)
    assert out["chance_r2"] == pytest.approx(1 - np.sum((ok_y - 45) ** 2) / np.sum((ok_y - ok_y.mean()) ** 2))
    none = numeric_metrics(["no idea"], np.array([3.0]))
    assert none["parse_rate"] == 0 and math.isnan(none["mae"]) and math.isnan(none["r2"])


def test_number_scores_by_hand():
    assert number_candidates(np.array([8.4, 13.8, 79.6])).tolist() == list(range(8, 81))
    spread = number_candidates(np.array([0.0, 1000.0]), most=11)
    assert spread.tolist() == list(range(0, 1001, 100))
    values = np.array([20.0, 30.0, 40.0])
    scores = np.log(np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]) + 1e-300)
    scores[0] += 7.0  # only differences between a row's scores matter
    assert expected_number(scores, values) == pytest.approx([27.5, 40.0])
    # a number the model gives no chance (-inf) takes no weight
    assert expected_number(np.array([[0.0, -np.inf, 0.0]]), values) == pytest.approx([30.0])
    # predictions given as values: the same metrics as the parsed texts they would print as
    texts = ["30", "x", "50", "41"]
    y = np.array([32.0, 60.0, 45.0, 40.0])
    by_value = value_metrics(np.array([30.0, np.nan, 50.0, 41.0]), y, np.array([40.0]))
    by_text = numeric_metrics(texts, y, np.array([40.0]))
    assert by_value.keys() == by_text.keys()
    for key, value in by_value.items():
        assert np.allclose(value, by_text[key], equal_nan=True), key
    assert by_value["r"] == pytest.approx(np.corrcoef([32.0, 45.0, 40.0], [30.0, 50.0, 41.0])[0, 1])
    with pytest.raises(ValueError, match="finite"):
        expected_number(np.full((1, 3), -np.inf), values)
    with pytest.raises(ValueError, match="finite training values"):
        number_candidates(np.array([]))


def test_numeric_intervals_separate_signal_from_offset():
    rng = np.random.default_rng(0)
    y = rng.uniform(10, 80, 60)
    subjects = np.repeat(np.arange(30), 2)
    # answers that track the truth (with noise) beat the training mean: r and the R^2 gain are above 0
    tracking = value_metrics(y + rng.normal(0, 8, 60), y, y_train=np.array([45.0, 45.0]), groups=subjects)
    assert tracking["r"] > 0.8 and tracking["r_ci"][0] > 0.5 and tracking["r2_gain_ci"][0] > 0
    # a constant closer to the test mean than the training mean: R^2 above chance by offset alone, no r
    shifted = value_metrics(np.full(60, y.mean() + 1.0), y, y_train=np.array([y.mean() + 15.0]), groups=subjects)
    assert shifted["r2"] > shifted["chance_r2"] and math.isnan(shifted["r"])
    # answers unrelated to the scan: r's interval holds 0
    blind = value_metrics(rng.uniform(10, 80, 60), y, y_train=np.array([45.0]), groups=subjects)
    assert blind["r_ci"][0] < 0 < blind["r_ci"][1]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="NaN"):
        label_metrics(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        label_metrics(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        label_metrics(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="C >= 2"):
        label_metrics(np.zeros((3, 1)), np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="zero probability"):
        label_metrics(np.full((1, 2), -np.inf), np.array([0]))
    with pytest.raises(ValueError, match="texts"):
        numeric_metrics(["1", "2"], np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        numeric_metrics(["1"], np.array([np.nan]))


def test_format_table():
    rows = [{"target": "sex", "setting": "zero-shot", "scoring": "logprob", "accuracy": 0.75,
             "balanced_accuracy": 0.7, "auroc": math.nan, "chance": chance_metrics([0, 1, 1], [1, 1])},
            {"target": "diagnosis", "setting": "1-shot", "scoring": "constrained", "accuracy": 0.5}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["target", "setting", "scoring", "accuracy", "bal.", "acc.", "AUROC", "chance"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["sex", "zero-shot", "logprob", "0.750", "0.700", "nan", "0.500"]
    assert lines[3].split() == ["diagnosis", "1-shot", "constrained", "0.500", "-", "-", "-"]
    numeric = format_table([{"target": "age", "setting": "zero-shot", "scoring": "generate", "mae": 4.25}])
    assert "MAE" in numeric and "4.250" in numeric and "AUROC" not in numeric
    with pytest.raises(ValueError, match="target"):
        format_table([{"setting": "zero-shot"}])


@pytest.mark.parametrize("text,prefix,whole", [
    ("", True, False), (" ", True, False), ("-", True, False), ("37", True, True), (" 37", True, True),
    ("-2.5", True, True), ("3.", True, False), ("+4", True, True), (".5", False, False), ("1e3", False, False),
    ("37 years", False, False), ("3.2.1", False, False), ("--3", False, False), ("abc", False, False)])
def test_number_grammar_accepts_and_rejects_the_right_strings(text, prefix, whole):
    assert is_number_prefix(text) is prefix and is_number(text) is whole
    if whole:
        assert parse_number(text) == float(text)


def test_number_grammar_allows_only_tokens_that_keep_a_number():
    texts = ["<eos>", "1", "23", ".", " 4", "-", "ab", "5 years", " ", "6."]
    grammar = NumberGrammar(texts, eos_id=0)
    allowed = lambda answer: {texts[i] for i in np.flatnonzero(grammar.allowed(answer))}  # noqa: E731
    assert allowed("") == {"1", "23", " 4", "-", "6."}  # a number may start; no lone space, no eos yet
    assert allowed("-") == {"1", "23", "6."}
    assert allowed("12") == {"<eos>", "1", "23", ".", "6."}  # "6." would make "126.", still a prefix
    assert allowed("1.") == {"1", "23"}  # a point needs a digit after it before the end
    assert allowed("1.5") == {"<eos>", "1", "23"}


def test_label_scores_sum_or_average_the_label_tokens_by_hand():
    per = [[np.array([-1.0, -3.0]), np.array([-0.5])], [np.array([-2.0, -2.0, -2.0]), np.array([-4.0, -1.0])]]
    np.testing.assert_allclose(label_scores(per), [[-4.0, -0.5], [-6.0, -5.0]])
    np.testing.assert_allclose(label_scores(per, normalise=True), [[-2.0, -0.5], [-2.0, -2.5]])
