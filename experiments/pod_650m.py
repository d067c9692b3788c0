"""BrainLM 650M-class on a TPU v5e-256 slice (v5litepod-256: 256 chips x 16 GiB HBM, 64 hosts of 4 chips).

The shape of ``brainlm_650m`` (encoder 1280 x 32, decoder 512 x 8; 424 parcels x 200 TRs, patch 20: 1,061
encoder / 4,241 decoder tokens with CLS), bf16 compute with float32 parameters, remat, parameters sharded over
one host's 4 chips. ``brainjax plan --preset pod_650m --devices 256 --platform tpu --device-memory 16``:

    mesh data 64 x fsdp 4
    parameters 657,407,508 x 4 B / 4 = 0.61 GiB per chip; AdamW moments 1.23 GiB; gradients 0.61 GiB
    fsdp-gathered bf16 weights (XLA keeps the forward pass's gathered copy for the backward pass) 1.23 GiB
    global batch 1024 = 4 windows per chip; activations (bf16, remat) 1.15 GiB; splash attention (lengths
    padded to multiples of 128) adds no score workspace
    total 4.82 GiB of 16 GiB (30 %; 6.52 GiB with the ``chunked`` fallback); 6,239 model TFLOP per step
    (24.4 per chip)

Without fsdp (``brainlm_650m`` as it is, batch 256) a chip holds the whole float32 model and its moments
(7.3 GiB) and the optimizer's new copy of both (7.3 GiB): 14.7 GiB of 16 (92 %, tight; the estimate is within
10 % of XLA:CPU's figure, but TPU compilers add workspace of their own). Memory would allow a batch of 2048
(5.97 GiB, 37 %; 9.4 GiB with the chunked fallback): raise it with ``--set data.batch_size=2048`` once the
first steps' real memory use is known.
"""

from brainjax.config import Config, DataConfig, MaskConfig, MeshConfig, ModelConfig


def config() -> Config:
    return Config(
        name="pod_650m",
        data=DataConfig(window=200, batch_size=1024),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, max_parcels=424, width=1280, depth=32, heads=16, mlp=5120,
                          dec_width=512, dec_depth=8, dec_heads=16, dec_mlp=2048,
                          attention="auto", dtype="bfloat16", remat=True),
        mesh=MeshConfig(data=-1, fsdp=4),
    )
