"""A trained model as a self-contained directory a colleague can load: no optimizer state, no pickle.

``export_run(workdir, out)`` writes::

    OUT/config.json        format, brainjax version, objective, step, the run's Config and Lineage, training data
    OUT/model.safetensors  every model variable (parameters, then the other state such as codebook statistics),
                           named by its path in the model, e.g. ``params/encoder/blocks/0/attn/qkv/kernel``
    OUT/atlas.json         the training dataset's atlas (parcel names, centroids, networks)
    OUT/stats.npz          its per-parcel normalisation statistics (median, iqr of the raw series)
    OUT/preprocessing.json the training dataset's record (dataset.json: preprocessing options, splits, phenotypes)
    OUT/README.md          a model card (written by the command, which adds the evaluation table)
    OUT/lm/                language runs: the run's Hugging Face LM directory (tokenizer, adapters)

``load_pretrained(OUT)`` rebuilds the model from config.json and fills it from model.safetensors, checking every
tensor's name, shape and dtype against what the configuration describes; the arrays are placed on the current
devices exactly as a work dir's checkpoint is (``brainjax.run.load_model`` accepts either), so the embeddings
of an exported model equal the work dir's bit for bit. Writing goes to a temporary sibling renamed at the end:
an interrupted export leaves no half-written directory, and an existing one is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from brainjax import sharding
from brainjax.config import MeshConfig, from_saved, to_dict
from brainjax.errors import CheckpointMismatchError, InputError, UsageError
from brainjax.paths import strict_json, write_json
from brainjax.run.hf_vitmae import is_hf_vitmae, load_hf_vitmae
from brainjax.run.workdir import LoadedModel, Run, model_target
from brainjax.tasks import task_for

FORMAT = "brainjax-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
DATA_FILES = {"atlas.json": "atlas.json", "stats.npz": "stats.npz", "preprocessing.json": "dataset.json"}


def is_export(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory written by :func:`export_run` (config.json names the format)."""
    config = Path(path) / "config.json"
    if not (Path(path) / WEIGHTS).is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    """{"prefix/a/b/0/kernel": leaf} of a pure (nested dict) state, in a stable order."""
    return {_name(prefix, path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _name(prefix: str, path: tuple) -> str:
    return "/".join([prefix, *(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)])


def model_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of ``model`` as host arrays named ``params/...`` or ``rest/...`` (see the module doc)."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    named = {**_flat(nnx.to_pure_dict(params), "params"), **_flat(nnx.to_pure_dict(rest), "rest")}
    return {name: np.asarray(jax.device_get(value)) for name, value in named.items()}


def training_data(paths: str) -> list[Path]:
    """The training dataset directories of a run's ``data.path``, each checked to exist."""
    dirs = [Path(p) for p in paths.split(",") if p]
    for path in dirs:
        if not path.is_dir():
            raise InputError(f"{path}: the run's training dataset directory was not found (moved or deleted?); "
                             f"pass --data DIR with the dataset the run was trained on")
        for name in DATA_FILES.values():
            if not (path / name).is_file():
                raise InputError(f"{path}: the run's training dataset has no {name} (moved or deleted?); pass "
                                 f"--data DIR with the dataset the run was trained on")
    return dirs


def export_run(workdir: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None,
               data: str | None = None, card: Callable[[dict], str] | None = None) -> Path:
    """Write ``workdir``'s checkpoint ``step`` (default: the latest) as an export directory at ``out``.

    data: the training dataset directory (default: the run's ``data.path``); card(config.json dict) -> the
    model card (README.md; default: a line naming the run). Raises :class:`UsageError` when ``out`` exists
    (nothing is overwritten).
    """
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} already exists; export into a new directory (nothing was written)")
    with Run(workdir) as run:
        loaded = run.load(step)
    cfg, lineage = loaded.cfg, loaded.lineage
    datasets = training_data(data or cfg.data.path)
    tensors = model_tensors(loaded.model)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT, "step": str(loaded.step)})
        for target, source in DATA_FILES.items():
            shutil.copyfile(datasets[0] / source, staging / target)
        lm_dir = Path(str(run.workdir)) / "lm"
        if cfg.objective in ("adapt", "instruct") and lm_dir.is_dir():
            shutil.copytree(lm_dir, staging / "lm")
        config = strict_json({
            "format": FORMAT, "format_version": FORMAT_VERSION, "brainjax_version": version("brainjax"),
            "objective": cfg.objective, "step": loaded.step, "source": str(run.workdir),
            "parameters": int(sum(v.size for k, v in tensors.items() if k.startswith("params/"))),
            "training_data": [{"path": str(d), **_dataset_summary(d)} for d in datasets],
            # the saved mesh described the training devices; a loader lays the model out on its own
            "config": to_dict(dataclasses.replace(cfg, mesh=MeshConfig())), "lineage": to_dict(lineage)})
        write_json(staging / "config.json", config)
        (staging / "README.md").write_text(card(config) if card else f"brainjax model from {run.workdir}\n")
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _dataset_summary(path: Path) -> dict:
    info = json.loads((path / "dataset.json").read_text())
    atlas = json.loads((path / "atlas.json").read_text())
    return {"atlas": atlas.get("name"), "n_parcels": info.get("n_parcels"), "n_scans": info.get("n_scans")}


