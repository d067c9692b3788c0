"""Evaluate an fMRI-LM (stage 3) on questions about held-out scans, zero-shot and k-shot.

Each test scan is asked each target's question (paraphrase seeded per scan) after ``k`` labelled example scans
per class from the training split (k = 0 is zero-shot). The examples are one support set per target and k,
shared by every query and drawn from no queried subject, so their keys and values are computed once
(:class:`Prompter`, :mod:`brainjax.models.fmri_cache`). A scan enters as one window (:func:`scan_windows`); the
stage-3 table may average label scores over several consecutive windows of each query scan. Two readings of the
same forward passes:

* ``logprob``: the summed log-probability of each label's answer tokens (answer + eos) given the prompt; the
  softmax over labels gives probabilities, hence accuracy, balanced accuracy and a true AUROC.
* ``constrained``: greedy decoding restricted to the label set. All labels alive after a prefix share that
  prefix, so the teacher-forced token log-probabilities of the label forwards are exactly the decoder's
  next-token distribution: at each step the best allowed next token is kept until one label remains.

Numeric targets (e.g. age) are answered by free greedy decoding (a few tokens), parsed as numbers, by greedy
decoding constrained to a number grammar, and read as the mean of the model's distribution over the whole
numbers of the training range, each scored like a label (:func:`~brainjax.lm.scoring.expected_number`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.data.pipeline import ReadWindow, gather_rows, local_rows
from brainjax.lm.instructions import shot_segments
from brainjax.lm.scoring import NumberGrammar
from brainjax.models.fmri_cache import FMRICache, extend, init_cache, insert_block, repeat_rows
from brainjax.models.inputs import WINDOW_KEYS
from brainjax.models.sequences import layout, next_group, stack
from brainjax.tasks.fmri_lm import sequence_spec


def scan_windows(dataset, rows: Sequence[int], window: int, view: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Window number ``view`` (TRs view * window .. (view + 1) * window) of each manifest row long enough to hold
    it, read exactly as the pipeline reads windows: manifest index -> signal [P, T], parcel_mask [P],
    coords [P, 3], tr []."""
    if view < 0:
        raise ValueError(f"view must be >= 0, got {view}")
    reader = ReadWindow([dataset], window, dataset.atlas.n_parcels)
    out = {}
    for row in rows:
        if int(dataset.manifest[row]["length"]) >= (view + 1) * window:
            example = reader.map(np.array([0, row, view * window]))
            out[int(row)] = {k: np.asarray(example[k]) for k in WINDOW_KEYS}
    return out


def _extend_and_pick(model, chunk: dict, cache: FMRICache, last: jax.Array) -> tuple[jax.Array, FMRICache]:
    hidden, cache = extend(model, chunk, cache)
    picked = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(model.lm.logits(picked), axis=-1), cache


@functools.partial(nnx.jit, donate_argnames="cache")
def _prefill(model, chunk: dict, cache: FMRICache, last: jax.Array) -> tuple[jax.Array, FMRICache]:
    """Extend the cache by a chunk; log-probabilities of the next token after position ``last`` [B] -> [B, V].
    The cache is donated (its slots are written in place, not into a copy of it: a k-shot cache is ~100 MB on
    the default data): pass :func:`_copy` of a cache that is used again."""
    return _extend_and_pick(model, chunk, cache, last)


@jax.jit
def _copy(cache: FMRICache) -> FMRICache:
    """A new cache equal to ``cache``, for :func:`_prefill` to extend while ``cache`` is kept (shots, scans)."""
    return jax.tree.map(jnp.copy, cache)


def _start_or_extend(model, on_mesh: dict, cache: FMRICache | None, slots: int) -> tuple[jax.Array, FMRICache]:
    """:func:`_prefill` of the chunk ``on_mesh`` (with its ``last``) into ``cache`` (donated), or into a new cache of
    ``slots`` slots when there is none yet."""
    last = on_mesh.pop("last")
    if cache is None:
        return _prefill_empty(model, on_mesh, last, slots=slots)
    return _prefill(model, on_mesh, cache, last)


