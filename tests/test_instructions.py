"""Stage-3 instruction data: target detection, tertile cuts, answers, examples, shots and prompt layout."""

import csv
import importlib.resources
import math

import numpy as np
import pytest
from _trainer_utils import ByteCodec

from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import MISSING, Dataset, assign_splits, finalize
from brainjax.data.synthetic import SynthConfig, synthesize
from brainjax.lm.instructions import (
    Example,
    answer,
    build_targets,
    class_labels,
    continuation,
    make_examples,
    prompt_segments,
    select_shots,
)

CFG = SynthConfig(subjects=18, scans_per_subject=1, timepoints=20, tr=2.0, atlas="dosenbach160", sites=2, seed=5)
SUBJECTS = [f"sub-{s:04d}" for s in range(1, 19)]


def dosenbach() -> Atlas:
    path = importlib.resources.files("nilearn") / "datasets/data/dosenbach_2010.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    return Atlas("dosenbach160", "coordinates", tuple(r["name"] + r["number"] for r in rows),
                 np.array([[float(r[c]) for c in "xyz"] for r in rows]), tuple(r["network"] for r in rows))


def participants() -> dict[str, dict]:
    """Extra columns: generic 0/1, a categorical with a test-only value, a numeric with gaps, 2 unusable ones."""
    splits = assign_splits(SUBJECTS, (0.8, 0.1, 0.1), CFG.seed)
    out = {}
    for s, subject in enumerate(SUBJECTS):
        row = {"smoker": str(s % 2), "handedness": "LRA"[s % 3], "notes": f"note {s}", "scanner": "prisma"}
        if splits[subject] == "test":
            row["handedness"] = "X"  # never seen in training: no answer
        if s % 4 != 3:  # every fourth subject has no score
            row["score"] = str(10.0 + 3.5 * s)
        out[subject] = row
    return out


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    atlas = dosenbach()
    synthesize(out, CFG, atlas=atlas)
    # Finalising again merges a participants table into the manifest, as `brainjax prepare` would.
    finalize(out, Dataset(out).atlas, seed=CFG.seed, participants=participants())
    return out


@pytest.fixture()
def ds(path):
    return Dataset(path)


