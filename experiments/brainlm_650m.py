"""BrainLM 650M-class model: ViT-H-like encoder (1280 x 32, 16 heads), decoder 512 x 8 (16 heads).

bfloat16 compute, rematerialisation, and parameters sharded over the fsdp mesh axis (set mesh.fsdp to the
number of devices of one host, e.g. ``--set mesh.fsdp=8``).
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
