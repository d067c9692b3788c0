"""Phenotype probes: how well do per-scan features predict each phenotype of a dataset manifest?

Features are per-scan vectors (embeddings of a pretrained model, or functional connectivity from
``fc_features``). Each phenotype is probed with simple models under subject-level cross-validation so the
numbers are honest:

- Outer folds are ``GroupKFold`` over subject ids: a subject's scans are never split between train and test,
  so a model cannot score by recognising the subject.
- Scaling and hyper-parameter choice (ridge alpha, logistic C) are fitted on the outer training fold only;
  the inner folds that choose them are grouped by subject as well.
- Metrics are computed once over all out-of-fold predictions (every labelled scan is predicted exactly once);
  the per-fold mean and std of the main metric are reported beside them.
- AUROC is computed from predicted probabilities, never from hard labels.
- A NaN feature is a missing value (an FC entry of a parcel that scan misses, see ``fc_features``): it is
  imputed with that feature's mean over the outer training fold (scans where it is present), fitted with the
  scaler, so neither the held-out scans nor a fill value reach the probe.

``probe`` returns a reason instead of raising when a phenotype cannot be probed (too few scans, subjects or
subjects per class), so a sweep over many phenotypes survives the unusable ones.

``compare`` asks whether the best model-derived feature set beats a baseline (FC) on one phenotype: a paired
bootstrap that resamples subjects over the out-of-fold predictions that ``probe`` keeps, so both feature
sets are scored on the same resampled scans.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, recall_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainjax.eval.bootstrap import N_BOOT, paired_interval, verdict, weighted_auroc, weighted_r2_score

ALPHAS = np.logspace(-2, 5, 15)  # ridge penalties tried by the inner CV
CS = np.logspace(-3, 3, 7)  # logistic inverse penalties tried by the inner CV
INNER_FOLDS = 3  # inner folds (grouped by subject) that choose alpha / C
MAX_CATEGORIES = 10  # integer-valued numeric phenotypes with more distinct values are continuous
_MISSING = {"", "n/a"}
_R_CLIP = 0.999999


def fc_features(series: Sequence[np.ndarray], present: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Functional connectivity per scan: Fisher-z Pearson correlations between parcels, upper triangle.

    series: N arrays, each float [P, T] (same P for every scan, T >= 2 may differ).
    present: per scan bool [P] (False = a parcel the scan misses, ``Dataset.present``), or None (all present).
    A missing parcel's values are never read: its entries are NaN (missing features, which the probes impute
    with the training fold's mean of that entry), the other entries are the correlations of the present
    parcels alone.
    Returns float32 [N, P*(P-1)/2], row-major upper triangle without the diagonal; r is clipped to +-0.999999
    so identical parcels give a large finite z rather than inf.
    """
    if len(series) == 0:
        raise ValueError("fc_features: no scans given")
    if present is not None and len(present) != len(series):
        raise ValueError(f"fc_features: {len(present)} presence masks for {len(series)} scans")
    n_parcels = None
    rows = []
    for i, scan in enumerate(series):
        x = np.asarray(scan, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"fc_features: scan {i} has shape {x.shape}, expected [P, T]")
        if n_parcels is None:
            n_parcels = x.shape[0]
            if n_parcels < 2:
                raise ValueError(f"fc_features: need at least 2 parcels, scan 0 has {n_parcels}")
        elif x.shape[0] != n_parcels:
            raise ValueError(f"fc_features: scan {i} has {x.shape[0]} parcels, scan 0 has {n_parcels}")
        if x.shape[1] < 2:
            raise ValueError(f"fc_features: scan {i} has {x.shape[1]} time points, need at least 2")
        keep = np.ones(n_parcels, bool) if present is None else np.asarray(present[i], bool)
        if keep.shape != (n_parcels,):
            raise ValueError(f"fc_features: presence mask {i} has shape {keep.shape}, expected ({n_parcels},)")
        x = x[keep]
        if not np.isfinite(x).all():
            raise ValueError(f"fc_features: scan {i} contains NaN or Inf")
        flat = np.flatnonzero(np.ptp(x, axis=1) == 0)
        if flat.size:
            raise ValueError(f"fc_features: scan {i} has constant parcel(s) {np.flatnonzero(keep)[flat].tolist()}; "
                             f"correlation undefined")
        centred = x - x.mean(axis=1, keepdims=True)
        unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        z = np.full((n_parcels, n_parcels), np.nan)
        z[np.ix_(keep, keep)] = np.arctanh(np.clip(unit @ unit.T, -_R_CLIP, _R_CLIP))
        rows.append(z[np.triu_indices(n_parcels, k=1)])
    return np.stack(rows).astype(np.float32)


