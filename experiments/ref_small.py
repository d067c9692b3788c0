"""Reference-size BrainLM (about 5.0 M parameters): 424 parcels x 200 TRs, patch 20 -> 4,240 tokens.

Encoder 256 wide x 4 layers, decoder 256 wide x 2 layers, 75 % random masking (BrainLM's recipe).

Blocks are rematerialised keeping their attention outputs (``remat_policy=attention``): the backward pass then
recomputes norms, projections and MLPs but not the attention. Batch 8 on current JAX (0.12.1, 2-core AMD EPYC):
18.3 s per step and 2.38 GiB peak RSS, against 18.7 s and 4.29 GiB without remat and 23.1 s / 2.75 GiB with full
remat (``benchmarks/train_step.py``).

On a 2-core Xeon with AMX (jax 0.12.1, batch 8): 15.1 s fp32 (MFU 0.35 of a measured 282 GFLOP/s), 15.3 s bf16
(0.40 of 246), peak RSS 2.65 / 2.24 GiB; jax 0.10.2: 23.7 s / 21.6 s, 4.05 / 3.51 GiB. The step is bound by the
element-wise passes over the decoder's [batch, heads, chunk, 4,241] float32 scores, not by matrix multiplies:
the attention loops are 66 % of the busy time (profiled with AMX matmuls, below), and XLA:CPU's exponential
runs at 0.57 G elements/s over one such block against 3.2 G/s over a block that stays in cache.
Attempts on that machine (bf16 step, kept or not):

========================================================================================  =========  =====
attempt                                                                                   step       kept
========================================================================================  =========  =====
baseline: chunked attention, each 512-query block rematerialised (15.3 s in a repeat)    16.6 s     yes
oneDNN dot fusion (``XLA_FLAGS=--xla_cpu_use_onednn=true``                                16.3 s     no
``--xla_cpu_experimental_onednn_fusion_type=dot``): AMX matmuls, bf16 peak 218 -> 1,350
GFLOP/s, but the fused dots take in the element-wise ops and materialise their operands
``model.attention_chunk=128`` with the oneDNN flags (blocks of 17 M scores)               15.7 s     no
``model.attention_chunk=32`` with the oneDNN flags (small dots, loop overhead)            20.3 s     no
flash-style custom VJP (saved row max and sum, dS = P (dP - rowsum(dO O)), no forward     17.9 s     no
recomputation; fp32 15.6 against 15.4 s): XLA:CPU does not fuse the passes any better
========================================================================================  =========  =====
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
