"""Typed, frozen run configuration: presets from ``experiments/*.py`` and ``section.field=value`` overrides.

A config is a tree of frozen dataclasses: common sections (data, optim, train, mesh) and one section per
objective (mask + model: the MAE; quantizer: the tokenizer; finetune: heads; language: fMRI-LM). Presets are
small Python files under ``experiments/`` whose ``config()`` returns a :class:`Config`; ``--set
model.width=512`` style overrides are parsed against the field's annotated type, so a typo or a wrong type
fails loudly before any work starts.

What a run *derived* (class lists, target statistics, the language model's architecture) and where its
weights came from is not a hyperparameter: it is the run's :class:`Lineage`, saved as its own checkpoint item.
A field whose value the parameters depend on is declared with ``shapes_params()``: resuming a checkpoint with
another value of such a field is refused (:func:`param_fields`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainjax.errors import ConfigError


def shapes_params(default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A config field the model's parameters depend on (their shapes or their meaning): a checkpoint trained
    with another value cannot be resumed or warm-started into this run."""
    return field(default=default, metadata={"shapes_params": True}, **kwargs)


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # dataset directory; empty = the embedded synthetic dataset (built once, cached)
    window: int = 200  # training window length in TRs
    stride: int = 0  # 0 = one random crop per scan per epoch; >0 = every window at this stride
    batch_size: int = 8  # global batch (all processes, all devices)
    eval_batches: int = 4  # validation batches per evaluation
    workers: int = 0  # Grain worker processes per host (0 = in-process)
    mix_weights: tuple[float, ...] = ()  # sampling weights when `path` lists several datasets (comma-separated)
    validation: str = "split"  # split (the datasets' val scans; refused before step 1 when there are none) |
    # holdout (the last `holdout` of every training scan by time, never trained on) | none (no validation)
    holdout: float = 0.1  # fraction of each training scan held out with validation=holdout (at least a window)


@dataclass(frozen=True)
class MaskConfig:
    strategy: str = "random"  # random | future | parcels | time_block | mixture
    ratio: float = 0.75  # fraction of tokens masked (random, parcels, time_block)
    future_patches: int = 1  # patches masked at the end of every parcel (future)
    mixture: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)  # weights of random, future, parcels, time_block
    recent_context: bool = False  # a future-masked sample of the mixture, topped up to the random count, hides its
    # oldest context first, so the patches right before the forecast stay whole, as when forecasting


