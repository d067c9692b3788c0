"""Tiny BrainLM preset for smoke runs and the tests (about six thousand parameters at 8 parcels).

``tests/_trainer_utils.tiny_config`` builds on it (toy data of 8 parcels, xla attention, a constant learning
rate, frequent checkpoints), so the tests train the model this preset describes.
"""

import dataclasses

from brainjax.config import Config, MaskConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="tiny",
        data=dataclasses.replace(base.data, window=16, batch_size=8, eval_batches=2),
        mask=MaskConfig(strategy="random", ratio=0.5),
        model=ModelConfig(patch=4, width=16, depth=1, heads=2, mlp=32, dec_width=16, dec_depth=1, dec_heads=2,
                          dec_mlp=32, fourier_features=4),
        train=dataclasses.replace(base.train, steps=20, log_every=5, eval_every=10, checkpoint_every=10),
    )
