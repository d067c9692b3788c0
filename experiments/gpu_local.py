"""BrainLM 111M-class on one local GPU (a 24 GB card): bf16 compute, remat, cuDNN flash attention.

The shape of ``brainlm_111m`` (encoder 768 x 12, decoder 512 x 8; 424 parcels x 200 TRs, patch 20: 1,061
encoder / 4,241 decoder tokens with CLS). ``brainjax plan --preset gpu_local --devices 1 --platform gpu
--device-memory 24`` (JAX preallocates 75 % of the card, so 18 GiB are usable):

    parameters 111,542,804 x 4 B = 0.42 GiB; AdamW moments 0.83 GiB; gradients 0.42; accumulator 0.42
    global batch 64 = micro-batch 32 x 2 accumulation steps
    activations (bf16, remat: 20 block inputs + one decoder block rebuilt) 6.83 GiB; attention (cuDNN: the
    key-mask bias kept for the backward pass) 1.08 GiB
    total 10.01 GiB of 18 GiB usable (56 %)

Why this batch: the plan is within 10 % of XLA:CPU's own figure for the presets measured
(``benchmarks/plan_vs_xla.py``, jax 0.12.1; this preset compiled for CPU: 1.00x), but cuDNN and XLA's GPU
autotuner add workspace of their own, so the plan stays near half the usable memory. A micro-batch of 64 (no
accumulation) estimates 17.5 GiB (97 %), too little margin; without remat a micro-batch of 32 needs 64.4 GiB.
On a GPU without bf16, attention falls back to ``chunked`` (float32) and needs more.
"""

from brainjax.config import Config, DataConfig, MaskConfig, ModelConfig, OptimConfig


def config() -> Config:
    return Config(
        name="gpu_local",
        data=DataConfig(window=200, batch_size=64),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=768, depth=12, heads=12, mlp=3072,
                          dec_width=512, dec_depth=8, dec_heads=16, dec_mlp=2048,
                          attention="auto", dtype="bfloat16", remat=True),
        optim=OptimConfig(accum_steps=2),
    )
