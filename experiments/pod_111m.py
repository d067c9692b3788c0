"""BrainLM 111M-class on a TPU v4-32 slice (16 chips x 32 GiB HBM, 4 hosts): pure data parallelism.

The shape of ``brainlm_111m`` (encoder 768 x 12, decoder 512 x 8; 424 parcels x 200 TRs, patch 20: 1,061
encoder / 4,241 decoder tokens with CLS), bf16 compute with float32 parameters, remat. ``brainjax plan --preset
pod_111m --devices 16 --platform tpu --device-memory 32``:

    mesh data 16 x fsdp 1 (the model's 0.42 GiB of float32 parameters need no sharding)
    parameters 111,542,804 x 4 B = 0.42 GiB; AdamW moments 0.83 GiB; gradients 0.42 GiB
    global batch 512 = 32 windows per chip; activations (bf16, remat) 6.83 GiB
    attention: ``auto`` runs the Pallas splash kernel on TPU (lengths padded to 1,152 / 4,352 and head dim to
    128): no score workspace beyond one log-sum-exp per row
    total 8.51 GiB of 32 GiB (27 %); 1,124 model TFLOP per step (70 per chip)

The margin is deliberate: the plan is within 10 % of XLA:CPU's own figure for the presets measured on CPU
(``benchmarks/plan_vs_xla.py``, jax 0.12.1), but TPU schedules were not measured, and should the splash kernel be
unavailable the ``chunked`` fallback adds 6.7 GiB of score workspace at ``model.attention_chunk=256`` (15.4 GiB,
48 %).
"""

from brainjax.config import Config, DataConfig, MaskConfig, MeshConfig, ModelConfig


def config() -> Config:
    return Config(
        name="pod_111m",
        data=DataConfig(window=200, batch_size=512),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=768, depth=12, heads=12, mlp=3072,
                          dec_width=512, dec_depth=8, dec_heads=16, dec_mlp=2048,
                          attention="auto", attention_chunk=256, dtype="bfloat16", remat=True),
        mesh=MeshConfig(data=-1, fsdp=1),
    )