def _is_missing(value: object) -> bool:
    return value is None or str(value).strip().lower() in _MISSING


def _as_numbers(values: Sequence[str]) -> np.ndarray | None:
    """float64 [M] if every value parses as a finite number, else None."""
    try:
        numbers = np.array([float(str(v).strip()) for v in values], dtype=np.float64)
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def phenotype_kind(values: Sequence[str]) -> str:
    """Kind of a manifest phenotype column; "n/a", "" (any case, surrounding spaces ignored) are missing.

    values: [N] strings. Rules, on the distinct non-missing values (numbers compared as numbers, so "1" and
    "1.0" are one value):
    - "constant": at most 1 distinct value (including an all-missing column);
    - "binary": exactly 2 distinct values, numeric or not;
    - "categorical": all values integer-valued numbers with 3..10 distinct values (e.g. site codes, Likert
      items), or any non-numeric labels with 3 or more distinct values (many-class text columns usually get
      skipped later by ``probe`` for having classes with fewer than 2 subjects);
    - "continuous": every other numeric column, i.e. more than 10 distinct values, or any non-integer value.
    """
    kept = [str(v).strip() for v in values if not _is_missing(v)]
    numbers = _as_numbers(kept)
    distinct = np.unique(numbers) if numbers is not None else np.unique(np.array(kept, dtype=str))
    if distinct.size <= 1:
        return "constant"
    if distinct.size == 2:
        return "binary"
    if numbers is None:
        return "categorical"
    if distinct.size <= MAX_CATEGORIES and np.all(distinct == np.round(distinct)):
        return "categorical"
    return "continuous"


def _encode(kept: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Class indices int [M] by sorted order (numeric order for numbers) and the class names [K]."""
    numbers = _as_numbers(kept)
    if numbers is None:
        names, y = np.unique(np.array(kept, dtype=str), return_inverse=True)
        return y.astype(np.int64), [str(n) for n in names]
    levels, y = np.unique(numbers, return_inverse=True)
    return y.astype(np.int64), [f"{v:g}" for v in levels]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """{"r2", "mae", "pearson_r"} of predictions; y_true, y_pred: float [N], N >= 2.

    pearson_r is NaN when either side is constant (e.g. a mean-only baseline within one fold).
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"regression_metrics: y_true {t.shape} and y_pred {p.shape} must be equal 1-D shapes")
    if t.size < 2:
        raise ValueError(f"regression_metrics: need at least 2 samples, got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("regression_metrics: y_true or y_pred contains NaN or Inf")
    constant = np.ptp(t) == 0 or np.ptp(p) == 0
    return {
        "r2": float(r2_score(t, p)),
        "mae": float(mean_absolute_error(t, p)),
        "pearson_r": float("nan") if constant else float(pearsonr(t, p).statistic),
    }


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """{"accuracy", "balanced_accuracy", "auroc"} from class probabilities.

    y_true: int [N] in 0..K-1; prob: float [N, K] (K >= 2). The prediction is argmax prob. AUROC uses
    prob[:, 1] when K == 2, else the macro mean of one-vs-rest AUROCs over the classes present in y_true;
    it is NaN when y_true holds a single class. Balanced accuracy is the mean recall over classes in y_true.
    """
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (p.shape[0],):
        raise ValueError(f"classification_metrics: need y_true [N] and prob [N, K>=2], got {y.shape}, {p.shape}")
    if y.size == 0 or not np.isfinite(p).all():
        raise ValueError("classification_metrics: empty input or NaN/Inf probabilities")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"classification_metrics: y_true must be integers in 0..{p.shape[1] - 1}")
    pred = p.argmax(axis=1)
    present = np.unique(y)
    if present.size < 2:
        auroc = float("nan")
    elif p.shape[1] == 2:
        auroc = float(roc_auc_score(y, p[:, 1]))
    else:
        auroc = float(np.mean([roc_auc_score(y == k, p[:, k]) for k in present]))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(recall_score(y, pred, labels=present, average="macro")),
        "auroc": auroc,
    }


