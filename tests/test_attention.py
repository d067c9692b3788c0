"""The attention function: xla against a numpy reference (grouped heads, arbitrary masks), chunked against xla."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax.nn.attention import attention, attention_weights, resolve_impl, splash_attention


def _inputs(batch=2, q_len=13, k_len=13, heads=3, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, dim)), jnp.float32)
               for n in (q_len, k_len, k_len))
    key_mask = jnp.asarray(rng.uniform(size=(batch, k_len)) > 0.3).at[:, 0].set(True)
    return q, k, v, key_mask


def _numpy_attention(q, k, v, key_mask):
    q, k, v, key_mask = (np.asarray(x, np.float64) for x in (q, k, v, key_mask))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(key_mask[:, None, None, :] > 0, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def test_xla_matches_numpy_with_key_mask():
    q, k, v, key_mask = _inputs()
    out = attention(q, k, v, key_mask=key_mask, impl="xla")
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, key_mask), atol=1e-5)


def test_masked_keys_have_no_influence():
    q, k, v, key_mask = _inputs()
    noisy_v = jnp.where(key_mask[:, :, None, None], v, 1e3)
    a = attention(q, k, v, key_mask=key_mask, impl="chunked", chunk=4)
    b = attention(q, k, noisy_v, key_mask=key_mask, impl="chunked", chunk=4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("q_len,chunk", [(13, 4), (13, 13), (7, 16), (1, 3), (17, 5)])
@pytest.mark.parametrize("masked", [True, False])
def test_chunked_equals_xla_values(q_len, chunk, masked):
    q, k, v, key_mask = _inputs(q_len=q_len, k_len=q_len)
    key_mask = key_mask if masked else None
    ref = attention(q, k, v, key_mask=key_mask, impl="xla")
    out = attention(q, k, v, key_mask=key_mask, impl="chunked", chunk=chunk)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_chunked_equals_xla_gradients():
    q, k, v, key_mask = _inputs(q_len=11, k_len=11)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def loss(impl):
        return lambda q, k, v: jnp.sum(weights * attention(q, k, v, key_mask=key_mask, impl=impl, chunk=4))

    ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    out = jax.jit(jax.grad(loss("chunked"), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_chunked_never_materialises_full_scores():
    q, k, v, _ = _inputs(batch=1, q_len=64, k_len=64, heads=1)
    text = jax.jit(lambda q, k, v: attention(q, k, v, impl="chunked", chunk=16)).lower(q, k, v).as_text()
    assert "1x1x16x64" in text and "1x1x64x64" not in text


def test_bf16_softmax_close_to_fp32():
    q, k, v, key_mask = _inputs()
    ref = attention(q, k, v, key_mask=key_mask, impl="xla")
    out = attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), key_mask=key_mask, impl="xla")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=5e-2)


@pytest.mark.parametrize("impl", ["splash", "cudnn"])  # a TPU / GPU kernel on this CPU
def test_platform_kernels_fall_back_elsewhere(impl):
    q, k, v, key_mask = _inputs()
    with pytest.warns(UserWarning, match=impl):
        out = attention(q, k, v, key_mask=key_mask, impl=impl, chunk=4)
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, key_mask), atol=1e-5)


def test_auto_on_cpu_and_bad_input():
    assert resolve_impl("auto", 100, jnp.float32, chunk=512) == "xla"
    assert resolve_impl("auto", 5000, jnp.float32, chunk=512) == "chunked"
    q, k, v, key_mask = _inputs()
    with pytest.raises(ValueError, match="unknown attention"):
        attention(q, k, v, impl="flash3")
    with pytest.raises(ValueError, match="key_mask"):
        attention(q, k, v, key_mask=key_mask[:, :5])


def test_implementation_rules_per_platform():
    assert resolve_impl("auto", 4241, jnp.bfloat16, platform="gpu") == "cudnn"
    assert resolve_impl("auto", 4241, jnp.float32, platform="gpu") == "chunked"  # cuDNN wants half precision
    assert resolve_impl("auto", 4241, jnp.float32, platform="tpu") == "splash"
    assert resolve_impl("auto", 600, jnp.bfloat16, platform="tpu") == "xla"
    assert resolve_impl("splash", 4241, jnp.bfloat16, platform="gpu") == "chunked"
    assert resolve_impl("cudnn", 4241, jnp.bfloat16, platform="cpu") == "chunked"
    assert resolve_impl("xla", 4241, jnp.bfloat16, platform="tpu") == "xla"


def test_splash_kernel_matches_numpy_through_the_pallas_interpreter():
    """The TPU kernel's own code (blocks of 128, segment ids for padded keys) run by the interpreter, on a
    length and head dim that need padding (100 tokens of 64 channels -> 128 x 128)."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 100, 2, 64)), jnp.float32) for _ in range(3))
    key_mask = jnp.asarray(np.arange(100)[None, :] < np.array([[70], [100]]))  # sample 0 has padded keys
    out = splash_attention(q, k, v, key_mask, interpret=True)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, key_mask), atol=2e-5)


