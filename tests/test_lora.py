"""LoRA adapters on tiny random Qwen3 / GPT-2 DecoderLMs: forward maths vs numpy, merge, gradients, I/O, generation."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from brainjax.config import OptimConfig
from brainjax.models.generate import generate
from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.nn.lora import (
    LoRALinear,
    LoRAParam,
    add_lora,
    load_adapters,
    lora_frozen_mask,
    merge_lora,
    read_adapter_config,
    save_adapters,
    unmerge_lora,
)
from brainjax.train.optim import make_optimizer

ALL = ("q", "k", "v", "o", "gate", "up", "down")
GPT2_TARGETS = ("q", "k", "v", "o", "up", "down")
IDS = np.array([[5, 9, 17, 3, 44, 12, 8, 30], [61, 2, 7, 7, 19, 40, 1, 23]])
MASK = np.ones_like(IDS)


@nnx.jit
def _logits(model: DecoderLM, ids: jax.Array, mask: jax.Array) -> jax.Array:
    # One compiled program per model structure (shared by tests using the same shapes): op-by-op eager dispatch
    # is far slower to warm up on CPU.
    return model(ids, mask)


def _model(family: str = "qwen3", seed: int = 0) -> DecoderLM:
    if family == "qwen3":
        cfg = LMConfig(family="qwen3", vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                       intermediate=64, max_positions=64, norm_eps=1e-6)
    else:
        cfg = LMConfig(family="gpt2", vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=4, head_dim=8,
                       intermediate=64, max_positions=64, norm_eps=1e-5, attention_bias=True, activation="gelu_new")
    return DecoderLM(cfg, rngs=nnx.Rngs(seed))


def _randomize(model: nnx.Module, seed: int = 1) -> dict[str, LoRALinear]:
    """Give every adapter random a and b (b is zero after add_lora, which would hide the adapter path)."""
    rng = np.random.default_rng(seed)
    layers = {".".join(map(str, p)): n for p, n in nnx.iter_graph(model) if isinstance(n, LoRALinear)}
    for layer in layers.values():
        layer.lora_a[...] = jnp.asarray(rng.normal(0, 0.3, layer.lora_a.shape), jnp.float32)
        layer.lora_b[...] = jnp.asarray(rng.normal(0, 0.3, layer.lora_b.shape), jnp.float32)
    return layers


def _get(model: nnx.Module, path: str) -> nnx.Module:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


@nnx.jit(static_argnums=2)
def _layer_outputs(model: nnx.Module, x: jax.Array, paths: tuple[str, ...]) -> list[tuple[jax.Array, jax.Array]]:
    """(wrapper(x), base Linear(x)) of each wrapped layer, x cut to the layer's input width; one compiled program."""
    outputs = []
    for path in paths:
        layer = _get(model, path)
        part = x[:, :layer.base.in_features]
        outputs.append((layer(part), layer.base(part)))
    return outputs


def test_forward_matches_numpy_merged_kernels():
    family = "qwen3"  # GPT-2 (biases, LayerNorm) is covered by the merge and generation tests
    model = _model(family)
    before = np.asarray(_logits(model, IDS, MASK))
    wrapped = add_lora(model, ALL, rank=4, alpha=8.0, rngs=nnx.Rngs(3))
    assert len(wrapped) == 2 * len(ALL)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64)), jnp.float32)
    pairs = _layer_outputs(model, x, tuple(wrapped))
    for path, (adapted, base) in zip(wrapped, pairs, strict=True):
        # b = 0: the adapter adds exact zeros, so each wrapped layer is bit-identical to its base Linear.
        assert np.array_equal(np.asarray(adapted), np.asarray(base)), path
    # Whole-model logits come from a different compiled program, whose fusions may differ in the last ulp.
    np.testing.assert_allclose(np.asarray(_logits(model, IDS, MASK)), before, rtol=0, atol=1e-6)
    layers = _randomize(model)
    reference = _model(family)  # same seed: the same base weights, no adapters
    for path, layer in layers.items():
        kernel = np.asarray(layer.base.kernel[...], np.float64)
        a, b = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
        _get(reference, path).kernel[...] = jnp.asarray(kernel + (8.0 / 4) * a @ b, jnp.float32)
    adapted = np.asarray(_logits(model, IDS, MASK))
    assert not np.allclose(adapted, before, atol=1e-3)
    np.testing.assert_allclose(adapted, np.asarray(_logits(reference, IDS, MASK)), atol=2e-5, rtol=1e-5)


