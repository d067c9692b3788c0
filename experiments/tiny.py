"""Tiny BrainLM preset for tests and smoke runs: a model of a few tens of thousands of parameters."""

import dataclasses

from brainjax.config import Config, MaskConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="tiny",
        data=dataclasses.replace(base.data, window=40, batch_size=8, eval_batches=2),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=10, width=32, depth=2, heads=2, mlp=64,
                          dec_width=32, dec_depth=1, dec_heads=2, dec_mlp=64, fourier_features=8),
        train=dataclasses.replace(base.train, steps=20, log_every=5, eval_every=10, checkpoint_every=10),
    )
