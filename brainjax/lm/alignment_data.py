"""What the tokenizer's language-alignment losses read from the LM, added to the pipeline's window batches.

* ``word_embeddings`` float32 [B, S, H]: S rows of the LM's input embedding table per window, drawn by a
  generator seeded from (seed, dataset, scan, start), so a resumed run (whose Loader replays the same windows)
  sees the same rows;
* ``text_embedding`` float32 [B, H]: the window's scan's text vector, the mean input embedding of its
  descriptor text's tokens (all zero for a scan without text, which the SigLIP loss leaves out).

Batches are built by a plain function; :class:`brainjax.data.pipeline.MappedLoader` wraps the pipeline Loader
with it (iterator state = the Loader's) and :func:`brainjax.data.pipeline.mapped_passes` does validation passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainjax.lm.batches import draw
from brainjax.models.lm_loading import from_pretrained

WORD_SALT = 0xA11C  # keeps these draws apart from other per-window draws of the same (seed, scan, start)


def lm_embedding(lm_dir: str | Path) -> tuple[np.ndarray, object]:
    """The input embedding table float32 [V, H] of a local Hugging Face LM and its ``tokenizers.Tokenizer``."""
    model, tokenizer = from_pretrained(lm_dir)
    return np.asarray(model.embed.embedding.get_value(), np.float32), tokenizer


def text_vectors(texts: Sequence[str | None], tokenizer, embedding: np.ndarray) -> np.ndarray:
    """Mean input embedding of each text's tokens: texts [S] (None = no text) -> float32 [S, H] (zero rows for
    missing or empty texts). ``tokenizer``: a ``tokenizers.Tokenizer``; embedding: float [V, H]."""
    embedding = np.asarray(embedding, np.float32)
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be [V, H], got shape {embedding.shape}")
    out = np.zeros((len(texts), embedding.shape[1]), np.float32)
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False).ids if text else []
        if ids:
            out[row] = embedding[np.asarray(ids)].mean(axis=0)
    return out


def word_rows(vocab: int, count: int, seed: int, dataset: int, scan: int, start: int) -> np.ndarray:
    """``count`` embedding row ids int64 [count], uniform in [0, vocab) with replacement, for one window; a pure
    function of (seed, dataset, scan, start)."""
    if vocab < 1 or count < 1:
        raise ValueError(f"need vocab >= 1 and count >= 1, got vocab={vocab}, count={count}")
    return draw(seed, scan, start, salt=WORD_SALT + dataset).integers(0, vocab, size=count)


class AlignmentBatches:
    """Adds ``word_embeddings`` (domain loss) and/or ``text_embedding`` (SigLIP loss) to pipeline batches.

    embedding: float [V, H], the LM's input table; texts: float [S, H] per manifest row (None without the
    text loss); word_samples: rows per window (0 without the domain loss); seed: the run's seed.
    """

    def __init__(self, embedding: np.ndarray, texts: np.ndarray | None, word_samples: int, seed: int):
        self.embedding = np.asarray(embedding, np.float32)
        if self.embedding.ndim != 2:
            raise ValueError(f"embedding must be [V, H], got shape {self.embedding.shape}")
        if texts is not None and np.shape(texts)[1:] != (self.embedding.shape[1],):
            raise ValueError(f"text vectors must be [S, {self.embedding.shape[1]}], got {np.shape(texts)}")
        if not np.isfinite(self.embedding).all():
            raise ValueError("the LM's embedding table holds non-finite values")
        self.texts, self.word_samples, self.seed = texts, int(word_samples), int(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch with scan [B] and start [B] (optional dataset [B]) -> the same batch plus the new entries."""
        scans, starts = np.asarray(batch["scan"]), np.asarray(batch["start"])
        datasets = np.asarray(batch.get("dataset", np.zeros_like(scans)))
        out = dict(batch)
        if self.word_samples:
            ids = np.stack([word_rows(len(self.embedding), self.word_samples, self.seed, int(d), int(s), int(t))
                            for d, s, t in zip(datasets, scans, starts)])
            out["word_embeddings"] = self.embedding[ids]
        if self.texts is not None:
            if datasets.any():
                raise ValueError("the text alignment loss reads one dataset's descriptors; got several datasets")
            out["text_embedding"] = np.asarray(self.texts, np.float32)[scans]
        return out