def manifest_rows(path) -> list[dict]:
    with open(path / "manifest.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_target_kinds_labels_and_questions(ds):
    targets = build_targets(ds)
    assert set(targets) == {"site", "age", "age_group", "sex", "diagnosis", "smoker", "handedness", "score",
                            "score_group"}  # notes has > 12 values, scanner a single one
    kinds = {name: t.kind for name, t in targets.items()}
    assert kinds == {"site": "categorical", "age": "numeric", "age_group": "categorical", "sex": "binary",
                     "diagnosis": "binary", "smoker": "binary", "handedness": "categorical", "score": "numeric",
                     "score_group": "categorical"}
    assert targets["sex"].labels == ("female", "male")
    assert targets["diagnosis"].labels == ("control", "patient")
    assert targets["smoker"].labels == ("no", "yes")
    assert targets["age_group"].labels == ("younger", "middle", "older")
    assert targets["score_group"].labels == ("low", "medium", "high")
    train = [r for r in manifest_rows(ds.path) if r["split"] == "train"]
    assert targets["site"].labels == tuple(sorted({r["site"] for r in train}))
    assert targets["handedness"].labels == tuple(sorted({r["handedness"] for r in train}))
    assert "X" not in targets["handedness"].labels
    for t in targets.values():
        assert len(set(t.questions)) >= 3
        for q in t.questions:
            if t.kind in ("binary", "categorical"):
                assert q.endswith("Answer with one of: " + ", ".join(t.labels) + ".")
    assert all("smoker" in q for q in targets["smoker"].questions)


def test_tertile_cuts_use_training_rows_only(ds, path):
    train = [r for r in manifest_rows(path) if r["split"] == "train"]
    ages = np.array([float(r["age"]) for r in train])
    scores = np.array([float(r["score"]) for r in train if r["score"] != MISSING])
    targets = build_targets(ds)
    np.testing.assert_allclose(targets["age_group"].cuts, np.quantile(ages, [1 / 3, 2 / 3]))
    np.testing.assert_allclose(targets["score_group"].cuts, np.quantile(scores, [1 / 3, 2 / 3]))

    test_row = next(r for r in ds.manifest if r["split"] == "test")
    test_row["age"] = "1000.0"
    assert build_targets(ds)["age_group"].cuts == targets["age_group"].cuts
    train_row = next(r for r in ds.manifest if r["split"] == "train")
    train_row["age"] = "1000.0"  # the check above could fail: a training value does move the cuts
    assert build_targets(ds)["age_group"].cuts != targets["age_group"].cuts


def test_answers_per_row_and_missing_values(ds, path):
    targets = build_targets(ds)
    lo, hi = targets["age_group"].cuts
    rows = manifest_rows(path)
    for row, ds_row in zip(rows, ds.manifest):
        age = float(row["age"])
        assert answer(targets["age"], ds_row, None) == (str(math.floor(age + 0.5)), None)
        group = 0 if age < lo else (1 if age < hi else 2)
        assert answer(targets["age_group"], ds_row, None) == (("younger", "middle", "older")[group], group)
        assert answer(targets["sex"], ds_row, None) == ({"0": ("female", 0), "1": ("male", 1)}[row["sex"]])
        assert answer(targets["diagnosis"], ds_row, None) == (("control", "patient")[int(row["diagnosis"])],
                                                             int(row["diagnosis"]))
        expected_site = targets["site"].labels.index(row["site"])
        assert answer(targets["site"], ds_row, None) == (row["site"], expected_site)
        if row["score"] == MISSING:
            assert answer(targets["score"], ds_row, None) == (None, None)
            assert answer(targets["score_group"], ds_row, None) == (None, None)
        if row["handedness"] == "X":
            assert answer(targets["handedness"], ds_row, None) == (None, None)
    assert sum(r["score"] == MISSING for r in rows) > 0 and sum(r["handedness"] == "X" for r in rows) > 0
    # half-up rounding, not Python's round-half-even
    assert answer(targets["age"], {"age": "36.5"}, None) == ("37", None)
    assert answer(targets["age"], {"age": MISSING}, None) == (None, None)


def test_descriptor_targets(ds):
    ids = [r["scan_id"] for r in ds.manifest]
    descriptors = [
        {"scan_id": ids[0], "z": {"modularity": -1.2, "global_efficiency": 0.49}, "text": "A modular scan."},
        {"scan_id": ids[1], "z": {"modularity": 0.5, "global_efficiency": -0.5}, "text": ""},
        {"scan_id": ids[2], "z": {"modularity": None, "global_efficiency": 2.0}, "text": "Efficient."},
    ]
    targets = build_targets(ds, descriptors)
    assert targets["modularity"].labels == ("lower", "typical", "higher")
    assert targets["efficiency"].kind == "categorical" and targets["description"].kind == "text"
    mod, eff, text = targets["modularity"], targets["efficiency"], targets["description"]
    rows = ds.manifest
    assert [answer(mod, rows[i], d) for i, d in enumerate(descriptors)] == [("lower", 0), ("higher", 2),
                                                                           (None, None)]
    assert [answer(eff, rows[i], d) for i, d in enumerate(descriptors)] == [("typical", 1), ("lower", 0),
                                                                           ("higher", 2)]
    assert [answer(text, rows[i], d) for i, d in enumerate(descriptors)] == [("A modular scan.", None),
                                                                            (None, None), ("Efficient.", None)]
    assert answer(mod, rows[3], None) == (None, None)
    np.testing.assert_array_equal(class_labels(ds, mod, descriptors)[:4], [0, 2, -1, -1])
    assert "modularity" not in build_targets(ds)
    with pytest.raises(ValueError, match="sub-9999"):
        build_targets(ds, descriptors + [{"scan_id": "sub-9999_ses-1", "z": {}}])
    with pytest.raises(ValueError, match="two descriptors"):
        build_targets(ds, descriptors + descriptors[:1])
    with pytest.raises(ValueError, match="no descriptors"):
        make_examples(ds, targets, ["modularity"], "train", seed=0)
    examples = make_examples(ds, targets, ["description"], "train", seed=0, descriptors=descriptors)
    train = set(ds.indices("train"))
    assert [(e.scan, e.answer) for e in examples] == [(i, d["text"]) for i, d in enumerate(descriptors)
                                                      if d["text"] and i in train]


def test_make_examples_reproducible_and_varied(ds, path):
    targets = build_targets(ds)
    names = ["sex", "score", "site"]
    a = make_examples(ds, targets, names, "train", seed=3)
    assert a == make_examples(ds, targets, names, "train", seed=3)
    rows = manifest_rows(path)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    assert [(e.scan, e.target) for e in a] == [(i, n) for i in train for n in names
                                               if not (n == "score" and rows[i]["score"] == MISSING)]
    sex = [e for e in a if e.target == "sex"]
    assert all(e.label == int(rows[e.scan]["sex"]) and e.answer == targets["sex"].labels[e.label] for e in sex)
    assert len({e.question for e in sex}) > 1  # paraphrases vary across scans
    # the paraphrase of a (scan, target) does not depend on the other targets asked
    alone = make_examples(ds, targets, ["sex"], "train", seed=3)
    assert [e.question for e in alone] == [e.question for e in sex]
    other = make_examples(ds, targets, names, "train", seed=4)
    assert [e.question for e in other] != [e.question for e in a]
    assert not any(e.question.startswith("Source:") for e in a)

    sourced = make_examples(ds, targets, names, "train", seed=3, source_line=True)
    for plain, e in zip(a, sourced):
        if e.target == "site":
            assert e.question == plain.question  # a source line would give the answer away
        else:
            assert e.question == f"Source: {rows[e.scan]['site']}. {plain.question}"
    with pytest.raises(ValueError, match="unknown targets"):
        make_examples(ds, targets, ["height"], "train", seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_examples(ds, targets, ["sex"], "train", seed=-1)


def test_select_shots():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, -1, 2, 2, 2])
    subjects = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "f", "g", "h"]
    pool = np.arange(12)
    classes = ("x", "y", "z")
    shots = select_shots(labels, pool, 2, np.random.default_rng(0), classes=classes, subjects=subjects, exclude="a")
    assert len(shots) == 6 and len(set(shots)) == 6
    assert sorted(labels[shots].tolist()) == [0, 0, 1, 1, 2, 2]
    assert not {0, 1} & set(shots)
    assert shots == select_shots(labels, pool, 2, np.random.default_rng(0), classes=classes, subjects=subjects,
                                 exclude="a")
    firsts = {tuple(labels[select_shots(labels, pool, 1, np.random.default_rng(s), classes=classes,
                                        subjects=subjects)].tolist()) for s in range(20)}
    assert len(firsts) > 1  # class order is shuffled, not always x, y, z
    small = np.array([2, 3, 9, 10, 11])
    assert set(select_shots(labels, small, 1, np.random.default_rng(1), classes=classes, subjects=subjects)) <= \
        set(small.tolist())
    with pytest.raises(ValueError, match="'x'"):
        select_shots(labels, pool, 3, np.random.default_rng(0), classes=classes, subjects=subjects,
                     exclude=["a", "b"])
    with pytest.raises(ValueError, match="'z'"):
        select_shots(labels, pool[:9], 1, np.random.default_rng(0), classes=classes, subjects=subjects)
    with pytest.raises(ValueError, match="twice"):
        select_shots(labels, np.array([0, 0]), 1, np.random.default_rng(0), classes=classes, subjects=subjects)
    with pytest.raises(ValueError, match="subjects"):
        select_shots(labels, pool, 1, np.random.default_rng(0), classes=classes, subjects=subjects[:3])


