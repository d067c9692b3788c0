"""Default `brainjax pretrain` preset: a small BrainLM MAE on the embedded synthetic dataset.

Sized to train to a visible validation R² on a laptop CPU in minutes (provisional; the project lead tunes it).
BrainLM's own recipe is kept where it does not cost time: 75 % random masking, AdamW with weight decay
0.05, 5 % warmup then cosine, lr scaled by batch / 256.
"""

from brainjax.config import Config, DataConfig, MaskConfig, ModelConfig, OptimConfig, TrainConfig


def config() -> Config:
    return Config(
        name="default",
        data=DataConfig(window=100, batch_size=8, eval_batches=4),
        mask=MaskConfig(strategy="random", ratio=0.75),
        model=ModelConfig(patch=20, width=96, depth=3, heads=4, mlp=256,
                          dec_width=64, dec_depth=1, dec_heads=4, dec_mlp=128),
        optim=OptimConfig(base_lr=3.2e-2),  # peak lr 1e-3 at batch 8 (base_lr x 8 / 256)
        train=TrainConfig(steps=500, log_every=10, eval_every=100, checkpoint_every=100),
    )
