"""BrainLM 111M-class model: ViT-B-like encoder (768 x 12, 12 heads), decoder 512 x 8 (16 heads).

bfloat16 compute with float32 parameters; rematerialisation keeps the 4,240-token decoder within memory.
"""

import dataclasses

from brainjax.config import Config, DataConfig, MaskConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="brainlm_111m",
        data=DataConfig(window=200, batch_size=128),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=768, depth=12, heads=12, mlp=3072,
                          dec_width=512, dec_depth=8, dec_heads=16, dec_mlp=2048,
                          dtype="bfloat16", remat=True),
    )