def _neg_log_loss(estimator, x: np.ndarray, y: np.ndarray) -> float:
    # sklearn's "neg_log_loss" fails when a validation fold lacks a class; naming the labels avoids that
    return -log_loss(y, estimator.predict_proba(x), labels=estimator.classes_)


def _inner_regression_splits(groups: np.ndarray, seed: int) -> list | None:
    """Subject-grouped inner splits, or None (RidgeCV's leave-one-scan-out) when the fold holds one subject."""
    n_inner = min(INNER_FOLDS, np.unique(groups).size)
    if n_inner < 2:
        return None
    return list(GroupKFold(n_splits=n_inner, shuffle=True, random_state=seed).split(groups, groups=groups))


def _inner_class_splits(y: np.ndarray, groups: np.ndarray, seed: int) -> list:
    """Subject-grouped stratified splits whose training part holds every class of y (else log loss is undefined)."""
    classes = np.unique(y)
    n_inner = min(INNER_FOLDS, min(np.unique(groups[y == c]).size for c in classes))
    if n_inner < 2:
        return []
    cv = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed)
    return [(a, b) for a, b in cv.split(y, y, groups) if np.array_equal(np.unique(y[a]), classes)]


def _n_neighbors(n_train: int) -> int:
    return max(1, min(10, n_train - 1))


class RowSpace(TransformerMixin, BaseEstimator):
    """Coordinates of the rows in the span of the centred training rows (only when features outnumber rows).

    Exact, not an approximation, for what the probes fit: an L2-penalised linear model's weights lie in the
    span of its centred training rows (any other component only adds penalty), and a test point's distance to
    every training point changes by the same amount when its out-of-span part is dropped, so k-NN rankings are
    unchanged. FC features (P(P-1)/2 columns for a few hundred scans) then cost n x n instead of n x D per
    solver iteration.
    """

    def fit(self, x: np.ndarray, y=None) -> RowSpace:
        x = np.asarray(x, np.float64)
        self.mean_ = x.mean(0)
        self.components_ = None
        if x.shape[1] > x.shape[0]:
            # the span from the n x n Gram matrix: two n x n x D products instead of an SVD of the n x D rows
            centred = x - self.mean_
            values, vectors = np.linalg.eigh(centred @ centred.T)
            keep = values > max(float(values.max(initial=0.0)), 1e-300) * 1e-12
            self.components_ = (vectors[:, keep].T @ centred) / np.sqrt(values[keep])[:, None]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x if self.components_ is None else (x - self.mean_) @ self.components_.T


def _scaled(model) -> object:
    # NaN features (missing FC entries) get the training fold's mean; without NaN the imputer changes nothing
    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(), RowSpace(),
                         model)


def _spread(scores: list[float]) -> tuple[float, float]:
    finite = np.asarray([s for s in scores if np.isfinite(s)])
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())


def _summaries(metrics, y: np.ndarray, preds: dict, fold_scores: dict) -> dict:
    """Per model: ``metrics`` over all out-of-fold predictions plus the mean/std of its per-fold score."""
    out = {}
    for name, pred in preds.items():
        mean, std = _spread(fold_scores[name])
        out[name] = {**metrics(y, pred), "fold_mean": mean, "fold_std": std}
    return out


def _check_once(counts: np.ndarray) -> None:
    if not (counts == 1).all():
        raise RuntimeError("probe: outer folds did not predict every labelled scan exactly once")


