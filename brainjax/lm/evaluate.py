"""Evaluate an fMRI-LM (stage 3) on questions about held-out scans, zero-shot and k-shot.

Each test scan is asked each target's question (paraphrase seeded per scan) after ``k`` labelled example scans
per class from the training split (never the query's subject; k = 0 is zero-shot). Scans enter as their
first window. Two readings of the same forward passes:

* ``logprob``: the summed log-probability of each label's answer tokens (answer + eos) given the prompt; the
  softmax over labels gives probabilities, hence accuracy, balanced accuracy and a true AUROC.
* ``constrained``: greedy decoding restricted to the label set. All labels alive after a prefix share that
  prefix, so the teacher-forced token log-probabilities of the label forwards are exactly the decoder's
  next-token distribution: at each step the best allowed next token is kept until one label remains.

Numeric targets (e.g. age) are answered by free greedy decoding (a few tokens), parsed as numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from brainjax.data.pipeline import ReadWindow, run_on_mesh
from brainjax.lm.scoring import NumberGrammar
from brainjax.models.inputs import WINDOW_KEYS
from brainjax.models.sequences import SequenceSpec, layout, stack


def first_windows(dataset, rows: Sequence[int], window: int) -> dict[int, dict[str, np.ndarray]]:
    """The first window (TRs 0 .. window) of each manifest row long enough for one, read exactly as the
    pipeline reads windows: manifest index -> signal [P, T], parcel_mask [P], coords [P, 3], tr []."""
    reader = ReadWindow([dataset], window, dataset.atlas.n_parcels)
    out = {}
    for row in rows:
        if int(dataset.manifest[row]["length"]) >= window:
            example = reader.map(np.array([0, row, 0]))
            out[int(row)] = {k: np.asarray(example[k]) for k in WINDOW_KEYS}
    return out


def token_logprobs(model, batch: dict) -> jax.Array:
    """Log-probability of every answer token float32 [B, M] (0 where ``loss_weight`` is 0)."""
    hidden = model(batch)[0]
    picked = jnp.take_along_axis(hidden, jnp.asarray(batch["loss_pos"])[..., None], axis=1)
    logp = jax.nn.log_softmax(model.lm.logits(picked), axis=-1)
    chosen = jnp.take_along_axis(logp, jnp.asarray(batch["loss_target"])[..., None], axis=-1)[..., 0]
    return chosen * batch["loss_weight"]


def next_token_logits(model, batch: dict) -> jax.Array:
    """Logits float32 [B, V] at loss position ``batch["step"][b]`` (the token that follows the answer so far)."""
    hidden = model(batch)[0]
    pos = jnp.take_along_axis(jnp.asarray(batch["loss_pos"]), jnp.asarray(batch["step"])[:, None], axis=1)
    return model.lm.logits(jnp.take_along_axis(hidden, pos[..., None], axis=1)[:, 0])


# Jitted once per process: every Prompter (one per target and k) reuses the programs compiled for its shapes.
_score = nnx.jit(token_logprobs)
_next = nnx.jit(next_token_logits)


class Prompter:
    """Builds fixed-shape batches of prompts over ``blocks`` scans and runs the jitted scorers on them."""

    def __init__(self, loaded, codec, windows: dict[int, dict], n_parcels: int, blocks: int, batch_size: int = 8):
        cfg = loaded.cfg
        self.loaded, self.codec, self.windows = loaded, codec, windows
        self.spec = SequenceSpec(n_parcels=n_parcels, n_patches=cfg.data.window // cfg.model.patch, blocks=blocks)
        devices = loaded.mesh.size
        self.batch_size = -(-batch_size // devices) * devices

    def fit_text(self, prompts: list[list], longest_answer: int) -> None:
        """Size the text budget for ``prompts`` (rounded up to 32 tokens, so similar prompts share a compile)."""
        need = max(sum(len(self.codec.encode(p)) for k, p in prompt if k == "text") for prompt in prompts)
        text_len = -(-(need + longest_answer) // 32) * 32
        self.spec = dataclasses.replace(self.spec, text_len=text_len)

    def sample(self, segments: list, answer_ids: list[int]) -> dict[str, np.ndarray]:
        scans = [int(part) for kind, part in segments if kind == "fmri"]
        blocks = {scan: b for b, scan in enumerate(scans)}
        tokens = [("text", self.codec.encode(p)) if k == "text" else ("fmri", blocks[int(p)]) for k, p in segments]
        masks = np.zeros((self.spec.blocks, self.spec.n_parcels), bool)
        fmri = {k: [] for k in WINDOW_KEYS}
        for b in range(self.spec.blocks):
            w = self.windows[scans[min(b, len(scans) - 1)]]  # unused blocks repeat a real scan (never read)
            masks[b] = w["parcel_mask"] if b < len(scans) else False
            for k in WINDOW_KEYS:
                fmri[k].append(w[k])
        out = layout(tokens, answer_ids, masks, self.spec)
        out.update({k: np.stack(v) for k, v in fmri.items()})
        out["parcel_mask"] = masks
        return out

    def _run(self, fn, samples: list[dict]) -> np.ndarray:
        results = []
        for lo in range(0, len(samples), self.batch_size):
            chunk = samples[lo:lo + self.batch_size]
            batch = stack(chunk + [chunk[-1]] * (self.batch_size - len(chunk)))  # pad to whole device rows
            out = run_on_mesh(lambda b: fn(self.loaded.model, b), batch, self.loaded.mesh)
            results.append(out[:len(chunk)])
        return np.concatenate(results)

    def label_token_logprobs(self, prompts: list[list], labels: Sequence[str]) -> list[list[np.ndarray]]:
        """Per prompt, per label: the log-probabilities of the label's tokens (answer + eos) float [m_c]."""
        answers = [self.codec.encode(" " + label) + [self.codec.eos_id] for label in labels]
        self.fit_text(prompts, max(len(a) for a in answers))
        samples = [self.sample(p, a) for p in prompts for a in answers]
        scores = self._run(_score, samples)
        per = scores.reshape(len(prompts), len(labels), -1)
        return [[per[i, c, :len(answers[c])] for c in range(len(labels))] for i in range(len(prompts))]

    def generate(self, prompts: list[list], max_new: int = 6, grammar: NumberGrammar | None = None) -> list[str]:
        """Greedy answers (stop at eos or a newline), decoded to text; with ``grammar`` every step picks the best
        token the number grammar allows, so each answer is a number (or its prefix at ``max_new``)."""
        generated = [[] for _ in prompts]
        self.fit_text(prompts, max_new + 1)
        done = np.zeros(len(prompts), bool)
        for step in range(max_new):
            samples = [dict(self.sample(p, g + [self.codec.eos_id]), step=np.int32(step))
                       for p, g in zip(prompts, generated)]
            logits = self._run(_next, samples)
            if grammar is not None:
                allowed = np.stack([grammar.allowed(self.codec.decode(g)) for g in generated])
                logits = np.where(allowed, logits[:, :allowed.shape[1]], -np.inf)
            for i, token in enumerate(np.argmax(logits, axis=-1)):
                if done[i]:
                    continue
                if int(token) == self.codec.eos_id or "\n" in self.codec.decode([int(token)]):
                    done[i] = True
                else:
                    generated[i].append(int(token))
            if done.all():
                break
        return [self.codec.decode(g).strip() for g in generated]


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
