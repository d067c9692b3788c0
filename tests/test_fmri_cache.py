"""The fMRI + text key/value cache: extending chunk by chunk (a shared k-shot prefix, then queries, then answers)
gives what one forward of the whole sequence gives, and the cached Prompter scores and generates exactly what
full recomputation does."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from flax import nnx

from brainjax.config import Config, DataConfig, LanguageConfig, MeshConfig, ModelConfig, QuantizerConfig
from brainjax.lm.evaluate import Prompter
from brainjax.lm.instructions import prompt_segments, query_segments
from brainjax.lm.scoring import NumberGrammar
from brainjax.models.fmri_cache import extend, init_cache, repeat_rows
from brainjax.models.fmri_lm import FMRILM
from brainjax.models.lm import LMConfig
from brainjax.models.sequences import SequenceSpec, layout, next_group, stack
from brainjax.sharding import make_mesh

LM = LMConfig(family="qwen3", vocab_size=128, hidden=16, layers=2, heads=4, kv_heads=2, head_dim=8, intermediate=32,
              max_positions=512, norm_eps=1e-6)
TOK = ModelConfig(patch=4, max_parcels=6, width=16, depth=1, heads=2, mlp=32, dec_width=16, dec_depth=1, dec_heads=2,
                  dec_mlp=32, fourier_features=2, attention="xla")
QUANT = QuantizerConfig(kind="vq", codebook_size=8, code_dim=4)
P, N = 3, 2  # parcels, time patches per block
# Jitted (eager dispatch of every small op would dominate the tests' time); the maths is the same.
_forward = nnx.jit(lambda model, batch: model(batch)[0])
_extend = nnx.jit(extend, static_argnames="query_chunk")
MASKS = np.array([[True, True, False], [True, True, True], [True, False, True]])  # some parcels are padding


def _model(scan_attention: str = "causal", pool: int = 0, time: str = "patch") -> FMRILM:
    language = LanguageConfig(train_lm="lora", lora_rank=2, scan_attention=scan_attention, fmri_pool=pool,
                              fmri_time=time, fmri_features="tokenizer+fc+summary", summary_rank=2)
    model = FMRILM(LM, TOK, QUANT, language, rngs=nnx.Rngs(0))
    # LoRA's B starts at zero; random adapters make sure the cached path runs through them too.
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if "lora_b" in str(path[-2:]):
            leaf.set_value(jax.random.normal(jax.random.key(len(path)), leaf.get_value().shape) * 0.3)
    return model


def _windows(scans, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"signal": rng.normal(size=(len(scans), P, N * 4)).astype(np.float32),
            "parcel_mask": MASKS[list(scans)], "coords": rng.uniform(-50, 50, (len(scans), P, 3)).astype(np.float32),
            "tr": np.full(len(scans), 2.0, np.float32)}


def _sample(segments, scans, text_len, first_group=0, seed=0, pool=0) -> dict:
    spec = SequenceSpec(P, N, blocks=len(scans), text_len=text_len, answer_len=1, pool=pool)
    row = layout(segments, [], MASKS[list(scans)], spec, first_group=first_group)
    out = {k: row[k] for k in ("ids", "slot", "group", "valid")}
    out.update(_windows(scans, seed))
    return stack([out])


SHOTS = [("text", [5, 6]), ("fmri", 0), ("text", [7, 8, 9]), ("fmri", 1), ("text", [10])]
QUERY = [("text", [11, 12]), ("fmri", 0), ("text", [13, 14, 15])]
ANSWER = [("text", [20, 21, 22])]


@pytest.mark.parametrize("scan_attention", ["causal", "block"])
def test_chunked_extension_equals_one_forward_of_the_whole_sequence(scan_attention):
    model = _model(scan_attention)
    whole = _sample(SHOTS + [("fmri", 2) if s[0] == "fmri" else s for s in QUERY] + ANSWER, [0, 1, 2], 14)
    full = np.asarray(_forward(model, whole)[0])

    # The same sequence in three chunks: the shots (2 scans), the query (scan 2, text padded by 3), the answer.
    spec = SequenceSpec(P, N, text_len=1)
    scans = _windows([0, 1, 2])
    prefix = _sample(SHOTS, [0, 1], 6)
    prefix.update({k: v[None, :2] for k, v in scans.items()})
    query = _sample(QUERY, [2], 8, first_group=next_group(SHOTS, spec))
    query.update({k: v[None, 2:] for k, v in scans.items()})
    after = next_group(SHOTS + QUERY, spec)
    answer = {"ids": np.array([[20, 21, 22]], np.int32), "slot": np.full((1, 3), -1, np.int32),
              "group": np.array([[after, after + 1, after + 2]], np.int32), "valid": np.ones((1, 3), bool)}
    for query_chunk in (0, 4):  # one block of queries, and blocks of 4 (the chunked path long chunks take)
        cache = init_cache(model, 1, 64)
        parts = []
        for chunk in (prefix, query, answer):
            hidden, cache = _extend(model, chunk, cache, query_chunk=query_chunk)
            parts.append((np.asarray(hidden[0]), np.asarray(chunk["valid"][0])))
        cached = np.concatenate([h[v] for h, v in parts])
        # Hidden states (values ~1) after sums over other key counts and block sizes: float32 reordering gives up
        # to ~2e-5 on jax 0.12 (a wrong mask or group gives O(0.1)); the Prompter tests hold log-probs to 1e-5.
        np.testing.assert_allclose(cached, full[whole["valid"][0]], atol=5e-5)
        assert int(cache.index) == prefix["ids"].shape[1] + query["ids"].shape[1] + 3


def test_a_shared_prefix_repeated_to_several_queries_equals_each_query_alone():
    model = _model()
    prefix = _sample(SHOTS, [0, 1], 6)
    start = next_group(SHOTS, SequenceSpec(P, N))
    cache = repeat_rows(_extend(model, prefix, init_cache(model, 1, 48))[1], 2)
    queries = [_sample(QUERY, [2], 6, first_group=start, seed=s) for s in (1, 2)]
    queries[1]["ids"][0, :2] = [30, 31]  # another question text too
    hidden, _ = _extend(model, stack([{k: v[0] for k, v in q.items()} for q in queries]), cache)
    for row, query in enumerate(queries):
        alone, _ = _extend(model, query, _extend(model, prefix, init_cache(model, 1, 48))[1])
        # hidden states (values ~1) of a two-row batch against one row: the matmuls block differently, and on an
        # AVX-512 Xeon with jax 0.12.1 one value of 192 moved by 1.3e-5 (a wrong prefix row moves them by O(0.1))
        np.testing.assert_allclose(np.asarray(hidden[row]), np.asarray(alone[0]), atol=5e-5)
    with pytest.raises(ValueError, match="rows"):
        extend(model, queries[0], cache)


@pytest.mark.parametrize("pool", [0, 2])
def test_block_scan_attention_makes_a_scan_independent_of_what_precedes_it(pool):
    """Under block-local attention a scan's hidden states are the same after any text and scans, at any offset (a
    RoPE LM reads relative positions only): what lets evaluation compute each scan once. Causal attention mixes
    the prompt in. pool: two pooled tokens per patch (language.fmri_pool)."""
    spec = SequenceSpec(P, N, pool=pool)
    scan = _windows([2], seed=5)
    alone_segments = [("fmri", 0), ("text", [13])]
    after_segments = SHOTS + [("text", [40, 41, 42]), ("fmri", 2), ("text", [13])]
    for scan_attention, independent in (("block", True), ("causal", False)):
        model = _model(scan_attention, pool)
        alone = _sample(alone_segments, [2], 4, pool=pool)
        alone.update({k: v[None] for k, v in scan.items()})
        after = _sample(after_segments, [0, 1, 2], 10, pool=pool)
        for key, value in scan.items():  # the same window as block 2
            after[key][0, 2] = value[0]
        tokens = spec.block_tokens
        at = int(np.flatnonzero(after["slot"][0] == 2 * tokens)[0])
        assert after["group"][0, at] == next_group(SHOTS + [("text", [40, 41, 42])], spec) > 0
        got = np.asarray(_forward(model, after)[0, at:at + tokens])
        want = np.asarray(_forward(model, alone)[0, :tokens])
        real = alone["valid"][0, :tokens]
        if independent:
            np.testing.assert_allclose(got[real], want[real], atol=2e-5)
        else:
            assert np.abs(got[real] - want[real]).max() > 1e-3


class _Codec:
    """Characters as token ids (ASCII), eos 0: enough text machinery to drive the Prompter."""

    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) % LM.vocab_size for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids if i)


def _prompter(batch_size: int, devices: int, scan_attention: str = "causal", pool: int = 0, time: str = "patch"):
    cfg = Config(objective="instruct", data=DataConfig(window=8), model=TOK, mesh=MeshConfig(),
                 language=LanguageConfig(fmri_pool=pool, fmri_time=time))
    mesh = make_mesh(cfg.mesh, jax.devices()[:devices])
    loaded = types.SimpleNamespace(cfg=cfg, model=_model(scan_attention, pool, time), mesh=mesh)
    windows = {scan: {k: v[0] for k, v in _windows([scan % 3], seed=scan).items()} for scan in range(6)}
    return Prompter(loaded, _Codec(), windows, P, batch_size), loaded, windows


TEXT = 128  # reference layouts pad their text to one length, so one compiled forward serves every prompt


def _full_logprobs(loaded, windows, segments, answer: list[int]) -> np.ndarray:
    """The reference: one forward of prompt + answer laid out whole, log p of each answer token."""
    codec = _Codec()
    scans = [int(p) for k, p in segments if k == "fmri"]
    tokens = [("text", codec.encode(p)) if k == "text" else ("fmri", scans.index(int(p))) for k, p in segments]
    language = loaded.cfg.language
    spec = SequenceSpec(P, 1 if language.fmri_time == "window" else N, blocks=len(scans), text_len=TEXT,
                        pool=language.fmri_pool)
    masks = np.stack([windows[s]["parcel_mask"] for s in scans])
    row = layout(tokens, answer, masks, spec)
    batch = stack([row])
    batch.update({k: np.stack([windows[s][k] for s in scans])[None] for k in windows[scans[0]]})
    hidden = _forward(loaded.model, batch)[0]
    logits = np.asarray(loaded.model.lm.logits(hidden[row["loss_pos"][:len(answer)]]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    return logp[np.arange(len(answer)), answer]


# block: each scan's keys and values are computed once on their own and moved into every prompt (on 8 devices
# both paths shard rows the same way, through local_rows / gather_rows: one of them is run there)
@pytest.mark.parametrize("devices, scan_attention, pool, time", [
    (1, "causal", 0, "patch"), (1, "block", 0, "patch"), (1, "block", 2, "patch"), (1, "block", 0, "window"),
    pytest.param(8, "block", 0, "patch", marks=pytest.mark.slow)])
def test_prompter_label_logprobs_equal_full_recomputation_with_and_without_shots(devices, scan_attention, pool, time):
    """pool: two pooled tokens per time patch in place of the three parcels (language.fmri_pool); time: one token
    per parcel for the whole window (language.fmri_time)."""
    prompter, loaded, windows = _prompter(8 if devices == 8 else 3, devices, scan_attention, pool, time)
    queries = [("Sex?", 3), ("What is the sex?", 4), ("Sex of this one?", 5), ("Sex?", 1)]
    labels = ["female", "male"]
    codec = _Codec()
    for shots in ([], [(0, "Sex?", "male"), (2, "The sex?", "female")]):
        got = prompter.label_token_logprobs([query_segments(q, s) for q, s in queries], labels, shots)
        assert len(got) == len(queries)
        for (question, scan), per in zip(queries, got):
            for label, logp in zip(labels, per):
                answer = codec.encode(" " + label) + [codec.eos_id]
                ref = _full_logprobs(loaded, windows, prompt_segments(question, scan, shots), answer)
                np.testing.assert_allclose(logp, ref, atol=1e-5)
    # A continuation of its own per prompt, of different lengths (descriptions scored against their scans).
    texts = [codec.encode(" low modularity" * (i + 1)) + [codec.eos_id] for i in range(len(queries))]
    got = prompter.continuation_logprobs([query_segments(q, s) for q, s in queries], [[t] for t in texts])
    for (question, scan), (logp,), text in zip(queries, got, texts):
        np.testing.assert_allclose(logp, _full_logprobs(loaded, windows, prompt_segments(question, scan), text),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="one list of continuations per prompt"):
        prompter.continuation_logprobs([query_segments("Sex?", 1)], [[[1]], [[2]]])


@pytest.mark.slow
@pytest.mark.parametrize("scan_attention", ["causal", "block"])
def test_prompter_generation_equals_greedy_full_recomputation(scan_attention):
    prompter, loaded, windows = _prompter(2, 1, scan_attention)
    queries = [("Age?", 3), ("How old?", 4), ("Age of the participant?", 5)]
    grammar = NumberGrammar([chr(i) if i else "" for i in range(LM.vocab_size)], 0)
    prompts = [query_segments(q, s) for q, s in queries]
    codec = _Codec()
    for shots in ([], [(1, "Age?", "31")]):  # without shots the scans' cached part is reused by the second call
        free = prompter.generate(prompts, max_new=4, shots=shots)
        numbers = prompter.generate(prompts, max_new=4, shots=shots, grammar=grammar)
        for (question, scan), text, number in zip(queries, free, numbers):
            for answer, rule in ((text, None), (number, grammar)):
                tokens: list[int] = []
                for _ in range(4):  # greedy by hand: recompute the whole prompt + tokens so far at every step
                    logits = _next_logits(loaded, windows, prompt_segments(question, scan, shots), tokens)
                    if rule is not None:
                        logits = np.where(rule.allowed(codec.decode(tokens)), logits, -np.inf)
                    token = int(np.argmax(logits))
                    if token == 0 or chr(token) == "\n":
                        break
                    tokens.append(token)
                assert answer == codec.decode(tokens).strip()
    assert any(numbers) and all(rule_ok for rule_ok in (n.strip("+- ").replace(".", "", 1).isdigit()
                                                         for n in numbers if n))


def _next_logits(loaded, windows, segments, tokens: list[int]) -> np.ndarray:
    codec = _Codec()
    scans = [int(p) for k, p in segments if k == "fmri"]
    parts = [("text", codec.encode(p)) if k == "text" else ("fmri", scans.index(int(p))) for k, p in segments]
    parts.append(("text", tokens))
    spec = SequenceSpec(P, N, blocks=len(scans), text_len=TEXT)
    row = layout([p for p in parts if p[0] == "fmri" or len(p[1])], [], np.stack(
        [windows[s]["parcel_mask"] for s in scans]), spec)
    batch = stack([row])
    batch.update({k: np.stack([windows[s][k] for s in scans])[None] for k in windows[scans[0]]})
    last = int(np.flatnonzero(row["valid"]).max())
    return np.asarray(loaded.model.lm.logits(_forward(loaded.model, batch)[0, last]))
