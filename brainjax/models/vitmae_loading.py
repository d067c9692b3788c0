"""Load a local Hugging Face ViT-MAE directory (BrainLM's ``vitmae_111M`` / ``vitmae_650M``) into :class:`ViTMAE`.

Reads ``config.json`` (``model_type`` must be ``vit_mae``) and safetensors weights: ``model.safetensors`` or
``model.safetensors.index.json`` plus its shards. No pickle: a directory holding only ``pytorch_model.bin``
is refused with the command that converts it (:func:`convert_bin_to_safetensors`, ``brainjax
convert-brainlm``), which is the one place a ``.bin`` is read, through ``torch.load(weights_only=True)``.

Tensor names: transformers 4.x names (``vit.encoder.layer.{i}.attention.attention.query.weight``, what
BrainLM's checkpoints hold), the 5.x in-memory names (``vit.layers.{i}.attention.q_proj.weight``,
``.mlp.fc1``) and the names 5.x writes for decoder layers (``decoder.decoder_encoder.layer.{i}``) are all
read; every tensor of the checkpoint must be used, every parameter found, every shape right, else
:class:`~brainjax.errors.CheckpointMismatchError` lists the file and tensor of each problem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.errors import CheckpointMismatchError, InputError
from brainjax.models.lm_loading import load_tensors, read_json
from brainjax.models.vitmae import ViTMAE, ViTMAEConfig
from brainjax.paths import inside

NnxPath = tuple[str | int, ...]
# nnx path -> (HF tensor name, HF shape, HF array -> NNX array)
Table = dict[NnxPath, tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]]
SUPPORTED_TYPES = ("vit_mae",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# 5.x names -> 4.x (canonical) names, applied in order
_RENAMES = (
    (re.compile(r"^vit\.layers\.(\d+)\."), r"vit.encoder.layer.\1."),
    (re.compile(r"^decoder\.decoder_encoder\.layer\.(\d+)\."), r"decoder.decoder_layers.\1."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)


def canonical_name(name: str) -> str:
    """A checkpoint tensor name in transformers 4.x's spelling (the names BrainLM's checkpoints use)."""
    for pattern, repl in _RENAMES:
        name = pattern.sub(repl, name)
    return name


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T  # torch Linear weights are [out, in]; NNX kernels [in, out]


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[-2], a.shape[-1])


def _conv(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).T  # Conv2d [hidden, C, ph, pw] -> [C * ph * pw, hidden]


def hf_table(cfg: ViTMAEConfig) -> Table:
    """Every NNX parameter of :class:`ViTMAE` for ``cfg`` with its HF (4.x) name and shape."""
    width, dec, n = cfg.hidden_size, cfg.decoder_hidden_size, cfg.num_patches
    table: Table = {
        ("patch_embed", "kernel"): ("vit.embeddings.patch_embeddings.projection.weight",
                                    (width, cfg.num_channels, *cfg.patch_size), _conv),
        ("patch_embed", "bias"): ("vit.embeddings.patch_embeddings.projection.bias", (width,), _same),
        ("cls_token",): ("vit.embeddings.cls_token", (1, 1, width), _flat),
        ("position_embeddings",): ("vit.embeddings.position_embeddings", (1, n + 1, width), _rows),
        ("layernorm", "scale"): ("vit.layernorm.weight", (width,), _same),
        ("layernorm", "bias"): ("vit.layernorm.bias", (width,), _same),
        ("decoder_embed", "kernel"): ("decoder.decoder_embed.weight", (dec, width), _transpose),
        ("decoder_embed", "bias"): ("decoder.decoder_embed.bias", (dec,), _same),
        ("mask_token",): ("decoder.mask_token", (1, 1, dec), _flat),
        ("decoder_pos_embed",): ("decoder.decoder_pos_embed", (1, n + 1, dec), _rows),
        ("decoder_norm", "scale"): ("decoder.decoder_norm.weight", (dec,), _same),
        ("decoder_norm", "bias"): ("decoder.decoder_norm.bias", (dec,), _same),
        ("decoder_pred", "kernel"): ("decoder.decoder_pred.weight", (cfg.patch_dim, dec), _transpose),
        ("decoder_pred", "bias"): ("decoder.decoder_pred.bias", (cfg.patch_dim,), _same),
    }
    stacks = (("layers", "vit.encoder.layer", width, cfg.intermediate_size, cfg.num_hidden_layers),
              ("decoder_layers", "decoder.decoder_layers", dec, cfg.decoder_intermediate_size,
               cfg.decoder_num_hidden_layers))
    for ours, theirs, w, mlp, depth in stacks:
        dense = {"q": ("attention.attention.query", w, w), "k": ("attention.attention.key", w, w),
                 "v": ("attention.attention.value", w, w), "o": ("attention.output.dense", w, w),
                 "fc1": ("intermediate.dense", mlp, w), "fc2": ("output.dense", w, mlp)}
        for i in range(depth):
            for leaf, (hf, out, inp) in dense.items():
                table[(ours, i, leaf, "kernel")] = (f"{theirs}.{i}.{hf}.weight", (out, inp), _transpose)
                if cfg.qkv_bias or leaf not in "qkv":
                    table[(ours, i, leaf, "bias")] = (f"{theirs}.{i}.{hf}.bias", (out,), _same)
            for norm in ("layernorm_before", "layernorm_after"):
                table[(ours, i, norm, "scale")] = (f"{theirs}.{i}.{norm}.weight", (w,), _same)
                table[(ours, i, norm, "bias")] = (f"{theirs}.{i}.{norm}.bias", (w,), _same)
    return table


def _weights_file(directory: Path, name: str) -> str:
    """The file that holds tensor ``name`` (for error messages)."""
    index = directory / "model.safetensors.index.json"
    if not (directory / "model.safetensors").exists() and index.exists():
        try:
            shard = json.loads(index.read_text()).get("weight_map", {}).get(name)
        except (OSError, ValueError, AttributeError):
            shard = None
        return str(directory / shard) if shard else str(index)
    return str(directory / "model.safetensors")


def read_config(directory: str | Path) -> ViTMAEConfig:
    """The :class:`ViTMAEConfig` of ``directory/config.json``; InputError names the file and the problem."""
    path = Path(directory) / "config.json"
    hf = read_json(path, "(a Hugging Face config)")
    if not isinstance(hf, dict):
        raise InputError(f"{path}: not a JSON object")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        hint = (" (BrainLM's first 13M model: a Nystromformer encoder with xyz-coordinate embeddings, not a "
                "ViT-MAE; only the vitmae_111M and vitmae_650M checkpoints are supported)"
                if model_type == "brainlm_mae" else "")
        raise InputError(f"{path}: model_type {model_type!r} is not supported; expected one of "
                         f"{list(SUPPORTED_TYPES)}{hint}")
    try:
        return ViTMAEConfig.from_hf(hf)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: {err}") from err


def _check_weights_present(directory: Path) -> None:
    if any((directory / name).exists() for name in WEIGHT_FILES):
        return
    pickled = [name for name in PICKLE_FILES if (directory / name).exists()]
    if pickled:
        raise InputError(f"{directory / pickled[0]}: PyTorch pickle weights are not read (no safetensors file in "
                         f"{directory}); convert them once with: brainjax convert-brainlm --src {directory} "
                         f"--out NEW_DIR, then load NEW_DIR")
    raise FileNotFoundError(f"no weights in {directory}: neither {' nor '.join(WEIGHT_FILES)} exists")


def assign(directory: Path, cfg: ViTMAEConfig, tensors: dict[str, np.ndarray]) -> dict[NnxPath, np.ndarray]:
    """Map checkpoint ``tensors`` onto NNX paths; CheckpointMismatchError lists every missing, unexpected,
    duplicated or mis-shaped tensor with its file."""
    canonical: dict[str, str] = {}
    problems = []
    for name in tensors:
        key = canonical_name(name)
        if key in canonical:
            problems.append(f"{_weights_file(directory, name)}: tensor {name} duplicates {canonical[key]}")
        canonical[key] = name
    out = {}
    table = hf_table(cfg)
    for path, (key, shape, transform) in table.items():
        if key not in canonical:
            problems.append(f"{_weights_file(directory, key)}: missing tensor {key} {shape}")
            continue
        name = canonical[key]
        array = tensors[name]
        if tuple(array.shape) != shape:
            problems.append(f"{_weights_file(directory, name)}: tensor {name} has shape {tuple(array.shape)}, "
                            f"expected {shape} from config.json")
            continue
        out[path] = np.asarray(transform(np.asarray(array, dtype=np.float32)))
    used = {key for key, _, _ in table.values()}
    problems += [f"{_weights_file(directory, name)}: unexpected tensor {name} {tuple(tensors[name].shape)}"
                 for key, name in sorted(canonical.items()) if key not in used]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointMismatchError(f"{directory} does not match its config.json as a ViT-MAE "
                                      f"({len(problems)} problems): {shown}")
    return out


def load_vitmae(path: str | Path, *, dtype: str = "float32", attn_impl: str = "auto"
                ) -> tuple[ViTMAE, ViTMAEConfig]:
    """``(model, config)`` from a local HF ViT-MAE directory; parameters float32, dense layers compute in
    ``dtype``. ``config.mask_ratio`` is the checkpoint's; :meth:`ViTMAE.embed` masks nothing regardless."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory (expected a Hugging Face model directory)")
    cfg = read_config(directory)
    _check_weights_present(directory)
    arrays = assign(directory, cfg, load_tensors(directory))
    abstract = nnx.eval_shape(lambda: ViTMAE(cfg, rngs=nnx.Rngs(0), dtype=dtype, attn_impl=attn_impl))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    if set(flat) != set(arrays):  # a bug in the table, not in the checkpoint
        raise RuntimeError(f"name table does not cover the model: {sorted(set(flat) ^ set(arrays), key=str)}")
    loaded = []
    for p, var in flat.items():
        if tuple(var.get_value().shape) != arrays[p].shape:
            raise RuntimeError(f"name table gives {p} shape {arrays[p].shape}, model has {var.get_value().shape}")
        loaded.append((p, var.replace(jnp.asarray(arrays[p]))))
    return nnx.merge(graphdef, nnx.from_flat_state(loaded)), cfg


