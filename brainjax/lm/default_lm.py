"""The embedded default language model: a tiny Qwen3 that brainjax trains itself on offline text.

Pretrained weights cannot be downloaded everywhere brainjax runs, yet the fMRI-LM pipeline needs a language
model. So brainjax ships a recipe instead of weights: English text about scans from its own descriptor
generator (:func:`brainjax.data.descriptor_text.describe_scan`), a byte-level BPE tokenizer trained on it, and
a small Qwen3 trained for a minute or two on CPU. The result is saved with
:func:`brainjax.models.lm_saving.save_pretrained` and read back with
:func:`brainjax.models.lm_loading.from_pretrained`, exactly like a real downloaded Qwen3, so nothing
downstream knows or cares that it is home-made. :func:`default_lm` builds it once into the cache
(the convention of :func:`brainjax.data.synthetic.default_dataset`) and reuses it afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from brainjax.cache import cached
from brainjax.data.descriptor_text import CATALOGUE, describe_scan
from brainjax.lm.instructions import question_documents
from brainjax.models.lm import DecoderLM, LMConfig
from brainjax.models.lm_saving import save_pretrained

EOS = "<|endoftext|>"
BUILD_VERSION = 2  # bump on any change to the corpus, tokenizer or training recipe: it names the cache entry
DEFAULT_STEPS = 150
DEFAULT_VOCAB = 2048
# Yeo/Schaefer abbreviations plus a few spelled-out names, so the text covers both label styles.
NETWORKS = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default", "DefaultMode",
            "FrontoParietal", "Auditory", "CinguloOpercular", "DMN")
# vocab_size is the tokenizer's target; build_default_lm sets it to the trained tokenizer's real size.
DEFAULT_LM = LMConfig(family="qwen3", vocab_size=DEFAULT_VOCAB, hidden=128, layers=4, heads=4, kv_heads=2,
                      head_dim=32, intermediate=384, max_positions=4096, norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=True)


def _feature_key(family: str, rng: np.random.Generator) -> str:
    """A random key of ``family`` named the way :mod:`brainjax.data.descriptors` names its features."""
    if family.startswith("gradient_"):  # gradient{k}_range / gradient{k}_mean.{net}, k = 1, 2
        key = f"gradient{rng.integers(1, 3)}_{family.removeprefix('gradient_')}"
        return f"{key}.{rng.choice(NETWORKS)}" if "{net}" in CATALOGUE[family].noun else key
    if "{a}" in CATALOGUE[family].noun:  # fc_between.{a}.{b} with a < b
        a, b = sorted(rng.choice(NETWORKS, size=2, replace=False))
        return f"{family}.{a}.{b}"
    return f"{family}.{rng.choice(NETWORKS)}" if "{net}" in CATALOGUE[family].noun else family


def offline_corpus(seed: int = 0, n_documents: int = 2000, extra: Sequence[str] = ()) -> list[str]:
    """``n_documents`` scan descriptions drawn with ``seed`` plus the ``extra`` documents, shuffled with ``seed``.

    Each description draws 3-14 features over the :data:`CATALOGUE` families with z-scores from N(0, 1.6^2)
    (so typical, slight, clear and large deviations all occur) and describes up to 2-6 of them.
    Returns a list of ``n_documents + len(extra)`` strings.
    """
    if n_documents < 0:
        raise ValueError(f"n_documents must be >= 0, got {n_documents}")
    extra = list(extra)
    if not all(isinstance(text, str) and text for text in extra):
        raise ValueError("extra documents must be non-empty strings")
    rng = np.random.default_rng(seed)
    families = sorted(CATALOGUE)
    docs = []
    for _ in range(n_documents):
        keys = {_feature_key(str(rng.choice(families)), rng) for _ in range(rng.integers(3, 15))}
        features = {key: float(rng.normal()) for key in sorted(keys)}
        z = {key: float(rng.normal(0.0, 1.6)) for key in sorted(keys)}
        text, _ = describe_scan(features, z, seed=int(rng.integers(2**31)), max_sentences=int(rng.integers(2, 7)))
        docs.append(text)
    corpus = docs + extra
    return [corpus[i] for i in rng.permutation(len(corpus))]


def train_text_tokenizer(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB) -> Tokenizer:
    """Byte-level BPE on ``texts`` (at most ``vocab_size`` tokens; fewer when the text runs out of merges).

    ``<|endoftext|>`` is id 0 (end of document and padding); all 256 byte symbols are in the vocabulary, so
    any text encodes and ``decode(encode(text)) == text``.
    """
    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols plus {EOS}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def _eos_id(tokenizer: Tokenizer) -> int:
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise ValueError(f"tokenizer has no {EOS} token")
    return eos


def pack_documents(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
    """Tokenise ``texts``, end each with eos, concatenate, and cut into rows: int32 [N, seq_len].

    The tail that does not fill a row is dropped; ValueError when not even one row fills.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    eos = _eos_id(tokenizer)
    stream = [token for enc in tokenizer.encode_batch(list(texts)) for token in (*enc.ids, eos)]
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one row of seq_len={seq_len}")
    return np.asarray(stream[:rows * seq_len], np.int32).reshape(rows, seq_len)


