"""fMRI-LM (stages 2-3): sequence layout, the patch-causal attention it implies, and the three losses against
computations done another way (numpy log-softmax over full logits; codes from the tokenizer run by hand)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

from brainjax.config import Config, LanguageConfig, Lineage, ModelConfig, QuantizerConfig
from brainjax.lm.evaluate import constrained_choice
from brainjax.models.fmri_lm import FMRILM, patch_connectivity
from brainjax.models.lm import LMConfig
from brainjax.models.sequences import SequenceSpec, layout, stack, text_row
from brainjax.tasks.fmri_lm import FMRILMTask, fmri_lm_loss

LM = LMConfig(family="qwen3", vocab_size=40, hidden=16, layers=2, heads=2, kv_heads=1, head_dim=8, intermediate=32,
              max_positions=256, norm_eps=1e-6)
TOK = ModelConfig(patch=4, max_parcels=6, width=16, depth=1, heads=2, mlp=32, dec_width=16, dec_depth=1, dec_heads=2,
                  dec_mlp=32, fourier_features=2, attention="xla")
QUANT = QuantizerConfig(kind="vq", codebook_size=8, code_dim=4)
SPEC = SequenceSpec(n_parcels=3, n_patches=2, blocks=1, text_len=8)
PROMPT = [("text", [1, 2]), ("fmri", 0), ("text", [3])]
ANSWER = [4, 5, 6]
PARCELS = np.array([[True, True, False]])  # parcel 2 is padding


def test_layout_by_hand():
    s = layout(PROMPT, ANSWER, PARCELS, SPEC, code_blocks=(0,))
    # text 1 2 | patch 0: parcels 0 1 2 | patch 1: parcels 0 1 2 | text 3 | answer 4 5 6 | 2 padding
    np.testing.assert_array_equal(s["ids"], [1, 2, 0, 0, 0, 0, 0, 0, 3, 4, 5, 6, 0, 0])
    np.testing.assert_array_equal(s["slot"], [-1, -1, 0, 1, 2, 3, 4, 5, -1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(s["group"], [0, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 7, 8, 8])
    np.testing.assert_array_equal(s["valid"], [1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(s["fmri_pos"], [2, 3, 4, 5, 6, 7])
    # answer token j sits at 9 + j and is predicted from the position before it
    np.testing.assert_array_equal(s["loss_pos"][:3], [8, 9, 10])
    np.testing.assert_array_equal(s["loss_target"][:3], ANSWER)
    np.testing.assert_array_equal(s["loss_weight"], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s["code_weight"], [1])


def test_layout_cuts_the_answer_not_the_prompt_and_rejects_bad_segments():
    long = layout(PROMPT, list(range(4, 20)), PARCELS, SPEC)
    assert long["loss_weight"].sum() == SPEC.text_len - 3  # 3 prompt tokens kept, the answer fills the rest
    with pytest.raises(ValueError, match="no room"):
        layout([("text", list(range(9)))], [1], PARCELS, SPEC)
    with pytest.raises(ValueError, match="used twice"):
        layout([("fmri", 0), ("fmri", 0)], [], PARCELS, SPEC)
    with pytest.raises(ValueError, match="parcel_masks shape"):
        layout(PROMPT, ANSWER, np.ones((2, 3), bool), SPEC)


def _model(train_lm="lora") -> FMRILM:
    return FMRILM(LM, TOK, QUANT, LanguageConfig(train_lm=train_lm, lora_rank=2), rngs=nnx.Rngs(0))


def _batch(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    sample = layout(PROMPT, ANSWER, PARCELS, SPEC, code_blocks=(0,))
    ids, mask = text_row([7, 8, 9, 10, 11], 6)
    batch = stack([sample])
    batch.update(signal=rng.normal(size=(1, 1, 3, 8)).astype(np.float32), parcel_mask=PARCELS[None],
                 coords=rng.uniform(-50, 50, (1, 1, 3, 3)).astype(np.float32), tr=np.full((1, 1), 2.0, np.float32),
                 lm_ids=ids[None], lm_mask=mask[None])
    return batch


def _hidden(model, batch) -> np.ndarray:
    return np.asarray(model(batch)[0][0])


@pytest.mark.slow
def test_attention_is_full_within_a_time_patch_and_causal_across_patches():
    model, batch = _model(), _batch()
    base = _hidden(model, batch)
    patch0, patch1, text_after = [2, 3], [5, 6], [8, 9, 10, 11]

    future = dict(batch, signal=batch["signal"].copy())
    future["signal"][..., 4:] += 1.0  # change time patch 1 only
    h = _hidden(model, future)
    np.testing.assert_array_equal(h[[0, 1, *patch0]], base[[0, 1, *patch0]])  # the past never sees the future
    assert np.abs(h[patch1] - base[patch1]).max() > 1e-4 and np.abs(h[text_after] - base[text_after]).max() > 1e-4

    neighbour = dict(batch, signal=batch["signal"].copy())
    neighbour["signal"][0, 0, 1, :4] += 1.0  # parcel 1 in patch 0: parcel 0 of the same patch reads it
    assert np.abs(_hidden(model, neighbour)[2] - base[2]).max() > 1e-4

    padded = dict(batch, signal=batch["signal"].copy())
    padded["signal"][0, 0, 2] += 5.0  # a padded parcel is read by nobody
    real = [i for i in range(12) if batch["valid"][0, i]]
    np.testing.assert_allclose(_hidden(model, padded)[real], base[real], atol=1e-6)

    answer = dict(batch, ids=batch["ids"].copy())
    answer["ids"][0, 9:12] = [30, 31, 32]
    np.testing.assert_array_equal(_hidden(model, answer)[:9], base[:9])  # text is causal


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_losses_match_numpy_and_codes_of_each_patch_encoded_alone():
    model, batch = _model(), _batch()
    cfg = Config(objective="adapt", language=LanguageConfig(text_weight=1.0, code_weight=0.5, lm_weight=0.25))
    loss, sums = fmri_lm_loss(model, batch, cfg)
    hidden = model(batch)[0]
    logp = _log_softmax(np.asarray(model.lm.logits(hidden))[0])
    text = -np.mean([logp[8 + j, token] for j, token in enumerate(ANSWER)])

    def codes_of(t0):  # the tokenizer on one time patch alone, as the model must use it
        window = {"signal": batch["signal"][0, :, :, t0:t0 + 4], "parcel_mask": PARCELS,
                  "coords": batch["coords"][0], "tr": batch["tr"][0]}
        return np.asarray(model.tokenizer.encode(window)[0].codes)[0, :, 0]
    targets = codes_of(4)
    code_logp = _log_softmax(np.asarray(model.code_logits(hidden[0, 2:4])))  # patch-0 tokens of parcels 0, 1
    code = -np.mean([code_logp[p, targets[p]] for p in range(2)])
    plain_logp = _log_softmax(np.asarray(model.lm(batch["lm_ids"], batch["lm_mask"]))[0])
    plain = -np.mean([plain_logp[i, batch["lm_ids"][0, i + 1]] for i in range(4)])
    np.testing.assert_allclose(float(sums["text_nll"]) / float(sums["text_n"]), text, rtol=1e-5)
    np.testing.assert_allclose(float(sums["code_nll"]) / float(sums["code_n"]), code, rtol=1e-5)
    np.testing.assert_allclose(float(sums["lm_nll"]) / float(sums["lm_n"]), plain, rtol=1e-5)
    np.testing.assert_allclose(float(loss), text + 0.5 * code + 0.25 * plain, rtol=1e-5)
    assert float(sums["code_n"]) == 2  # padded parcel 2 carries no target


@pytest.mark.parametrize("train_lm", ["lora", "full", "frozen"])
def test_frozen_mask_freezes_the_tokenizer_always_and_the_lm_by_mode(train_lm):
    model = _model(train_lm)
    task = FMRILMTask(Config(objective="adapt", language=LanguageConfig(train_lm=train_lm, lora_rank=2)),
                      Lineage(lm_architecture=_architecture()), SPEC)
    params = nnx.state(model, nnx.Param)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(task.frozen_mask(params))}
    flat = {k: bool(v.get_value() if hasattr(v, "get_value") else v) for k, v in flat.items()}
    assert all(v for k, v in flat.items() if k.startswith("tokenizer/"))
    assert not any(v for k, v in flat.items() if k.split("/")[0] in ("fmri_in", "fmri_out", "parcel_embed",
                                                                      "fmri_head"))
    lm = {k: v for k, v in flat.items() if k.startswith("lm/")}
    adapters = {k: v for k, v in lm.items() if "lora_" in k}
    assert bool(adapters) == (train_lm == "lora")
    if train_lm == "lora":
        assert not any(adapters.values()) and all(v for k, v in lm.items() if k not in adapters)
    else:
        assert all(v == (train_lm == "frozen") for v in lm.values())


def _architecture() -> str:
    import dataclasses
    import json
    return json.dumps(dataclasses.asdict(LM))


def test_code_loss_needs_two_patches():
    cfg = Config(objective="adapt", language=LanguageConfig())
    with pytest.raises(ValueError, match="2 token time steps"):
        FMRILMTask(cfg, Lineage(lm_architecture=_architecture()), SequenceSpec(n_parcels=3, n_patches=1))


def test_constrained_choice_is_greedy_over_the_label_trie():
    tokens = [[5, 7], [5, 8], [9]]
    # first step: the shared token 5 (-0.1) beats 9 (-2.0); then 8 (-0.5) beats 7 (-1.0)
    logps = [np.array([-0.1, -1.0]), np.array([-0.1, -0.5]), np.array([-2.0])]
    assert constrained_choice(logps, tokens) == 1
    # summed log-probability would pick label 2 here, greedy decoding cannot reach it
    logps = [np.array([-0.1, -3.0]), np.array([-0.1, -2.5]), np.array([-1.0])]
    assert constrained_choice(logps, tokens) == 1 and int(np.argmax([x.sum() for x in logps])) == 2


def test_patch_connectivity_is_the_correlation_matrix_of_real_parcels():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(2, 4, 10)).astype(np.float32)
    signal[1, 2] = 3.0  # a constant parcel
    real = np.array([[True, True, True, False], [True, True, True, True]])
    fc = np.asarray(patch_connectivity(signal, real))
    np.testing.assert_allclose(fc[0, :3, :3], np.corrcoef(signal[0, :3]), atol=1e-5)
    assert not fc[0, 3].any() and not fc[0, :, 3].any()
    assert not fc[1, 2].any() and np.isfinite(fc).all()
    keep = [0, 1, 3]
    np.testing.assert_allclose(fc[1][np.ix_(keep, keep)], np.corrcoef(signal[1, keep]), atol=1e-5)


@pytest.mark.slow
def test_connectivity_features_reach_the_tokens_of_their_own_patch_only():
    model = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2, fmri_features="tokenizer+fc"), rngs=nnx.Rngs(0))
    plain = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2), rngs=nnx.Rngs(0))
    batch = _batch()
    base = np.asarray(model.fmri_tokens(batch)[0][0])  # [patch 0 parcels, patch 1 parcels]
    assert np.abs(base - np.asarray(plain.fmri_tokens(batch)[0][0])).max() > 1e-3
    coupled = dict(batch, signal=batch["signal"].copy())
    coupled["signal"][0, 0, 1, 4:] = coupled["signal"][0, 0, 0, 4:]  # parcels 0 and 1 equal in patch 1 only
    changed = np.asarray(model.fmri_tokens(coupled)[0][0])
    np.testing.assert_allclose(changed[:3], base[:3], atol=1e-6)
    assert np.abs(changed[3:5] - base[3:5]).max() > 1e-4
    with pytest.raises(ValueError, match="fmri_features"):
        FMRILM(LM, TOK, QUANT, LanguageConfig(fmri_features="fc"), rngs=nnx.Rngs(0))


def test_connectivity_summary_reads_network_couplings():
    from brainjax.models.fmri_lm import ConnectivitySummary

    rng = np.random.default_rng(1)
    signal = rng.normal(size=(2, 5, 30)).astype(np.float32)
    real = np.array([[True] * 5, [True, True, True, True, False]])
    summary = ConnectivitySummary(6, 2, 3, rngs=nnx.Rngs(0))
    # form 0: mean coupling of parcels {0, 1} with {2, 3}; form 1: parcel 4 with itself (1 where real, else 0)
    left = np.zeros((2, 6), np.float32)
    right = np.zeros((2, 6), np.float32)
    left[0, :2], right[0, 2:4], left[1, 4], right[1, 4] = 0.5, 0.5, 1.0, 1.0
    summary.left[...], summary.right[...] = left, right
    summary.out.kernel[...] = np.eye(2, 3, dtype=np.float32)
    summary.out.bias[...] = np.zeros(3, np.float32)
    got = np.asarray(summary(np.pad(signal, ((0, 0), (0, 1), (0, 0))), np.pad(real, ((0, 0), (0, 1)))))
    for r in range(2):
        corr = np.corrcoef(signal[r])
        np.testing.assert_allclose(got[r, 0], corr[:2, 2:4].mean(), atol=1e-5)
        np.testing.assert_allclose(got[r, 1], 1.0 if real[r, 4] else 0.0, atol=1e-5)
        assert got[r, 2] == 0.0
    with pytest.raises(ValueError, match="summary_rank"):
        ConnectivitySummary(6, 0, 3, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_window_summary_reaches_the_last_patch_only():
    model = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2, fmri_features="tokenizer+summary", summary_rank=4),
                   rngs=nnx.Rngs(0))
    batch = _batch()
    base = np.asarray(model.fmri_tokens(batch)[0][0])  # [patch 0 parcels, patch 1 parcels]
    changed = dict(batch, signal=batch["signal"].copy())
    changed["signal"][0, 0, 1, 4:] = changed["signal"][0, 0, 0, 4:]  # the window's connectivity changes ...
    changed["signal"][0, 0, 1, :4] = batch["signal"][0, 0, 1, :4]  # ... the first patch does not
    moved = np.asarray(model.fmri_tokens(changed)[0][0])
    np.testing.assert_allclose(moved[:3], base[:3], atol=1e-6)
    assert np.abs(moved[3:] - base[3:]).max() > 1e-4


def test_pooled_layout_gives_each_patch_its_pooled_tokens():
    spec = SequenceSpec(n_parcels=3, n_patches=2, blocks=2, text_len=8, pool=2)
    s = layout([("text", [1]), ("fmri", 0), ("fmri", 1), ("text", [3])], [4], np.array([[1, 1, 0], [0, 0, 0]], bool),
               spec)
    # text 1 | block 0: patch 0 tokens 0 1, patch 1 tokens 0 1 | block 1 (no real parcel) the same | text 3 | answer
    np.testing.assert_array_equal(s["slot"][:11], [-1, 0, 1, 2, 3, 4, 5, 6, 7, -1, -1])
    np.testing.assert_array_equal(s["group"][:11], [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6])
    np.testing.assert_array_equal(s["valid"][:11], [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    assert spec.block_tokens == 4 and spec.length == 2 * 4 + 8


def test_pooled_tokens_read_real_parcels_only_and_need_no_code_loss():
    model = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2, fmri_pool=2, fmri_norm=True,
                                                  fmri_features="tokenizer+fc+summary", summary_rank=4),
                   rngs=nnx.Rngs(0))
    batch = _batch()
    tokens = np.asarray(model.fmri_tokens(batch)[0])
    assert tokens.shape == (1, 2 * 2, LM.hidden)  # two patches x two pooled tokens
    padded = dict(batch, signal=batch["signal"].copy())
    padded["signal"][0, 0, 2] = 100.0 * np.arange(8)  # parcel 2 is padding: never read
    np.testing.assert_allclose(np.asarray(model.fmri_tokens(padded)[0]), tokens, atol=1e-5)
    real = dict(batch, signal=batch["signal"].copy())
    real["signal"][0, 0, 1, :4] = real["signal"][0, 0, 0, :4]  # a real parcel of patch 0 changes
    moved = np.asarray(model.fmri_tokens(real)[0][0])
    assert np.abs(moved[:2] - tokens[0, :2]).max() > 1e-4
    hidden = np.asarray(model(stack([layout(PROMPT, ANSWER, PARCELS, dataclasses.replace(SPEC, pool=2))]) |
                              {k: batch[k] for k in ("signal", "parcel_mask", "coords", "tr")})[0])
    assert hidden.shape == (1, 2 * 2 + SPEC.text_len, LM.hidden) and np.isfinite(hidden).all()
    cfg = Config(objective="adapt", language=LanguageConfig(fmri_pool=2))
    with pytest.raises(ValueError, match="code_weight=0"):
        FMRILMTask(cfg, Lineage(lm_architecture=_architecture()), SequenceSpec(3, 2, pool=2))
    with pytest.raises(ValueError, match="fmri_pool"):
        FMRILM(LM, TOK, QUANT, LanguageConfig(fmri_pool=-1), rngs=nnx.Rngs(0))


def test_window_tokens_average_the_patches_and_read_the_whole_window_connectivity():
    language = LanguageConfig(lora_rank=2, fmri_time="window", fmri_features="tokenizer+fc")
    model = FMRILM(LM, TOK, QUANT, language, rngs=nnx.Rngs(0))
    batch = _batch()
    tokens = np.asarray(model.fmri_tokens(batch)[0][0])
    assert tokens.shape == (3, LM.hidden)  # one token per parcel for the two-patch window
    # by hand: the projected tokenizer features of each patch averaged, plus the window's connectivity row
    patch = dict(batch, signal=batch["signal"])
    per_patch = FMRILM(LM, TOK, QUANT, dataclasses.replace(language, fmri_time="patch"), rngs=nnx.Rngs(0))
    per_patch.fmri_fc.kernel[...] = np.zeros(per_patch.fmri_fc.kernel.shape, np.float32)  # its features alone
    features = np.asarray(per_patch.fmri_tokens(patch)[0][0]).reshape(2, 3, -1)
    parcel = np.asarray(model.parcel_embed.embedding[...])[:3]
    signal = batch["signal"][0, 0]
    fc = np.zeros((3, TOK.max_parcels))
    fc[:2, :2] = np.corrcoef(signal[:2])  # parcel 2 is padding: its row and column stay 0
    want = (features - parcel).mean(0) + parcel + np.asarray(model.fmri_fc(fc.astype(np.float32)))
    np.testing.assert_allclose(tokens[:2], want[:2], atol=1e-4)
    hidden = np.asarray(model(stack([layout(PROMPT, ANSWER, PARCELS, dataclasses.replace(SPEC, n_patches=1))]) |
                              {k: batch[k] for k in ("signal", "parcel_mask", "coords", "tr")})[0])
    assert hidden.shape == (1, 3 + SPEC.text_len, LM.hidden) and np.isfinite(hidden).all()
    with pytest.raises(ValueError, match="fmri_time"):
        FMRILM(LM, TOK, QUANT, LanguageConfig(fmri_time="scan"), rngs=nnx.Rngs(0))


def test_fmri_norm_balances_token_parts_and_matches_the_text_embeddings_scale():
    model = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2, fmri_norm=True), rngs=nnx.Rngs(0))
    table = 7.0 * np.asarray(model.lm.embed.embedding[...])  # a trained LM's own scale: fMRI tokens follow it
    model.lm.embed.embedding[...] = table
    tokens = np.asarray(model.fmri_tokens(_batch())[0][0])
    text_rms = np.sqrt((table ** 2).mean())
    np.testing.assert_allclose(np.sqrt((tokens ** 2).mean(-1)), text_rms, rtol=1e-3)
    # each part of a token enters at unit RMS: scaling one part (here the parcel embedding) by 1000 changes it by
    # no more than the normaliser's epsilon does
    model.parcel_embed.embedding[...] = 1000.0 * np.asarray(model.parcel_embed.embedding[...])
    np.testing.assert_allclose(np.asarray(model.fmri_tokens(_batch())[0][0]), tokens, atol=5e-3 * text_rms)
    plain = FMRILM(LM, TOK, QUANT, LanguageConfig(lora_rank=2), rngs=nnx.Rngs(0))
    assert not np.allclose(np.sqrt((np.asarray(plain.fmri_tokens(_batch())[0][0]) ** 2).mean(-1)), text_rms, rtol=0.1)


def test_adapt_defaults_and_overrides():
    import argparse
    from types import SimpleNamespace

    from brainjax.commands import adapt

    parser = argparse.ArgumentParser()
    adapt.add_arguments(parser)
    tokenizer_run = SimpleNamespace(cfg=Config(objective="tokenizer", model=ModelConfig(patch=20)))
    for extra, mode in (([], "full"), (["--lm", "some/lm"], "full"), (["--set", "language.train_lm=lora"], "lora")):
        cfg = adapt.stage2_config(tokenizer_run, parser.parse_args(extra), "some/data", None, scan_length=207)
        assert cfg.objective == "adapt" and cfg.language.train_lm == mode and cfg.train.steps == 900
        assert cfg.language.fmri_norm and cfg.language.fmri_features == "tokenizer+fc+summary"
        assert cfg.language.scan_attention == "block" and cfg.language.fc_reference == "cohort"
        # five sixths of the (shortest) scan in whole patches (172 TRs -> 160), one token per parcel (so no
        # next-patch codes), the description rephrased per crop
        assert cfg.data.window == 160 and cfg.language.fmri_time == "window" and cfg.language.code_weight == 0
        assert cfg.language.rephrase
    cfg = adapt.stage2_config(tokenizer_run, parser.parse_args(["--set", "data.window=100"]), "d", None, 207)
    assert cfg.data.window == 100
    # several atlases: rows as they are; a scan of one or two patches: the shortest crop, or the scan, once
    assert adapt.stage2_config(tokenizer_run, parser.parse_args([]), "d", None, 207, False).language.fc_reference \
        == "none"
    assert [adapt.crop_length(n, 20) for n in (7, 20, 39, 40, 300)] == [20, 20, 20, 20, 240]
    short = adapt.stage2_config(tokenizer_run, parser.parse_args([]), "d", None, scan_length=20)
    assert short.data.window == 20 and not short.language.rephrase


def test_instruct_defaults_tune_the_description_with_one_weight_per_answer():
    import argparse
    from types import SimpleNamespace

    from brainjax.commands import adapt, instruct

    parser, stage2_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    instruct.add_arguments(parser)
    adapt.add_arguments(stage2_parser)
    tokenizer_run = SimpleNamespace(cfg=Config(objective="tokenizer", model=ModelConfig(patch=20)))
    stage2 = adapt.stage2_config(tokenizer_run, stage2_parser.parse_args([]), "d", None, scan_length=207)
    args = parser.parse_args([])
    assert args.targets.split(",") == ["sex", "diagnosis", "modularity", "description"] and args.steps == 900
    cfg = instruct.stage3_config(SimpleNamespace(cfg=stage2), args, "d", tuple(args.targets.split(",")))
    assert cfg.objective == "instruct" and cfg.language.targets[-1] == "description"
    # a description's ~130 tokens weigh one answer, as a one-token label does; its frames drawn per crop as in stage 2
    assert cfg.language.loss_per_answer and not stage2.language.loss_per_answer and cfg.language.rephrase
    assert cfg.language.lm_weight == 0 and cfg.language.code_weight == 0 and cfg.data.window == stage2.data.window


def test_cohort_reference_scores_each_connectivity_row_against_the_cohort():
    language = LanguageConfig(lora_rank=2, fmri_time="window", fmri_features="tokenizer+fc", fc_reference="cohort")
    model = FMRILM(LM, TOK, QUANT, language, rngs=nnx.Rngs(0))
    raw = FMRILM(LM, TOK, QUANT, dataclasses.replace(language, fc_reference="none"), rngs=nnx.Rngs(0))
    batch = _batch()
    # mean 0 and spread 1 (as initialised) leave the row as it is
    np.testing.assert_allclose(np.asarray(model.fmri_tokens(batch)[0][0]), np.asarray(raw.fmri_tokens(batch)[0][0]),
                               atol=1e-6)
    rng = np.random.default_rng(1)
    mean = rng.uniform(-0.5, 0.5, (TOK.max_parcels,) * 2).astype(np.float32)
    std = rng.uniform(0.5, 2.0, (TOK.max_parcels,) * 2).astype(np.float32)
    model.fc_mean[...], model.fc_std[...] = mean, std
    fc = np.zeros((3, TOK.max_parcels), np.float32)
    fc[:2, :2] = (np.corrcoef(batch["signal"][0, 0, :2]) - mean[:2, :2]) / std[:2, :2]  # parcel 2 is padding
    raw.fmri_fc.kernel[...] = np.zeros(raw.fmri_fc.kernel.shape, np.float32)
    want = np.asarray(raw.fmri_tokens(batch)[0][0]) + np.asarray(model.fmri_fc(fc))
    np.testing.assert_allclose(np.asarray(model.fmri_tokens(batch)[0][0])[:2], want[:2], atol=1e-4)
    with pytest.raises(ValueError, match="fc_reference"):
        FMRILM(LM, TOK, QUANT, LanguageConfig(fc_reference="subject"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs 'fc'"):  # no connectivity rows to score
        FMRILM(LM, TOK, QUANT, LanguageConfig(fc_reference="cohort"), rngs=nnx.Rngs(0))


def test_cohort_connectivity_is_the_mean_and_spread_over_training_scans():
    from types import SimpleNamespace

    from brainjax.errors import UsageError
    from brainjax.lm.stages import cohort_connectivity

    rng = np.random.default_rng(0)
    scans = [rng.normal(size=(3, 12)).astype(np.float32) for _ in range(4)]
    present = [np.array([True, True, True])] * 3 + [np.array([True, False, True])]  # scan 3 lacks parcel 1
    splits = ["train", "train", "test", "train"]
    ds = SimpleNamespace(atlas=SimpleNamespace(name="toy", n_parcels=3), read=lambda i: scans[i],
                         present=lambda i: present[i], indices=lambda split: [i for i, s in enumerate(splits)
                                                                               if s == split])
    mean, std = cohort_connectivity([ds], window=10, max_parcels=5)
    fcs = np.stack([np.corrcoef(scans[i][:, :10]) for i in (0, 1, 3)])
    np.testing.assert_allclose(mean[0, 2], fcs[:, 0, 2].mean(), atol=1e-5)
    np.testing.assert_allclose(std[0, 2], fcs[:, 0, 2].std(), atol=1e-5)
    np.testing.assert_allclose(mean[0, 1], fcs[:2, 0, 1].mean(), atol=1e-5)  # scan 3 does not count for parcel 1
    assert mean[3, 3] == 0 and std[4, 0] == 1  # padded slots: no data
    assert std[0, 0] == pytest.approx(1e-3)  # the diagonal has no spread: floored
    other = SimpleNamespace(**(vars(ds) | {"atlas": SimpleNamespace(name="other", n_parcels=3)}))
    with pytest.raises(UsageError, match="one atlas"):
        cohort_connectivity([ds, other], window=10, max_parcels=5)