def test_prompt_layout():
    shots = [(4, "Sex? Answer with one of: female, male.", "male"), (7, "Sex?", "female")]
    segments = prompt_segments("Which sex?", 2, shots)
    assert segments == [
        ("text", "fMRI: "), ("fmri", 4), ("text", "\nQuestion: Sex? Answer with one of: female, male.\nAnswer:"),
        ("text", " male\n\n"),
        ("text", "fMRI: "), ("fmri", 7), ("text", "\nQuestion: Sex?\nAnswer:"), ("text", " female\n\n"),
        ("text", "fMRI: "), ("fmri", 2), ("text", "\nQuestion: Which sex?\nAnswer:"),
    ]
    assert prompt_segments("Q?", 0) == [("text", "fMRI: "), ("fmri", 0), ("text", "\nQuestion: Q?\nAnswer:")]
    assert continuation("37") == " 37"
    example = Example(2, "age", "How old?", "37", None)
    assert "".join(s for kind, s in prompt_segments(example.question, example.scan) if kind == "text") + \
        continuation(example.answer) == "fMRI: \nQuestion: How old?\nAnswer: 37"
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="scan"):
            prompt_segments("Q?", bad)
    with pytest.raises(ValueError, match="empty"):
        continuation("  ")


def test_partners_never_pair_a_scan_with_its_own_subject():
    from brainjax.lm.report import partners

    subjects = ["a", "a", "b", "c", "c", "c"]
    scans = [0, 1, 2, 3, 4, 5]
    paired = partners(scans, subjects)
    assert paired == [2, 2, 3, 0, 0, 0]  # the next scan of another subject, wrapping around
    assert all(subjects[s] != subjects[p] for s, p in zip(scans, paired))
    with pytest.raises(ValueError, match="two subjects"):
        partners([0, 1], subjects)


