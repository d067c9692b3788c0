"""What ``brainjax adapt`` (stage 2) and ``brainjax instruct`` (stage 3) share: the run's language-model files,
its warm starts and the LoRA adapters it exports (training itself is :func:`brainjax.run.launch`).

A run's work dir holds, besides the checkpoints, ``lm/`` with the language model's ``config.json`` and
``tokenizer.json`` (copied at the start), so a checkpoint is usable without the directory it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.distributed import barrier, is_main, main_first
from brainjax.errors import UsageError
from brainjax.lm.default_lm import default_lm
from brainjax.models.fmri_lm import FC_STD_FLOOR, patch_connectivity
from brainjax.models.lm import LMConfig
from brainjax.models.lm_loading import from_pretrained
from brainjax.nn.lora import save_adapters
from brainjax.tasks.base import to_host

LM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def lm_dir_or_default(path: str | None) -> Path:
    """``path`` resolved, or the embedded default LM (built and cached on first use)."""
    if path:
        directory = Path(path).expanduser().resolve()
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory}: not a Hugging Face model directory (no config.json)")
        return directory
    return Path(default_lm())


def architecture_json(lm_dir: Path) -> str:
    """The LM's :class:`LMConfig` as JSON, for ``Lineage.lm_architecture``."""
    cfg = LMConfig.from_hf(json.loads((lm_dir / "config.json").read_text()))
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def keep_lm_files(lm_dir: Path, workdir: Path) -> Path:
    """Copy the LM's config and tokenizer into ``workdir/lm`` (once; atomically; by process 0 of a multi-host
    run) and return that folder."""
    target = workdir / "lm"
    if not (lm_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{lm_dir}: no tokenizer.json")

    def copy() -> Path:
        if (target / "tokenizer.json").exists():
            return target
        workdir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lm-", dir=workdir))
        for name in LM_FILES:
            if (lm_dir / name).exists():
                shutil.copy2(lm_dir / name, staging / name)
        os.replace(staging, target)
        return target
    return main_first("lm_files", copy, lambda: target)


def _place(new: dict, like: dict, what: str) -> dict:
    if jax.tree.structure(new) != jax.tree.structure(like):
        raise ValueError(f"the {what} parameters do not match the model being trained")
    return jax.tree.map(lambda a, b: jax.device_put(np.asarray(a, np.float32).astype(b.dtype), b.sharding), new, like)


def _lm_into(target: dict, source: dict) -> dict:
    """Pretrained LM parameters (plain DecoderLM paths) into the run's LM tree, whose wrapped projections keep
    their base weights one level down (``q/base/kernel`` under LoRA)."""
    flat_source = dict(jax.tree_util.tree_flatten_with_path(source)[0])
    flat_target, treedef = jax.tree_util.tree_flatten_with_path(target)
    keys = [tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path) for path, _ in flat_target]
    by_name = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path): v for path, v in flat_source.items()}
    leaves, used = [], set()
    for key, (_, old) in zip(keys, flat_target):
        if "lora_a" in key or "lora_b" in key:
            leaves.append(old)  # adapters keep their initialisation
            continue
        plain = tuple(k for k in key if k != "base")
        if plain not in by_name:
            raise ValueError(f"the pretrained language model has no parameter {'/'.join(map(str, plain))}")
        value = by_name[plain]
        if np.shape(value) != old.shape:
            raise ValueError(f"language model parameter {'/'.join(map(str, plain))}: shape {np.shape(value)} "
                             f"!= {old.shape}")
        leaves.append(jax.device_put(np.asarray(value).astype(old.dtype), old.sharding))
        used.add(plain)
    if missing := sorted(set(by_name) - used, key=str):
        raise ValueError(f"pretrained language model parameters left unused: {missing[:5]}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def cohort_connectivity(datasets: list, window: int, max_parcels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation float32 [max_parcels, max_parcels] of every parcel pair's correlation over
    the first ``window`` TRs of each training scan (what ``language.fc_reference = "cohort"`` scores rows
    against); pairs with a missing parcel are left out of that scan's count, pairs never seen get 0 and 1.

    All datasets must share one atlas: a parcel index means one region only within an atlas.
    """
    names = {ds.atlas.name for ds in datasets}
    if len(names) > 1:
        raise UsageError(f"language.fc_reference=cohort needs datasets of one atlas, got {sorted(names)}")
    total = np.zeros((max_parcels, max_parcels))
    square, count = np.zeros_like(total), np.zeros_like(total)
    for ds in datasets:
        n = ds.atlas.n_parcels
        for i in ds.indices("train"):
            present = ds.present(i)
            scan = jnp.asarray(ds.read(i)[None, :, :window])
            fc = np.asarray(patch_connectivity(scan, jnp.asarray(present[None])))[0]
            pair = np.outer(present, present)
            total[:n, :n] += np.where(pair, fc, 0.0)
            square[:n, :n] += np.where(pair, fc * fc, 0.0)
            count[:n, :n] += pair
    if not count.any():
        raise UsageError("language.fc_reference=cohort needs training scans; the data has none in split 'train'")
    seen = count > 0
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    std = np.sqrt(np.maximum(np.where(seen, square / np.maximum(count, 1) - mean * mean, 1.0), 0.0))
    return mean.astype(np.float32), np.maximum(std, FC_STD_FLOOR).astype(np.float32)


def stage2_warm_start(tokenizer_run, lm_dir: Path, fc_reference: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> Callable[[dict], dict]:
    """Trainer warm start: tokenizer parameters and codebook state from the stage-1 run, LM weights from the
    Hugging Face directory, and the cohort's connectivity statistics (``fc_reference``: mean, std, from
    :func:`cohort_connectivity`) when the model scores rows against them; projector, parcel embedding, fMRI head
    and adapters keep their initialisation."""
    tok_params = nnx.to_pure_dict(nnx.state(tokenizer_run.model, nnx.Param))
    tok_rest = nnx.to_pure_dict(nnx.split(tokenizer_run.model, nnx.Param, ...)[2])
    lm, _ = from_pretrained(lm_dir)
    lm_params = jax.device_get(nnx.to_pure_dict(nnx.state(lm, nnx.Param)))

    def apply(state: dict) -> dict:
        params, rest = state["params"], state["rest"]
        pure, pure_rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
        pure["tokenizer"] = _place(tok_params, pure["tokenizer"], "tokenizer")
        if "tokenizer" in pure_rest:
            pure_rest["tokenizer"] = _place(tok_rest, pure_rest["tokenizer"], "tokenizer state")
        pure["lm"] = _lm_into(pure["lm"], lm_params)
        if fc_reference is not None:
            for key, value in zip(("fc_mean", "fc_std"), fc_reference):
                pure_rest[key] = _place(value, pure_rest[key], key)
        nnx.replace_by_pure_dict(params, pure)
        nnx.replace_by_pure_dict(rest, pure_rest)
        return dict(state, params=params, rest=rest)
    return apply


def continue_warm_start(previous) -> Callable[[dict], dict]:
    """Trainer warm start from a loaded stage-2 run: every parameter and state variable, same architecture."""
    old_params = nnx.to_pure_dict(nnx.state(previous.model, nnx.Param))
    old_rest = nnx.to_pure_dict(nnx.split(previous.model, nnx.Param, ...)[2])

    def apply(state: dict) -> dict:
        params, rest = state["params"], state["rest"]
        nnx.replace_by_pure_dict(params, _place(old_params, nnx.to_pure_dict(params), "stage-2"))
        nnx.replace_by_pure_dict(rest, _place(old_rest, nnx.to_pure_dict(rest), "stage-2 state"))
        return dict(state, params=params, rest=rest)
    return apply


def export_adapters(model, workdir: Path, base_model: str) -> Path:
    """Write the trained fMRI-LM's LoRA adapters as ``workdir/adapters`` (safetensors + JSON, see
    :func:`brainjax.nn.lora.save_adapters`), for use outside brainjax's checkpoints.

    model: the run's final :class:`~brainjax.models.fmri_lm.FMRILM` (``RunResult.model``). Every process of a
    multi-host run calls it (the adapters are gathered from every host); process 0 writes."""
    graphdef, state = nnx.split(model.lm)
    adapters = nnx.to_pure_dict(state)
    gathered = jax.tree_util.tree_map_with_path(
        lambda path, x: to_host(x) if any(getattr(k, "key", None) in ("lora_a", "lora_b") for k in path) else x,
        adapters)
    nnx.replace_by_pure_dict(state, gathered)
    if is_main():
        save_adapters(nnx.merge(graphdef, state), workdir / "adapters", base_model=base_model)
    barrier("adapters")
    return workdir / "adapters"