def _regress(x: np.ndarray, y: np.ndarray, groups: np.ndarray, splits: list, seed: int,
             notes: list[str], scored: np.ndarray | None = None) -> tuple[dict, dict, dict]:
    """Out-of-fold ridge / kNN / training-mean predictions -> (models, chance, predictions float [N] per model).
    ``scored``: the rows the splits predict and the metrics cover (default: every row)."""
    names = ("ridge", "knn")
    preds = {name: np.zeros(len(y)) for name in names}
    baseline, counts = np.zeros(len(y)), np.zeros(len(y), dtype=int)
    fold_r2 = {name: [] for name in names}
    alphas = []
    for fold, (train, test) in enumerate(splits):
        counts[test] += 1
        baseline[test] = y[train].mean()
        inner = _inner_regression_splits(groups[train], seed)
        if inner is None:
            notes.append(f"fold {fold}: training set holds one subject; ridge alpha chosen by leave-one-scan-out")
        models = {
            "ridge": _scaled(RidgeCV(alphas=ALPHAS, cv=inner)),
            "knn": _scaled(KNeighborsRegressor(n_neighbors=_n_neighbors(len(train)))),
        }
        for name, model in models.items():
            preds[name][test] = model.fit(x[train], y[train]).predict(x[test])
            fold_r2[name].append(float(r2_score(y[test], preds[name][test])) if len(test) > 1 else float("nan"))
        alphas.append(float(models["ridge"][-1].alpha_))
    keep = np.arange(len(y)) if scored is None else scored
    _check_once(counts[keep])
    preds = {name: pred[keep] for name, pred in preds.items()}
    out = _summaries(regression_metrics, y[keep], preds, fold_r2)
    out["ridge"]["alpha"] = alphas
    return out, regression_metrics(y[keep], baseline[keep]), preds


def _logistic(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int):
    """Fitted scaler + logistic pipeline with C from subject-grouped inner CV, or C=1 when that is impossible."""
    pipe = _scaled(LogisticRegression(max_iter=1000))
    inner = _inner_class_splits(y, groups, seed)
    if not inner:
        return pipe.fit(x, y), 1.0
    # A grid search over the whole pipeline would refit the scaler and projection for every C; they do not
    # depend on C, so each inner split is transformed once and only the classifier is refitted per C.
    with warnings.catch_warnings():
        # weakly penalised fits on separable folds stop at max_iter: such a fit is still a classifier, judged
        # like the others by its held-out log loss, so the warning says nothing about the probe's honesty
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _choose_c(pipe, x, y, inner)


def _choose_c(pipe, x: np.ndarray, y: np.ndarray, inner: list) -> tuple[object, float]:
    """The pipeline refitted on all of x with the C of lowest summed log loss over the inner splits."""
    losses = np.zeros(len(CS))
    for train, val in inner:
        prep = pipe[:-1].fit(x[train])
        fit_x, val_x = prep.transform(x[train]), prep.transform(x[val])
        for k, c in enumerate(CS):
            model = LogisticRegression(C=c, max_iter=1000).fit(fit_x, y[train])
            losses[k] -= _neg_log_loss(model, val_x, y[val])
    best = float(CS[int(np.argmin(losses))])  # ties: the smallest C (strongest penalty) wins
    pipe.set_params(logisticregression__C=best)
    return pipe.fit(x, y), best


def _classify(x: np.ndarray, y: np.ndarray, groups: np.ndarray, splits: list, n_classes: int, seed: int,
              notes: list[str], scored: np.ndarray | None = None) -> tuple[dict, dict, dict]:
    """Out-of-fold logistic / kNN class probabilities -> (models, chance, probabilities float [N, K] per model).
    ``scored``: the rows the splits predict and the metrics cover (default: every row)."""
    names = ("logistic", "knn")
    probs = {name: np.zeros((len(y), n_classes)) for name in names}
    counts = np.zeros(len(y), dtype=int)
    fold_auc = {name: [] for name in names}
    cs: list[float | None] = []
    for fold, (train, test) in enumerate(splits):
        counts[test] += 1
        present = np.unique(y[train])
        if present.size < 2:
            # nothing to discriminate: predict the training prior rather than fail the whole phenotype
            prior = np.bincount(y[train], minlength=n_classes) / len(train)
            for name in names:
                probs[name][test] = prior
            cs.append(None)
            notes.append(f"fold {fold}: training set holds class {int(present[0])} only; predicted the prior")
        else:
            logistic, c = _logistic(x[train], y[train], groups[train], seed)
            knn = _scaled(KNeighborsClassifier(n_neighbors=_n_neighbors(len(train))))
            cs.append(c)
            for name, model in (("logistic", logistic), ("knn", knn.fit(x[train], y[train]))):
                # a training fold may miss a class: its column stays at probability 0
                probs[name][np.ix_(test, model[-1].classes_)] = model.predict_proba(x[test])
        for name in names:
            fold_auc[name].append(classification_metrics(y[test], probs[name][test])["auroc"])
    keep = np.arange(len(y)) if scored is None else scored
    _check_once(counts[keep])
    probs, y = {name: p[keep] for name, p in probs.items()}, y[keep]
    out = _summaries(classification_metrics, y, probs, fold_auc)
    out["logistic"]["C"] = cs
    majority = float(np.bincount(y, minlength=n_classes).max() / len(y))
    return out, {"accuracy": majority, "balanced_accuracy": 1.0 / n_classes, "auroc": 0.5}, probs


