"""Probes across cohorts: fitted on one dataset's labelled scans (e.g. the pretraining cohort), tested on an
external one (BrainLM's zero-shot use: a cohort the model never saw, often without a training split of its own).

Both cohorts go through the same readouts as :mod:`brainjax.eval.phenotypes` (CLS, mean, token covariance of
the unmasked encoder; FC as the baseline), each normalised by its own dataset statistics. Every phenotype that
both manifests carry is probed with :func:`brainjax.eval.probe.probe` in transfer mode: scaling, imputation and
the ridge alpha / logistic C (subject-grouped inner CV) are fitted on the training cohort only, and the
external scans are predicted once. Subject ids are prefixed with their cohort so two datasets' ``sub-01`` stay
apart in the subject bootstrap of the comparison with FC.
"""

from __future__ import annotations

import numpy as np

from brainjax.data.dataset import Dataset
from brainjax.errors import DatasetError
from brainjax.eval.phenotypes import probe_features
from brainjax.eval.probe import compare_all, probe_all

EVERY_SPLIT = ("train", "val", "test")


def _cohort(loaded, path: str, splits: tuple[str, ...], batch_size: int, tag: str) -> tuple[dict, list[dict]]:
    """{readout: float [N, D]} (FC included) and the manifest rows (subjects prefixed with ``tag``)."""
    features, manifest = probe_features(loaded, path, splits, batch_size)
    return features, [{**row, "subject": f"{tag}:{row['subject']}"} for row in manifest]


def evaluate_probe_transfer(loaded, train_data: str, test_data: str, splits: tuple[str, ...] = EVERY_SPLIT, *,
                            batch_size: int = 16, seed: int = 0) -> dict:
    """Probes fitted on ``train_data``'s scans of ``splits`` and tested on every scan of ``test_data``.

    Returns the shape of :func:`brainjax.eval.phenotypes.evaluate_probes` ({"phenotypes", "comparison",
    "n_scans" (external scans), ...}) plus "transfer": {"train", "n_train", "test"}; "skipped" when the two
    manifests share no phenotype. Raises :class:`DatasetError` when the atlases differ in parcel count (FC
    and token covariance features would not line up).
    """
    fit_ds, test_ds = Dataset(train_data), Dataset(test_data)
    if fit_ds.atlas.n_parcels != test_ds.atlas.n_parcels:
        raise DatasetError(f"--probe-train {train_data}: {fit_ds.atlas.n_parcels} parcels, the evaluated data "
                           f"{test_data} has {test_ds.atlas.n_parcels}; probes transfer within one atlas")
    shared = [p for p in test_ds.phenotypes if p in fit_ds.phenotypes]
    if not shared:
        return {"skipped": f"{train_data} and {test_data} share no phenotype column "
                           f"({fit_ds.phenotypes} vs {test_ds.phenotypes})"}
    fit_features, fit_rows = _cohort(loaded, train_data, splits, batch_size, "train")
    test_features, test_rows = _cohort(loaded, test_data, EVERY_SPLIT, batch_size, "test")
    features = {name: np.concatenate([fit_features[name], test_features[name]])
                for name in fit_features if name in test_features}
    train = np.arange(len(fit_rows) + len(test_rows)) < len(fit_rows)
    results = probe_all(features, fit_rows + test_rows, shared, seed=seed, train=train)
    return {"n_scans": len(test_rows), "splits": list(splits), "phenotypes": results,
            "comparison": compare_all(results, "fc", seed=seed), "folds": 1,
            "transfer": {"train": train_data, "n_train": len(fit_rows), "test": test_data}}