@dataclass(frozen=True)
class ModelConfig:
    patch: int = shapes_params(20)  # TRs per token
    max_parcels: int = shapes_params(424)  # upper bound on parcels (padding for mixed atlases)
    width: int = shapes_params(256)  # encoder width
    depth: int = shapes_params(4)  # encoder layers
    heads: int = shapes_params(4)  # encoder attention heads
    mlp: int = shapes_params(1024)  # encoder MLP hidden size
    dec_width: int = shapes_params(256)  # decoder width
    dec_depth: int = shapes_params(2)  # decoder layers
    dec_heads: int = shapes_params(4)  # decoder attention heads
    dec_mlp: int = shapes_params(1024)  # decoder MLP hidden size
    decoder: str = shapes_params("full")  # full (self-attention over every token, BrainLM) | cross (queries at every
    # token attend only to the encoder's visible tokens, CrossMAE: O(L x V) instead of O(L^2)) | factorised (time
    # within a parcel + cross) | axial (across parcels within a time patch, then over time within a parcel)
    fourier_features: int = shapes_params(4)  # octaves per coordinate axis (wavelengths 200, 100, 50, 25 mm); finer
    # ones only hash the parcel identity and slowed learning (see experiments/default.py)
    parcel_identity: bool = shapes_params(False)  # add a learned embedding per parcel slot to the coordinate embedding:
    # exact parcel identity for single-atlas runs (slot p = the dataset's parcel p; meaningless across atlases)
    time_embedding: str = shapes_params("index")  # index (sinusoid) | learned (table) | seconds (onset in s)
    max_patches: int = shapes_params(64)  # rows of the learned time table: longest window / patch
    norm_targets: bool = shapes_params(False)  # MSE against per-patch normalised targets (MAE paper option)
    neighbour_context: bool = shapes_params(False)  # each decoder query also embeds the raw values of its parcel's
    # visible neighbouring patches in time (previous, next): the continuity that interpolation and AR baselines use
    factor_prior: int = shapes_params(0)  # rank of a learned factor-analysis prior (0 = off): every token starts from
    # the factor model's conditional mean given the visible parcels of its time patch (the regression baseline's
    # answer, learnt), the decoder sees it and predicts the correction (brainjax.nn.priors)
    linear_skip: bool = shapes_params(False)  # add a linear map of the visible neighbouring patches (previous, next)
    # to every prediction: the AR path a one-patch-at-a-time decoder otherwise smooths over
    factor_dynamics: bool = shapes_params(False)  # for a token whose time patch has nothing seen (future, time-block
    # masking: no same-time parcel to condition on), the factor prior also carries a learnt linear map of the factor
    # scores at the edges of the neighbouring patches (latent dynamics across networks, what VAR uses), and the
    # linear skip gets separate maps for such tokens; needs factor_prior
    parcel_trend: bool = shapes_params(False)  # the neighbour features (context and skip) also carry a line fitted
    # through the parcel's visible patches over the window: the slow drift and 1/f level that neighbours miss
    contrastive_weight: float = shapes_params(0.0)  # scan-level objective beside the MAE loss: InfoNCE between the CLS
    # of two maskings of the same window (0 = off, BrainLM); gives the CLS an objective of its own
    contrastive_dim: int = shapes_params(64)  # width of the projection head the InfoNCE loss compares
    contrastive_temperature: float = 0.1  # softmax temperature of the InfoNCE logits (cosine similarities / t)
    dropout: float = 0.0  # dropout in attention output and MLP
    attention: str = "auto"  # auto | xla | chunked | cudnn | splash
    attention_chunk: int = 512  # query/key block for the chunked (memory-efficient) path
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    remat: bool = False  # rematerialise each transformer block in the backward pass
    remat_policy: str = "full"  # with remat, what a block keeps: full (its input only: least memory) | attention
    # (also each attention's output: the backward pass recomputes norms, projections and MLP, not the attention)

    @property
    def remat_mode(self) -> str | None:
        """The layers' remat argument: the policy when ``remat`` is on, else None."""
        return self.remat_policy if self.remat else None


@dataclass(frozen=True)
class OptimConfig:
    base_lr: float = 1e-3  # learning rate at batch 256 (BrainLM); scaled linearly by batch/256
    scale_lr: bool = True  # apply the batch/256 scaling
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.95
    warmup_frac: float = 0.05  # fraction of steps of linear warmup
    min_lr_frac: float = 0.0  # cosine floor as a fraction of the peak
    clip_norm: float = 1.0  # global gradient-norm clip (0 = off)
    accum_steps: int = 1  # gradient accumulation micro-steps per update


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # total optimizer updates
    seed: int = 0  # seeds parameters, masking and data order
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_last: int = 3  # checkpoints kept besides the permanent ones
    keep_every: int = 0  # keep every K-th step forever (0 = off)
    nonfinite: str = "stop"  # stop | skip: what a non-finite loss does
    async_checkpoint: bool = True
    figure: bool = True  # save true-vs-reconstructed figure at the end
    peak_flops: float = 0.0  # peak FLOP/s per device for MFU (0 = measure a matmul once, cached in the workdir)
    allow_data_change: bool = False  # resume a checkpoint on other training data (else refused; --allow-data-change)


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # devices on the data axis (-1 = whatever fsdp leaves)
    fsdp: int = 1  # devices on the fsdp axis (parameters sharded here)


