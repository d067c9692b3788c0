"""DecoderLM (Qwen3, GPT-2) loaded from tiny local HF checkpoints: logits parity with PyTorch transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from brainjax.models.lm import LMConfig
from brainjax.models.lm_loading import from_pretrained

torch = pytest.importorskip("torch")  # the logits reference (not installable on every Python)
transformers = pytest.importorskip("transformers")

# Four 7-word sentences (an unpadded batch) and two shorter ones (left padding in a batch of the same shape).
SENTENCES = ["the brain is a network of regions", "regions talk to each other over time",
             "a model reads the slow signal today", "the signal is a sum of parts",
             "a model reads the signal", "the signal is slow"]
VOCAB = 300


def _tokenizer(directory: Path) -> None:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(directory / "tokenizer.json"))


def _randomise(model: torch.nn.Module) -> None:
    # HF's 0.02-std init gives near-zero logits, which would make a 1e-4 comparison almost vacuous.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if ("norm" in name or "ln_" in name) and name.endswith("weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))


def _checkpoint(directory: Path, family: str, tied: bool = True, **save) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "qwen3":
        cfg = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                       max_position_embeddings=64, tie_word_embeddings=tied,
                                       attention_bias=not tied)  # the untied variant also covers q/k/v/o biases
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        model = transformers.GPT2LMHeadModel(cfg)
    _randomise(model)
    model.eval()
    model.save_pretrained(directory, safe_serialization=True, **save)
    _tokenizer(directory)
    return model


@pytest.fixture(scope="module", params=[("qwen3", True), ("qwen3", False), ("gpt2", True)],
                ids=["qwen3-tied", "qwen3-untied-biased", "gpt2"])
def checkpoint(request, tmp_path_factory):
    family, tied = request.param
    directory = tmp_path_factory.mktemp(f"{family}{tied}")
    return directory, _checkpoint(directory, family, tied)


def _batch(tokenizer: Tokenizer, pad: bool) -> tuple[np.ndarray, np.ndarray]:
    if pad:
        tokenizer.enable_padding(direction="left", pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        texts = SENTENCES[:2] + SENTENCES[4:]
    else:
        texts = SENTENCES[:4]
    enc = tokenizer.encode_batch(texts)
    return np.array([e.ids for e in enc]), np.array([e.attention_mask for e in enc])


@nnx.jit
def _logits(model, ids, mask, positions=None):
    # One compiled program per configuration is much cheaper than op-by-op dispatch on tiny models.
    return model(ids, mask, positions)


def _torch_logits(model, ids, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what HF generate passes for left padding
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


@pytest.mark.parametrize("pad", [False, True], ids=["unpadded", "left-padded"])
def test_logits_match_transformers(checkpoint, pad):
    directory, reference = checkpoint
    model, tokenizer = from_pretrained(directory)
    ids, mask = _batch(tokenizer, pad)
    assert (mask == 0).any() == pad
    ours = np.asarray(_logits(model, ids, mask if pad else None))
    theirs = _torch_logits(reference, ids, mask)
    assert ours.shape == (len(ids), ids.shape[1], VOCAB)
    real = mask.astype(bool)
    assert theirs[real].std() > 0.5  # non-trivial logits
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_hf_default_positions_match_without_padding(checkpoint):
    directory, reference = checkpoint
    model, tokenizer = from_pretrained(directory)
    ids, _ = _batch(tokenizer, pad=False)
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(_logits(model, ids, None)), theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_sharded_checkpoint_loads_identically(tmp_path, family):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _checkpoint(single, family, tied=False)
    _checkpoint(sharded, family, tied=False, max_shard_size="20KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (sharded / "model.safetensors").exists()
    ids = np.arange(28).reshape(4, 7)
    a, _ = from_pretrained(single)
    b, _ = from_pretrained(sharded)
    np.testing.assert_array_equal(np.asarray(_logits(a, ids, None)), np.asarray(_logits(b, ids, None)))


def test_bfloat16_close_to_float32_and_mesh_placement(checkpoint):
    directory, _ = checkpoint
    mesh = jax.make_mesh((1, 1), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    fp32, tokenizer = from_pretrained(directory, mesh=mesh)
    bf16, _ = from_pretrained(directory, dtype="bfloat16")
    assert isinstance(fp32.embed.embedding.get_value().sharding, jax.sharding.NamedSharding)
    assert bf16.embed.embedding.get_value().dtype == np.float32  # params stay float32
    ids, mask = _batch(tokenizer, pad=True)
    full, half = np.asarray(_logits(fp32, ids, mask)), np.asarray(_logits(bf16, ids, mask))
    assert half.dtype == np.float32
    real = mask.astype(bool)
    scale = np.abs(full[real]).max()
    assert np.abs(half[real] - full[real]).max() < 0.1 * scale
    assert np.abs(half[real] - full[real]).max() > 0  # really computed in lower precision


def _copy(checkpoint, tmp_path) -> Path:
    directory = tmp_path / "copy"
    shutil.copytree(checkpoint[0], directory)
    return directory


def test_missing_files_raise(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        from_pretrained(tmp_path / "nowhere")
    directory = _copy(checkpoint, tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(directory)


def test_unknown_model_type_raises(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "llama"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="llama"):
        from_pretrained(directory)
    with pytest.raises(ValueError, match="mamba"):
        LMConfig.from_hf({"model_type": "mamba"})


def test_wrong_shape_and_missing_tensor_raise(checkpoint, tmp_path):
    directory = _copy(checkpoint, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    name = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight") or n.endswith("h.1.mlp.c_fc.weight"))
    tensors[name] = np.zeros((3, 5), np.float32)
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(ValueError, match=f"mis-shaped=.*{name.removeprefix('transformer.')}"):
        from_pretrained(directory)
    del tensors[name]
    tensors["extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing=\[.*mlp.*\] unexpected=\['extra.weight'\]"):
        from_pretrained(directory)


def test_explicit_positions_match_hf_default_arange(checkpoint):
    directory, reference = checkpoint
    model, tokenizer = from_pretrained(directory)
    ids, mask = _batch(tokenizer, pad=True)
    arange = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    with torch.no_grad():  # HF forward without position_ids numbers every slot, padding included
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(_logits(model, ids, mask, arange))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise(checkpoint):
    model, _ = from_pretrained(checkpoint[0])
    ids = np.zeros((2, 5), np.int32)
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, np.ones((2, 4)))
    with pytest.raises(ValueError, match="positions"):
        model(ids, None, np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="compute dtype"):
        from_pretrained(checkpoint[0], dtype="float16")


def test_config_reads_old_and_new_rope_fields():
    base = {"model_type": "qwen3", "vocab_size": 10, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 32}
    assert LMConfig.from_hf({**base, "rope_theta": 5e5}).rope_theta == 5e5
    assert LMConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}).rope_theta == 7.0
    assert LMConfig.from_hf(base).head_dim == 4  # no explicit head_dim: hidden / heads
    with pytest.raises(ValueError, match="RoPE scaling"):
        LMConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="kv_heads"):
        LMConfig.from_hf({**base, "num_key_value_heads": 3})
