"""Open a Hugging Face ViT-MAE directory (BrainLM's released 111M / 650M checkpoints) as a loaded model, so the
evaluation commands take it wherever they take a work dir (``--workdir DIR``).

The model is wrapped in :class:`~brainjax.models.vitmae_backbone.ViTMAEBackbone` and described by a brainjax
Config for evaluation: objective ``mae``, windows of ``min(200, image width)`` TRs (BrainLM's 200-TR windows),
one "patch" per TR, random masking at the checkpoint's ``mask_ratio``. Its parameters are replicated over the
mesh's devices; nothing is written anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from brainjax import sharding
from brainjax.config import Config, DataConfig, Lineage, MeshConfig
from brainjax.errors import CheckpointMismatchError
from brainjax.models.vitmae_backbone import ViTMAEBackbone, backbone_configs
from brainjax.models.vitmae_loading import SUPPORTED_TYPES, load_vitmae
from brainjax.run.workdir import LoadedModel

BRAINLM_WINDOW = 200  # TRs per window in BrainLM's recipe


def is_hf_vitmae(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory whose config.json declares a ViT-MAE model (no brainjax export)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and data.get("model_type") in SUPPORTED_TYPES and "format" not in data


def load_hf_vitmae(path: str | os.PathLike, mesh: Any = None, objective: str | None = None) -> LoadedModel:
    """The ViT-MAE at ``path`` as a :class:`LoadedModel` (step 0) on ``mesh`` (default: every device here)."""
    if objective not in (None, "mae"):
        raise CheckpointMismatchError(f"{path} is a ViT-MAE (BrainLM) model, not a {objective} model")
    vit, vit_cfg = load_vitmae(path)
    window = min(BRAINLM_WINDOW, vit_cfg.image_size[1])
    model_cfg, mask_cfg = backbone_configs(vit, window)
    cfg = Config(name=f"vitmae-{Path(path).name}", objective="mae", data=DataConfig(window=window),
                 mask=mask_cfg, model=model_cfg, mesh=MeshConfig(data=-1, fsdp=1))
    mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
    backbone = ViTMAEBackbone(vit, model_cfg)
    replicated = NamedSharding(mesh, PartitionSpec())
    nnx.update(backbone, jax.tree.map(lambda x: jax.device_put(x, replicated), nnx.state(backbone)))
    return LoadedModel(backbone, cfg, Lineage(parent=str(Path(path).resolve())), 0, mesh)
