"""Language alignment of the neural tokenizer: gradient reversal, the domain and SigLIP losses against numpy,
defaults that leave the model untouched, the sign of the adversarial gradient, a tiny aligned run through the
Trainer with checkpoint restore, and the command's inputs and errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _trainer_utils import tiny_config, tiny_dataset, write_config_file
from flax import nnx

from brainjax.cli import main as cli
from brainjax.config import ModelConfig, QuantizerConfig
from brainjax.data.dataset import Dataset
from brainjax.models.tokenizer import NeuralTokenizer, tokenizer_loss
from brainjax.nn.alignment import domain_loss, reverse_gradient, siglip_loss
from brainjax.tasks.base import PatchTask
from brainjax.tasks.tokenizer import TokenizerTask

SMALL = ModelConfig(patch=8, max_parcels=5, width=8, depth=1, heads=2, mlp=16, dec_width=8, dec_depth=1, dec_heads=2,
                    dec_mlp=16, attention="xla")
H = 32  # tiny LM width


def _batch(rng: np.random.Generator, rows: int = 3) -> dict:
    mask = np.ones((rows, 5), bool)
    mask[1, 3:] = False
    return {"signal": rng.normal(size=(rows, 5, 16)).astype(np.float32), "parcel_mask": mask,
            "coords": rng.uniform(-50, 50, (rows, 5, 3)).astype(np.float32), "tr": np.full(rows, 2.0, np.float32)}


def _paths(model) -> set[str]:
    return {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _sigmoid_bce(z, y):  # -log sigmoid(y z), written out
    return np.log1p(np.exp(-y * z))


def test_gradient_reversal_is_identity_forward_and_negates_the_gradient():
    x = jnp.linspace(-2.0, 2.0, 7)
    w = jnp.arange(7.0)
    np.testing.assert_array_equal(reverse_gradient(x), x)
    plain = jax.grad(lambda v: jnp.sum(w * jnp.sin(v) ** 2))(x)
    reversed_ = jax.grad(lambda v: jnp.sum(w * jnp.sin(reverse_gradient(v)) ** 2))(x)
    np.testing.assert_array_equal(np.asarray(reversed_), -np.asarray(plain))


def test_siglip_loss_and_retrieval_match_numpy_with_same_scan_positives():
    rng = np.random.default_rng(0)
    f, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    scan = np.array([3, 3, 5, 7, 7, 9])  # two scans with two windows each: those pairs are positives
    valid = np.array([True, True, True, True, True, False])
    log_scale, bias = np.log(10.0), -2.0
    loss, sums = siglip_loss(jnp.asarray(f, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(scan),
                             jnp.float32(log_scale), jnp.float32(bias), jnp.asarray(valid))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = 10.0 * fn @ tn.T + bias
    labels = np.where(scan[:, None] == scan[None, :], 1.0, -1.0)
    keep = valid[:, None] & valid[None, :]
    assert float(loss) == pytest.approx(_sigmoid_bce(logits, labels)[keep].mean(), rel=1e-5)
    hits = [scan[np.argmax(np.where(valid, logits[:, j], -np.inf))] == scan[j] for j in np.flatnonzero(valid)]
    assert float(sums["retrieval_correct"]) == sum(hits) and float(sums["retrieval_n"]) == 5


def test_domain_loss_is_balanced_bce_and_accuracy_counts_by_hand():
    fmri = np.array([[2.0, -1.0, 0.5], [3.0, 0.0, -4.0]])
    fmri_w = np.array([[1, 1, 1], [1, 0, 1]], float)  # one padded token
    words = np.array([[-3.0, 1.0], [-0.5, -2.0]])
    word_w = np.ones_like(words)
    loss, sums = domain_loss(*(jnp.asarray(a, jnp.float32) for a in (fmri, words, fmri_w, word_w)))
    fmri_bce = _sigmoid_bce(fmri, 1.0)[fmri_w > 0].mean()
    word_bce = _sigmoid_bce(words, -1.0).mean()
    assert float(loss) == pytest.approx(0.5 * (fmri_bce + word_bce), rel=1e-6)
    # fMRI correct when logit > 0: 2.0, 0.5, 3.0 (the masked 0.0 does not count); words when < 0: three of four
    assert [float(sums[k]) for k in ("disc_fmri_correct", "disc_fmri_n", "disc_word_correct", "disc_word_n")] == [
        3, 5, 3, 4]


def test_defaults_leave_the_model_and_batches_as_before():
    rng = np.random.default_rng(1)
    plain = NeuralTokenizer(SMALL, QuantizerConfig(kind="fsq", fsq_levels=(3, 3)), rngs=nnx.Rngs(0))
    aligned = NeuralTokenizer(SMALL, QuantizerConfig(kind="fsq", fsq_levels=(3, 3), domain_weight=0.1,
                                                     text_weight=0.1, lm_width=H), rngs=nnx.Rngs(0))
    extra = _paths(aligned) - _paths(plain)
    assert _paths(plain) < _paths(aligned) and all(p.startswith("alignment/") for p in extra)
    assert {"alignment/align_proj/kernel", "alignment/text_proj/kernel", "alignment/log_scale"} <= extra
    assert TokenizerTask(SMALL, QuantizerConfig(), 5, 16).input_keys == PatchTask.input_keys
    batch = _batch(rng)  # no alignment entries: the default model trains on it
    (loss, sums), grads = nnx.jit(nnx.value_and_grad(
        lambda m: tokenizer_loss(m, batch, jax.random.key(0), train=False), has_aux=True))(plain)
    assert np.isfinite(float(loss)) and "domain_loss" not in sums and "siglip_loss" not in sums
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="lm_width"):
        NeuralTokenizer(SMALL, QuantizerConfig(codebook_size=8, code_dim=4, domain_weight=0.1), rngs=nnx.Rngs(0))


def test_domain_term_pushes_the_projection_against_the_discriminator():
    """d(loss)/d(align_proj) is minus, and d(loss)/d(discriminator) plus, the weighted gradient of the
    discriminator's own BCE objective (computed here without the reversal layer)."""
    rng = np.random.default_rng(2)
    weight = 0.5
    model = NeuralTokenizer(SMALL, QuantizerConfig(kind="fsq", fsq_levels=(3, 3), domain_weight=weight, lm_width=H),
                            rngs=nnx.Rngs(0))
    batch = dict(_batch(rng), word_embeddings=rng.normal(size=(3, 6, H)).astype(np.float32))
    grads = nnx.jit(nnx.grad(lambda m: tokenizer_loss(m, batch, jax.random.key(0), train=False)[0]))(model)

    features, _, real = nnx.jit(lambda m: m.features(batch))(model)

    def objective(align):
        disc = align.discriminator
        return domain_loss(disc(align.align_proj(features)), disc(jnp.asarray(batch["word_embeddings"])), real,
                           jnp.ones((3, 6)))[0]

    own = nnx.jit(nnx.grad(objective))(model.alignment)
    for part, sign in (("align_proj", -1.0), ("discriminator", 1.0)):
        got = jax.tree.leaves(nnx.state(getattr(grads.alignment, part)))
        want = jax.tree.leaves(nnx.state(getattr(own, part)))
        assert any(np.abs(np.asarray(w)).max() > 0 for w in want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), sign * weight * np.asarray(w), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny dataset with hand-written descriptors and a tiny random LM saved as a Hugging Face directory."""
    from brainjax.lm.default_lm import offline_corpus, train_text_tokenizer
    from brainjax.models.lm import DecoderLM, LMConfig
    from brainjax.models.lm_saving import save_pretrained

    root = tmp_path_factory.mktemp("align")
    data = tiny_dataset(root / "data")
    manifest = Dataset(data).manifest
    lines = [json.dumps({"scan_id": r["scan_id"], "text": f"Resting scan of subject {r['subject']}, run {i % 2}."})
             for i, r in enumerate(manifest[:-1])]  # the last scan has no text
    (root / "descriptors.jsonl").write_text("\n".join(lines) + "\n")
    text_tokenizer = train_text_tokenizer(offline_corpus(0, 50), vocab_size=300)
    lm_cfg = LMConfig(family="qwen3", vocab_size=text_tokenizer.get_vocab_size(), hidden=H, layers=1, heads=4,
                      kv_heads=2, head_dim=8, intermediate=64, max_positions=256, norm_eps=1e-6)
    save_pretrained(DecoderLM(lm_cfg, rngs=nnx.Rngs(0)), text_tokenizer, root / "lm",
                    extra_config={"eos_token_id": 0, "pad_token_id": 0})
    cfg = tiny_config(steps=3, data={"eval_batches": 1}, train={"eval_every": 3, "checkpoint_every": 3})
    cfg = dataclasses.replace(cfg, objective="tokenizer",
                              quantizer=QuantizerConfig(kind="vq", codebook_size=16, code_dim=8, kmeans_iters=2,
                                                        word_samples=5))
    return root, data, write_config_file(root / "cfg.py", cfg)


def _args(root, data, config, *overrides, lm=True, descriptors=True) -> argparse.Namespace:
    return argparse.Namespace(config=str(config), preset="tokenizer", overrides=list(overrides), steps=None,
                              data=str(data), lm=str(root / "lm") if lm else None,
                              descriptors=str(root / "descriptors.jsonl") if descriptors else None)


def test_command_inputs_defaults_and_resume_exact_word_rows(setup):
    from brainjax.commands.tokenizer import alignment_batches
    from brainjax.lm.alignment_data import lm_embedding
    from brainjax.lm.batches import load_descriptor_texts

    root, data, config = setup
    args = _args(root, data, config)
    build = alignment_batches(args)
    assert {"quantizer.domain_weight=0.1", "quantizer.text_weight=0.1", f"quantizer.lm_width={H}"} <= set(
        args.overrides)
    only_domain = _args(root, data, config, "quantizer.text_weight=0")
    assert alignment_batches(only_domain).texts is None and "quantizer.domain_weight=0.1" in only_domain.overrides
    assert alignment_batches(_args(root, data, config, lm=False)) is None  # nothing asked: alignment stays off

    batch = {"scan": np.array([0, 4, 4, 15]), "start": np.array([0, 8, 16, 8]), "signal": np.zeros((4, 8, 16))}
    out, again = build(batch), build({k: v[::-1] for k, v in batch.items()})
    np.testing.assert_array_equal(out["word_embeddings"], again["word_embeddings"][::-1])  # per window, not order
    assert out["word_embeddings"].shape == (4, 5, H)
    assert not np.array_equal(out["word_embeddings"][1], out["word_embeddings"][2])  # other start, other rows
    embedding, tokenizer = lm_embedding(root / "lm")
    texts, _ = load_descriptor_texts(root / "descriptors.jsonl", Dataset(data).manifest)
    ids = tokenizer.encode(texts[4], add_special_tokens=False).ids
    np.testing.assert_allclose(out["text_embedding"][1], embedding[ids].mean(0), rtol=1e-6)
    assert texts[15] is None and not out["text_embedding"][3].any()
    rows = embedding[None, None] - out["word_embeddings"][:, :, None]  # every drawn row is a table row
    assert (np.abs(rows).max(-1).min(-1) == 0).all()


@pytest.mark.slow
def test_aligned_tokenizer_trains_reports_and_restores(setup):
    from brainjax.commands.tokenizer import alignment_batches
    from brainjax.config import MeshConfig, load_config, override
    from brainjax.data.pipeline import LoaderSpec, MappedLoader, eval_batches, make_loader, mapped_passes, to_global
    from brainjax.errors import CheckpointMismatchError
    from brainjax.run import load_model
    from brainjax.sharding import make_mesh
    from brainjax.train.trainer import Trainer

    root, data, config = setup
    args = _args(root, data, config)
    build = alignment_batches(args)
    cfg = override(load_config(str(config)), args.overrides)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    loader = make_loader(LoaderSpec(paths=(str(data),), split="train", window=cfg.data.window,
                                    batch_size=cfg.data.batch_size, seed=cfg.train.seed, read_threads=1))
    task = TokenizerTask(cfg.model, cfg.quantizer, loader.n_parcels, cfg.data.window)
    assert set(task.input_keys) - set(PatchTask.input_keys) == {"word_embeddings", "text_embedding", "scan"}
    validation = mapped_passes(lambda: eval_batches((str(data),), "val", cfg.data.window, cfg.data.batch_size,
                                                    read_threads=1), build)
    workdir = root / "run"
    mesh = make_mesh(MeshConfig(data=1, fsdp=2), jax.devices()[:2])  # parameters sharded, few devices: fast
    trainer = Trainer(cfg, task, workdir, MappedLoader(loader, build), validation, to_global, mesh=mesh)
    result = trainer.run()
    assert result.final_step == 3
    names = ("domain_loss", "disc_accuracy", "siglip_loss", "retrieval_top1")
    for name in names:
        value = result.eval[f"val_{name}"]
        assert np.isfinite(value) and (value >= 0 if "loss" in name else 0 <= value <= 1)
    logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all(f"train_{n}" in m for m in logs if "train_mse" in m for n in names)
    saved = json.loads((workdir / "config.json").read_text())
    trainer._check_config(saved, {}, 3)
    del saved["quantizer"]["word_samples"]  # a checkpoint from before the field: read as its default (16)
    with pytest.raises(CheckpointMismatchError, match="word_samples: checkpoint 16 vs now 5"):
        trainer._check_config(saved, {}, 3)
    loaded = load_model(workdir)
    assert loaded.cfg.quantizer.lm_width == H and loaded.model.alignment is not None
    restored = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, restored, jax.tree.map(np.asarray, nnx.to_pure_dict(result.params)))


def test_command_refuses_text_loss_without_descriptors(setup, capsys):
    root, data, config = setup
    code = cli(["tokenizer", "train", "--config", str(config), "--data", str(data), "--lm", str(root / "lm"),
                "--workdir", str(root / "refused"), "--set", "quantizer.text_weight=0.2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "descriptors" in err and "text_weight" in err and not (root / "refused").exists()
