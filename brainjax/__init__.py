"""brainjax: JAX/Flax foundation models for fMRI.

``brainjax.load_pretrained(DIR)`` loads a model written by ``brainjax export`` (see
:mod:`brainjax.run.export`); it is imported on first use, so ``import brainjax`` (and every submodule import,
which runs this file first) stays free of JAX.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_pretrained":
        from brainjax.run.export import load_pretrained
        return load_pretrained
    raise AttributeError(f"module 'brainjax' has no attribute {name!r}")
