"""Fast checks on the committed fixture runs (``tests/fixtures/v1_runs``), without training anything.

The end-to-end versions (``test_evaluate.py``, ``test_language_cli.py``) pretrain or adapt first and are marked
slow; these keep the evaluation tasks and the language commands inside the fast loop (``pytest -m "not slow"``):
the reconstruction and forecasting tasks of ``brainjax evaluate`` with their baselines on a few windows, the
parcel representations that network identification clusters, and the stage checks of adapt / instruct / ask.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from brainjax.cli import main as cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WINDOWS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(dataset, copy of the fixture runs): the cohort is rebuilt from its seed, the runs are copied."""
    spec = importlib.util.spec_from_file_location("make_v1_runs", FIXTURES / "make_v1_runs.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    root = tmp_path_factory.mktemp("fixture_runs")
    data = maker.fixture_dataset(root / "data")
    shutil.copytree(FIXTURES / "v1_runs", root / "runs")
    return data, root / "runs"


def test_evaluate_reconstruct_and_forecast_beside_baselines(runs, tmp_path, capsys):
    data, workdirs = runs
    out = tmp_path / "report.json"
    assert cli(["evaluate", "--workdir", str(workdirs / "pretrain"), "--data", str(data), "--tasks",
                "reconstruct,forecast", "--batch", "4", "--max-windows", str(WINDOWS), "--lstm-steps", "0",
                "--no-figures", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == ["reconstruct", "forecast"]
    rec = report["tasks"]["reconstruct"]
    assert rec["windows"] == WINDOWS
    for strategy in ("random", "parcels", "time_block", "future"):
        assert set(rec[strategy]) == {"model", "parcel_mean", "interpolation", "regression", "comparison"}
        assert len(rec[strategy]["model"]["r2_per_parcel"]) == 160  # Dosenbach-160
        c = rec[strategy]["comparison"]
        assert c["baseline"] in ("parcel_mean", "interpolation", "regression") and c["low"] <= c["high"]
    fc = report["tasks"]["forecast"]
    # windows of 32 TRs in patches of 16: one patch of context, one forecast
    assert (fc["context_trs"], fc["horizon_trs"], fc["windows"]) == (16, 16, WINDOWS)
    assert set(fc["methods"]) == {"model", "persistence", "ar3", "var1"}  # --lstm-steps 0: no LSTM
    assert all(len(m["mse_per_step"]) == 16 for m in fc["methods"].values())
    printed = capsys.readouterr().out
    assert "reconstruction: pooled R²" in printed and "forecast (zero-shot)" in printed
    for tasks, message in (("reconstruct,nope", "unknown ['nope']"), ("finetuned", "needs a regress/classify")):
        assert cli(["evaluate", "--workdir", str(workdirs / "pretrain"), "--data", str(data), "--tasks", tasks]) == 2
        assert message in capsys.readouterr().err


def test_parcel_representations_are_window_means_of_attention_rows(runs):
    from brainjax.eval.network_maps import parcel_representations
    from brainjax.run import load_model

    data, workdirs = runs
    loaded = load_model(workdirs / "pretrain")
    reps = parcel_representations(loaded, str(data), "test", batch_size=4, max_windows=WINDOWS)
    assert reps["windows"] == WINDOWS and reps["embedding"].shape == (160, 16)
    for key in ("attention_last", "attention_mean", "tokcov"):
        assert reps[key].shape == (160, 160) and np.isfinite(reps[key]).all(), key
    # every parcel's row sums to one minus its attention to CLS; CLS's attention over parcels likewise
    rows = reps["attention_mean"].sum(1)
    assert np.all(rows > 0) and np.all(rows <= 1 + 1e-5)
    assert 0 < reps["cls_attention"].sum() <= 1 + 1e-5
    np.testing.assert_allclose(reps["tokcov"], reps["tokcov"].T)


def test_language_stages_refuse_runs_of_another_stage(runs, tmp_path, capsys):
    data, workdirs = runs
    assert cli(["adapt", "--workdir", str(tmp_path / "adapt"), "--tokenizer", str(workdirs / "pretrain"),
                "--lm", str(tmp_path / "no_lm"), "--data", str(data), "--steps", "1"]) == 2
    assert "not a tokenizer run" in capsys.readouterr().err
    assert cli(["instruct", "--adapt", str(workdirs / "tokenizer"), "--workdir", str(tmp_path / "instruct"),
                "--steps", "1"]) == 2
    assert "--adapt needs a stage-2 ('adapt') or stage-3 ('instruct') run" in capsys.readouterr().err
    assert cli(["ask", "--workdir", str(workdirs / "tokenizer"), "--scan", "x", "--question", "?"]) == 2
    assert "not an fMRI-LM run" in capsys.readouterr().err
    assert not (tmp_path / "adapt").exists() and not (tmp_path / "instruct").exists()


def test_stage2_batches_put_each_window_before_its_descriptor_text(runs, tmp_path, capsys):
    from brainjax.data.dataset import Dataset
    from brainjax.data.describe import write_descriptors
    from brainjax.lm.batches import DescriptionSource, TextCodec, load_descriptor_texts, window_sequences
    from brainjax.lm.default_lm import offline_corpus, train_text_tokenizer
    from brainjax.models.sequences import SequenceSpec

    data, workdirs = runs
    out, described, _ = write_descriptors(data, tmp_path / "descriptors", max_sentences=2)
    dataset = Dataset(data)
    texts, records = load_descriptor_texts(out / "descriptors.jsonl", dataset.manifest)
    assert texts == [row["text"] for row in described] and all(texts)
    assert [r["scan_id"] for r in records] == [m["scan_id"] for m in dataset.manifest]
    codec = TextCodec(train_text_tokenizer(offline_corpus(0, 40), vocab_size=300), eos_id=0)
    assert codec.decode(codec.encode(texts[0]) + [0]) == texts[0]  # byte-level BPE; eos dropped

    rng = np.random.default_rng(0)
    scans = np.array([3, 0, 7])
    batch = {"signal": rng.normal(size=(3, 160, 32)).astype(np.float32), "parcel_mask": np.ones((3, 160), bool),
             "coords": np.zeros((3, 160, 3), np.float32), "tr": np.full(3, 2.0, np.float32), "scan": scans,
             "start": np.zeros(3, np.int64), "valid": np.array([True, True, False])}  # row 2 only pads
    spec = SequenceSpec(n_parcels=160, n_patches=2, text_len=200)
    seq = window_sequences(batch, DescriptionSource(texts), codec, spec, lm_len=96)
    assert seq["signal"].shape == (3, 1, 160, 32) and seq["ids"].shape == (3, spec.length)
    for row, scan in enumerate(scans):
        answer = codec.encode(" " + texts[scan]) + [0]  # the scan's own description, then end of text
        n = int((seq["loss_weight"][row] > 0).sum())
        if row < 2:
            assert n == len(answer)  # two sentences fit in text_len whole
            np.testing.assert_array_equal(seq["loss_target"][row][:n], answer)
            plain = (codec.encode(texts[scan]) + [0])[:96]
            np.testing.assert_array_equal(seq["lm_ids"][row][:len(plain)], plain)
        else:  # a padding row keeps its layout but carries no loss
            assert n == 0 and not seq["lm_mask"][row].any()

    # adapt reads the tokenizer run and the descriptors before it needs the LM: a missing LM is a clear error
    assert cli(["adapt", "--workdir", str(tmp_path / "adapt"), "--tokenizer", str(workdirs / "tokenizer"),
                "--lm", str(tmp_path / "no_lm"), "--data", str(data), "--descriptors", str(out / "descriptors.jsonl"),
                "--steps", "1"]) != 0
    assert "not a Hugging Face model directory" in capsys.readouterr().err


def test_rephrased_descriptions_keep_their_facts_and_follow_the_crop(runs, tmp_path, capsys):
    from brainjax.data.dataset import Dataset
    from brainjax.data.describe import descriptor_low_band, phrasing_seed, rephrase, write_descriptors
    from brainjax.lm.batches import DescriptionSource, InstructionSource, load_descriptor_texts
    from brainjax.lm.instructions import build_targets, descriptor_rows

    data, workdirs = runs
    out, described, _ = write_descriptors(data, tmp_path / "descriptors", max_sentences=4)
    dataset = Dataset(data)
    texts, records = load_descriptor_texts(out / "descriptors.jsonl", dataset.manifest)
    band = descriptor_low_band(out / "descriptors.jsonl")
    assert band == (0.01, 0.08)
    # the stored text is the phrasing of its own seed (write_descriptors' seed 0, by manifest row)
    for row, record in enumerate(records):
        assert rephrase(record, phrasing_seed(0, row), band) == record["text"]
    source = DescriptionSource(texts, records, seed=3, low_band=band)
    drawn = {start: source.sample(0, start)[1] for start in range(12)}
    assert source.sample(0, 5)[1] == drawn[5]  # a pure function of (seed, scan, start): resumes redraw it
    assert len(set(drawn.values())) > 1 and source.sample(0, 5)[2] == drawn[5]  # text-only loss reads it too
    assert DescriptionSource(texts, records, seed=4, low_band=band).sample(0, 5)[1] != drawn[5] or \
        DescriptionSource(texts, records, seed=5, low_band=band).sample(0, 5)[1] != drawn[5]
    for text in drawn.values():  # one sentence per fact in every phrasing (rephrase checks the facts themselves)
        assert text.count(". ") + 1 == len(records[0]["facts"])
    edited = {**records[0], "z": {k: (None if v is None else -v) for k, v in records[0]["z"].items()}}
    with pytest.raises(ValueError, match=records[0]["scan_id"]):
        rephrase(edited, 0, band)
    with pytest.raises(ValueError, match="records for"):
        DescriptionSource(texts, records[:-1])
    # stage 3: the description question's answer is rephrased the same way; the other draws do not move
    targets = build_targets(dataset, records)
    names = ["modularity", "description"]
    stored = InstructionSource(dataset, targets, names, descriptor_rows(dataset, records), seed=3)
    fresh = InstructionSource(dataset, targets, names, descriptor_rows(dataset, records), seed=3, rephrase_band=band)
    replies = {}
    for start in drawn:
        (prompt, reply, _), (prompt_b, reply_b, _) = stored.sample(0, start), fresh.sample(0, start)
        assert prompt == prompt_b  # same target and question drawn
        if reply == records[0]["text"]:  # the description was drawn: stored text against this crop's phrasing
            assert reply_b == drawn[start] and reply_b.count(". ") + 1 == len(records[0]["facts"])
            replies[start] = reply_b
        else:
            assert reply_b == reply  # a label answer is never rephrased
    assert len(set(replies.values())) > 1
    with pytest.raises(ValueError, match=records[0]["scan_id"]):
        InstructionSource(dataset, targets, names, [edited, *descriptor_rows(dataset, records)[1:]], seed=3,
                          rephrase_band=band)
    # adapt refuses it when the window is the whole scan (one crop: one phrasing), before it needs an LM
    whole = min(int(row["length"]) for row in dataset.manifest)
    assert cli(["adapt", "--workdir", str(tmp_path / "adapt"), "--tokenizer", str(workdirs / "tokenizer"),
                "--lm", str(tmp_path / "no_lm"), "--data", str(data), "--descriptors", str(out / "descriptors.jsonl"),
                "--steps", "1", "--set", "language.rephrase=true", "--set", f"data.window={whole}"]) == 2
    assert "language.rephrase draws a phrasing per window crop" in capsys.readouterr().err
