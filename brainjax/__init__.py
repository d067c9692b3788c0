"""brainjax: JAX/Flax foundation models for fMRI."""

__version__ = "0.1.0"
