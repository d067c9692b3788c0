"""The NNX ViT-MAE against Hugging Face transformers' ViTMAEForPreTraining (BrainLM's released architecture).

Tiny random transformers models are saved as safetensors, loaded with :func:`load_vitmae` and run on the same
pixels and ``noise``: logits, mask, ids_restore, every encoder hidden state and the loss agree within 1e-4
(float32). BrainLM's signal <-> image mapping (pad with -1, repeat channels, crop, average channels, pixel MSE
over the masked signal region) is checked against the same steps written in torch around the HF model.
"""

import json
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from brainjax.errors import CheckpointMismatchError, InputError
from brainjax.models.vitmae import (
    ViTMAE,
    ViTMAEConfig,
    bicubic_matrix,
    embed,
    parcel_order_by_y,
    reconstruct,
    sincos_table,
)
from brainjax.models.vitmae_loading import canonical_name, convert_bin_to_safetensors, load_vitmae

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402
from safetensors.torch import load_file as load_torch  # noqa: E402
from safetensors.torch import save_file as save_torch  # noqa: E402

TOL = 1e-4


def hf_model(image=8, patch=2, channels=1, norm_pix=False, mask_ratio=0.5, qkv_bias=True, seed=0):
    """A random transformers ViTMAEForPreTraining (every tensor random, positions and tokens included)."""
    cfg = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=image,
        patch_size=patch, num_channels=channels, qkv_bias=qkv_bias, decoder_hidden_size=16,
        decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=40,
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.2 * torch.randn_like(p) if is_scale else 0.3 * torch.randn_like(p))
    return model


def save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


def run_hf(model, pixels, noise, **kw):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels), noise=torch.from_numpy(noise), output_hidden_states=True,
                     **kw)


def close(ours, theirs, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=TOL, err_msg=what)


def assert_same_forward(ours, theirs):
    close(ours["logits"], theirs.logits, "logits")
    close(ours["mask"], theirs.mask, "mask")
    np.testing.assert_array_equal(np.asarray(ours["ids_restore"]), theirs.ids_restore.numpy())
    assert len(ours["hidden_states"]) == len(theirs.hidden_states) == 3
    for i, (a, b) in enumerate(zip(ours["hidden_states"], theirs.hidden_states)):
        close(a, b, f"hidden state {i}")
    close(ours["loss"], theirs.loss, "loss")


# one compiled forward per shape (eager dispatch compiles every small op: several times slower here)
forward = nnx.jit(lambda model, pixels, noise, interpolate=False: model(pixels, noise,
                                                                        interpolate_pos_encoding=interpolate),
                  static_argnums=3)