def _numpy_masked_gqa(q, k, v, allowed):
    """Per query row and head, in float64: keys repeated to every query head (HF repeat_kv), softmax over the
    keys the row may read, uniform over all keys when it may read none."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    allowed = np.broadcast_to(np.asarray(allowed, bool), (q.shape[0], q.shape[1], k.shape[1]))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    out = np.zeros(q.shape)
    for b, i, h in np.ndindex(q.shape[0], q.shape[1], q.shape[2]):
        if not allowed[b, i].any():
            out[b, i, h] = v[b, :, h].mean(0)
            continue
        scores = k[b, allowed[b, i], h] @ q[b, i, h] / np.sqrt(q.shape[-1])
        weights = np.exp(scores - scores.max())
        out[b, i, h] = weights / weights.sum() @ v[b, allowed[b, i], h]
    return out


def _gqa_inputs(q_len=9, k_len=11, heads=6, kv_heads=2, dim=4, seed=4):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(2, q_len, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, k_len, kv_heads, dim)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.uniform(size=(2, q_len, k_len)) > 0.5).at[0, 3].set(False)  # a row that reads nothing
    key_mask = jnp.asarray(rng.uniform(size=(2, k_len)) > 0.2)
    return q, k, v, mask, key_mask


@pytest.mark.parametrize("impl,chunk", [("xla", 512), ("chunked", 4), ("chunked", 9)])
def test_grouped_query_heads_under_an_arbitrary_mask_match_numpy(impl, chunk):
    q, k, v, mask, key_mask = _gqa_inputs()
    out = attention(q, k, v, mask=mask, impl=impl, chunk=chunk)
    np.testing.assert_allclose(np.asarray(out), _numpy_masked_gqa(q, k, v, mask), atol=1e-5)
    both = attention(q, k, v, key_mask=key_mask, mask=mask, impl=impl, chunk=chunk)
    np.testing.assert_allclose(np.asarray(both), _numpy_masked_gqa(q, k, v, mask & key_mask[:, None]), atol=1e-5)


def test_broadcast_masks_and_weights():
    q, k, v, _, key_mask = _gqa_inputs(q_len=7, k_len=7)
    causal = jnp.tril(jnp.ones((7, 7), bool))
    for impl in ("xla", "chunked"):
        out = attention(q, k, v, key_mask=key_mask, mask=causal, impl=impl, chunk=3)
        np.testing.assert_allclose(np.asarray(out), _numpy_masked_gqa(q, k, v, causal & key_mask[:, None]),
                                   atol=1e-5)
    weights = attention_weights(q, k, mask=causal)
    assert weights.shape == (2, 6, 7, 7)
    np.testing.assert_allclose(np.asarray(jnp.einsum("bhqk,bkhd->bqhd", weights, jnp.repeat(v, 3, axis=2))),
                               _numpy_masked_gqa(q, k, v, causal), atol=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        attention(q, k, v, mask=causal[:5])
    with pytest.raises(ValueError, match="multiple of KV"):
        attention(q[:, :, :5], k, v)


@pytest.mark.parametrize("impl", ["splash", "cudnn"])
def test_platform_kernels_with_a_mask_fall_back_elsewhere(impl):
    q, k, v, mask, _ = _gqa_inputs()
    with pytest.warns(UserWarning, match=impl):
        out = attention(q, k, v, mask=mask, impl=impl, chunk=4)
    np.testing.assert_allclose(np.asarray(out), _numpy_masked_gqa(q, k, v, mask), atol=1e-5)
    assert resolve_impl("splash", 4096, jnp.bfloat16, platform="tpu", masked=True) == "chunked"
    assert resolve_impl("auto", 4096, jnp.bfloat16, platform="tpu", masked=True) == "chunked"
    assert resolve_impl("cudnn", 4096, jnp.bfloat16, platform="gpu", masked=True) == "cudnn"


def test_cudnn_gets_a_full_length_mask(monkeypatch):
    """cuDNN refuses a bias that broadcasts over queries; checked here by catching the call (no GPU needed)."""
    from brainjax.nn import attention as attention_lib

    q, k, v, mask, key_mask = _gqa_inputs()
    seen, real = [], jax.nn.dot_product_attention

    def fake(q, k, v, mask=None, implementation=None):
        seen.append(mask.shape)
        return real(q, k, v, mask=mask, implementation="xla")

    monkeypatch.setattr(attention_lib, "resolve_impl", lambda *a, **kw: "cudnn")
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    only_keys = attention(q, k, v, key_mask=key_mask, impl="cudnn")
    both = attention(q, k, v, key_mask=key_mask, mask=mask, impl="cudnn")
    assert seen == [(2, 1, 9, 11), (2, 1, 9, 11)]
    np.testing.assert_allclose(np.asarray(only_keys), _numpy_masked_gqa(q, k, v, key_mask[:, None]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(both), _numpy_masked_gqa(q, k, v, mask & key_mask[:, None]), atol=1e-5)
