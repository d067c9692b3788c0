"""What ``brainjax adapt`` (stage 2) and ``brainjax instruct`` (stage 3) share: the run's language-model files,
its warm starts and its training loop around the shared :class:`~brainjax.train.trainer.Trainer`.

A run's work dir holds, besides the checkpoints, ``lm/`` with the language model's ``config.json`` and
``tokenizer.json`` (copied at the start), so a checkpoint is usable without the directory it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from brainjax.config import Config
from brainjax.distributed import main_first
from brainjax.lm.sequences import SequenceSpec

LM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def command_error(err: Exception) -> int:
    """Print a command's error; exit code 3 for a non-finite loss, 2 for bad input (as ``brainjax pretrain``)."""
    from brainjax.train.trainer import NonFiniteLossError

    print(f"error: {err}", file=sys.stderr)
    return 3 if isinstance(err, NonFiniteLossError) else 2


# bad input (ValueError covers dataset, config and checkpoint-mismatch errors), missing files, non-finite loss
COMMAND_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def lm_dir_or_default(path: str | None) -> Path:
    """``path`` resolved, or the embedded default LM (built and cached on first use)."""
    if path:
        directory = Path(path).expanduser().resolve()
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory}: not a Hugging Face model directory (no config.json)")
        return directory
    from brainjax.lm.default_lm import default_lm
    return Path(default_lm())


def architecture_json(lm_dir: Path) -> str:
    """The LM's :class:`LMConfig` as JSON, for ``LanguageConfig.architecture``."""
    from brainjax.models.lm import LMConfig

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


def sequence_spec(cfg: Config, n_parcels: int, blocks: int = 1) -> SequenceSpec:
    """The sequence shape of a run: one fMRI block of ``n_parcels`` x (window / patch) tokens plus text."""
    return SequenceSpec(n_parcels=n_parcels, n_patches=cfg.data.window // cfg.model.patch, blocks=blocks,
                        text_len=cfg.language.text_len)


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


def stage2_warm_start(tokenizer_run, lm_dir: Path) -> Callable[[dict], dict]:
    """Trainer warm start: tokenizer parameters and codebook state from the stage-1 run, LM weights from the
    Hugging Face directory; projector, parcel embedding, fMRI head and adapters keep their initialisation."""
    from brainjax.models.lm_loading import from_pretrained

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


def train_stage(cfg: Config, out: Path, data: str, build: Callable[[dict], dict], spec: SequenceSpec,
                warm_start: Callable[[dict], dict], mesh) -> None:
    """Build the loaders and run the Trainer (resumes ``out``'s checkpoint if there is one)."""
    from brainjax.data.pipeline import LoaderSpec, MappedLoader, eval_batches, make_loader, mapped_passes, to_global
    from brainjax.lm.objective import FMRILMTask
    from brainjax.train.trainer import Trainer

    loader = make_loader(LoaderSpec(paths=(data,), split="train", window=cfg.data.window,
                                    batch_size=cfg.data.batch_size, stride=cfg.data.stride, seed=cfg.train.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count()))

    def validation():
        return eval_batches((data,), "val", cfg.data.window, cfg.data.batch_size)

    task = FMRILMTask(cfg, spec)
    trainer = Trainer(cfg, task, out, MappedLoader(loader, build), mapped_passes(validation, build), to_global,
                      mesh=mesh, warm_start=warm_start)
    result = trainer.run()
    if cfg.language.train_lm == "lora" and not result.preempted:
        export_adapters(out)


def export_adapters(workdir: Path) -> Path:
    """Write the latest checkpoint's LoRA adapters as ``workdir/adapters`` (safetensors + JSON, see
    :func:`brainjax.nn.lora.save_adapters`), for use outside brainjax's checkpoints.

    Every process of a multi-host run calls it (the checkpoint restore is collective; the restored parameters
    are replicated); process 0 writes."""
    from brainjax.distributed import barrier, is_main
    from brainjax.eval.restore import load_for_eval
    from brainjax.nn.lora import save_adapters

    run = load_for_eval(workdir)
    if is_main():
        save_adapters(run.model.lm, workdir / "adapters", base_model=run.cfg.language.lm_path)
    barrier("adapters")
    return workdir / "adapters"