def _checked_features(features: np.ndarray, n_rows: int, name: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n_rows:
        raise ValueError(f"{name}: expected features [N={n_rows}, D], got shape {x.shape}")
    if np.isinf(x).any():
        raise ValueError(f"{name}: features contain Inf (NaN marks a missing value and is imputed; Inf is refused)")
    return x  # NaN stays: a missing value, imputed in each fit (a feature no training scan has gets 0)


def probe(features: np.ndarray, values: Sequence[str], groups: Sequence[str], *, folds: int = 5,
          seed: int = 0, train: Sequence[bool] | None = None) -> dict:
    """Probe one phenotype with subject-level cross-validation (or, with ``train``, across cohorts).

    features: float [N, D] (NaN = a missing value, imputed with the training fold's mean); values: [N]
    manifest strings ("n/a"/"" = missing, those scans are dropped);
    groups: [N] subject ids. Continuous kinds get "ridge" and "knn" regressors, binary/categorical kinds
    "logistic" and "knn" classifiers (labels mapped to 0..K-1 in sorted order, names in "classes").
    Returns a JSON-able dict {"kind", "n_scans", "n_subjects", "folds", ["classes"], "models": {name:
    {metrics..., "fold_mean", "fold_std", "alpha"|"C" per fold}}, "chance": {...}, "notes": [...],
    "predictions": {"rows": int [M] labelled rows of the input, "subjects": [M], "y": [M] (float values or
    class indices), name: out-of-fold prediction per model ([M] values or [M, K] probabilities)}}, or
    {"kind", "skipped": reason} when the phenotype is constant or has too few scans/subjects.

    train: bool [N], transfer to an external cohort: the probes (hyper-parameters by subject-grouped inner CV)
    are fitted on the rows marked True and predict the others; "n_scans", metrics and predictions then cover
    the predicted rows only ("n_train" the fitted ones, "folds" 1, "transfer" True). Groups of the two
    cohorts must not share ids (prefix them).
    """
    n = len(values)
    x = _checked_features(features, n, "probe")
    subjects = np.array([str(g) for g in groups])
    if subjects.shape != (n,):
        raise ValueError(f"probe: {len(subjects)} groups for {n} values")
    if folds < 2:
        raise ValueError(f"probe: folds must be >= 2, got {folds}")
    kind = phenotype_kind(values)
    if kind == "constant":
        return {"kind": kind, "skipped": "at most one distinct non-missing value"}
    labelled = np.array([not _is_missing(v) for v in values])
    kept = [str(v).strip() for v, keep in zip(values, labelled) if keep]
    rows, x, subjects = np.flatnonzero(labelled), x[labelled], subjects[labelled]
    if train is not None:
        return _transfer(kind, kept, rows, x, subjects, np.asarray(train, bool)[labelled], seed)
    n_subjects = int(np.unique(subjects).size)
    if len(kept) < 2 * folds:
        return {"kind": kind, "skipped": f"{len(kept)} labelled scans, need at least {2 * folds}"}
    if n_subjects < 3:
        return {"kind": kind, "skipped": f"{n_subjects} labelled subjects, need at least 3"}
    y, classes, skipped = _targets(kind, kept, subjects, np.ones(len(kept), bool), "")
    if skipped:
        return {"kind": kind, "skipped": skipped}
    n_splits = min(folds, n_subjects)
    splits = list(GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, y, subjects))
    result = {"kind": kind, "n_scans": len(kept), "n_subjects": n_subjects, "folds": n_splits}
    return _fitted(result, x, y, classes, rows, subjects, splits, seed, None)


