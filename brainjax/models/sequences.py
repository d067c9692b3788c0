"""Lay out mixed fMRI + text samples as the fixed-shape arrays :class:`brainjax.models.fmri_lm.FMRILM` reads.

A sample is a list of segments, ``("text", token ids)`` or ``("fmri", block)``, followed by the *answer*
token ids whose prediction is the loss. Positions are filled left to right and padded at the end to
``SequenceSpec.length``; the answer is cut (never the prompt) when the text budget is exceeded. An fMRI block
takes N x P positions in patch-major order (all parcels of patch 0, then patch 1, ...; with pooling, K tokens
per patch in place of the P parcels); padded parcels keep their positions but are marked invalid, so nothing
reads them. Groups (= position ids) advance by one per text token and per fMRI time patch (see
:mod:`brainjax.models.fmri_lm`).

Per sample (S blocks, N patches, P parcels, L = S * N * P + text_len, M = answer_len)::

    ids, slot, group int32 [L]; valid bool [L]
    loss_pos, loss_target int32 [M]; loss_weight float32 [M]    answer token j sits at position p_j and is
                                                                predicted from position p_j - 1
    fmri_pos int32 [S * N * P]                                  where each fMRI token sits (0 if unused)
    code_weight float32 [S]                                     1 for blocks whose next-patch codes are a target
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Segment = tuple[str, object]
SEQUENCE_KEYS = ("ids", "slot", "group", "valid", "loss_pos", "loss_target", "loss_weight", "fmri_pos",
                 "code_weight")


@dataclass(frozen=True)
class SequenceSpec:
    """Static shape of a batch of sequences."""

    n_parcels: int
    n_patches: int
    blocks: int = 1  # fMRI blocks per sample (k-shot prompts carry the examples' scans too)
    text_len: int = 160  # text positions (prompt + answer) per sample
    answer_len: int = 0  # loss positions per sample (0 = text_len)
    pool: int = 0  # fMRI tokens per patch when pooled (``language.fmri_pool``); 0 = one per parcel

    def __post_init__(self):
        if min(self.n_parcels, self.n_patches, self.blocks, self.text_len) < 1 or self.pool < 0:
            raise ValueError(f"every SequenceSpec size must be positive: {self}")

    @property
    def per_patch(self) -> int:
        """LM positions per time patch: the pooled tokens, or one per parcel."""
        return self.pool or self.n_parcels

    @property
    def block_tokens(self) -> int:
        return self.n_patches * self.per_patch

    @property
    def length(self) -> int:
        return self.blocks * self.block_tokens + self.text_len

    @property
    def max_answer(self) -> int:
        return self.answer_len or self.text_len


def layout(segments: Sequence[Segment], answer: Sequence[int], parcel_masks: np.ndarray, spec: SequenceSpec,
           code_blocks: Sequence[int] = (), first_group: int = 0) -> dict[str, np.ndarray]:
    """One sample's arrays (see the module docstring). parcel_masks: bool [S, P] (real parcels per block);
    ``code_blocks``: blocks whose next-patch codes are predicted; ``first_group``: the group of the first position
    (a chunk that continues a cached prefix, :mod:`brainjax.models.fmri_cache`). Raises ValueError when the
    prompt alone exceeds the text budget or a block is used twice / out of range."""
    parcel_masks = np.asarray(parcel_masks, bool)
    if parcel_masks.shape != (spec.blocks, spec.n_parcels):
        raise ValueError(f"parcel_masks shape {parcel_masks.shape} != (blocks, parcels) "
                         f"{(spec.blocks, spec.n_parcels)}")
    prompt_text = sum(len(part) for kind, part in segments if kind == "text")
    room = min(spec.text_len - prompt_text, spec.max_answer)
    if room < 0 or (answer and room < 1):
        raise ValueError(f"the prompt has {prompt_text} text tokens; language.text_len={spec.text_len} leaves "
                         f"no room for the answer")
    answer = list(answer)[:room]
    length = spec.length
    ids, slot = np.zeros(length, np.int32), np.full(length, -1, np.int32)
    group, valid = np.zeros(length, np.int32), np.zeros(length, bool)
    fmri_pos = np.zeros(spec.blocks * spec.block_tokens, np.int32)
    pos, grp, used = 0, int(first_group), set()
    for kind, part in [*segments, ("answer", answer)]:
        if kind in ("text", "answer"):
            tokens = np.asarray(part, np.int32)
            n = len(tokens)
            ids[pos:pos + n], group[pos:pos + n], valid[pos:pos + n] = tokens, grp + np.arange(n), True
            if kind == "answer":
                answer_start = pos
            pos, grp = pos + n, grp + n
        elif kind == "fmri":
            block = int(part)
            if not 0 <= block < spec.blocks or block in used:
                raise ValueError(f"fMRI block {block} is out of range or used twice (blocks={spec.blocks})")
            used.add(block)
            n = spec.block_tokens
            first = block * n
            slot[pos:pos + n] = first + np.arange(n)
            group[pos:pos + n] = grp + np.repeat(np.arange(spec.n_patches), spec.per_patch)
            # pooled tokens read the block's real parcels, so all are valid while it has any
            real = np.full(spec.pool, parcel_masks[block].any()) if spec.pool else parcel_masks[block]
            valid[pos:pos + n] = np.tile(real, spec.n_patches)
            fmri_pos[first:first + n] = pos + np.arange(n)
            pos, grp = pos + n, grp + spec.n_patches
        else:
            raise ValueError(f"unknown segment kind {kind!r}; expected 'text' or 'fmri'")
    group[pos:] = grp  # padding: never read (invalid), given the last group so groups stay non-decreasing
    m = spec.max_answer
    loss_pos, loss_target, loss_weight = np.zeros(m, np.int32), np.zeros(m, np.int32), np.zeros(m, np.float32)
    if answer:
        if answer_start == 0:
            raise ValueError("an answer needs at least one position before it to be predicted from")
        k = len(answer)
        loss_pos[:k] = answer_start - 1 + np.arange(k)
        loss_target[:k], loss_weight[:k] = answer, 1.0
    code_weight = np.zeros(spec.blocks, np.float32)
    code_weight[[b for b in code_blocks if b in used]] = 1.0
    return {"ids": ids, "slot": slot, "group": group, "valid": valid, "loss_pos": loss_pos,
            "loss_target": loss_target, "loss_weight": loss_weight, "fmri_pos": fmri_pos, "code_weight": code_weight}


def next_group(segments: Sequence[Segment], spec: SequenceSpec, first_group: int = 0) -> int:
    """The group that follows ``segments`` laid out from ``first_group`` (where the next chunk starts)."""
    text = sum(len(part) for kind, part in segments if kind == "text")
    return int(first_group) + text + spec.n_patches * sum(1 for kind, _ in segments if kind == "fmri")


def text_row(tokens: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain text for the text-only loss: ids int32 [length] (cut or zero-padded) and mask bool [length]."""
    tokens = np.asarray(tokens, np.int32)[:length]
    ids, mask = np.zeros(length, np.int32), np.zeros(length, bool)
    ids[:len(tokens)], mask[:len(tokens)] = tokens, True
    return ids, mask


def stack(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-sample dicts of arrays along a new leading batch axis."""
    if not samples:
        raise ValueError("no samples to stack")
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}