@dataclass(frozen=True)
class QuantizerConfig:
    """The neural tokenizer's quantizer (``objective = "tokenizer"``); its ViT shape comes from ``model``."""

    kind: str = shapes_params("vq")  # vq (L2-normalised codebook, EMA updates) | fsq (finite scalar quantisation)
    codebook_size: int = shapes_params(512)  # VQ codes (fMRI-LM: 8192)
    code_dim: int = shapes_params(32)  # VQ code dimension (fMRI-LM: 128)
    fsq_levels: tuple[int, ...] = shapes_params((8, 5, 5, 5))  # FSQ levels per channel (codebook = their product)
    commitment: float = shapes_params(0.25)  # weight of the commitment loss (VQ)
    decay: float = shapes_params(0.99)  # EMA decay of the codebook statistics (VQ)
    kmeans_iters: int = shapes_params(10)  # Lloyd iterations of the k-means initialisation on the first batch (VQ)
    dead_threshold: float = shapes_params(0.03)  # codes used below this fraction of uniform usage are restarted (VQ)
    spectrum_weight: float = shapes_params(0.0)  # weight of an amplitude-spectrum reconstruction loss (NeuroLM option)
    domain_weight: float = shapes_params(0.0)  # domain-adversarial alignment with the LM's input embeddings (0 = off)
    text_weight: float = shapes_params(0.0)  # SigLIP alignment with descriptor text (0 = off)
    lm_width: int = shapes_params(0)  # the LM's hidden size H (set by `brainjax tokenizer train --lm`)
    word_samples: int = shapes_params(16)  # LM embedding rows per window for the domain loss


@dataclass(frozen=True)
class FinetuneConfig:
    """Set by ``brainjax finetune`` (empty ``task`` = a pretraining run); the classes or target statistics it
    derives from the data are the run's :class:`Lineage`."""

    task: str = shapes_params("")  # "" (pretraining) | regress | classify | forecast
    target: str = shapes_params("")  # manifest phenotype column (regress / classify)
    pool: str = shapes_params("cls")  # embedding the head reads: cls | mean
    freeze_backbone: bool = False  # train the head only (linear probe through the trainer)
    head_dropout: float = 0.0  # dropout on the pooled embedding before the head


@dataclass(frozen=True)
class LanguageConfig:
    """fMRI-LM stages 2 (``objective = "adapt"``) and 3 (``"instruct"``): a language model reading tokenizer
    features of scans next to text. Set by ``brainjax adapt`` / ``brainjax instruct``; which language model and
    which tokenizer run it started from are the run's :class:`Lineage`."""

    train_lm: str = shapes_params("lora")  # lora | full | frozen: what of the language model trains (projector,
    # parcel embedding and fMRI head always train; the tokenizer never does)
    lora_rank: int = shapes_params(16)  # rank r of the adapters
    lora_alpha: float = shapes_params(32.0)  # adapter output scaled by alpha / r
    lora_targets: tuple[str, ...] = shapes_params(("q", "k", "v", "o", "gate", "up", "down"))  # projections given
    # adapters
    fmri_features: str = shapes_params("tokenizer")  # what an fMRI token carries: tokenizer (the stage-1 encoder's
    # features) | tokenizer+fc (plus its parcel's connectivity row within the time patch, see models/fmri_lm.py)
    # | tokenizer+summary | tokenizer+fc+summary (plus K bilinear readouts of the window's connectivity on the
    # last patch's tokens: models/fmri_lm.ConnectivitySummary)
    summary_rank: int = shapes_params(32)  # K of that summary
    fc_reference: str = shapes_params("none")  # none | cohort: connectivity rows as they are, or as z-scores
    # against the training cohort's mean and spread of every parcel pair (set by `adapt` from the training scans)
    fmri_time: str = shapes_params("patch")  # patch: one token per parcel and time patch | window: one per parcel
    # for the whole window (patches' features averaged, connectivity row over the window); needs code_weight = 0
    fmri_pool: int = shapes_params(0)  # fMRI tokens per time patch: 0 = one per parcel; K > 0 = K learned queries
    # read the patch's parcel tokens (models/resampler.py); needs code_weight = 0 (codes are per parcel)
    fmri_norm: bool = shapes_params(False)  # RMS-normalise fMRI tokens to the text embeddings' scale (`adapt` sets
    # it; False only so that runs saved before it existed load unchanged)
    scan_attention: str = shapes_params("causal")  # causal: an fMRI token reads everything before it (text and
    # earlier scans); block: only its own scan's earlier and same patches, so a scan's keys/values do not depend on
    # the prompt around it and evaluation computes them once per scan (models/fmri_lm.py; `adapt` sets it)
    text_len: int = 160  # text tokens per sample (prompt + answer; longer answers are cut)
    lm_len: int = 128  # tokens of the text-only sequence per sample (stage 2)
    text_weight: float = 1.0  # fMRI -> text loss (answer tokens only)
    code_weight: float = 1.0  # next-time-patch fMRI code prediction
    lm_weight: float = 0.5  # text-only language modelling (keeps the LM's language)
    loss_per_answer: bool = False  # the answer loss weighs every answer alike (its tokens share a weight of 1)
    # rather than every token: a 130-token description then counts as much as a one-token label (`instruct` sets it)
    rephrase: bool = False  # stage 2: each window's description in sentence frames drawn per (seed, scan, crop
    # start), the facts unchanged (data/describe.rephrase), so the LM cannot learn a scan's wording by heart;
    # needs data.window shorter than the scans (one crop, one phrasing)
    targets: tuple[str, ...] = ()  # stage 3: questions tuned on (the others stay zero-shot)
    train_support: int = 0  # stage 3: at most this many support scans in a training prompt; each prompt draws k
    # per class from 0 .. train_support // classes (k-shot training, lm/batches.InstructionSource); 0 = zero-shot only
    descriptors: str = ""  # descriptors.jsonl of the data ("" = DATA/descriptors/descriptors.jsonl)
    source_line: bool = False  # stage 3: prefix questions with "Source: <site>."
    seed: int = 0  # phrasing and question draws