@functools.partial(nnx.jit, static_argnames="slots")
def _prefill_empty(model, chunk: dict, last: jax.Array, *, slots: int) -> tuple[jax.Array, FMRICache]:
    """:func:`_prefill` into a new cache of ``slots`` slots (made inside the program, so it is sharded like the
    chunk on any mesh)."""
    return _extend_and_pick(model, chunk, init_cache(model, chunk["group"].shape[0], slots), last)


@nnx.jit
def _continuation(model, chunk: dict, cache: FMRICache, targets: jax.Array) -> jax.Array:
    """Teacher-forced continuation: log p(targets[:, t] | cache, chunk tokens <= t) float32 [B, T]."""
    hidden, _ = extend(model, chunk, cache)
    logp = jax.nn.log_softmax(model.lm.logits(hidden), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@functools.partial(nnx.jit, donate_argnames="cache")
def _insert(model, cache: FMRICache, block: dict) -> FMRICache:
    """:func:`~brainjax.models.fmri_cache.insert_block` of a stacked :meth:`Prompter._scan_block` (+ ``offset``)
    into a cache nothing else holds (donated: written in place)."""
    layers = model.lm.cfg.layers
    return insert_block(model, cache, tuple(block[f"k{i}"] for i in range(layers)),
                        tuple(block[f"v{i}"] for i in range(layers)), block["group"], block["valid"],
                        block["offset"])


@functools.partial(jax.jit, static_argnames="times")
def _repeat(cache: FMRICache, times: int) -> FMRICache:
    return repeat_rows(cache, times)


def _release_large_buffers() -> None:
    """Have glibc serve every allocation of 1 MiB or more by its own mapping, returned to the system when freed.

    Why: glibc raises that threshold after each large block is freed (up to 32 MiB), after which such blocks come
    from the heap and stay resident once freed. The evaluation frees buffers of every size for minutes (caches of
    each prompt shape, attention workspaces), so its resident memory only grew: ``malloc_trim`` found up to
    0.6 GiB of freed heap held, and on two targets this setting lowered the peak from 1.84-1.93 to 1.60-1.68 GiB,
    at ~8 % more time (page faults). A no-op where the C library has no ``mallopt`` (macOS)."""
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3 (malloc.h)
    except (OSError, AttributeError):
        pass


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _slots(need: int) -> int:
    """Cache slots for ``need`` positions: a power of two, or above 1,024 the smaller of 1.5 x and 2 x a power of
    two (1,536, 2,048, 3,072, 4,096, 6,144, ...). Few sizes, so the targets and k share compiled programs: on CPU
    each new shape costs ~0.7 s to compile and ~30 MB held by its executable, more than the empty slots cost."""
    size = 1 << (need - 1).bit_length()
    return size * 3 // 4 if size > 1024 and size * 3 // 4 >= need else size


def _padded(rows: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows left-aligned in int64 [len(rows), width] (zeros after each row), and which entries are real."""
    tokens = np.zeros((len(rows), width), np.int64)
    valid = np.zeros(tokens.shape, bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], valid[i, :len(row)] = row, True
    return tokens, valid


def _scan_then_text(segments: list) -> bool:
    """Whether a prompt is one scan after text, followed by text only ("fMRI: " <scan> "\nQuestion: ...")."""
    kinds = [kind for kind, _ in segments]
    return kinds.count("fmri") == 1 and kinds.index("fmri") < len(kinds) - 1 and kinds[-1] == "text"


class Prompter:
    """Asks questions about scans through the fMRI + text key/value cache (:mod:`brainjax.models.fmri_cache`).

    A call takes prompts (segment lists ending in the query, e.g.
    :func:`~brainjax.lm.instructions.query_segments`) and optional k-shot ``shots`` ``(scan, question, answer)``
    shared by every prompt. The shots are run once (a prefix of one row per device, repeated to the batch); each batch
    of queries then extends it by its scans and questions (one forward per query); label answers and generated
    tokens extend that by a few text positions. Shapes are rounded up (see :meth:`_batches`) so similar prompts
    share compiled programs. Without shots, the scan part of a batch of prompts is kept (a few MB per batch) and
    reused when the same scans are asked again, so one Prompter should serve every target and k. A model with
    block-local scan attention (``language.scan_attention = "block"``) goes further: each scan's keys and values
    are computed once, on their own, and moved into every prompt that asks about it, with or without shots
    (:meth:`_moved_scan_batches`), so a question costs its text only.
    """

    def __init__(self, loaded, codec, windows: dict[int, dict], n_parcels: int, batch_size: int = 8):
        cfg = loaded.cfg
        self.loaded, self.codec, self.windows = loaded, codec, windows
        self.spec = sequence_spec(cfg, n_parcels)  # one scan's layout: spec.block_tokens positions, n_patches groups
        self.devices = loaded.mesh.size
        self.batch_size = _round_up(batch_size, self.devices)
        self._scan_caches: dict = {}  # zero-shot: each batch's scan part, reused by every question about it
        self._scan_blocks: dict[int, dict[str, np.ndarray]] = {}  # block-local attention: each scan's keys/values
        _release_large_buffers()

    def _chunk(self, segments: list, first_group: int, text_len: int) -> tuple[dict[str, np.ndarray], int]:
        """One row of a chunk holding ``segments`` (text strings, fMRI manifest indices) from ``first_group``,
        its text padded to ``text_len``; returns the arrays and the group after it."""
        scans = [int(part) for kind, part in segments if kind == "fmri"]
        tokens = [("text", self.codec.encode(p)) if k == "text" else ("fmri", scans.index(int(p)))
                  for k, p in segments]
        spec = dataclasses.replace(self.spec, blocks=len(scans), text_len=text_len, answer_len=1)
        masks = np.stack([self.windows[scan]["parcel_mask"] for scan in scans])
        row = layout(tokens, [], masks, spec, first_group=first_group)
        chunk = {k: row[k] for k in ("ids", "slot", "group", "valid")}
        chunk.update({k: np.stack([self.windows[scan][k] for scan in scans]) for k in WINDOW_KEYS})
        return chunk, next_group(tokens, spec, first_group)

    def _text_len(self, segments: list) -> int:
        return sum(len(self.codec.encode(p)) for k, p in segments if k == "text")

    def _batches(self, prompts: Sequence[list], shots: Sequence[tuple[int, str, str]], room: int):
        """Per batch of queries: (rows used, cache after the shots and the queries, log-probabilities of the
        first answer token [rows, V], the group each row's answer starts at [rows]). ``room``: answer slots."""
        if self._movable_scans() and all(_scan_then_text(s) for s in prompts):
            yield from self._moved_scan_batches(prompts, shots, room)
            return
        if not shots and all(_scan_then_text(s) for s in prompts):
            yield from self._scan_first_batches(prompts, room)
            return
        mesh = self.loaded.mesh
        # Shapes are rounded (the prefix's text to 64, the query's to 32, the cache by _slots) so that
        # targets and k share compiled programs: on CPU compiling, not computing, dominated the evaluation.
        prefix, prefix_text, prefix_len = self._prefix_shape(shots)
        segments = list(prompts)
        text_len = _round_up(max(self._text_len(s) for s in segments), 32)
        slots = _slots(prefix_len + self.spec.block_tokens + text_len + room)
        model = self.loaded.model
        shared, prefix_next = self._shots_cache(prefix, prefix_text, slots)
        for lo in range(0, len(segments), self.batch_size):
            part = segments[lo:lo + self.batch_size]
            built = [self._chunk(s, prefix_next, text_len) for s in part]
            built += [built[-1]] * (self.batch_size - len(built))  # pad to whole device rows
            last = np.array([np.flatnonzero(c["valid"]).max() for c, _ in built], np.int32)
            on_mesh = local_rows({**stack([c for c, _ in built]), "last": last}, mesh)
            first, cache = _start_or_extend(model, on_mesh, None if shared is None else _copy(shared), slots)
            yield len(part), cache, gather_rows(first)[:len(part)], np.array([g for _, g in built], np.int32)

    def _prefix_shape(self, shots: Sequence[tuple[int, str, str]]) -> tuple[list, int, int]:
        """The shots' segments, their text length rounded to 64 and their positions (0 without shots)."""
        prefix = shot_segments(shots)
        if not prefix:
            return prefix, 0, 0
        prefix_text = _round_up(self._text_len(prefix), 64)
        return prefix, prefix_text, prefix_text + len(shots) * self.spec.block_tokens

    def _shots_cache(self, prefix: list, prefix_text: int, slots: int) -> tuple[FMRICache | None, int]:
        """The shots' cache, computed as one row per device and repeated to the batch on device, and the group
        after it; (None, 0) without shots."""
        if not prefix:
            return None, 0
        row, prefix_next = self._chunk(prefix, 0, prefix_text)
        on_mesh = local_rows({**stack([row] * self.devices), "last": np.zeros(self.devices, np.int32)},
                             self.loaded.mesh)
        _, shared = _prefill_empty(self.loaded.model, on_mesh, on_mesh.pop("last"), slots=slots)
        return _repeat(shared, self.batch_size // self.devices), prefix_next

    def _prefix_runs(self, prefix: list) -> list[tuple[str, list[int] | int]]:
        """The shots' segments as alternating runs: ("text", token ids of consecutive text segments, each encoded
        on its own as :meth:`_chunk` lays them) and ("fmri", manifest index)."""
        runs: list = []
        for kind, part in prefix:
            if kind == "fmri":
                runs.append(("fmri", int(part)))
            elif runs and runs[-1][0] == "text":
                runs[-1][1].extend(self.codec.encode(part))
            else:
                runs.append(("text", list(self.codec.encode(part))))
        return runs

    def _moved_shots_cache(self, runs: list, slots: int) -> tuple[FMRICache | None, int]:
        """:meth:`_shots_cache` under block-local scan attention: the shots' text runs are computed (each padded
        to 32 positions) and each shot's scan is moved in from :meth:`_scan_block`, so a k-shot prefix costs its
        text, not one forward over all its scans (with per-patch tokens a 2-shot prompt over four sites was 4,800
        fMRI tokens in one chunk)."""
        if not runs:
            return None, 0
        # Computed for the whole batch (not one row per device, then repeated): the chunks then have the shapes of
        # the queries' own text and scan chunks and share their compiled programs (each new shape is a compile
        # and an executable held in memory).
        mesh, model, rows = self.loaded.mesh, self.loaded.model, self.batch_size
        cache, group = None, 0
        for kind, part in runs:
            start = np.full(rows, group, np.int32)
            if kind == "fmri":
                if cache is None:  # shot_segments open with text; the cache is made by the first text run
                    raise ValueError("a k-shot prefix must open with text, not a scan")
                cache = _insert(model, cache, local_rows({**self._scan_block([part] * rows), "offset": start},
                                                         mesh))
                group += self.spec.n_patches
                continue
            tokens, valid = _padded([part] * rows, _round_up(len(part), 32))
            on_mesh = local_rows({**self._text_chunk(tokens, valid, start), "last": np.zeros(rows, np.int32)}, mesh)
            _, cache = _start_or_extend(model, on_mesh, cache, slots)
            group += len(part)
        return cache, group

    def _scan_first_batches(self, prompts: Sequence[list], room: int):
        """:meth:`_batches` for prompts without shots that open with their scan ("fMRI: " <scan> <text>): the scan
        part of each batch is computed once per Prompter and reused by every later question about the same
        scans (zero-shot targets ask the same test scans in the same order); only the text after it is new."""
        mesh, model = self.loaded.mesh, self.loaded.model
        cut = [[i for i, (kind, _) in enumerate(s) if kind == "fmri"][0] + 1 for s in prompts]
        heads = [tuple(s[:i]) for s, i in zip(prompts, cut)]
        tails = [[t for kind, p in s[i:] for t in self.codec.encode(p)] for s, i in zip(prompts, cut)]
        head_text = _round_up(max(self._text_len(list(h)) for h in heads), 8)
        tail_len = _round_up(max(len(t) for t in tails), 32)
        # One cache size whatever the question and answer room, so that every target finds the scans' caches.
        slots = _slots(head_text + self.spec.block_tokens + max(tail_len + room, 256))
        for lo in range(0, len(prompts), self.batch_size):
            part = heads[lo:lo + self.batch_size]
            key = (tuple(part), head_text, slots)
            if key not in self._scan_caches:
                built = [self._chunk(list(h), 0, head_text) for h in part]
                built += [built[-1]] * (self.batch_size - len(built))
                on_mesh = local_rows({**stack([c for c, _ in built]), "last": np.zeros(self.batch_size, np.int32)},
                                     mesh)
                _, cache = _prefill_empty(model, on_mesh, on_mesh.pop("last"), slots=slots)
                self._scan_caches[key] = cache, np.array([g for _, g in built], np.int32)
            cache, start = self._scan_caches[key]
            rows = tails[lo:lo + self.batch_size]
            rows += [rows[-1]] * (self.batch_size - len(rows))
            tokens, valid = _padded(rows, tail_len)
            last = np.array([len(r) - 1 for r in rows], np.int32)
            on_mesh = local_rows({**self._text_chunk(tokens, valid, start), "last": last}, mesh)
            first, cache = _prefill(model, on_mesh, _copy(cache), on_mesh.pop("last"))  # the stored one is kept
            used = len(part)
            yield used, cache, gather_rows(first)[:used], start + np.array([len(r) for r in rows], np.int32)

    def _movable_scans(self) -> bool:
        """Whether a scan's keys and values can be computed once and moved into any prompt (block-local scan
        attention under RoPE, :func:`~brainjax.models.fmri_cache.insert_block`)."""
        model = self.loaded.model
        return model.scan_attention == "block" and model.lm.cfg.family == "qwen3"

    def _scan_block(self, scans: Sequence[int]) -> dict[str, np.ndarray]:
        """Keys and values of each scan computed on its own from group 0, stacked [len(scans), ...]: k{i}, v{i}
        per layer [T, KV, D], group int32 [T], valid bool [T] (T = N x P). Each scan is computed once per
        Prompter and kept on the host (N x P x layers x 2 x KV x D floats, 0.6 MB on the default data)."""
        self._compute_blocks(scans)
        return stack([self._scan_blocks[int(s)] for s in scans])

    def _compute_blocks(self, scans: Sequence[int]) -> None:
        """Compute the :meth:`_scan_block` of every scan of ``scans`` not yet kept, whole batches at a time (callers
        pass every scan they will need first: a forward over a batch of scans is the evaluation's largest cost, and
        one new scan at a time would fill each batch with copies of it)."""
        missing = sorted({int(s) for s in scans} - set(self._scan_blocks))
        tokens = self.spec.block_tokens
        for lo in range(0, len(missing), self.batch_size):
            part = missing[lo:lo + self.batch_size]
            built = [self._chunk([("fmri", scan)], 0, 1)[0] for scan in part]
            built += [built[-1]] * (self.batch_size - len(built))
            on_mesh = local_rows({**stack(built), "last": np.zeros(self.batch_size, np.int32)}, self.loaded.mesh)
            _, cache = _prefill_empty(self.loaded.model, on_mesh, on_mesh.pop("last"), slots=_slots(tokens + 1))
            # copies: a view would keep the whole batch's cache alive for each scan
            keys = [np.ascontiguousarray(gather_rows(k)[:, :tokens]) for k in cache.k]
            values = [np.ascontiguousarray(gather_rows(v)[:, :tokens]) for v in cache.v]
            for i, scan in enumerate(part):
                block = {f"k{layer}": k[i] for layer, k in enumerate(keys)}
                block.update({f"v{layer}": v[i] for layer, v in enumerate(values)})
                block.update(group=built[i]["group"][:tokens], valid=built[i]["valid"][:tokens])
                self._scan_blocks[scan] = block

    def _moved_scan_batches(self, prompts: Sequence[list], shots: Sequence[tuple[int, str, str]], room: int):
        """:meth:`_batches` for prompts "<text> <scan> <text>" under block-local scan attention: per batch the
        shots' cache (computed once) is extended by each row's text before its scan, the scan's own keys and values
        moved in (:meth:`_scan_block`, computed once per scan for every target and k), then the text after it.
        Only text is computed per question: a k-shot query costs its question, not its scan (300 tokens on the
        default data)."""
        mesh, model = self.loaded.mesh, self.loaded.model
        scan_len = self.spec.block_tokens
        cut = [[i for i, (kind, _) in enumerate(s) if kind == "fmri"][0] for s in prompts]
        scans = [int(s[i][1]) for s, i in zip(prompts, cut)]
        heads = [[t for _, p in s[:i] for t in self.codec.encode(p)] for s, i in zip(prompts, cut)]
        tails = [[t for _, p in s[i + 1:] for t in self.codec.encode(p)] for s, i in zip(prompts, cut)]
        runs = self._prefix_runs(shot_segments(shots))
        self._compute_blocks(scans + [p for kind, p in runs if kind == "fmri"])
        prefix_len = sum(_round_up(len(p), 32) if kind == "text" else scan_len for kind, p in runs)
        head_len = _round_up(max(max(len(h) for h in heads), 1), 8)
        tail_len = _round_up(max(len(t) for t in tails), 32)
        slots = _slots(prefix_len + head_len + scan_len + tail_len + room)
        shared, prefix_next = self._moved_shots_cache(runs, slots)
        for lo in range(0, len(prompts), self.batch_size):
            used = min(self.batch_size, len(prompts) - lo)
            pick = [lo + min(i, used - 1) for i in range(self.batch_size)]  # pad to whole device rows
            head_tokens, head_valid = _padded([heads[i] for i in pick], head_len)
            start = np.full(self.batch_size, prefix_next, np.int32)
            first_rows = np.zeros(self.batch_size, np.int32)
            on_mesh = local_rows({**self._text_chunk(head_tokens, head_valid, start), "last": first_rows}, mesh)
            _, cache = _start_or_extend(model, on_mesh, None if shared is None else _copy(shared), slots)
            offset = start + np.array([len(heads[i]) for i in pick], np.int32)
            cache = _insert(model, cache, local_rows({**self._scan_block([scans[i] for i in pick]),
                                                      "offset": offset}, mesh))
            tail_start = offset + self.spec.n_patches
            tail_tokens, tail_valid = _padded([tails[i] for i in pick], tail_len)
            last = np.array([len(tails[i]) - 1 for i in pick], np.int32)
            on_mesh = local_rows({**self._text_chunk(tail_tokens, tail_valid, tail_start), "last": last}, mesh)
            first, cache = _prefill(model, on_mesh, cache, on_mesh.pop("last"))
            yield used, cache, gather_rows(first)[:used], tail_start + np.array([len(tails[i]) for i in pick],
                                                                                 np.int32)

    def _text_chunk(self, tokens: np.ndarray, valid: np.ndarray, start_group: np.ndarray) -> dict[str, np.ndarray]:
        """Text positions ids int [B, T] (valid bool [B, T]) whose groups start at start_group [B]."""
        width = tokens.shape[1]
        return {"ids": tokens.astype(np.int32), "slot": np.full(tokens.shape, -1, np.int32),
                "group": (start_group[:, None] + np.arange(width)).astype(np.int32), "valid": valid}

    def continuation_logprobs(self, prompts: Sequence[list], continuations: Sequence[Sequence[Sequence[int]]],
                              shots: Sequence[tuple[int, str, str]] = ()) -> list[list[np.ndarray]]:
        """Per prompt i, per continuation c (token ids ``continuations[i][c]``, non-empty, as many per prompt):
        the teacher-forced log-probability of each token float [len], after the shared ``shots``."""
        if len(continuations) != len(prompts) or len({len(c) for c in continuations}) != 1:
            raise ValueError("need one list of continuations per prompt, as many for every prompt")
        if any(len(tokens) == 0 for c in continuations for tokens in c):
            raise ValueError("a continuation is empty")
        longest = max(len(t) for c in continuations for t in c)
        width = _round_up(longest, 4 if longest <= 8 else 32)
        out: list[list[np.ndarray]] = []
        for lo, (used, cache, first, start) in zip(range(0, len(prompts), self.batch_size),
                                                   self._batches(prompts, shots, width)):
            rows = [continuations[lo + min(i, used - 1)] for i in range(self.batch_size)]
            per = []
            for c in range(len(rows[0])):
                tokens, valid = _padded([row[c] for row in rows], width)
                targets = np.roll(tokens, -1, axis=1)  # position t predicts token t + 1
                chunk = self._text_chunk(tokens, valid, start)
                on_mesh = local_rows({**chunk, "targets": targets.astype(np.int32)}, self.loaded.mesh)
                rest = gather_rows(_continuation(self.loaded.model, on_mesh, cache, on_mesh.pop("targets")))
                per.append([np.concatenate([first[i, rows[i][c][:1]], rest[i, :len(rows[i][c]) - 1]])
                            for i in range(used)])
            out += [[per[c][i] for c in range(len(per))] for i in range(used)]
        return out

    def label_token_logprobs(self, prompts: Sequence[list], labels: Sequence[str],
                             shots: Sequence[tuple[int, str, str]] = ()) -> list[list[np.ndarray]]:
        """Per prompt, per label: the log-probabilities of the label's tokens (answer + eos) float [m_c]."""
        answers = [self.codec.encode(" " + label) + [self.codec.eos_id] for label in labels]
        return self.continuation_logprobs(prompts, [answers] * len(prompts), shots)

    def generate(self, prompts: Sequence[list], max_new: int = 6, grammar: NumberGrammar | None = None,
                 shots: Sequence[tuple[int, str, str]] = ()) -> list[str]:
        """Greedy answers (stop at eos or a newline) to ``prompts``, decoded to text, token by
        token from the cache; with ``grammar`` every step picks the best token the number grammar allows, so
        each answer is a number (or its prefix at ``max_new``)."""
        texts: list[str] = []
        for used, cache, logp, start in self._batches(prompts, shots, max_new):
            generated = [[] for _ in range(used)]
            done = np.zeros(used, bool)
            for step in range(max_new):
                scores = logp[:used]
                if grammar is not None:
                    allowed = np.stack([grammar.allowed(self.codec.decode(g)) for g in generated])
                    scores = np.where(allowed, scores[:, :allowed.shape[1]], -np.inf)
                tokens = np.argmax(scores, axis=-1)
                for i, token in enumerate(tokens):
                    if done[i]:
                        continue
                    if int(token) == self.codec.eos_id or "\n" in self.codec.decode([int(token)]):
                        done[i] = True
                    else:
                        generated[i].append(int(token))
                if done.all() or step == max_new - 1:
                    break
                feed = np.zeros((self.batch_size, 1), np.int64)
                feed[:used, 0] = tokens
                chunk = self._text_chunk(feed, np.ones(feed.shape, bool), start + step)
                on_mesh = local_rows({**chunk, "last": np.zeros(self.batch_size, np.int32)}, self.loaded.mesh)
                # every cache _batches yields is a new one, used here only: extended in place
                logp, cache = _prefill(self.loaded.model, on_mesh, cache, on_mesh.pop("last"))
                logp = gather_rows(logp)
            texts += [self.codec.decode(g).strip() for g in generated]
        return texts


def constrained_choice(token_logps: Sequence[np.ndarray], token_ids: Sequence[Sequence[int]]) -> int:
    """Greedy decoding restricted to the label token sequences, from teacher-forced token log-probabilities.

    token_logps[c][j]: log p(token j of label c | prompt, tokens < j of label c); token_ids[c]: label c's tokens.
    Labels sharing a prefix share the distribution after it, so comparing their next-token log-probabilities
    is the constrained decoder's greedy step. Returns the chosen label index.
    """
    alive = list(range(len(token_ids)))
    step = 0
    while len(alive) > 1:
        ended = [c for c in alive if len(token_ids[c]) <= step]
        if ended:  # a label that is a strict prefix of another cannot be told apart by greedy steps: keep it
            return ended[0]
        best = max(alive, key=lambda c: float(token_logps[c][step]))
        alive = [c for c in alive if token_ids[c][step] == token_ids[best][step]]
        step += 1
    return alive[0]