def inputs(shape, patch=2, seed=1):
    """Pixels [B, C, H, W] and noise [B, patches] for square patches of ``patch``."""
    rng = np.random.default_rng(seed)
    b, c, h, w = shape
    return rng.normal(size=shape).astype(np.float32), rng.random((b, (h // patch) * (w // patch))).astype(np.float32)


@pytest.mark.parametrize("image, patch, channels, norm_pix, mask_ratio, qkv_bias", [
    (8, 2, 1, False, 0.5, True),
    (8, 2, 3, True, 0.75, True),
    (12, 4, 1, True, 0.4, False),
])
def test_forward_matches_transformers(tmp_path, image, patch, channels, norm_pix, mask_ratio, qkv_bias):
    hf = hf_model(image, patch, channels, norm_pix, mask_ratio, qkv_bias)
    model, cfg = load_vitmae(save(hf, tmp_path / "m"))
    assert cfg.image_size == (image, image) and cfg.patch_size == (patch, patch) and cfg.norm_pix_loss == norm_pix
    pixels, _ = inputs((2, channels, image, image))
    noise = np.random.default_rng(2).random((2, (image // patch) ** 2)).astype(np.float32)
    ours = forward(model, pixels, noise)
    assert_same_forward(ours, run_hf(hf, pixels, noise))
    # last_hidden_state is after the final LayerNorm (HF's ViTMAEModel)
    with torch.no_grad():
        latent = hf.vit(torch.from_numpy(pixels), noise=torch.from_numpy(noise)).last_hidden_state
    close(ours["last_hidden_state"], latent, "last hidden state")


def test_non_square_image_matches_transformers(tmp_path):
    """A (8, 32) image with 4x4 patches (a 2 x 8 grid): natively (encoder and decoder, no interpolation) and
    through HF's full forward, which for a non-square image needs interpolate_pos_encoding (bicubic resize of
    the stored positions read as a 4 x 4 grid)."""
    hf = hf_model(image=(8, 32), patch=4, channels=1, norm_pix=True)
    model, cfg = load_vitmae(save(hf, tmp_path / "m"))
    assert cfg.image_size == (8, 32) and cfg.grid == (2, 8)
    pixels, noise = inputs((2, 1, 8, 32), patch=4)
    ours = model.encode(pixels, noise)
    with torch.no_grad():
        theirs = hf.vit(torch.from_numpy(pixels), noise=torch.from_numpy(noise), output_hidden_states=True)
        logits = hf.decoder(theirs.last_hidden_state, theirs.ids_restore).logits
    close(ours["last_hidden_state"], theirs.last_hidden_state, "native last hidden state")
    close(model.decode(ours["last_hidden_state"], ours["ids_restore"]), logits, "native logits")
    assert_same_forward(forward(model, pixels, noise, True),
                        run_hf(hf, pixels, noise, interpolate_pos_encoding=True))


def test_interpolated_positions_for_another_image_size(tmp_path):
    """A square 8 x 8 model (4 x 4 grid) on a 8 x 12 image: positions resized to 4 x 6, decoder's to 24."""
    hf = hf_model(image=8, patch=2)
    model, _ = load_vitmae(save(hf, tmp_path / "m"))
    pixels, noise = inputs((2, 1, 8, 12))
    assert_same_forward(forward(model, pixels, noise, True),
                        run_hf(hf, pixels, noise, interpolate_pos_encoding=True))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixels, noise)


def test_bicubic_matrix_is_torch_interpolate():
    rng = np.random.default_rng(0)
    for n_in, n_out in ((4, 6), (4, 2), (3, 7), (5, 5), (16, 24)):
        x = rng.normal(size=(n_in, 3)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x.T[None, :, None, :]), size=(1, n_out),
                                                 mode="bicubic", align_corners=False)[0, :, 0].numpy().T
        np.testing.assert_allclose(bicubic_matrix(n_in, n_out) @ x, theirs, atol=1e-5)


def test_sincos_table_is_maes_layout():
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    table = build_2d_sinusoidal_position_embedding(4, 4, embed_dim=16, cls_token=True).numpy()
    half = table.shape[1] // 2  # HF rotates its [h | w] halves back to the original MAE's [w | h] layout
    np.testing.assert_allclose(sincos_table((4, 4), 16), np.concatenate([table[:, half:], table[:, :half]], 1),
                               atol=1e-6)
    # a fresh (not loaded) model carries the same fixed tables
    model = ViTMAE(ViTMAEConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                                image_size=8, patch_size=2, num_channels=1, decoder_hidden_size=8,
                                decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                decoder_intermediate_size=8), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(model.position_embeddings[...]), sincos_table((4, 4), 16))


def test_embed_matches_the_unmasked_encoder(tmp_path):
    """embed: one-channel signal the image's size (stock) and a smaller 3-channel one (BrainLM's padding)."""
    hf = hf_model(image=8, patch=2)
    model, _ = load_vitmae(save(hf, tmp_path / "m"))
    signal = np.random.default_rng(3).normal(size=(2, 8, 8)).astype(np.float32)
    out = embed(model, signal)  # the compiled helper; the padded case below runs the method eagerly
    hf.config.mask_ratio = 0.0
    with torch.no_grad():
        theirs = hf.vit(torch.from_numpy(signal[:, None]), noise=torch.arange(16.0).repeat(2, 1),
                        output_hidden_states=True)
    close(out["cls"], theirs.last_hidden_state[:, 0], "cls")
    close(out["tokens"], theirs.last_hidden_state[:, 1:], "tokens")
    close(out["mean"], theirs.last_hidden_state[:, 1:].mean(1), "mean")
    close(embed(model, signal, normed=False)["cls"], theirs.hidden_states[-1][:, 0], "cls before the final norm")
    assert out["token_mask"].all() and out["tokens"].shape == (2, 16, 32)

    hf3 = hf_model(image=12, patch=4, channels=3, seed=5)
    model3, _ = load_vitmae(save(hf3, tmp_path / "m3"))
    small = np.random.default_rng(4).normal(size=(2, 10, 6)).astype(np.float32)
    out3 = model3.embed(small)
    hf3.config.mask_ratio = 0.0
    image = torch.nn.functional.pad(torch.from_numpy(small), (3, 3, 1, 1), value=-1.0)[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        latent = hf3.vit(image, noise=torch.arange(9.0).repeat(2, 1)).last_hidden_state
    close(out3["cls"], latent[:, 0], "padded cls")
    close(out3["tokens"], latent[:, 1:], "padded tokens")
    # columns 3..8 of the 12 hold the signal: patch columns 0..2 of width 4 all touch it
    assert out3["token_mask"].all()
    assert model3.signal_patches(10, 2).reshape(3, 3).tolist() == [[False, True, False]] * 3


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_is_brainlms_padded_forward(tmp_path, norm_pix):
    """The with-padding steps written in torch around the HF model: pad with -1 to the square image, repeat
    the channels, forward, unpatchify, crop the padding, average the channels, MSE over masked pixels."""
    hf = hf_model(image=12, patch=4, channels=3, norm_pix=norm_pix, mask_ratio=0.5, seed=7)
    model, _ = load_vitmae(save(hf, tmp_path / "m"))
    signal = np.random.default_rng(5).normal(size=(2, 10, 6)).astype(np.float32)
    noise = np.random.default_rng(6).random((2, 9)).astype(np.float32)
    ours = model.reconstruct(signal, noise)

    image = torch.nn.functional.pad(torch.from_numpy(signal), (3, 3, 1, 1), value=-1.0)[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = hf(pixel_values=image, noise=torch.from_numpy(noise))
    size = (12, 12)
    pred = hf.unpatchify(out.logits, size)[:, :, 1:-1, 3:-3].mean(1)
    mask = hf.unpatchify(out.mask[:, :, None].repeat(1, 1, out.logits.shape[-1]), size)[:, :, 1:-1, 3:-3].mean(1)
    target = torch.from_numpy(signal)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2 * mask).sum() / mask.sum()
    if norm_pix:  # ours is un-normalised back to signal space with the signal's own statistics
        pred = pred * (var + 1e-6) ** 0.5 + mean
    close(ours["pred"], pred, "pred")
    np.testing.assert_array_equal(np.asarray(ours["mask"]), mask.numpy() > 0.5)
    close(ours["loss"], loss, "loss")
    close(ours["logits"], out.logits, "logits")
    assert ours["pred"].shape == ours["mask"].shape == (2, 10, 6)


def test_reconstruct_without_padding_is_hfs_loss_and_pixels(tmp_path):
    hf = hf_model(image=8, patch=2, norm_pix=True)
    model, _ = load_vitmae(save(hf, tmp_path / "m"))
    signal, noise = inputs((2, 1, 8, 8))
    ours = reconstruct(model, signal[:, 0], noise)  # compiled; the padded tests run the method eagerly
    theirs = run_hf(hf, signal, noise)
    target = hf.patchify(torch.from_numpy(signal))
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pixels = hf.unpatchify(theirs.logits * (var + 1e-6) ** 0.5 + mean, (8, 8))[:, 0]
    close(ours["pred"], pixels, "pred")
    close(ours["loss"], theirs.loss, "loss")
    rng_out = reconstruct(model, signal[:, 0], rng=jax.random.key(0))
    assert rng_out["mask"].mean() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="noise"):
        model.reconstruct(signal[:, 0])


def test_sharded_and_renamed_checkpoints_load(tmp_path):
    """Shards with an index; and the names transformers 5 uses in memory (vit.layers.N.attention.q_proj)."""
    hf = hf_model()
    src = save(hf, tmp_path / "m")
    reference, _ = load_vitmae(src)
    pixels, noise = inputs((1, 1, 8, 8))
    expected = np.asarray(forward(reference, pixels, noise)["logits"])

    tensors = load_file(src / "model.safetensors")
    names = sorted(tensors)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((src / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / shard))
        weight_map.update({n: shard for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    logits = forward(load_vitmae(sharded)[0], pixels, noise)["logits"]
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-6)

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "config.json").write_text((src / "config.json").read_text())
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(".q_proj." in k for k in state) and any(".decoder_encoder." in k for k in tensors)
    assert {canonical_name(k) for k in state} == {canonical_name(k) for k in tensors}  # three spellings, one model
    save_torch(state, str(renamed / "model.safetensors"))
    logits = forward(load_vitmae(renamed)[0], pixels, noise)["logits"]
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("vitmae") / "m"
    return save(hf_model(), path)


def _copy(src, dst, edit=None):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    if edit:
        edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_a_missing_tensor_is_named(saved, tmp_path):
    name = "vit.encoder.layer.1.attention.attention.key.weight"
    bad = _copy(saved, tmp_path / "bad", lambda t: t.pop(name))
    where = r"model\.safetensors: missing tensor " + name.replace(".", r"\.")
    with pytest.raises(CheckpointMismatchError, match=where):
        load_vitmae(bad)


def test_a_wrong_shape_and_an_extra_tensor_are_named(saved, tmp_path):
    def edit(t):
        t["decoder.decoder_pred.weight"] = np.zeros((5, 16), np.float32)
        t["vit.encoder.layer.2.layernorm_before.weight"] = np.ones(32, np.float32)

    bad = _copy(saved, tmp_path / "bad", edit)
    with pytest.raises(CheckpointMismatchError) as err:
        load_vitmae(bad)
    message = str(err.value)
    assert "tensor decoder.decoder_pred.weight has shape (5, 16), expected (4, 16)" in message
    assert "unexpected tensor vit.encoder.layer.2.layernorm_before.weight" in message
    assert str(bad / "model.safetensors") in message


def test_a_config_of_another_shape_is_refused(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(CheckpointMismatchError, match="has shape"):
        load_vitmae(bad)


def test_unsupported_model_types_are_refused(saved, tmp_path):
    bad = _copy(saved, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "brainlm_mae"}))
    with pytest.raises(InputError, match=r"config\.json: model_type 'brainlm_mae' is not supported.*Nystromformer"):
        load_vitmae(bad)
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(InputError, match="model_type 'vit'"):
        load_vitmae(bad)


def _bin_dir(saved, path):
    """What BrainLM's hub folders hold: config.json + pytorch_model.bin with transformers 4.x names."""
    path.mkdir()
    (path / "config.json").write_text((saved / "config.json").read_text())
    torch.save(load_torch(str(saved / "model.safetensors")), path / "pytorch_model.bin")
    return path


def test_a_pickle_only_directory_asks_for_conversion_then_converts(saved, tmp_path):
    src = _bin_dir(saved, tmp_path / "bin")
    with pytest.raises(InputError, match=r"pytorch_model\.bin: .*not read.*brainjax convert-brainlm --src"):
        load_vitmae(src)
    out = convert_bin_to_safetensors(src, tmp_path / "out")
    assert out == tmp_path / "out" / "model.safetensors" and (tmp_path / "out" / "config.json").exists()
    pixels, noise = inputs((2, 1, 8, 8))
    expected = forward(load_vitmae(saved)[0], pixels, noise)
    got = forward(load_vitmae(out.parent)[0], pixels, noise)
    for key in ("logits", "loss", "last_hidden_state"):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))
    with pytest.raises(FileExistsError, match="already exists"):
        convert_bin_to_safetensors(src, tmp_path / "out")
    convert_bin_to_safetensors(src, tmp_path / "out", overwrite=True)