@dataclass(frozen=True)
class Config:
    name: str = "default"
    objective: str = shapes_params("mae")  # mae (BrainLM masked autoencoder, and its fine-tuning) | tokenizer
    # (fMRI-LM stage-1 neural tokenizer) | adapt | instruct (fMRI-LM stages 2 and 3)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)


@dataclass(frozen=True)
class Lineage:
    """What a run derived from its data and where its weights came from: saved beside every checkpoint (item
    ``lineage``), written by the command that starts the run, never set with ``--set``."""

    parent: str = ""  # the work dir whose checkpoint the parameters were warm-started from ("" = from scratch)
    parent_step: int = -1  # that checkpoint's step
    classes: tuple[str, ...] = shapes_params(())  # classify heads: class labels in output order
    target_mean: float = 0.0  # regress heads: training-split mean of the target (heads predict standardised values)
    target_std: float = 1.0  # and its standard deviation
    lm_path: str = ""  # language runs: the Hugging Face LM directory the run started from
    lm_architecture: str = shapes_params("")  # that LM's LMConfig as JSON: the checkpoint rebuilds from it
    tokenizer: str = ""  # language runs: the stage-1 tokenizer work dir whose encoder and codes are used
    tokenizer_step: int = -1  # its checkpoint step


def experiments_dir() -> Path:
    """The repository's ``experiments/`` folder (override with BRAINJAX_EXPERIMENTS)."""
    env = os.environ.get("BRAINJAX_EXPERIMENTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "experiments"


def load_config(name_or_path: str) -> Config:
    """Load a preset by name (``experiments/NAME.py``) or from a Python file defining ``config()``."""
    path = Path(name_or_path)
    if path.suffix != ".py":
        path = experiments_dir() / f"{name_or_path}.py"
        if not path.exists():
            known = sorted(p.stem for p in experiments_dir().glob("*.py") if not p.stem.startswith("_"))
            raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {', '.join(known)}")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"brainjax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "config"):
        raise ConfigError(f"{path} defines no config() function")
    cfg = module.config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: config() returned {type(cfg).__name__}, expected brainjax.config.Config")
    return cfg


