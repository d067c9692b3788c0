"""Default `brainjax tokenizer train` preset: the fMRI-LM stage-1 neural tokenizer on the embedded synthetic data.

One token per parcel per 50-TR patch (fMRI-LM uses one token per parcel over the whole window); a small ViT
encoder and decoder; an L2-normalised VQ codebook of 512 x 32 with EMA updates, k-means initialisation and
dead-code restarts (fMRI-LM: 8,192 x 128 — `--set quantizer.codebook_size=8192 --set quantizer.code_dim=128`).
"""

from brainjax.config import Config, DataConfig, ModelConfig, OptimConfig, QuantizerConfig, TrainConfig


def config() -> Config:
    return Config(
        name="tokenizer",
        objective="tokenizer",
        data=DataConfig(window=100, batch_size=8, eval_batches=8),
        model=ModelConfig(patch=50, width=96, depth=2, heads=4, mlp=256, fourier_features=3,
                          dec_width=64, dec_depth=1, dec_heads=4, dec_mlp=128),
        quantizer=QuantizerConfig(kind="vq", codebook_size=512, code_dim=32),
        optim=OptimConfig(base_lr=0.1),
        train=TrainConfig(steps=600, log_every=10, eval_every=200, checkpoint_every=200),
    )
