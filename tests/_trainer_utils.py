"""Shared helpers for the trainer / checkpoint / sharding tests: a tiny dataset and a tiny config."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from brainjax.config import Config, MeshConfig, OptimConfig, TrainConfig, load_config
from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import ScanMeta, finalize, write_part

REPO = Path(__file__).resolve().parent.parent
PARCELS, LENGTH = 8, 48
WINDOW, PATCH = load_config("tiny").data.window, load_config("tiny").model.patch  # 16 TRs, patches of 4


def tiny_dataset(out: Path, subjects: int = 8, scans: int = 2, seed: int = 0,
                 fractions: tuple[float, float, float] = (0.75, 0.25, 0.0)) -> Path:
    """Scans of PARCELS sinusoids (per-parcel frequency shared by everyone, random phase) plus noise.

    The shared frequencies make masked patches predictable from visible ones, so a model can learn.
    """
    rng = np.random.default_rng(seed)
    freqs = np.linspace(0.15, 0.6, PARCELS)[:, None]
    t = np.arange(LENGTH)[None, :]
    items = []
    for s in range(subjects):
        for k in range(scans):
            phase = rng.uniform(0, 2 * np.pi, (PARCELS, 1))
            data = np.sin(freqs * t + phase) + 0.1 * rng.normal(size=(PARCELS, LENGTH))
            items.append((ScanMeta(f"sub{s:02d}_run{k}", f"sub{s:02d}", tr=2.0), data.astype(np.float32)))
    write_part(out, "part", items)
    xyz = np.random.default_rng(1).uniform(-60, 60, (PARCELS, 3))
    atlas = Atlas("toy", "coordinates", tuple(f"p{i}" for i in range(PARCELS)), xyz)
    finalize(out, atlas, fractions=fractions, seed=0)
    return out


def tiny_config(steps: int = 6, **sections) -> Config:
    """The ``tiny`` preset (experiments/tiny.py) set up for the toy data and fast, exact tests: 8 parcels, xla
    attention, a constant learning rate, logs and checkpoints every few steps, parameters sharded over 2
    devices. ``sections`` replace fields, e.g. ``train={"seed": 1}``."""
    base = load_config("tiny")
    cfg = dataclasses.replace(
        base, data=dataclasses.replace(base.data, path=""),
        model=dataclasses.replace(base.model, max_parcels=PARCELS, attention="xla"),
        optim=OptimConfig(base_lr=3e-3, scale_lr=False, warmup_frac=0.0),
        train=TrainConfig(steps=steps, log_every=1, eval_every=3, checkpoint_every=2, keep_last=10,
                          async_checkpoint=True, figure=False, peak_flops=1e9),
        mesh=MeshConfig(data=-1, fsdp=2),
    )
    for name, fields in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **fields)})
    return cfg


def make_trainer(cfg: Config, data: Path, workdir: Path, mesh=None):
    """A Trainer over the real pipeline and the config's task (as `brainjax pretrain` builds it)."""
    from brainjax.data.pipeline import LoaderSpec, eval_batches, make_loader, to_global
    from brainjax.eval.figures import reconstruction_hook
    from brainjax.tasks import task_for
    from brainjax.train.trainer import Trainer

    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(data)))
    loader = make_loader(LoaderSpec(paths=(str(data),), split="train", window=cfg.data.window,
                                    batch_size=cfg.data.batch_size, seed=cfg.train.seed, read_threads=1))
    task = task_for(cfg, n_parcels=loader.n_parcels)  # the MAE, or the tokenizer for objective="tokenizer"

    def validation():
        return eval_batches((str(data),), "val", cfg.data.window, cfg.data.batch_size, read_threads=1)

    finish = reconstruction_hook(task, workdir) if cfg.train.figure else None
    return Trainer(cfg, task, workdir, loader, validation, to_global, mesh=mesh, on_finish=finish)


def write_config_file(path: Path, cfg: Config) -> Path:
    """A config file for `brainjax pretrain --config` that rebuilds ``cfg``."""
    from brainjax.config import to_json

    path.write_text("import json\nfrom brainjax.config import from_dict\n\n\ndef config():\n"
                    f"    return from_dict(json.loads({to_json(cfg)!r}))\n")
    return path


def cli_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainjax.cli", "pretrain", *args]


def pretrained_synthetic(root: Path, steps: int = 4) -> tuple[Path, Path]:
    """A small synthetic cohort with phenotypes and network labels (Dosenbach-160, 30 subjects x 96 TRs)
    and a tiny BrainLM pretrained on it for ``steps`` steps: (dataset dir, work dir)."""
    from brainjax.data.synthetic import SynthConfig, synthesize

    data = root / "synth"
    synthesize(data, SynthConfig(subjects=30, scans_per_subject=1, timepoints=96, atlas="dosenbach160", sites=2,
                                 seed=1), (0.6, 0.2, 0.2))
    cfg = tiny_config(steps=steps, data={"window": 32}, model={"patch": 16, "max_parcels": 160},
                      train={"checkpoint_every": steps, "eval_every": steps})
    make_trainer(cfg, data, root / "pretrain").run()
    return data, root / "pretrain"


class ByteCodec:
    """A text codec for tests: one id per UTF-8 byte, eos 0 (``TextCodec``'s interface without a tokenizer)."""

    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if i).decode()