def _parse_value(raw: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {raw!r}")
    if annotation in (int, float, str):
        try:
            return annotation(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {raw!r}") from None
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        text = raw.strip().strip("()[]")
        parts = [p for p in (s.strip() for s in text.split(",")) if p]
        return tuple(_parse_value(p, inner, key) for p in parts)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        return _parse_value(raw, args[0], key)
    raise ConfigError(f"{key}: cannot parse a value of type {annotation}")


def override(cfg: Config, assignments: list[str] | tuple[str, ...]) -> Config:
    """Return ``cfg`` with ``section.field=value`` assignments applied (type-checked)."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set(node: Any, path: list[str], raw: str, key: str) -> Any:
    hints = typing.get_type_hints(type(node))
    names = [f.name for f in dataclasses.fields(node)]
    if path[0] not in names:
        raise ConfigError(f"unknown config key {key!r}: {type(node).__name__} has no field {path[0]!r} "
                          f"(fields: {', '.join(names)})")
    current = getattr(node, path[0])
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            example = dataclasses.fields(current)[0].name
            raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.{example}")
        return dataclasses.replace(node, **{path[0]: _parse_value(raw, hints[path[0]], key)})
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"unknown config key {key!r}: {path[0]!r} is a value, not a section")
    return dataclasses.replace(node, **{path[0]: _set(current, path[1:], raw, key)})


def with_steps(cfg: Config, steps: int) -> Config:
    """``cfg`` training for ``steps`` updates, evaluating and checkpointing at least once (at the end)."""
    train = dataclasses.replace(cfg.train, steps=steps, eval_every=max(1, min(cfg.train.eval_every, steps)),
                                checkpoint_every=max(1, min(cfg.train.checkpoint_every, steps)))
    return dataclasses.replace(cfg, train=train)


def with_data(cfg: Config, path: str) -> Config:
    """``cfg`` reading the dataset dir(s) ``path`` (comma-separated, already resolved)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=path))


# (section.field, lowest allowed value): sizes and counts that must be positive, rates that must not be negative
_AT_LEAST = {"data.window": 1, "data.batch_size": 1, "data.stride": 0, "data.eval_batches": 0, "data.workers": 0,
             "model.patch": 1, "model.max_parcels": 1, "model.width": 1, "model.depth": 1, "model.heads": 1,
             "model.mlp": 1, "model.dec_width": 1, "model.dec_depth": 1, "model.dec_heads": 1, "model.dec_mlp": 1,
             "model.fourier_features": 0, "model.max_patches": 1, "model.attention_chunk": 1,
             "model.contrastive_weight": 0, "model.contrastive_dim": 1, "model.factor_prior": 0,
             "mask.future_patches": 1,
             "optim.base_lr": 0, "optim.weight_decay": 0, "optim.clip_norm": 0, "optim.accum_steps": 1,
             "train.steps": 1, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 1,
             "train.keep_last": 1, "train.keep_every": 0, "train.peak_flops": 0, "quantizer.codebook_size": 2,
             "quantizer.code_dim": 1, "language.lora_rank": 1, "language.text_len": 1, "language.lm_len": 1,
             "language.train_support": 0}
# (section.field, highest allowed value): counts that build Python-level structure (a layer each), so an absurd
# value would exhaust memory before any shape check; and no integer field beyond int32 anywhere
_AT_MOST = {"model.depth": 1024, "model.dec_depth": 1024, "model.fourier_features": 64, "model.factor_prior": 4096,
           "language.train_support": 64}
_INT32_MAX = 2**31 - 1
# fractions in [0, 1] (ratio: strictly inside, something must be masked and something seen)
VALIDATION_MODES = ("split", "holdout", "none")
REMAT_POLICIES = ("full", "attention")  # see brainjax.nn.layers.rematerialise
_FRACTIONS = ("model.dropout", "optim.warmup_frac", "optim.min_lr_frac", "optim.b1", "optim.b2", "quantizer.decay")