def test_the_converter_refuses_pickles_with_code_and_needs_torch(saved, tmp_path, monkeypatch):
    src = _bin_dir(saved, tmp_path / "bin")
    torch.save({"weights": object()}, src / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(InputError, match="not a readable weights-only PyTorch checkpoint"):
        convert_bin_to_safetensors(src, tmp_path / "out")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match="needs PyTorch"):
        convert_bin_to_safetensors(src, tmp_path / "out2")


def test_convert_brainlm_command(saved, tmp_path, capsys):
    from brainjax.cli import main as cli

    src = _bin_dir(saved, tmp_path / "bin")
    assert cli(["convert-brainlm", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert load_vitmae(tmp_path / "out")[1].hidden_size == 32
    missing = str(tmp_path / "nothing-here")
    assert cli(["convert-brainlm", "--src", missing, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and missing in err[0]


def test_config_from_hf_and_parcel_order():
    cfg = ViTMAEConfig.from_hf({"image_size": [432, 432], "patch_size": 16, "hidden_size": 768,
                                "num_attention_heads": 12, "model_type": "vit_mae", "train_mode": "auto_encode"})
    assert cfg.image_size == (432, 432) and cfg.grid == (27, 27) and cfg.num_patches == 729
    assert cfg.patch_dim == 16 * 16 * 3
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTMAEConfig(image_size=(10, 12), patch_size=4)
    with pytest.raises(ValueError, match="num_attention_heads"):
        ViTMAEConfig(hidden_size=30, num_attention_heads=4)
    coords = np.array([[0, 5.0, 0], [1, -3.0, 2], [2, 5.0, 1], [3, 0.0, 0]])
    assert parcel_order_by_y(coords).tolist() == [1, 3, 0, 2]
