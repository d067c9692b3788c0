"""Reference-size BrainLM (about 5.0 M parameters): 424 parcels x 200 TRs, patch 20 -> 4,240 tokens.

Encoder 256 wide x 4 layers, decoder 256 wide x 2 layers, 75 % random masking (BrainLM's recipe).

Blocks are rematerialised keeping their attention outputs (``remat_policy=attention``): the backward pass then
recomputes norms, projections and MLPs but not the attention. Batch 8 on current JAX (0.12.1, 2-core AMD EPYC):
18.3 s per step and 2.38 GiB peak RSS, against 18.7 s and 4.29 GiB without remat and 23.1 s / 2.75 GiB with full
remat (``benchmarks/train_step.py``).
"""

import dataclasses

from brainjax.config import Config, DataConfig, MaskConfig, ModelConfig


def config() -> Config:
    base = Config()
    return dataclasses.replace(
        base,
        name="ref_small",
        data=DataConfig(window=200, batch_size=32),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=256, depth=4, heads=4, mlp=1024,
                          dec_width=256, dec_depth=2, dec_heads=4, dec_mlp=1024, remat=True,
                          remat_policy="attention"),
    )