def _targets(kind: str, kept: list[str], subjects: np.ndarray, fit: np.ndarray, which: str
             ) -> tuple[np.ndarray, list[str] | None, str]:
    """(y, class names or None, reason to skip or ""): numbers for continuous kinds, class indices otherwise,
    skipped when a class has fewer than 2 subjects among the ``fit`` rows (``which`` names them)."""
    if kind == "continuous":
        return _as_numbers(kept), None, ""
    y, classes = _encode(kept)
    for k, name in enumerate(classes):
        count = np.unique(subjects[fit & (y == k)]).size
        if count < 2:
            return y, classes, f"class {name!r} has {count} {which}subject(s), need at least 2"
    return y, classes, ""


def _fitted(result: dict, x: np.ndarray, y: np.ndarray, classes: list[str] | None, rows: np.ndarray,
            subjects: np.ndarray, splits: list, seed: int, scored: np.ndarray | None) -> dict:
    """``result`` completed by the probes fitted over ``splits`` and their predictions of the ``scored`` rows
    (default: every row): models, chance, notes, classes and predictions (see ``probe``)."""
    notes: list[str] = []
    if classes is None:
        models, chance, preds = _regress(x, y, subjects, splits, seed, notes, scored=scored)
    else:
        models, chance, preds = _classify(x, y, subjects, splits, len(classes), seed, notes, scored=scored)
        result = {**result, "classes": classes}
    keep = np.arange(len(y)) if scored is None else scored
    predictions = {"rows": rows[keep].tolist(), "subjects": subjects[keep].tolist(), "y": y[keep].tolist(),
                   **{name: pred.tolist() for name, pred in preds.items()}}
    return {**result, "models": models, "chance": chance, "notes": notes, "predictions": predictions}


def _transfer(kind: str, kept: list[str], rows: np.ndarray, x: np.ndarray, subjects: np.ndarray,
              fit: np.ndarray, seed: int) -> dict:
    """``probe`` with one split: fitted on the ``fit`` rows, scored on the rest (see ``probe``'s ``train``)."""
    fitted, tested = np.flatnonzero(fit), np.flatnonzero(~fit)
    n_fit_subjects = int(np.unique(subjects[fitted]).size)
    if fitted.size < 4 or n_fit_subjects < 3:
        return {"kind": kind, "skipped": f"{fitted.size} labelled training scans of {n_fit_subjects} subjects, "
                                         f"need at least 4 of 3"}
    if tested.size < 2:
        return {"kind": kind, "skipped": f"{tested.size} labelled scans to test, need at least 2"}
    y, classes, skipped = _targets(kind, kept, subjects, fit, "training ")
    if skipped:
        return {"kind": kind, "skipped": skipped}
    result = {"kind": kind, "n_scans": int(tested.size), "n_subjects": int(np.unique(subjects[tested]).size),
              "n_train": int(fitted.size), "folds": 1, "transfer": True}
    return _fitted(result, x, y, classes, rows, subjects, [(fitted, tested)], seed, tested)