def check(cfg: Config) -> Config:
    """``cfg`` if its numbers make sense, else a :class:`ConfigError` naming the field and the value (a negative
    width would otherwise surface as an error deep inside JAX)."""
    def get(key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    problems = [f"{k}={get(k)!r} must be >= {low}" for k, low in _AT_LEAST.items() if not get(k) >= low]
    problems += [f"{k}={get(k)!r} must be within [0, 1]" for k in _FRACTIONS if not 0 <= get(k) <= 1]
    problems += [f"{k}={get(k)!r} must be <= {high}" for k, high in _AT_MOST.items() if get(k) > high]
    problems += [f"{section.name}.{f.name}={value!r} is beyond any real configuration (> {_INT32_MAX})"
                 for section in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, section.name))
                 for f in dataclasses.fields(getattr(cfg, section.name))
                 if isinstance(value := getattr(getattr(cfg, section.name), f.name), int) and abs(value) > _INT32_MAX]
    if cfg.mask.strategy != "future" and not 0 < cfg.mask.ratio < 1:
        problems.append(f"mask.ratio={cfg.mask.ratio!r} must be strictly between 0 and 1")
    for width, heads in (("width", "heads"), ("dec_width", "dec_heads")):
        w, h = getattr(cfg.model, width), getattr(cfg.model, heads)
        if w >= 1 and h >= 1 and w % h:
            problems.append(f"model.{width}={w} is not a multiple of model.{heads}={h}")
    if cfg.model.remat_policy not in REMAT_POLICIES:
        problems.append(f"model.remat_policy={cfg.model.remat_policy!r} must be one of {', '.join(REMAT_POLICIES)}")
    if cfg.data.validation not in VALIDATION_MODES:
        problems.append(f"data.validation={cfg.data.validation!r} must be one of {', '.join(VALIDATION_MODES)}")
    if not 0 < cfg.data.holdout < 1:
        problems.append(f"data.holdout={cfg.data.holdout!r} must be strictly between 0 and 1")
    if cfg.data.window >= 1 and cfg.model.patch >= 1 and cfg.data.window % cfg.model.patch:
        problems.append(f"data.window={cfg.data.window} is not a multiple of model.patch={cfg.model.patch}")
    if (cfg.mesh.data != -1 and cfg.mesh.data < 1) or cfg.mesh.fsdp < 1:
        problems.append(f"mesh data={cfg.mesh.data} x fsdp={cfg.mesh.fsdp}: data must be -1 (the rest) or >= 1, "
                        f"fsdp >= 1")
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, cls: type = Config) -> Any:
    """Rebuild a config from :func:`to_dict` output (JSON round trip); unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(value, hint)
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def param_fields(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"section.field": value}`` of every field declared with :func:`shapes_params` in ``node`` (a Config or
    a Lineage), recursively: what a checkpoint's parameters depend on."""
    out = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out.update(param_fields(value, f"{prefix}{f.name}."))
        elif f.metadata.get("shapes_params"):
            out[prefix + f.name] = value
    return out


# Fields that configs written before the Lineage item held, and where each went: (section, old) -> new.
_LEGACY_LINEAGE = {("finetune", "classes"): "classes", ("finetune", "target_mean"): "target_mean",
                   ("finetune", "target_std"): "target_std", ("finetune", "init_from"): "parent",
                   ("finetune", "init_step"): "parent_step", ("language", "lm_path"): "lm_path",
                   ("language", "architecture"): "lm_architecture", ("language", "tokenizer_workdir"): "tokenizer",
                   ("language", "tokenizer_step"): "tokenizer_step", ("language", "init_from"): "parent",
                   ("language", "init_step"): "parent_step"}


def from_saved(config: dict, lineage: dict | None = None) -> tuple[Config, Lineage]:
    """The Config and Lineage of a checkpoint's ``config`` (and ``lineage``) items, from any brainjax version.

    Checkpoints written before the lineage item kept it inside the config (``finetune.classes``,
    ``language.architecture``...): those fields are moved out, so old work dirs load and resume unchanged.
    """
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    moved: dict[str, Any] = {}
    for (section, old), new in _LEGACY_LINEAGE.items():
        if old in config.get(section, {}):
            value = config[section].pop(old)
            if new not in moved or value not in ("", -1):  # an unset field never hides one that is set
                moved[new] = value
    if not moved.get("parent") and moved.get("tokenizer"):  # a stage-2 run: its parent is the tokenizer run
        moved.update(parent=moved["tokenizer"], parent_step=moved.get("tokenizer_step", -1))
    return from_dict(config), from_dict({**moved, **(lineage or {})}, Lineage)
