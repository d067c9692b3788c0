"""What a checkpoint's embeddings predict about each phenotype, beside functional connectivity, and how a
fine-tuned head does on held-out scans.

Probes: per-scan CLS and mean embeddings and the token covariance readout (:mod:`brainjax.eval.readouts`;
encoder unmasked, averaged over a scan's windows) and FC features (Fisher-z correlations of the same scans)
go through the same subject-level cross-validated linear and k-NN probes (:mod:`brainjax.eval.probe`). The
pretraining objective never sees a phenotype, so probing across every split is not leakage; the folds keep
each subject's scans together. Per phenotype and probe model, the best model-derived readout is compared
with FC by a paired bootstrap over subjects (:func:`brainjax.eval.probe.compare`).

Partial coverage: the FC and token covariance entries of a parcel that a scan misses (manifest
``missing_parcels``) are NaN, which the probes impute with that entry's mean over the training fold; the
CLS / mean embeddings never saw the parcel (it is masked out of the encoder's input).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from brainjax.data.dataset import MISSING, Dataset
from brainjax.eval.embeddings import embed_dataset
from brainjax.eval.inputs import split_windows
from brainjax.eval.probe import classification_metrics, compare_all, fc_features, probe_all, regression_metrics
from brainjax.eval.readouts import mask_missing_pairs


def probe_features(loaded, data: str, splits: tuple[str, ...], batch_size: int) -> tuple[dict, list[dict]]:
    """What the probes read for every scan of ``splits`` with a whole window: ({"cls", "mean", ["tokcov"],
    ["factcov"], "fc"}:
    float [N, D], with NaN on the pairs of parcels a scan misses) and the N manifest rows, in the same order."""
    dataset = Dataset(data)
    arrays = embed_dataset(loaded, data, splits, batch_size)
    index = {row["scan_id"]: i for i, row in enumerate(dataset.manifest)}
    rows = [index[s] for s in arrays["scan_id"]]
    present = np.stack([dataset.present(i) for i in rows])
    features = {name: arrays[name] for name in ("cls", "mean", "tokcov", "factcov") if name in arrays}
    if "tokcov" in features and not present.all():
        features["tokcov"] = mask_missing_pairs(features["tokcov"], present)
    if "factcov" in features and not present.all():  # the residual of a parcel a scan misses is no measurement
        features["factcov"] = features["factcov"].copy()
        features["factcov"][:, -present.shape[1]:][~present] = np.nan
    features["fc"] = fc_features([dataset.normalize(dataset.read(i)) for i in rows], present)
    return features, [dataset.manifest[i] for i in rows]


def evaluate_probes(loaded, data: str, splits: tuple[str, ...], *, batch_size: int = 16, folds: int = 5,
                    seed: int = 0) -> dict:
    """{"phenotypes": {phenotype: {"cls" | "mean" | "tokcov" | "fc": probe result}}, "comparison": {phenotype:
    {probe model: best readout vs fc}}, "n_scans", "splits"}; "skipped" without phenotypes. "tokcov" is absent
    when the checkpoint's windows hold a single time patch."""
    dataset = Dataset(data)
    if not dataset.phenotypes:
        return {"skipped": f"{data}: the manifest has no phenotype columns"}
    features, manifest = probe_features(loaded, data, splits, batch_size)
    results = probe_all(features, manifest, dataset.phenotypes, folds=folds, seed=seed)
    return {"n_scans": len(manifest), "splits": list(splits), "phenotypes": results,
            "comparison": compare_all(results, "fc", seed=seed)}


def evaluate_head(loaded, data: str, split: str, *, batch_size: int = 16, max_windows: int = 0) -> dict:
    """Held-out scan-level predictions of a regress/classify fine-tuned checkpoint.

    Window outputs are averaged per scan (class probabilities for classification; the de-standardised value
    for regression) and scored against the manifest; a chance reference sits beside the metrics.
    """
    cfg, lineage = loaded.cfg.finetune, loaded.lineage
    dataset = Dataset(data)
    run = nnx.jit(lambda m, b: m(b))
    sums, counts = {}, {}
    for host, batch in split_windows(loaded, data, split, batch_size, max_windows):
        out = np.asarray(jax.device_get(run(loaded.model, batch)), np.float64)
        if cfg.task == "classify":
            out = np.exp(out - out.max(-1, keepdims=True))
            out /= out.sum(-1, keepdims=True)
        else:
            out = out * lineage.target_std + lineage.target_mean
        for row in np.flatnonzero(host["valid"]):
            scan = int(host["scan"][row])
            sums[scan] = sums.get(scan, 0.0) + out[row]
            counts[scan] = counts.get(scan, 0) + 1
    scans = [s for s in sorted(sums) if dataset.manifest[s].get(cfg.target, MISSING) not in (MISSING, "")]
    if len(scans) < 2:
        raise ValueError(f"{data}: fewer than 2 {split} scans with a {cfg.target!r} value and a whole window")
    values = [dataset.manifest[s][cfg.target] for s in scans]
    pred = np.stack([sums[s] / counts[s] for s in scans])
    report = {"task": cfg.task, "target": cfg.target, "split": split, "n_scans": len(scans),
              "freeze_backbone": cfg.freeze_backbone, "pool": cfg.pool}
    if cfg.task == "regress":
        truth = np.array([float(v) for v in values])
        report["metrics"] = regression_metrics(truth, pred[:, 0])
        report["chance"] = regression_metrics(truth, np.full(len(truth), lineage.target_mean))
    else:
        classes = list(lineage.classes)
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise ValueError(f"{data}: {cfg.target} values {unknown} are not classes of this head {classes}")
        truth = np.array([classes.index(v) for v in values])
        report["classes"] = classes
        report["metrics"] = classification_metrics(truth, pred)
        majority = np.bincount(truth, minlength=len(classes)).max() / len(truth)
        report["chance"] = {"accuracy": float(majority), "balanced_accuracy": 1.0 / len(classes), "auroc": 0.5}
    return report