def test_scan_windows_read_consecutive_windows_and_skip_short_scans(ds):
    from brainjax.lm.evaluate import scan_windows

    rows = [0, 1]
    length = int(ds.manifest[0]["length"])
    window = length // 2
    for view in (0, 1):
        got = scan_windows(ds, rows, window, view)
        assert sorted(got) == rows
        expected = ds.normalize(ds.read(1)[:, view * window:(view + 1) * window])
        np.testing.assert_allclose(got[1]["signal"][:expected.shape[0]], expected, rtol=1e-6)
    assert scan_windows(ds, rows, window, 2) == {}  # no scan holds a third window
    with pytest.raises(ValueError, match="view"):
        scan_windows(ds, rows, window, -1)


def test_view_average_means_each_scans_own_windows():
    from brainjax.lm.report import _view_average

    # 3 scans x 2 labels of token log-probabilities; scan 1 holds no second window
    first = [[np.array([-1.0, -1.0]), np.array([-3.0])], [np.array([-2.0]), np.array([-0.5])],
             [np.array([-4.0]), np.array([-1.0, -2.0])]]
    later = [([0, 2], [[np.array([-3.0, -1.0]), np.array([-1.0])], [np.array([-2.0]), np.array([-1.0, -1.0])]])]
    summed = _view_average(first, later, normalise=False)
    np.testing.assert_allclose(summed, [[(-2 - 4) / 2, (-3 - 1) / 2], [-2.0, -0.5], [(-4 - 2) / 2, (-3 - 2) / 2]])
    per_token = _view_average(first, later, normalise=True)
    np.testing.assert_allclose(per_token, [[(-1 - 2) / 2, (-3 - 1) / 2], [-2.0, -0.5], [(-4 - 2) / 2, (-1.5 - 1) / 2]])


