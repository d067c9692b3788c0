"""KV-cache generation, sampling filters and label scoring on tiny Qwen3 / GPT-2 checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_lm import _checkpoint

from brainjax.models.generate import (
    constrained_generate,
    decode,
    filter_logits,
    generate,
    init_cache,
    sequence_logprobs,
)
from brainjax.models.lm_loading import from_pretrained

torch = pytest.importorskip("torch")  # the logits reference (not installable on every Python)

STEPS = 6
# Three left-padded prompts of lengths 5, 3 and 1 (token ids stay clear of pad id 0).
IDS = np.array([[7, 12, 3, 40, 9], [0, 0, 5, 22, 17], [0, 0, 0, 0, 31]])
MASK = (IDS != 0).astype(np.int32)


@pytest.fixture(scope="module", params=["qwen3", "gpt2"])
def lm(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = _checkpoint(directory, request.param, tied=request.param == "gpt2")
    return from_pretrained(directory)[0], reference


@nnx.jit
def _logits(model, ids, mask):
    return model(ids, mask)


def _forward(model, ids, mask):
    """Full forward without a cache. Inputs (up to 3 rows, up to L + STEPS columns) are right-padded to one
    fixed [3, L + STEPS] shape, so a single compiled program serves the whole file: causality keeps right
    padding out of real positions, and an all-padding row is harmless. Returns logits [rows, cols, V]."""
    rows, cols = ids.shape
    buf, buf_mask = np.zeros((3, IDS.shape[1] + STEPS), np.int32), np.zeros((3, IDS.shape[1] + STEPS), np.int32)
    buf[:rows, :cols], buf_mask[:rows, :cols] = ids, mask
    return np.asarray(_logits(model, buf, buf_mask))[:rows, :cols]


@nnx.jit
def _prefill_and_step(model, ids, mask, nxt):
    cache = init_cache(model, ids.shape[0], ids.shape[1] + 1)
    prefill, cache = decode(model, ids, mask, cache)
    step, cache = decode(model, nxt, jnp.ones(nxt.shape, bool), cache)
    return prefill, step, cache


def _greedy_by_recompute(model, ids, mask, steps):
    """Greedy decoding without a cache: the full sequence is re-run each step on a right-padded buffer."""
    batch, length = ids.shape
    buf = np.concatenate([ids, np.zeros((batch, steps), ids.dtype)], axis=1)
    buf_mask = np.concatenate([mask, np.zeros((batch, steps), mask.dtype)], axis=1)
    for i in range(steps):
        logits = _forward(model, buf, buf_mask)
        buf[:, length + i] = logits[:, length + i - 1].argmax(-1)
        buf_mask[:, length + i] = 1
    return buf[:, length:]


def test_cached_greedy_equals_recomputation(lm):
    model, _ = lm
    ours = np.asarray(generate(model, IDS, MASK, max_new_tokens=STEPS))
    assert ours.shape == (3, STEPS) and ours.dtype == np.int32
    np.testing.assert_array_equal(ours, _greedy_by_recompute(model, IDS, MASK, STEPS))
    assert len(np.unique(ours)) > 2  # not a degenerate constant output


@pytest.mark.parametrize("lm", ["qwen3"], indirect=True)  # RoPE + grouped KV heads: the harder cache layout
def test_cached_logits_match_full_forward(lm):
    model, _ = lm
    nxt = np.array([[4], [8], [15]])
    prefill, step, cache = _prefill_and_step(model, IDS, MASK.astype(bool), nxt)
    full = _forward(model, np.concatenate([IDS, nxt], 1), np.concatenate([MASK, np.ones((3, 1), int)], 1))
    real = MASK.astype(bool)
    np.testing.assert_allclose(np.asarray(prefill)[real], full[:, :-1][real], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(step)[:, 0], full[:, -1], atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(cache.lengths), MASK.sum(1) + 1)
    assert int(cache.index) == IDS.shape[1] + 1


def test_greedy_matches_transformers_generate(lm):
    model, reference = lm
    with torch.no_grad():
        out = reference.generate(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK), do_sample=False,
                                 max_new_tokens=STEPS, min_new_tokens=STEPS, pad_token_id=0, eos_token_id=None)
    theirs = out[:, IDS.shape[1]:].numpy()
    assert theirs.shape == (3, STEPS)
    np.testing.assert_array_equal(np.asarray(generate(model, IDS, MASK, max_new_tokens=STEPS)), theirs)


@pytest.mark.parametrize("lm", ["qwen3"], indirect=True)  # sampling does not depend on the family
def test_sampling_is_seeded_and_top_k_one_is_greedy(lm):
    model, _ = lm
    args = dict(max_new_tokens=STEPS, temperature=1.5)
    a = np.asarray(generate(model, IDS, MASK, rng=jax.random.key(3), **args))
    b = np.asarray(generate(model, IDS, MASK, rng=jax.random.key(3), **args))
    c = np.asarray(generate(model, IDS, MASK, rng=jax.random.key(4), **args))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()  # 18 draws at temperature 1.5 from a 300-token vocabulary
    greedy = np.asarray(generate(model, IDS, MASK, max_new_tokens=STEPS))
    top1 = np.asarray(generate(model, IDS, MASK, rng=jax.random.key(5), top_k=1, **args))
    np.testing.assert_array_equal(top1, greedy)


def test_eos_is_followed_by_padding_only(lm):
    model, _ = lm
    greedy = np.asarray(generate(model, IDS, MASK, max_new_tokens=STEPS))
    eos = int(greedy[0, 1])  # row 0 emits it at step 1; other rows may or may not
    out = np.asarray(generate(model, IDS, MASK, max_new_tokens=STEPS, eos_id=eos, pad_id=299))
    for row, ref in zip(out, greedy):
        hits = np.flatnonzero(ref == eos)
        stop = hits[0] + 1 if len(hits) else STEPS
        np.testing.assert_array_equal(row[:stop], ref[:stop])  # identical up to and including eos
        assert (row[stop:] == 299).all()
    assert (out[0, 2:] == 299).all()


def test_filter_logits_by_hand():
    logits = np.log(np.array([[0.1, 0.4, 0.05, 0.3, 0.15]]))
    kept = lambda out: set(np.flatnonzero(np.isfinite(np.asarray(out)[0])))
    assert kept(filter_logits(logits, top_k=2)) == {1, 3}
    assert kept(filter_logits(logits, top_p=0.65)) == {1, 3}  # 0.4 + 0.3 reaches 0.65
    assert kept(filter_logits(logits, top_p=0.75)) == {1, 3, 4}  # 0.4 + 0.3 falls short of 0.75
    assert kept(filter_logits(logits, top_p=0.01)) == {1}  # always at least the most likely token
    assert kept(filter_logits(logits, top_k=3, top_p=0.8)) == {1, 3}  # renormalised: 0.4/0.85 + 0.3/0.85 >= 0.8
    np.testing.assert_allclose(np.asarray(filter_logits(logits, top_k=2))[0, [1, 3]], logits[0, [1, 3]], rtol=1e-6)
    assert kept(filter_logits(logits)) == set(range(5))


def _prefix_logprobs(model, ids, mask, prefix):
    """log-softmax [V] of the next token after prompt + prefix, by a full forward of that one row."""
    row = np.concatenate([ids, np.asarray(prefix, ids.dtype)])[None]
    full_mask = np.concatenate([mask, np.ones(len(prefix), mask.dtype)])[None]
    return np.asarray(jax.nn.log_softmax(_forward(model, row, full_mask)[0, -1]))


CANDIDATES = [[5, 9, 2], [5, 14], [33]]


def test_sequence_logprobs_match_full_forward(lm):
    model, _ = lm
    ours = sequence_logprobs(model, IDS, MASK, CANDIDATES)
    assert ours.shape == (3, 3)
    for b in range(3):
        for c, cand in enumerate(CANDIDATES):
            total = sum(_prefix_logprobs(model, IDS[b], MASK[b], cand[:j])[t] for j, t in enumerate(cand))
            np.testing.assert_allclose(ours[b, c], total, atol=1e-4, rtol=1e-5)


def test_constrained_generate_follows_trie_greedily(lm):
    model, _ = lm
    # A forced first token, then branches at depths 1 and 2; shapes match CANDIDATES (no new compile).
    allowed = [[5, 9, 2], [5, 9, 7], [5, 14, 2]]
    choice, logprobs = constrained_generate(model, IDS, MASK, allowed)
    np.testing.assert_allclose(logprobs, sequence_logprobs(model, IDS, MASK, allowed), rtol=1e-6)
    for b in range(3):
        prefix: list[int] = []
        while prefix not in allowed:  # exhaustive walk: every allowed continuation scored by a full forward
            options = sorted({s[len(prefix)] for s in allowed if s[:len(prefix)] == prefix})
            scores = _prefix_logprobs(model, IDS[b], MASK[b], prefix)
            prefix.append(max(options, key=lambda t: scores[t]))
        assert allowed[choice[b]] == prefix


def test_bad_inputs_raise(lm):
    model, _ = lm
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate(model, IDS, MASK[:, ::-1], max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask shape"):
        generate(model, IDS, MASK[:, 1:], max_new_tokens=2)
    with pytest.raises(ValueError, match="rng"):
        generate(model, IDS, MASK, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, IDS, MASK, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(np.zeros((1, 4)), top_p=0.0)
    with pytest.raises(ValueError, match="prefix"):
        constrained_generate(model, IDS, MASK, [[5], [5, 9]])
    with pytest.raises(ValueError, match="non-empty"):
        sequence_logprobs(model, IDS, MASK, [[5], []])
    with pytest.raises(ValueError, match="token ids"):
        sequence_logprobs(model, IDS, MASK, [[5000]])
