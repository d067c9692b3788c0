"""The embedded default data of brainjax: synthetic cohorts written as ordinary datasets, and their cache.

The generative model lives in :mod:`brainjax.data.synthetic_model` (documented in the README); this
module resolves the atlas, draws a cohort, writes it with :func:`~brainjax.data.dataset.write_part` /
:func:`~brainjax.data.dataset.finalize`, states its variance budget, and builds the default dataset once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainjax.cache import cached
from brainjax.data.atlas import load_atlas
from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import ScanMeta, assign_splits, finalize, write_part
from brainjax.data.synthetic_model import (
    DEFAULT_SYNTH,
    GENERATOR_VERSION,
    SiteTraits,
    SubjectTraits,
    SynthConfig,
    Template,
    build_template,
    double_gamma_hrf,
    ground_truth_networks,
    sample_sites,
    sample_subjects,
    simulate_subject,
    variance_shares,
)

__all__ = ["DEFAULT_SYNTH", "GENERATOR_VERSION", "SynthConfig", "SyntheticCohort", "config_hash", "default_dataset",
           "double_gamma_hrf", "explained_variance_fraction", "ground_truth_networks", "iter_scans", "load_cohort",
           "simulate_subject", "synthesize"]


@dataclass(frozen=True)
class SyntheticCohort:
    """The atlas, its template and the sampled subject/site traits of one configuration."""

    cfg: SynthConfig
    atlas: Atlas
    template: Template
    subjects: list[SubjectTraits]
    sites: list[SiteTraits]

    def phenotypes(self, s: int) -> dict:
        subject = self.subjects[s]
        return {"age": subject.age, "sex": subject.sex, "diagnosis": subject.diagnosis}


def load_cohort(cfg: SynthConfig, atlas: Atlas | None = None) -> SyntheticCohort:
    """Resolve the atlas (``brainjax.data.atlas.load_atlas(cfg.atlas)`` unless given) and draw all traits."""
    if atlas is None:
        atlas = load_atlas(cfg.atlas).atlas
    template = build_template(atlas, cfg.smoothing_mm)
    return SyntheticCohort(cfg, atlas, template, sample_subjects(cfg, template), sample_sites(cfg))


def iter_scans(cohort: SyntheticCohort) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(subject index, scan index, float32 [P, T])`` in subject order."""
    for s, subject in enumerate(cohort.subjects):
        comps = simulate_subject(cohort.cfg, cohort.template, s, subject, cohort.sites[subject.site])
        data = comps["network"] + comps["local"] + comps["white"] + comps["pink"] + comps["drift"]
        for j in range(cohort.cfg.scans_per_subject):
            yield s, j, data[j].astype(np.float32)


def explained_variance_fraction(cfg: SynthConfig, atlas: Atlas | None = None) -> dict[str, float]:
    """Expected share of the pooled variance (all parcels and scans) held by each component.

    Keys: ``network`` (shared across parcels, predictable from other parcels), ``local`` (parcel-specific but
    HRF-smooth, predictable from its own neighbouring time points), ``structured`` = network + local, and
    ``noise`` = white + 1/f + drift. Exact up to sampling (components are standardised per scan).
    """
    cohort = load_cohort(cfg, atlas)
    totals = dict.fromkeys(("network", "local", "white", "pink", "drift"), 0.0)
    for subject in cohort.subjects:
        for name, share in variance_shares(cohort.template, subject, cohort.sites[subject.site]).items():
            totals[name] += float(share.sum())
    total = sum(totals.values())
    result = {name: value / total for name, value in totals.items()}
    result["structured"] = result["network"] + result["local"]
    result["noise"] = result["white"] + result["pink"] + result["drift"]
    return result


# ----------------------------------------------------------------------------------------------- writing
def scan_id(subject: int, scan: int) -> str:
    return f"sub-{subject + 1:04d}_ses-{scan + 1}"


def synthesize(out: str | os.PathLike, cfg: SynthConfig, fractions: Sequence[float] = (0.8, 0.1, 0.1),
               atlas: Atlas | None = None):
    """Generate ``cfg`` into the dataset directory ``out`` (shards, manifest with age/sex/diagnosis, stats).

    The atlas saved with the dataset carries ``extra["ground_truth_networks"]`` (P labels) and, when the
    atlas had no network labels, the same labels as ``networks``. Returns the finished :class:`Dataset`.
    """
    assign_splits([], fractions)  # rejects bad fractions before generating, not after
    out = Path(out)
    if (out / "parts").exists() and any((out / "parts").iterdir()):
        raise FileExistsError(f"{out}: already holds dataset parts; choose an empty directory")
    cohort = load_cohort(cfg, atlas)
    fractions_info = explained_variance_fraction(cfg, cohort.atlas)

    def items():
        for s, j, data in iter_scans(cohort):
            subject = cohort.subjects[s]
            meta = ScanMeta(scan_id=scan_id(s, j), subject=f"sub-{s + 1:04d}", tr=cfg.tr, session=f"ses-{j + 1}",
                            site=f"site-{subject.site + 1:02d}", phenotypes=cohort.phenotypes(s))
            yield meta, data

    write_part(out, "synth", items())
    extra = {**cohort.atlas.extra, "ground_truth_networks": list(cohort.template.names),
             "synthetic": {"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(cfg),
                           "variance_fractions": fractions_info}}
    networks = cohort.atlas.networks if cohort.atlas.networks is not None else cohort.template.names
    saved_atlas = dataclasses.replace(cohort.atlas, networks=networks, extra=extra)
    return finalize(out, saved_atlas, fractions, seed=cfg.seed)


def config_hash(cfg: SynthConfig, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    payload = json.dumps({"v": GENERATOR_VERSION, "cfg": dataclasses.asdict(cfg), "fractions": list(fractions)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]




def default_dataset(cache_dir: str | os.PathLike | None = None, cfg: SynthConfig = DEFAULT_SYNTH) -> Path:
    """Path of the embedded default dataset, generated once into the cache and reused afterwards.

    Cache root: ``cache_dir``, else ``$BRAINJAX_CACHE``, else ``~/.cache/brainjax``. The dataset is built in
    a private temporary directory and renamed into place, so concurrent callers never see a half-written
    dataset; the loser of a race discards its copy and returns the winner's.
    """
    def build(tmp: Path) -> None:
        start = time.perf_counter()
        synthesize(tmp, cfg)
        (tmp / "generation_seconds.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
    return cached(f"synthetic-v{GENERATOR_VERSION}-{config_hash(cfg)}", "dataset.json", build, cache_dir,
                  "dataset")


def data_or_default(path: str | os.PathLike | None) -> str:
    """Dataset dir(s) as absolute paths, comma-separated as given; empty or None = the embedded default dataset
    (built and cached on first use)."""
    if not path:
        return str(default_dataset())
    return ",".join(str(Path(p).expanduser().resolve()) for p in str(path).split(",") if p)