def test_merge_and_unmerge():
    model = _model("gpt2")
    add_lora(model, GPT2_TARGETS, rank=2, alpha=4.0, rngs=nnx.Rngs(0))  # as in the generation test: shared jit
    layers = _randomize(model, seed=5)
    originals = {p: np.asarray(layer.base.kernel[...]) for p, layer in layers.items()}
    unmerged = np.asarray(_logits(model, IDS, MASK))
    with pytest.raises(ValueError, match="not merged"):
        unmerge_lora(model)
    merge_lora(model)
    assert all(layer.merged for layer in layers.values())
    for path, layer in layers.items():
        delta = 2.0 * np.asarray(layer.lora_a[...], np.float64) @ np.asarray(layer.lora_b[...], np.float64)
        np.testing.assert_allclose(np.asarray(layer.base.kernel[...]), originals[path] + delta, atol=1e-6)
    np.testing.assert_allclose(np.asarray(_logits(model, IDS, MASK)), unmerged, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for path, layer in layers.items():
        np.testing.assert_allclose(np.asarray(layer.base.kernel[...]), originals[path], atol=1e-6)
    np.testing.assert_allclose(np.asarray(_logits(model, IDS, MASK)), unmerged, atol=1e-5)


def _next_token_loss(model: DecoderLM, ids) -> jax.Array:
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def test_gradients_mask_and_optimizer_train_only_adapters():
    model = _model("qwen3")
    add_lora(model, ("q", "v", "gate"), rank=4, alpha=8.0, rngs=nnx.Rngs(0))
    _randomize(model, seed=2)  # b != 0, else lora_a's gradient is zero as well
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mask = lora_frozen_mask(params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    lora_paths = {p for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, LoRAParam))}
    assert len(lora_paths) == 2 * 3 * 2
    for path, frozen in jax.tree_util.tree_leaves_with_path(mask):
        assert bool(frozen) == (path not in lora_paths), path
    pure = lora_frozen_mask(nnx.to_pure_dict(params))  # plain arrays: decided by the leaf name
    assert sum(not f for f in jax.tree.leaves(pure)) == len(lora_paths)
    assert sum(jax.tree.leaves(pure)) == len(jax.tree.leaves(params)) - len(lora_paths)

    cfg = OptimConfig(base_lr=3e-2, scale_lr=False, weight_decay=0.0, warmup_frac=0.0, clip_norm=1.0)
    tx, _ = make_optimizer(cfg, total_steps=20, batch_size=4, frozen=lora_frozen_mask)
    opt = tx.init(params)
    # Toy task: the next token is the current one plus one.
    ids = jnp.asarray(np.stack([np.arange(s, s + 12) % 64 for s in (3, 20, 41, 50)]))

    @jax.jit
    def step(params, opt):
        loss, grads = jax.value_and_grad(lambda p: _next_token_loss(nnx.merge(graphdef, p, rest), ids))(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, grads

    start, losses = params, []
    for i in range(9):
        params, opt, loss, grads = step(params, opt)
        losses.append(float(loss))
        if i == 0:
            first_grads = grads
    assert losses[-1] < losses[0] - 0.05  # the last loss is measured after 8 updates

    leaves = {".".join(str(getattr(k, "key", k)) for k in path): v for path, v in
              jax.tree_util.tree_leaves_with_path(first_grads, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    wrapped = [p for p in leaves if p.endswith(".base.kernel")]
    assert len(wrapped) == 2 * 3 and all(p.split(".")[-3] in ("q", "v", "gate") for p in wrapped)
    for path in wrapped:
        # The wrapped base weights sit behind stop_gradient: exactly zero, not merely small.
        assert np.all(np.asarray(leaves[path][...]) == 0), path
        layer = path[: -len(".base.kernel")]
        for name in ("lora_a", "lora_b"):
            assert isinstance(leaves[f"{layer}.{name}"], LoRAParam)
            assert np.any(np.asarray(leaves[f"{layer}.{name}"][...]) != 0), (layer, name)
    # Unwrapped parameters (norms, embeddings, k/o/up/down) do get gradients: only the optimizer mask keeps
    # them fixed, which the parameter comparison below checks.
    assert np.any(np.asarray(leaves["blocks.0.attn.k.kernel"][...]) != 0)
    assert np.any(np.asarray(leaves["embed.embedding"][...]) != 0)

    old = jax.tree.leaves(start, is_leaf=lambda x: isinstance(x, nnx.Variable))
    new = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for a, b in zip(old, new, strict=True):
        same = np.array_equal(np.asarray(a[...]), np.asarray(b[...]))
        assert same != isinstance(a, LoRAParam), type(a).__name__
    # The frozen leaves keep no Adam moments: mu and nu exist for the adapters only.
    moments = [x for x in jax.tree.leaves(opt) if hasattr(x, "shape") and x.ndim >= 1]
    lora_size = sum(v.size for v in jax.tree.leaves(nnx.state(model, LoRAParam)))
    assert sum(x.size for x in moments) == 2 * lora_size


def test_save_load_round_trip_and_errors(tmp_path):
    model = _model("qwen3")
    add_lora(model, ("v", "q", "down"), rank=3, alpha=6.0, dropout=0.1, rngs=nnx.Rngs(0))
    _randomize(model, seed=7)
    save_adapters(model, tmp_path, base_model="tiny-qwen3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = read_adapter_config(tmp_path)
    assert cfg == json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["rank"], cfg["alpha"], cfg["dropout"], cfg["base_model"]) == (3, 6.0, 0.1, "tiny-qwen3")
    assert sorted(cfg["targets"]) == ["down", "q", "v"]
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors["blocks.1.mlp.down.lora_a"].shape == (64, 3) and len(tensors) == 2 * 3 * 2

    fresh = _model("qwen3")
    add_lora(fresh, cfg["targets"], rank=cfg["rank"], alpha=cfg["alpha"], dropout=cfg["dropout"],
             rngs=nnx.Rngs(9))
    load_adapters(fresh, tmp_path)
    saved = nnx.state(model, LoRAParam)
    loaded = nnx.state(fresh, LoRAParam)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(loaded), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    def corrupt(edit) -> None:
        bad = dict(tensors)
        edit(bad)
        save_file(bad, str(tmp_path / "adapter_model.safetensors"))

    corrupt(lambda t: t.__setitem__("blocks.0.attn.q.lora_a", np.zeros((32, 5), np.float32)))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*shape mismatch.*blocks\.0\.attn\.q\.lora_a"):
        load_adapters(fresh, tmp_path)
    corrupt(lambda t: t.__setitem__("blocks.0.attn.k.lora_a", np.zeros((32, 3), np.float32)))
    with pytest.raises(ValueError, match=r"unexpected tensors \['blocks\.0\.attn\.k\.lora_a'\]"):
        load_adapters(fresh, tmp_path)
    corrupt(lambda t: t.pop("blocks.1.attn.v.lora_b"))
    with pytest.raises(ValueError, match=r"missing tensors \['blocks\.1\.attn\.v\.lora_b'\]"):
        load_adapters(fresh, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapters(fresh, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        read_adapter_config(tmp_path / "nowhere")


def test_generation_with_adapters_matches_argmax_loop():
    model = _model("gpt2")
    add_lora(model, GPT2_TARGETS, rank=2, alpha=4.0, rngs=nnx.Rngs(0))
    _randomize(model, seed=11)
    ids = np.array([[7, 12, 3, 40, 9], [0, 0, 5, 22, 17]])
    mask = (ids != 0).astype(np.int32)
    out = np.asarray(generate(model, ids, mask, max_new_tokens=3))
    # The greedy argmax loop, done in one causal forward: the logits at slot t see only tokens <= t, so feeding
    # the generated tokens back gives each step's logits exactly (teacher forcing on the model's own choices).
    full = np.concatenate([ids, out], axis=1)
    logits = np.asarray(_logits(model, full, np.concatenate([mask, np.ones_like(out)], axis=1)))
    np.testing.assert_array_equal(logits[:, ids.shape[1] - 1:-1].argmax(-1), out)


def test_dropout_follows_train_eval_mode():
    base = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    layer = LoRALinear(base, rank=2, alpha=3.0, dropout=0.5, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(3)
    a, b, x = rng.normal(size=(6, 2)), rng.normal(size=(2, 5)), rng.normal(size=(4, 6))
    layer.lora_a[...], layer.lora_b[...] = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    expected = x @ np.asarray(base.kernel[...]) + np.asarray(base.bias[...]) + 1.5 * x @ a @ b
    forward = nnx.jit(lambda layer, x: layer(x))
    trained = np.asarray(forward(layer, jnp.asarray(x, jnp.float32)))
    assert not np.allclose(trained, expected, atol=1e-3)  # train mode: part of the adapter input is dropped
    layer.eval()
    np.testing.assert_allclose(np.asarray(forward(layer, jnp.asarray(x, jnp.float32))), expected, atol=1e-5)


def test_add_lora_errors():
    model = _model("gpt2")
    with pytest.raises(ValueError, match=r"\['gate', 'nope'\] match no nnx.Linear"):
        add_lora(model, ("q", "gate", "nope"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="targets is empty"):
        add_lora(model, (), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank >= 1"):
        add_lora(model, ("q",), rank=0, rngs=nnx.Rngs(0))
    assert not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(model))  # failed calls changed nothing
    assert add_lora(model, "q", rngs=nnx.Rngs(0)) == ["blocks.0.attn.q", "blocks.1.attn.q"]
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, ("v",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(_model("gpt2"))
