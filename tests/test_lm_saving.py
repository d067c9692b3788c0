"""save_pretrained: transformers reads what brainjax writes (logits parity), from_pretrained restores it exactly,
and a failed or refused save never leaves a half-written directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from brainjax.models import lm_saving
from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.models.lm_loading import from_pretrained
from brainjax.models.lm_saving import save_pretrained

torch = pytest.importorskip("torch")  # the logits reference (not installable on every Python)
transformers = pytest.importorskip("transformers")

TEXTS = ["the brain is a network of regions", "regions talk to each other over time", "a model reads the signal"]
VOCAB = 64
CONFIGS = {
    "qwen3-tied": LMConfig(family="qwen3", vocab_size=VOCAB, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8,
                           intermediate=48, max_positions=64, norm_eps=1e-6, rope_theta=5000.0),
    "qwen3-untied-biased": LMConfig(family="qwen3", vocab_size=VOCAB, hidden=32, layers=2, heads=4, kv_heads=2,
                                    head_dim=8, intermediate=48, max_positions=64, norm_eps=1e-6,
                                    tie_word_embeddings=False, attention_bias=True),
    "gpt2": LMConfig(family="gpt2", vocab_size=VOCAB, hidden=32, layers=2, heads=4, kv_heads=4, head_dim=8,
                     intermediate=80, max_positions=64, norm_eps=1e-5, attention_bias=True, activation="gelu_new"),
}


@nnx.jit
def _logits(model, ids):
    # One compiled forward: op-by-op eager dispatch of the model takes seconds.
    return model(ids)


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return tok


def _random_model(cfg: LMConfig) -> DecoderLM:
    # Random norms and biases too: with their default ones/zeros a swapped or dropped norm would go unnoticed.
    model = DecoderLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(1)
    leaves = [np.float32(rng.normal(0.0, 0.3, np.shape(x))) + np.float32(0.8 * (np.ndim(x) == 1)) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def _params(model: DecoderLM) -> dict:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    model = _random_model(CONFIGS[request.param])
    directory = tmp_path_factory.mktemp(request.param) / "model"
    save_pretrained(model, _tokenizer(), directory, extra_config={"eos_token_id": 0, "pad_token_id": 0})
    return model, directory


def test_transformers_logits_match(saved):
    model, directory = saved
    reference = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(reference).__name__ == json.loads((directory / "config.json").read_text())["architectures"][0]
    ids = np.random.default_rng(2).integers(0, VOCAB, (3, 9))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids)).logits.float().numpy()
    ours = np.asarray(_logits(model, ids))
    assert theirs.std() > 0.5  # non-trivial logits, so 1e-4 is a real check
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_from_pretrained_restores_every_parameter(saved):
    model, directory = saved
    loaded, tokenizer = from_pretrained(directory)
    assert loaded.cfg == model.cfg
    before, after = _params(model), _params(loaded)
    assert before.keys() == after.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=str(path))
    assert tokenizer.encode(TEXTS[1]).ids == _tokenizer().encode(TEXTS[1]).ids


def test_config_and_tokenizer_files(saved):
    model, directory = saved
    config = json.loads((directory / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["eos_token_id"] == config["pad_token_id"] == 0
    assert LMConfig.from_hf(config) == model.cfg
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == tok_config["pad_token"] == "[PAD]"
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
    assert fast(TEXTS[0])["input_ids"] == _tokenizer().encode(TEXTS[0]).ids
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]  # no temporary left over


def test_gpt2_c_attn_is_fused_in_q_k_v_order():
    model = _random_model(CONFIGS["gpt2"])
    tensors = lm_saving.hf_tensors(model)
    fused = tensors["transformer.h.1.attn.c_attn.weight"]
    attn = model.blocks[1].attn
    expected = np.concatenate([np.asarray(p.kernel.get_value()) for p in (attn.q, attn.k, attn.v)], axis=1)
    np.testing.assert_array_equal(fused, expected)
    assert fused.shape == (32, 96) and fused.flags["C_CONTIGUOUS"]
    assert "lm_head.weight" not in tensors and "transformer.wpe.weight" in tensors


def test_qwen3_kernels_are_transposed():
    model = _random_model(CONFIGS["qwen3-untied-biased"])
    tensors = lm_saving.hf_tensors(model)
    kernel = np.asarray(model.blocks[0].attn.k.kernel.get_value())  # [in 32, out 16]
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.k_proj.weight"], kernel.T)
    np.testing.assert_array_equal(tensors["lm_head.weight"], np.asarray(model.lm_head.kernel.get_value()).T)
    assert "lm_head.weight" not in lm_saving.hf_tensors(_random_model(CONFIGS["qwen3-tied"]))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    tok, directory = _tokenizer(), tmp_path / "model"
    first, second = _random_model(CONFIGS["qwen3-tied"]), DecoderLM(CONFIGS["qwen3-tied"], rngs=nnx.Rngs(5))
    save_pretrained(first, tok, directory)
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(second, tok, directory)
    np.testing.assert_array_equal(_params(from_pretrained(directory)[0])[("norm", "scale")],
                                  _params(first)[("norm", "scale")])
    save_pretrained(second, tok, directory, overwrite=True)
    np.testing.assert_array_equal(_params(from_pretrained(directory)[0])[("embed", "embedding")],
                                  _params(second)[("embed", "embedding")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "empty").mkdir()
    save_pretrained(first, tok, tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "model.safetensors").exists()


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lm_saving, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_random_model(CONFIGS["gpt2"]), _tokenizer(), tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_raises(tmp_path):
    model, tok = _random_model(CONFIGS["qwen3-tied"]), _tokenizer()
    with pytest.raises(ValueError, match="contradicts"):
        save_pretrained(model, tok, tmp_path / "a", extra_config={"hidden_size": 64})
    with pytest.raises(ValueError, match="eos_token_id"):
        save_pretrained(model, tok, tmp_path / "b", extra_config={"eos_token_id": VOCAB})
    small = DecoderLM(LMConfig(**{**CONFIGS["qwen3-tied"].__dict__, "vocab_size": 4}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tokenizer has"):
        save_pretrained(small, tok, tmp_path / "c")
    grouped = DecoderLM(LMConfig(**{**CONFIGS["gpt2"].__dict__, "kv_heads": 2}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="GPT-2"):
        save_pretrained(grouped, tok, tmp_path / "d")
    assert list(tmp_path.iterdir()) == []