def convert_bin_to_safetensors(src_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` (+ a copy of ``config.json``) from ``src_dir``'s
    ``pytorch_model.bin`` (or ``pytorch_model.bin.index.json`` and its shards). Returns the safetensors path.

    Each pickle is read by ``torch.load(path, weights_only=True, map_location="cpu")`` (no arbitrary code);
    torch is needed only here. Tensor names and values are kept as they are."""
    src, out = Path(src_dir), Path(out_dir)
    config = src / "config.json"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    if not config.exists():
        raise FileNotFoundError(f"{config} does not exist (the converter copies it next to the weights)")
    read_config(src)  # refuse a checkpoint this package cannot load before converting it
    index, single = src / "pytorch_model.bin.index.json", src / "pytorch_model.bin"
    if single.exists():
        files = [single]
    elif index.exists():
        weight_map = read_json(index, "(a PyTorch weights index)").get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: no weight_map object")
        files = [inside(src, shard, index) for shard in sorted(set(weight_map.values()))]
    else:
        raise FileNotFoundError(f"no {PICKLE_FILES[0]} (or {PICKLE_FILES[1]}) in {src}")
    target = out / "model.safetensors"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    try:
        import torch  # noqa: PLC0415  (optional dependency, converter only)
        from safetensors.torch import save_file  # noqa: PLC0415
    except ImportError as err:
        raise InputError(f"converting {files[0]} needs PyTorch, which is not installed ({err}); install it with "
                         f"`pip install torch` (CPU build is enough) and run the conversion again") from err
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state = torch.load(file, weights_only=True, map_location="cpu")
        except Exception as err:  # torch raises UnpicklingError / RuntimeError for anything it refuses
            raise InputError(f"{file}: not a readable weights-only PyTorch checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
        if not isinstance(state, dict):
            raise InputError(f"{file}: holds a {type(state).__name__}, expected a dict of tensors (a state dict)")
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{file}: entry {name!r} is a {type(value).__name__}, not a tensor")
            if name in tensors:
                raise InputError(f"{file}: tensor {name} appears in more than one shard")
            tensors[name] = value.detach().to("cpu").contiguous().clone()  # clone: no shared storage
    out.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".safetensors.tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"format": "pt"})
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    if config.resolve() != (out / "config.json").resolve():
        shutil.copyfile(config, out / "config.json")
    return target
