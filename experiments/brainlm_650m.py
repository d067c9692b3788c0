"""BrainLM 650M-class model: ViT-H-like encoder (1280 x 32, 16 heads), decoder 512 x 8 (16 heads).

bfloat16 compute and rematerialisation. The mesh is pure data parallelism (fsdp 1), which on 16 GiB chips
leaves little margin (``brainjax plan --preset brainlm_650m --platform tpu --devices 256 --device-memory 16``:
14.7 GiB); shard the parameters over one host's chips with ``--set mesh.fsdp=4`` (4 chips per TPU VM host), or
use ``pod_650m``.
"""

import dataclasses

from brainjax.config import Config, DataConfig, MaskConfig, MeshConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="brainlm_650m",
        data=DataConfig(window=200, batch_size=256),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=1280, depth=32, heads=16, mlp=5120,
                          dec_width=512, dec_depth=8, dec_heads=16, dec_mlp=2048,
                          dtype="bfloat16", remat=True),
        mesh=MeshConfig(data=-1, fsdp=1),
    )
