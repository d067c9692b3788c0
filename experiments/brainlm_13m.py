"""BrainLM 13M-class model: encoder 512 wide x 4 layers, decoder 256 x 2 (~14 M)."""

import dataclasses

from brainjax.config import Config, DataConfig, MaskConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="brainlm_13m",
        data=DataConfig(window=200, batch_size=64),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=512, depth=4, heads=8, mlp=2048,
                          dec_width=256, dec_depth=2, dec_heads=8, dec_mlp=1024),
    )
