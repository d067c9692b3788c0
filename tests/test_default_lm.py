"""The embedded default LM: offline corpus, byte-level BPE tokenizer, packing, training, building and caching.

Everything runs on tiny settings; the real default build (a minute or two) is never run here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from flax import nnx
from scipy.special import log_softmax

from brainjax.data.descriptor_text import CATALOGUE, describe_scan
from brainjax.lm import default_lm as dlm
from brainjax.models.generate import generate
from brainjax.models.lm import LMConfig
from brainjax.models.lm_loading import from_pretrained

TINY = LMConfig(family="qwen3", vocab_size=512, hidden=64, layers=1, heads=2, kv_heads=1, head_dim=16,
                intermediate=128, max_positions=128, norm_eps=1e-6)
EXTRA = ["Question: is the visual network typical? Answer: yes.", "Ünïcode — 0.01-0.08 Hz, émigré café."]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return dlm.offline_corpus(seed=3, n_documents=150, extra=EXTRA)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return dlm.train_text_tokenizer(corpus, vocab_size=TINY.vocab_size)


@nnx.jit
def _logits(model, ids):
    # One compiled forward: op-by-op eager dispatch of the model takes seconds.
    return model(ids)


def test_corpus_is_seeded_and_includes_extra(corpus):
    assert len(corpus) == 152 and all(corpus.count(text) == 1 for text in EXTRA)
    assert corpus[:2] != EXTRA  # shuffled in, not appended
    assert dlm.offline_corpus(seed=3, n_documents=150, extra=EXTRA) == corpus
    other = dlm.offline_corpus(seed=4, n_documents=150, extra=EXTRA)
    assert other != corpus and sorted(set(other) - set(corpus)) != []
    assert all(text.endswith(".") for text in corpus)
    with pytest.raises(ValueError, match="n_documents"):
        dlm.offline_corpus(n_documents=-1)
    with pytest.raises(ValueError, match="extra"):
        dlm.offline_corpus(n_documents=1, extra=[""])


@pytest.mark.parametrize("family", sorted(CATALOGUE))
def test_feature_keys_are_understood_by_the_describer(family):
    # A key the describer cannot parse would be silently dropped from the corpus.
    rng = np.random.default_rng(0)
    for _ in range(5):
        key = dlm._feature_key(family, rng)
        _, facts = describe_scan({key: 1.0}, {key: 2.0}, seed=0)
        assert [f["feature"] for f in facts] == [key]


def test_tokenizer_eos_round_trip_and_determinism(corpus, tokenizer):
    assert tokenizer.token_to_id(dlm.EOS) == 0
    assert 257 < tokenizer.get_vocab_size() <= TINY.vocab_size
    for text in [*corpus[:5], *EXTRA, "  leading spaces\nand a newline\t"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    again = dlm.train_text_tokenizer(corpus, vocab_size=TINY.vocab_size)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.encode(corpus[0]).ids == tokenizer.encode(corpus[0]).ids
    assert len(tokenizer.encode(corpus[0]).ids) < len(corpus[0]) / 2  # merges were learnt
    with pytest.raises(ValueError, match="vocab_size"):
        dlm.train_text_tokenizer(corpus, vocab_size=100)
    with pytest.raises(ValueError, match="no text"):
        dlm.train_text_tokenizer([])


def test_packing_puts_eos_between_documents(corpus, tokenizer):
    texts = corpus[:6]
    rows = dlm.pack_documents(texts, tokenizer, seq_len=16)
    stream = []
    for text in texts:
        stream += tokenizer.encode(text).ids + [0]
    assert rows.dtype == np.int32 and rows.shape == (len(stream) // 16, 16)
    np.testing.assert_array_equal(rows.ravel(), stream[:rows.size])
    ends = np.flatnonzero(np.asarray(stream) == 0)
    assert len(ends) == len(texts) and ends[0] == len(tokenizer.encode(texts[0]).ids)
    with pytest.raises(ValueError, match="fewer than one row"):
        dlm.pack_documents(texts[:1], tokenizer, seq_len=10_000)


@pytest.mark.slow
def test_train_lm_lowers_the_loss(corpus, tokenizer):
    model, history = dlm.train_lm(corpus, tokenizer, TINY, steps=40, batch_size=8, seq_len=32, lr=1e-2, seed=0)
    assert history.shape == (40,) and np.all(np.isfinite(history))
    assert abs(history[0] - np.log(TINY.vocab_size)) < 0.5  # starts near uniform over the vocabulary
    assert history[-5:].mean() < 0.7 * history[0]
    # The returned model is the trained one: its loss, recomputed independently, is as low as the history says.
    rows = dlm.pack_documents(corpus, tokenizer, seq_len=32)[:16]
    logp = log_softmax(np.asarray(_logits(model, rows[:, :-1]), np.float64), axis=-1)
    loss = -np.take_along_axis(logp, rows[:, 1:, None], axis=-1).mean()
    assert loss < 0.7 * history[0]
    with pytest.raises(ValueError, match="seq_len"):
        dlm.train_lm(corpus, tokenizer, TINY, steps=1, seq_len=1024)
    with pytest.raises(ValueError, match="tokenizer has"):
        dlm.train_lm(corpus, tokenizer, LMConfig(**{**TINY.__dict__, "vocab_size": 300}), steps=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "lm"
    return dlm.build_default_lm(out, steps=6, seed=1, cfg=TINY, n_documents=80, extra=EXTRA, batch_size=8,
                                seq_len=32, lr=1e-2)


@pytest.mark.slow
def test_build_default_lm_loads_and_generates(built):
    model, tokenizer = from_pretrained(built)
    record = json.loads((built / "brainjax_lm.json").read_text())
    assert record["documents"] == 82 and record["steps"] == 6 and record["seed"] == 1
    assert record["final_loss"] < record["initial_loss"]
    config = json.loads((built / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["eos_token_id"] == config["pad_token_id"] == 0
    assert model.cfg.vocab_size == tokenizer.get_vocab_size() <= TINY.vocab_size
    prompt = np.asarray([tokenizer.encode("This scan shows").ids])
    out = np.asarray(generate(model, prompt, np.ones_like(prompt), max_new_tokens=6, eos_id=0))
    assert out.shape == (1, 6) and out.min() >= 0 and out.max() < model.cfg.vocab_size
    assert isinstance(tokenizer.decode(out[0].tolist()), str)


@pytest.mark.slow
def test_default_lm_builds_once_and_is_reused(built, tmp_path, monkeypatch):
    calls = []

    def fake_build(out, **settings):  # the real recipe is exercised above; here only the caching matters
        calls.append(settings)
        shutil.copytree(built, out)
        return out

    monkeypatch.setattr(dlm, "build_default_lm", fake_build)
    first = dlm.default_lm(tmp_path)
    assert dlm.default_lm(tmp_path) == first and len(calls) == 1
    assert calls[0]["steps"] == dlm.DEFAULT_STEPS and calls[0]["seed"] == 0
    monkeypatch.setenv("BRAINJAX_CACHE", str(tmp_path))
    assert dlm.default_lm() == first and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left
    from_pretrained(first)


def test_default_lm_leaves_no_broken_entry(tmp_path, monkeypatch):
    def crash(out, **settings):
        (out / "half").mkdir(parents=True)
        raise RuntimeError("killed")

    monkeypatch.setattr(dlm, "build_default_lm", crash)
    with pytest.raises(RuntimeError, match="killed"):
        dlm.default_lm(tmp_path)
    assert list(tmp_path.iterdir()) == []
    name = f"default-lm-v{dlm.BUILD_VERSION}-{dlm.build_hash(**dlm._DEFAULT_BUILD)}"
    (tmp_path / name).mkdir()  # e.g. made by hand: not a finished LM
    with pytest.raises(FileExistsError, match="not a finished LM"):
        dlm.default_lm(tmp_path)