def probe_all(feature_sets: Mapping[str, np.ndarray], manifest: Sequence[Mapping[str, str]],
              phenotypes: Sequence[str], *, folds: int = 5, seed: int = 0,
              train: Sequence[bool] | None = None) -> dict:
    """``probe`` for every phenotype on every feature set.

    feature_sets: name -> float [N, D] whose rows align with the N manifest rows; manifest: [N] rows with a
    "subject" key (the CV groups) and phenotype columns (a missing key counts as a missing value); train: bool
    [N] for a transfer across cohorts (see ``probe``).
    Returns {phenotype: {feature_set_name: probe result}}.
    """
    rows = list(manifest)
    checked = {name: _checked_features(feats, len(rows), f"feature set {name!r}") for name, feats in
               feature_sets.items()}
    subjects = []
    for i, row in enumerate(rows):
        if _is_missing(row.get("subject")):
            raise ValueError(f"probe_all: manifest row {i} has no subject")
        subjects.append(str(row["subject"]))
    results = {}
    for pheno in phenotypes:
        if not any(pheno in row for row in rows):
            raise ValueError(f"probe_all: phenotype {pheno!r} is not a manifest column")
        values = [row.get(pheno, "") for row in rows]
        results[pheno] = {name: probe(x, values, subjects, folds=folds, seed=seed, train=train)
                          for name, x in checked.items()}
    return results


def _difference(kind: str, y: np.ndarray, pred: np.ndarray, base: np.ndarray):
    """weights [M] -> score of ``pred`` minus score of ``base``, out-of-fold predictions of the same scans:
    R² for continuous phenotypes ([M] predictions), AUROC otherwise ([M, K] probabilities)."""
    if kind == "continuous":
        return lambda w: weighted_r2_score(w, y, pred) - weighted_r2_score(w, y, base)
    return lambda w: weighted_auroc(w, y, pred) - weighted_auroc(w, y, base)


def compare(by_features: Mapping[str, dict], baseline: str = "fc", *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Best feature set versus ``baseline`` on one phenotype, per probe model, by a subject bootstrap.

    by_features: feature set name -> ``probe`` result, all of one phenotype (same labelled scans). For each
    model (ridge / logistic / knn), the candidate is the non-baseline set with the highest score over all
    out-of-fold predictions (R² for continuous, AUROC otherwise); its out-of-fold predictions and the
    baseline's are rescored on the same draws of subjects (``bootstrap.paired_interval`` with groups =
    subject ids), and the interval of (candidate - baseline) gives the verdict "beats" / "ties" / "loses".
    Choosing the candidate on the same scans favours it slightly; with few sets (cls, mean, tokcov) little.
    Returns {model: {"metric", "features", "baseline", "score", "baseline_score", "candidates": {name:
    score}, "diff", "low", "high", "level", "n_boot", "n_units" (scans), "n_subjects", "verdict"}}, or
    {"skipped": reason} when the baseline or every candidate was skipped.
    """
    base = by_features.get(baseline)
    if base is None or "skipped" in base:
        return {"skipped": f"baseline {baseline!r} was not probed"}
    usable = {name: r for name, r in by_features.items() if name != baseline and "skipped" not in r}
    if not usable:
        return {"skipped": "no feature set besides the baseline was probed"}
    truth = base["predictions"]
    for name, result in usable.items():
        if result["predictions"]["rows"] != truth["rows"] or result["predictions"]["y"] != truth["y"]:
            raise ValueError(f"compare: feature set {name!r} was probed on other scans than {baseline!r}")
    y, groups = np.asarray(truth["y"]), truth["subjects"]
    out = {}
    metric = "r2" if base["kind"] == "continuous" else "auroc"
    for model in base["models"]:
        scores = {name: r["models"][model][metric] for name, r in usable.items()}
        finite = {name: v for name, v in scores.items() if np.isfinite(v)}
        best = max(finite, key=finite.get) if finite else next(iter(scores))
        difference = _difference(base["kind"], y, np.asarray(usable[best]["predictions"][model]),
                                 np.asarray(truth[model]))
        interval = paired_interval(difference, len(y), groups=groups, n_boot=n_boot, seed=seed)
        out[model] = {"metric": metric, "features": best, "baseline": baseline, "score": scores[best],
                      "baseline_score": base["models"][model][metric], "candidates": scores, **interval,
                      "n_subjects": base["n_subjects"], "verdict": verdict(interval)}
    return out


def compare_all(results: Mapping[str, Mapping[str, dict]], baseline: str = "fc", *, n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """``compare`` for every phenotype of a ``probe_all`` result: {phenotype: {model: comparison}}."""
    return {pheno: compare(by_features, baseline, n_boot=n_boot, seed=seed) for pheno, by_features in results.items()}