def _batches(rows: int, batch_size: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices [steps, batch_size]: epochs of shuffled rows laid end to end, so every row is seen."""
    epochs = -(-steps * batch_size // rows)
    order = np.concatenate([rng.permutation(rows) for _ in range(epochs)])
    return order[:steps * batch_size].reshape(steps, batch_size)


def train_lm(texts: Sequence[str], tokenizer: Tokenizer, cfg: LMConfig, *, steps: int, batch_size: int = 16,
             seq_len: int = 128, lr: float = 3e-3, seed: int = 0) -> tuple[DecoderLM, np.ndarray]:
    """Next-token training of a fresh ``DecoderLM(cfg)`` on the packed ``texts`` (AdamW, warmup + cosine).

    Returns (trained model, float32 [steps] training loss per step, nats per token).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps ({steps}) and batch_size ({batch_size}) must be positive")
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, cfg.vocab_size is {cfg.vocab_size}")
    if seq_len > cfg.max_positions:
        raise ValueError(f"seq_len {seq_len} exceeds max_positions {cfg.max_positions}")
    data = pack_documents(texts, tokenizer, seq_len)
    order = _batches(len(data), batch_size, steps, np.random.default_rng(seed))
    model = DecoderLM(cfg, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=max(1, steps // 10),
                                                  decay_steps=max(steps, 2), end_value=0.1 * lr)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, rows):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(rows[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, rows[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for indices in order:
        params, opt_state, loss = step(params, opt_state, jnp.asarray(data[indices]))
        losses.append(loss)
    history = np.asarray(jax.device_get(losses), np.float32)
    if not np.all(np.isfinite(history)):
        raise ValueError(f"training diverged: first non-finite loss at step {int(np.argmin(np.isfinite(history)))}")
    return nnx.merge(graphdef, params), history


def build_default_lm(out_dir: str | os.PathLike, *, steps: int = DEFAULT_STEPS, seed: int = 0,
                     cfg: LMConfig = DEFAULT_LM, n_documents: int = 2000, n_questions: int = 0,
                     extra: Sequence[str] = (), batch_size: int = 16, seq_len: int = 128, lr: float = 3e-3) -> Path:
    """Corpus (``n_documents`` descriptions, ``n_questions`` question/answer texts of
    :func:`brainjax.lm.instructions.question_documents`, ``extra``) -> tokenizer (``cfg.vocab_size`` target) ->
    training -> HF directory ``out_dir`` (must be new or empty), plus ``brainjax_lm.json`` (corpus size, steps,
    losses, seed, seconds) written last. Returns the dir."""
    start = time.perf_counter()
    texts = offline_corpus(seed, n_documents, [*question_documents(seed, n_questions), *extra])
    tokenizer = train_text_tokenizer(texts, cfg.vocab_size)
    cfg = dataclasses.replace(cfg, vocab_size=tokenizer.get_vocab_size())
    model, history = train_lm(texts, tokenizer, cfg, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                              seed=seed)
    eos = _eos_id(tokenizer)
    out = save_pretrained(model, tokenizer, out_dir, extra_config={"eos_token_id": eos, "pad_token_id": eos})
    tail = max(1, steps // 10)  # single-step losses are noisy: report the mean of the last tenth too
    record = {"build_version": BUILD_VERSION, "seed": seed, "documents": len(texts),
              "corpus_tokens": int(sum(len(e.ids) + 1 for e in tokenizer.encode_batch(texts))),
              "vocab_size": cfg.vocab_size, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
              "initial_loss": float(history[0]), "final_loss": float(history[-1]),
              "final_loss_mean_last_tenth": float(history[-tail:].mean()),
              "seconds": round(time.perf_counter() - start, 2)}
    (out / "brainjax_lm.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def build_hash(**settings) -> str:
    """12 hex digits naming a build: the recipe version, :data:`DEFAULT_LM` and the given settings."""
    payload = json.dumps({"v": BUILD_VERSION, "cfg": dataclasses.asdict(DEFAULT_LM), **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


# What default_lm builds; all of it goes into the cache name.
# The questions (v2) make the answer words whole tokens: in v1 " female" was 5 BPE pieces and summed label
# log-probabilities favoured short labels.
_DEFAULT_BUILD = {"steps": DEFAULT_STEPS, "seed": 0, "n_documents": 2000, "n_questions": 1000, "batch_size": 16,
                  "seq_len": 128, "lr": 3e-3}


def default_lm(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the default LM, built once into the cache (:func:`from_pretrained` loads it).

    Cache root: ``cache_dir``, else ``$BRAINJAX_CACHE``, else ``~/.cache/brainjax``. The LM is built in a
    private temporary directory and renamed into place, so concurrent callers never see a half-written
    model; the loser of a race discards its copy and returns the winner's.
    """
    return cached(f"default-lm-v{BUILD_VERSION}-{build_hash(**_DEFAULT_BUILD)}", "brainjax_lm.json",
                  lambda tmp: build_default_lm(tmp, **_DEFAULT_BUILD), cache_dir, "LM")
