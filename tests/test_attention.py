"""The attention function: xla against a numpy reference, chunked against xla (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax.nn.attention import attention, resolve_impl, splash_attention


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