def read_export_config(path: str | os.PathLike) -> dict:
    """config.json of an export directory, checked for the format (a clear error otherwise)."""
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_path}: not a readable brainjax export ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputError(f"{config_path}: not a brainjax export (format {config.get('format')!r} if a dict)")
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{config_path}: export format version {config.get('format_version')}, this brainjax "
                         f"reads {FORMAT_VERSION}")
    return config


def load_pretrained(path: str | os.PathLike, mesh: Any = None, objective: str | None = None) -> LoadedModel:
    """The model of an export directory (see the module doc) on ``mesh`` (default: every device here).

    objective: refuse an export of another objective. Raises :class:`CheckpointMismatchError` naming the
    tensor when model.safetensors lacks one the configuration describes, has an extra one, or one of another
    shape or dtype; :class:`InputError` for a missing or unreadable file.
    """
    path = Path(path)
    config = read_export_config(path)
    cfg, lineage = from_saved(config["config"], config.get("lineage"))
    if objective is not None and cfg.objective != objective:
        raise CheckpointMismatchError(f"{path} holds a {cfg.objective!r} model, not a {objective} model")
    if (path / "lm").is_dir():
        lineage = dataclasses.replace(lineage, lm_path=str(path / "lm"))
    cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=-1, fsdp=1))
    task = task_for(cfg, lineage)
    mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
    graphdef, target = model_target(task, mesh)
    weights = path / WEIGHTS
    try:
        stored = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise InputError(f"{weights}: cannot read the weights ({err})") from err
    shapes = {part: nnx.to_pure_dict(target[part]) for part in ("params", "rest")}
    expected = {**_flat(shapes["params"], "params"), **_flat(shapes["rest"], "rest")}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        raise CheckpointMismatchError(f"{weights}: does not hold the model its config.json describes (missing "
                                      f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                                      f"{extra[:3]}{'...' if len(extra) > 3 else ''})")
    for name, spec in expected.items():
        if stored[name].shape != spec.shape or stored[name].dtype != spec.dtype:
            raise CheckpointMismatchError(f"{weights}: tensor {name} is {stored[name].dtype}{list(stored[name].shape)}"
                                          f", the model needs {spec.dtype}{list(spec.shape)}")
    for part in ("params", "rest"):
        nnx.replace_by_pure_dict(target[part], jax.tree_util.tree_map_with_path(
            lambda p, spec, part=part: jax.device_put(stored[_name(part, p)], spec.sharding), shapes[part]))
    model = nnx.merge(graphdef, target["params"], target["rest"])
    return LoadedModel(model, cfg, lineage, int(config.get("step", -1)), mesh)


def load_model(path: str | os.PathLike, step: int | None = None, mesh: Any = None,
               objective: str | None = None) -> LoadedModel:
    """The model of a work dir's checkpoint ``step`` (default: the latest), of an export directory, or of a
    Hugging Face ViT-MAE directory (BrainLM's released weights, :mod:`brainjax.run.hf_vitmae`), parameters
    only; every evaluation command loads through here, so each accepts any of them.

    objective: refuse a run of another objective (e.g. ``"tokenizer"`` where a tokenizer is needed).
    """
    if is_hf_vitmae(path):  # BrainLM's released ViT-MAE weights (a local Hugging Face directory)
        loaded = load_hf_vitmae(path, mesh, objective)
        if step is not None:
            raise UsageError(f"{path} is a Hugging Face model without steps; leave out --step")
        return loaded
    if is_export(path):
        loaded = load_pretrained(path, mesh, objective)
        if step is not None and step != loaded.step:
            raise UsageError(f"{path} is an export of step {loaded.step}; --step {step} needs the work dir")
        return loaded
    with Run(path) as run:
        return run.load(step, mesh, objective)
