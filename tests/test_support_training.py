"""Stage-3 k-shot training prompts (``language.train_support``): support scans are labelled training scans of other
subjects, read as the pipeline reads windows, balanced per class, and the query's question is unchanged."""

import numpy as np
import pytest
from _trainer_utils import ByteCodec

from brainjax.commands.instruct import text_budget
from brainjax.data.dataset import Dataset
from brainjax.data.pipeline import ReadWindow
from brainjax.data.synthetic import SynthConfig, synthesize
from brainjax.lm.batches import InstructionSource, window_sequences
from brainjax.lm.instructions import build_targets
from brainjax.models.sequences import SequenceSpec

WINDOW = 20


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("support")
    return synthesize(out, SynthConfig(subjects=14, scans_per_subject=2, timepoints=WINDOW, atlas="dosenbach160",
                                       sites=2, seed=3), (0.7, 0.15, 0.15))


def _batch(ds: Dataset, scans) -> dict[str, np.ndarray]:
    reader = ReadWindow([ds], WINDOW, ds.atlas.n_parcels)
    rows = [reader.map(np.array([0, s, 0])) for s in scans]
    return {k: np.stack([r[k] for r in rows]) for k in ("signal", "parcel_mask", "coords", "tr", "scan", "start")}


def _texts(out: dict, row: int) -> tuple[str, str]:
    """(prompt text in order, answer text) of one laid-out row."""
    ids, valid, slot = out["ids"][row], out["valid"][row], out["slot"][row]
    text = [i for i, v, s in zip(ids, valid, slot) if v and s < 0]
    answer = out["loss_target"][row][out["loss_weight"][row] > 0]
    prompt = text[:len(text) - len(answer)]
    return ByteCodec().decode(prompt), ByteCodec().decode(answer)


def test_support_examples_are_labelled_scans_of_other_subjects(ds):
    targets = build_targets(ds)
    train = ds.indices("train")
    source = InstructionSource(ds, targets, ["sex"], [None] * len(ds.manifest), seed=0, support=4, window=WINDOW,
                               n_parcels=ds.atlas.n_parcels)
    # the text budget `instruct` sizes for 4 support examples holds every prompt drawn
    spec = SequenceSpec(n_parcels=ds.atlas.n_parcels, n_patches=2, blocks=5,
                        text_len=text_budget(ByteCodec(), targets, ["sex"], [], support=4))
    out = window_sequences(_batch(ds, train), source, ByteCodec(), spec)
    assert out["signal"].shape == (len(train), 5, ds.atlas.n_parcels, WINDOW)
    first = {s: ReadWindow([ds], WINDOW, ds.atlas.n_parcels).map(np.array([0, s, 0]))["signal"] for s in train}
    words = {"0": "female", "1": "male"}
    seen_k = set()
    for row, scan in enumerate(train):
        np.testing.assert_array_equal(out["signal"][row, 0], first[scan])  # block 0 is the query's own window
        prompt, reply = _texts(out, row)
        assert reply.strip() == words[ds.manifest[scan]["sex"]]
        shot_answers = [part.split("\n")[0] for part in prompt.split("\nAnswer: ")[1:]]
        used = sorted({int(s) // (spec.block_tokens) for s in out["slot"][row] if s >= 0})
        assert used == list(range(len(shot_answers) + 1))  # the query plus one block per support example
        k = len(shot_answers) // 2
        seen_k.add(k)
        assert sorted(shot_answers) == ["female"] * k + ["male"] * k  # k per class
        for b, said in enumerate(shot_answers, start=1):
            found = [s for s in train if np.array_equal(first[s], out["signal"][row, b])]
            assert len(found) == 1, "a support block is the first window of exactly one training scan"
            shot = found[0]
            assert ds.manifest[shot]["subject"] != ds.manifest[scan]["subject"]
            assert said == words[ds.manifest[shot]["sex"]]
        for b in range(len(shot_answers) + 1, spec.blocks):  # unused blocks repeat the query, never placed
            np.testing.assert_array_equal(out["signal"][row, b], out["signal"][row, 0])
    assert seen_k == {0, 1, 2}


def test_support_leaves_the_query_question_and_answer_as_without_it(ds):
    targets = build_targets(ds)
    scans = ds.indices("train")
    plain = InstructionSource(ds, targets, ["sex", "diagnosis"], [None] * len(ds.manifest), seed=4)
    shots = InstructionSource(ds, targets, ["sex", "diagnosis"], [None] * len(ds.manifest), seed=4, support=2,
                              window=WINDOW)
    for scan in scans:
        before, reply, _ = plain.sample(scan, 0)
        after, reply_after, _ = shots.sample(scan, 0)
        assert after[-3:] == before and reply_after == reply


def test_support_needs_enough_scans_per_class(ds):
    targets = build_targets(ds)
    with pytest.raises(ValueError, match="outside one subject"):
        InstructionSource(ds, targets, ["sex"], [None] * len(ds.manifest), seed=0, support=40, window=WINDOW)
    with pytest.raises(ValueError, match="window length"):
        InstructionSource(ds, targets, ["sex"], [None] * len(ds.manifest), seed=0, support=2)
    source = InstructionSource(ds, targets, ["sex"], [None] * len(ds.manifest), seed=0, support=4, window=WINDOW)
    batch = _batch(ds, ds.indices("train")[:4])
    with pytest.raises(ValueError, match="support scans"):  # a sequence with too few blocks for the prompts
        window_sequences(batch, source, ByteCodec(),
                         SequenceSpec(n_parcels=ds.atlas.n_parcels, n_patches=2, blocks=1, text_len=400))
