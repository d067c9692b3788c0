"""fMRI-LM stages 2-3 end to end on CPU (8 simulated devices): ``brainjax adapt`` (warm start, frozen parts,
resume), ``brainjax instruct`` (training, zero/k-shot table) and ``brainjax ask`` on a small synthetic cohort
with a tiny stage-1 tokenizer and a tiny LM saved as a Hugging Face directory."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from _trainer_utils import make_trainer, tiny_config
from flax import nnx
from safetensors.numpy import load_file

from brainjax.cli import main as cli
from brainjax.config import QuantizerConfig
from brainjax.data.dataset import Dataset
from brainjax.lm.default_lm import offline_corpus, train_text_tokenizer
from brainjax.lm.scoring import is_number_prefix
from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.models.lm_loading import from_pretrained
from brainjax.models.lm_saving import save_pretrained
from brainjax.run import load_model
from brainjax.train.logging import read_metrics

pytestmark = pytest.mark.slow  # stage-1 tokenizer training plus adapt / instruct / ask runs


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    from brainjax.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("language")
    data = root / "synth"
    synthesize(data, SynthConfig(subjects=30, scans_per_subject=1, timepoints=96, atlas="dosenbach160", sites=2,
                                 seed=1), (0.6, 0.2, 0.2))
    cfg = tiny_config(steps=6, data={"window": 32}, model={"patch": 16, "max_parcels": 160},
                      train={"checkpoint_every": 6, "eval_every": 6})
    cfg = dataclasses.replace(cfg, objective="tokenizer",
                              quantizer=QuantizerConfig(kind="vq", codebook_size=16, code_dim=8))
    make_trainer(cfg, data, root / "tok").run()
    text_tokenizer = train_text_tokenizer(offline_corpus(0, 100), vocab_size=300)
    lm_cfg = LMConfig(family="qwen3", vocab_size=text_tokenizer.get_vocab_size(), hidden=32, layers=2, heads=4,
                      kv_heads=2, head_dim=8, intermediate=64, max_positions=4096, norm_eps=1e-6)
    save_pretrained(DecoderLM(lm_cfg, rngs=nnx.Rngs(0)), text_tokenizer, root / "lm",
                    extra_config={"eos_token_id": 0, "pad_token_id": 0})
    common = ["adapt", "--workdir", str(root / "adapt"), "--tokenizer", str(root / "tok"), "--lm", str(root / "lm"),
              "--data", str(data), "--batch", "8", "--set", "train.log_every=1", "--set", "language.text_len=96",
              "--set", "language.lm_len=64", "--max-eval", "4"]
    assert cli([*common, "--steps", "3"]) == 0
    assert cli([*common, "--steps", "5"]) == 0  # resumes at step 3
    return root, data


def _params(model) -> dict:
    return {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_adapt_trains_only_what_it_should_and_resumes(stage2):
    root, data = stage2
    assert (data / "descriptors" / "descriptors.jsonl").exists()  # computed because it was missing
    run = load_model(root / "adapt")
    assert run.step == 5 and run.cfg.objective == "adapt"
    trained = _params(run.model)
    tokenizer = _params(load_model(root / "tok").model)
    for name, value in tokenizer.items():  # frozen stage 1, carried over exactly
        np.testing.assert_array_equal(trained["tokenizer/" + name], value)
    lm, _ = from_pretrained(root / "lm")
    base = _params(lm)  # the default trains the LM in full: every weight is the run's own, none is a LoRA factor
    assert not any("lora" in k for k in trained) and not (root / "adapt" / "adapters").exists()
    assert any(not np.array_equal(trained["lm/" + name], value) for name, value in base.items())
    steps = [m["step"] for m in read_metrics(root / "adapt") if "loss" in m]
    assert steps == [1, 2, 3, 4, 5]  # the second run went on from step 3, repeating none
    logs = [m for m in read_metrics(root / "adapt") if "val_text_loss" in m]
    # crops of 80 of the 96 TRs (five sixths, whole 16-TR patches), rephrased per crop, rows against the cohort;
    # one token per parcel: no next patch, so no code loss
    assert run.cfg.data.window == 80 and run.cfg.language.fmri_time == "window"
    assert run.cfg.language.rephrase and run.cfg.language.fc_reference == "cohort"
    assert logs and all(np.isfinite(m["val_lm_loss"]) and "val_code_loss" not in m for m in logs)
    closing = json.loads((root / "adapt" / "descriptions.json").read_text())  # the closing description check
    check, = closing["results"]
    assert closing["step"] == 5 and check["dataset"] == str(data) and check["n"] == 4
    assert np.isclose(check["difference"], check["nll_other_scan"] - check["nll_own_scan"])
    texts = [json.loads(line)["text"] for line in (data / "descriptors" / "descriptors.jsonl").read_text().splitlines()]
    assert 0.0 <= check["rouge_l"] <= 1.0 and check["chance_text"] in texts


@pytest.fixture(scope="module")
def stage3(stage2):
    """A 2-step stage-3 run and its first report (the report file is rewritten by later --eval-only calls)."""
    root, data = stage2
    out = root / "instruct"
    assert cli(["instruct", "--adapt", str(root / "adapt"), "--workdir", str(out), "--steps", "2", "--batch", "8",
                "--targets", "sex,diagnosis,description", "--eval-targets", "sex,age,description", "--shots", "0,1",
                "--max-eval", "3"]) == 0
    return out, json.loads((out / "questions.json").read_text())


def test_instruct_then_ask(stage2, stage3, capsys):
    root, data = stage2
    out, report = stage3
    rows = {(r["target"], r["setting"], r["scoring"]): r for r in report["rows"]}
    scorings = ("logprob", "logprob/token", "logprob, calibrated", "constrained")
    assert set(rows) == {("sex", s, m) for s in ("zero-shot", "1-shot") for m in scorings} | {
        ("age", "zero-shot", "generate"), ("age", "zero-shot", "number grammar"),
        ("age", "zero-shot", "number scores, mean"), ("age", "zero-shot", "number scores, mean, calibrated"),
        ("description", "zero-shot", "generate")}
    described = rows[("description", "zero-shot", "generate")]
    assert 0.0 <= described["rouge_l"] <= 1.0 and 0.0 < described["chance_rouge_l"] <= 1.0
    assert rows[("sex", "zero-shot", "logprob")]["tuned"] and not rows[("age", "zero-shot", "generate")]["tuned"]
    assert described["tuned"]
    # whatever the 2-step model says, the grammar-constrained answers are numbers
    grammar = rows[("age", "zero-shot", "number grammar")]
    assert grammar["parse_rate"] == 1.0 and all(is_number_prefix(t) for t in grammar["examples"])
    # the mean over the training range's whole numbers is a number inside that range for every scan
    train_ages = [float(r["age"]) for r in Dataset(data).manifest if r["split"] == "train" and r["age"]]
    for scoring in ("number scores, mean", "number scores, mean, calibrated"):
        read = rows[("age", "zero-shot", scoring)]
        assert read["parse_rate"] == 1.0 and math.isfinite(read["r2"])
        low, high = math.floor(min(train_ages) + 0.5), math.floor(max(train_ages) + 0.5)
        assert all(low - 0.05 <= float(t) <= high + 0.05 for t in read["examples"])
    assert all(r["n"] == 3 for r in report["rows"])
    # the 96-TR scans hold three 32-TR windows: label scores averaged over them, the generated answers unchanged
    assert cli(["instruct", "--eval-only", "--workdir", str(out), "--eval-targets", "sex,age", "--shots", "0",
                "--max-eval", "3", "--windows", "3"]) == 0
    viewed = json.loads((out / "questions.json").read_text())
    again = {(r["target"], r["setting"], r["scoring"]): r for r in viewed["rows"]}
    assert viewed["windows"] == 3 and again[("age", "zero-shot", "generate")] == rows[("age", "zero-shot", "generate")]
    assert {("sex", "zero-shot", m) for m in scorings} <= set(again)
    # the support set is drawn per (seed, k, target): asking other targets first does not change it
    assert cli(["instruct", "--eval-only", "--workdir", str(out), "--eval-targets", "description,sex", "--shots", "1",
                "--max-eval", "3"]) == 0
    alone = {(r["target"], r["scoring"]): r for r in json.loads((out / "questions.json").read_text())["rows"]}
    support = rows[("sex", "1-shot", "logprob")]["support"]
    assert len(support) == 2 and alone[("sex", "logprob")]["support"] == support
    for key in ("accuracy", "auroc"):  # same prompts, same scores (NaN when a class is absent from 3 scans)
        np.testing.assert_equal(alone[("sex", "logprob")][key], rows[("sex", "1-shot", "logprob")][key])
    assert cli(["instruct", "--eval-only", "--workdir", str(out), "--windows", "0"]) == 2
    run = load_model(out)
    # the description tuned as stage 2 trained it (rephrased per crop), each answer weighing one
    assert run.cfg.language.targets == ("sex", "diagnosis", "description") and run.cfg.language.code_weight == 0.0
    assert run.cfg.language.rephrase and run.cfg.language.loss_per_answer
    stage2_tokenizer = _params(load_model(root / "adapt").model)
    for name, value in _params(run.model).items():
        if name.startswith("tokenizer/"):
            np.testing.assert_array_equal(value, stage2_tokenizer[name])
    capsys.readouterr()
    scan = json.loads((data / "descriptors" / "descriptors.jsonl").read_text().splitlines()[0])["scan_id"]
    question = "Is this scan from a male or a female participant? Answer with one of: female, male."
    assert cli(["ask", "--workdir", str(out), "--scan", scan, "--max-tokens", "2", "--question", question]) == 0
    printed = capsys.readouterr().out
    probs = [float(line.split("=")[1]) for line in printed.splitlines() if line.strip().startswith("P(")]
    assert len(probs) == 2 and abs(sum(probs) - 1.0) < 1e-3
    assert cli(["ask", "--workdir", str(out), "--scan", "no-such-scan", "--question", "?"]) == 2


def test_instruct_mixes_datasets_and_reports_each(stage2):
    from brainjax.data.synthetic import SynthConfig, synthesize

    root, data = stage2
    other = root / "synth2"
    synthesize(other, SynthConfig(subjects=20, scans_per_subject=1, timepoints=96, atlas="dosenbach160", sites=3,
                                  seed=2), (0.6, 0.2, 0.2))
    out = root / "instruct-mixed"
    assert cli(["instruct", "--adapt", str(root / "adapt"), "--workdir", str(out), "--steps", "2", "--batch", "8",
                "--data", f"{data},{other}", "--targets", "sex,site", "--eval-targets", "sex,site", "--shots", "0",
                "--max-eval", "2", "--set", "language.train_support=2"]) == 0  # k-shot training prompts too
    report = json.loads((out / "questions.json").read_text())
    seen = {(r["dataset"], r["target"]) for r in report["rows"]}
    assert seen == {(d.name, t) for d in (data, other) for t in ("sex", "site")}
    sites = {r["dataset"]: r for r in report["rows"] if r["target"] == "site" and r["scoring"] == "logprob"}
    assert sites[data.name]["n"] == sites[other.name]["n"] == 2
    loaded = load_model(out)
    assert loaded.cfg.data.path == f"{data},{other}" and loaded.cfg.language.train_support == 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in logged if "loss" in r)


def test_adapt_refuses_a_run_that_is_not_a_tokenizer(stage2, capsys):
    root, data = stage2
    assert cli(["adapt", "--workdir", str(root / "x"), "--tokenizer", str(root / "adapt"), "--lm", str(root / "lm"),
                "--data", str(data), "--steps", "1"]) == 2
    assert "not a tokenizer run" in capsys.readouterr().err



def test_instruct_tunes_a_stage3_run_further(stage2, stage3):  # other runs are refused: test_fixture_runs
    root, _ = stage2
    first, second = stage3[0], root / "phase2"
    common = ["--steps", "1", "--batch", "8", "--targets", "sex,diagnosis", "--eval-targets", "sex", "--shots", "0",
              "--max-eval", "2"]
    # a second phase from the first one's weights, now with k-shot training prompts
    assert cli(["instruct", "--adapt", str(first), "--workdir", str(second), *common,
                "--set", "language.train_support=2"]) == 0
    tuned = load_model(second)
    assert tuned.lineage.parent == str(first.resolve()) and tuned.lineage.parent_step == 2
    assert tuned.cfg.language.train_support == 2 and tuned.step == 1
    stage1 = _params(load_model(first).model)
    for name, value in _params(tuned.model).items():  # the frozen tokenizer is the first phase's, untouched
        if name.startswith("tokenizer/"):
            np.testing.assert_array_equal(value, stage1[name])


def test_lora_stage2_and_the_cohort_reference_kept_by_stage3(stage2):
    root, data = stage2
    out, tuned = root / "cohort", root / "cohort-i"
    assert cli(["adapt", "--workdir", str(out), "--tokenizer", str(root / "tok"), "--lm", str(root / "lm"),
                "--data", str(data), "--batch", "8", "--steps", "1", "--set", "language.text_len=96",
                "--set", "language.lm_len=64", "--set", "language.train_lm=lora", "--max-eval", "2",
                "--no-generate"]) == 0
    run = load_model(out)
    trained = _params(run.model)
    lm, _ = from_pretrained(root / "lm")
    for name, value in _params(lm).items():  # LoRA: base weights are the Hugging Face ones, untouched
        parts = name.split("/")
        wrapped = "/".join(parts[:-1] + ["base", parts[-1]])
        np.testing.assert_array_equal(trained.get("lm/" + wrapped, trained.get("lm/" + name)), value)
    assert any(np.abs(v).max() > 0 for k, v in trained.items() if k.endswith("lora_b"))
    exported = load_file(out / "adapters" / "adapter_model.safetensors")  # LoRA export of the last step
    assert exported and all(np.array_equal(v, trained["lm/" + k.replace(".", "/")]) for k, v in exported.items())
    # by hand: Pearson correlations of every training scan's first window (80 of its 96 TRs)
    ds = Dataset(data)
    window = run.cfg.data.window
    assert window == 80
    fcs = np.stack([np.corrcoef(ds.read(i)[:, :window]) for i in ds.indices("train")])
    n = ds.atlas.n_parcels
    np.testing.assert_allclose(np.asarray(run.model.fc_mean[...])[:n, :n], fcs.mean(0), atol=1e-4)
    off_diagonal = ~np.eye(n, dtype=bool)
    np.testing.assert_allclose(np.asarray(run.model.fc_std[...])[:n, :n][off_diagonal], fcs.std(0)[off_diagonal],
                               atol=1e-4)
    assert cli(["instruct", "--adapt", str(out), "--workdir", str(tuned), "--steps", "1", "--batch", "8",
                "--targets", "sex", "--eval-targets", "sex", "--shots", "0", "--max-eval", "2"]) == 0
    np.testing.assert_array_equal(np.asarray(load_model(tuned).model.fc_mean[...]),
                                  np.asarray(run.model.fc_mean[...]))