def test_question_documents_follow_the_prompt_format_and_make_labels_whole_tokens():
    from brainjax.lm.default_lm import offline_corpus, train_text_tokenizer
    from brainjax.lm.instructions import question_documents

    docs = question_documents(0, 400)
    assert docs == question_documents(0, 400) and docs != question_documents(1, 400)
    for doc in docs:
        head, reply = doc.rsplit("\nAnswer: ", 1)
        assert head.startswith("fMRI: \nQuestion: ") and reply.strip()
        if "Answer with one of:" in head:  # a listed option is the answer
            assert reply in head.split("Answer with one of: ")[1].rstrip(".").split(", ")
        else:
            assert reply.isdigit()
    with pytest.raises(ValueError):
        question_documents(0, -1)
    plain = train_text_tokenizer(offline_corpus(0, 100), vocab_size=500)
    asked = train_text_tokenizer(offline_corpus(0, 100, docs), vocab_size=500)
    for word in (" female", " male", " patient", " control"):
        assert len(asked.encode(word).ids) == 1 < len(plain.encode(word).ids)


def test_mixed_dataset_windows_answer_from_their_own_manifest(path, tmp_path):
    from brainjax.lm.batches import InstructionSource, window_sequences
    from brainjax.models.sequences import SequenceSpec

    other = tmp_path / "other"
    synthesize(other, SynthConfig(subjects=18, scans_per_subject=1, timepoints=20, tr=2.0, atlas="dosenbach160",
                                  sites=2, seed=6), atlas=dosenbach())
    datasets = [Dataset(path), Dataset(other)]
    sources = [InstructionSource(d, build_targets(d), ["sex"], [None] * len(d.manifest), seed=0) for d in datasets]
    sexes = [[row["sex"] for row in d.manifest] for d in datasets]
    differ = [i for i in range(18) if sexes[0][i] != sexes[1][i]]
    assert differ  # the same scan index means another participant in the other dataset
    scans = np.array([differ[0], differ[0], differ[1], differ[1]])
    which = np.array([0, 1, 1, 0])
    n = len(scans)
    batch = {"scan": scans, "start": np.zeros(n, np.int64), "dataset": which,
             "signal": np.zeros((n, 160, 8), np.float32), "parcel_mask": np.ones((n, 160), bool),
             "coords": np.zeros((n, 160, 3), np.float32), "tr": np.full(n, 2.0, np.float32)}
    out = window_sequences(batch, sources, ByteCodec(), SequenceSpec(n_parcels=160, n_patches=2, text_len=160))
    words = {"0": "female", "1": "male"}
    for row in range(n):
        said = ByteCodec().decode(out["loss_target"][row][out["loss_weight"][row] > 0])
        assert said.strip() == words[str(sexes[which[row]][scans[row]])]
    # per answer: " female" (8 byte tokens with eos) and " male" (6) weigh one answer each; a padding row none
    spec = SequenceSpec(n_parcels=160, n_patches=2, text_len=160)
    shared = window_sequences({**batch, "valid": np.array([True, True, True, False])}, sources, ByteCodec(), spec,
                              per_answer=True)
    for row in range(n):
        k = int((out["loss_weight"][row] > 0).sum())
        assert k == len(words[str(sexes[which[row]][scans[row]])]) + 2
        want = np.where(out["loss_weight"][row] > 0, 1.0 / k, 0.0) if row < 3 else np.zeros(k)
        np.testing.assert_allclose(shared["loss_weight"][row][:len(want)], want, rtol=1e-6)
        assert shared["loss_weight"][row][len(want):].sum() == 0
    with pytest.raises(ValueError, match="no window's dataset"):
        window_sequences({k: v for k, v in batch.items() if k != "dataset"}, sources, ByteCodec(),
                         SequenceSpec(n_parcels=160, n_patches=2, text_len=160))
