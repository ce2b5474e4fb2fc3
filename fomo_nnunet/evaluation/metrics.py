"""FOMO26 metrics, as the organisers define them: pure functions, no file I/O.

Every function follows the organisers' metric package `fomo_challenge_metrics` (repository
fomo26/fomo-metrics; the files are named beside each function) including its edge cases; the readers
and writers around them live in `fomo_nnunet.evaluation.scoring`. Where the organisers' behaviour is
surprising it is followed for the official number and said so here:

- Binary AUROC: an invalid score is replaced by 0.0 for a positive case and 1.0 for a negative case
  (classification.py, compute_auroc). These substitutes can TIE with valid scores of exactly 0 or 1,
  so an invalid case is not always ranked strictly wrong. A finite score outside [0, 1] is used as it
  is, as compute_auroc does; refusing it is the validator's rule for a container's output
  (fomo26/container_templates, container_validator/output_text.py, check_output_probability_in_range),
  which the entry `fomo-nnunet fomo26` keeps.
- MAE and Pearson r: an invalid prediction is replaced by the fixed VALUE 100.0 (MAE) and -100.0
  (Pearson r) for that case, not by a worst-case metric (regression.py, compute_absolute_error and
  compute_correlation). Pearson r is then scipy's: NaN (undefined) for constant predictions; with fewer
  than two cases the organisers' function raises, here it is NaN.
- One-vs-rest AUROC: classes come from the width of the score rows; the binary case scores column 1
  only; classes without both positives and negatives are left out of the mean; an invalid row becomes
  0 for the true class and 1/(C-1) for the others (classification.py, compute_ovr_auroc).
- Fairness: the max - min gap across groups is 0.0 when only one group has a defined metric, NaN when
  none has; the fairness score is the mean of 1 - gap over the variables whose gap is defined
  (fairness.py, compute_max_disparity and compute_fairness_score).
- Multiclass segmentation: a case is scored on the labels present in its ground truth (label 0
  excluded), so a class absent from a case's ground truth does not count for that case
  (segmentation.py, compute_multiclass_dsc / compute_multiclass_nsd, labels inferred from gt).
- Segmentation masks are the voxel values as they are, never rounded: binary, every non-zero voxel is
  foreground (`astype(bool)`, so 0.4 counts); multiclass, a voxel is label v where it equals v.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

NSD_TOLERANCE_MM = 1.0
# fomo26/fomo-metrics, fomo_challenge_metrics/classification.py, compute_auroc: substitutes for invalid scores.
INVALID_POSITIVE_SCORE = 0.0
INVALID_NEGATIVE_SCORE = 1.0
# fomo26/fomo-metrics, fomo_challenge_metrics/regression.py: substitutes for invalid predictions.
INVALID_MAE_PREDICTION = 100.0
INVALID_CORRELATION_PREDICTION = -100.0


# --------------------------------------------------------------------------- values

def as_finite(v: Any) -> float | None:
    """A finite float, or None for missing / unparsable / NaN / infinite values (the organisers'
    `_is_invalid`, which is not public, is read as: None, not a number, or not finite)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- segmentation

def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape}, ground truth {g.shape}")
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two masks (non-zero = foreground): both empty 1.0, exactly one empty 0.0.
    fomo26/fomo-metrics, fomo_challenge_metrics/segmentation.py, compute_dice_coefficient."""
    p, g = _masks(pred, gt)
    ps, gs = int(p.sum()), int(g.sum())
    if ps == 0 and gs == 0:
        return 1.0
    if ps == 0 or gs == 0:
        return 0.0
    return 2.0 * int(np.logical_and(p, g).sum()) / (ps + gs)


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Iterable[float],
        tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Surface Dice at `tolerance_mm` via `surface_distance`: both or one empty 0.0, NaN/inf 0.0.
    fomo26/fomo-metrics, fomo_challenge_metrics/segmentation.py, compute_normalized_surface_distance."""
    p, g = _masks(pred, gt)
    if not p.any() or not g.any():
        return 0.0
    import surface_distance

    spacing = tuple(float(s) for s in spacing)[: g.ndim]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the library's scipy.ndimage.* imports
        sd = surface_distance.compute_surface_distances(g, p, spacing)
    v = float(surface_distance.compute_surface_dice_at_tolerance(sd, tolerance_mm))
    return v if math.isfinite(v) else 0.0


def labels_scored(gt: np.ndarray) -> list[int]:
    """The labels a multiclass case is scored on: those present in its ground truth, 0 excluded.
    fomo26/fomo-metrics, fomo_challenge_metrics/segmentation.py, compute_multiclass_dsc (labels=None)."""
    return [int(v) for v in np.unique(np.asarray(gt)) if int(v) != 0]


def score_segmentation_case(pred: np.ndarray | None, gt: np.ndarray, spacing: Iterable[float],
                            multiclass: bool, tolerance_mm: float = NSD_TOLERANCE_MM
                            ) -> dict[int, dict[str, float]]:
    """{label: {"dice", "nsd"}} for one case. Binary: label 1 on non-zero masks, always scored.
    Multiclass: the labels present in the ground truth only. pred None (missing or unreadable
    prediction) scores 0.0 on every label that is scored."""
    gt = np.asarray(gt)
    labels = labels_scored(gt) if multiclass else [1]
    out = {}
    for v in labels:
        if pred is None:
            out[v] = {"dice": 0.0, "nsd": 0.0}
            continue
        p, g = (np.asarray(pred) == v, gt == v) if multiclass else (np.asarray(pred) != 0, gt != 0)
        out[v] = {"dice": dice(p, g), "nsd": nsd(p, g, spacing, tolerance_mm)}
    return out


def aggregate_segmentation(cases: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, Any]:
    """Task metrics from per-case label scores: each case weighs the same ("each metric is averaged over
    all cases in the test set", fomo26.github.io, Leaderboard & Evaluation); a case's value is the mean
    over the labels it is scored on; cases scored on no label (multiclass, empty ground truth) are left
    out. Also per label: the mean over the cases scored on it."""
    metrics, per_label = {}, {}
    scored = {c: s for c, s in cases.items() if s}
    for m in ("dice", "nsd"):
        vals = [float(np.mean([v[m] for v in s.values()])) for s in scored.values()]
        metrics[m] = float(np.mean(vals)) if vals else float("nan")
    for lab in sorted({lab for s in scored.values() for lab in s}):
        sel = [s[lab] for s in scored.values() if lab in s]
        per_label[lab] = {"dice": float(np.mean([v["dice"] for v in sel])),
                          "nsd": float(np.mean([v["nsd"] for v in sel])), "n_cases": len(sel)}
    return {"metrics": metrics, "per_label": per_label,
            "unscored_cases": sorted(c for c, s in cases.items() if not s)}


# --------------------------------------------------------------------------- classification

def _binary_labels(y_true: Iterable[Any]) -> np.ndarray:
    y = np.asarray([int(float(v)) for v in y_true], dtype=int)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary labels must be 0 or 1")
    return y


def auroc_scores_used(y_true: Iterable[Any], scores: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores with invalid ones substituted, mask of invalid) for the binary AUROC.
    fomo26/fomo-metrics, fomo_challenge_metrics/classification.py, compute_auroc: an invalid score is
    0.0 for a positive, 1.0 for a negative; invalid = missing, unparsable or not finite (a finite score
    outside [0, 1] is used as it is)."""
    y = _binary_labels(y_true)
    s_in = list(scores)
    if len(s_in) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s_in)} scores")
    valid = [as_finite(v) for v in s_in]
    invalid = np.array([v is None for v in valid], dtype=bool)
    s = np.array([v if v is not None else (INVALID_POSITIVE_SCORE if lab == 1 else INVALID_NEGATIVE_SCORE)
                  for lab, v in zip(y, valid)], dtype=float)
    return y, s, invalid


def auroc(y_true: Iterable[Any], scores: Iterable[Any]) -> float:
    """Binary AUROC with the organisers' substitutes for invalid scores (see auroc_scores_used).
    NaN when the labels hold one class (the organisers' compute_auroc raises there)."""
    from sklearn.metrics import roc_auc_score

    y, s, _ = auroc_scores_used(y_true, scores)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def _clean_rows(rows: Sequence[Any]) -> tuple[int, list[list[float] | None]]:
    """(number of classes from the first row that is not None, rows with invalid ones as None)."""
    n_classes = next((len(r) for r in rows if r is not None), 0)
    clean: list[list[float] | None] = []
    for r in rows:
        vals = None if r is None else [as_finite(v) for v in r]
        clean.append(None if vals is None or len(vals) != n_classes or any(v is None for v in vals) else vals)
    return n_classes, clean


def ovr_auroc(y_true: Iterable[int], rows: Sequence[Sequence[Any] | None]) -> float:
    """One-vs-rest macro AUROC of score rows (n x C; None or non-finite rows invalid).
    fomo26/fomo-metrics, fomo_challenge_metrics/classification.py, compute_ovr_auroc:
    C = width of the first row that is not None (NaN if C < 2); an invalid row becomes 0.0 for the true
    class and 1/(C-1) for the others; C = 2: AUROC of column 1 (NaN if one class only); C > 2: mean over
    the classes with both positives and negatives of the AUROC of their column (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(list(y_true), dtype=int)
    if len(rows) != len(y):
        raise ValueError(f"{len(y)} labels but {len(rows)} score rows")
    n_classes, clean = _clean_rows(rows)
    if n_classes < 2:
        return float("nan")
    worst = lambda label: [0.0 if c == label else 1.0 / (n_classes - 1) for c in range(n_classes)]
    S = np.array([r if r is not None else worst(lab) for lab, r in zip(y, clean)], dtype=float)
    if n_classes == 2:
        return float(roc_auc_score(y, S[:, 1])) if len(np.unique(y)) == 2 else float("nan")
    usable = [c for c in range(n_classes) if 0 < int((y == c).sum()) < len(y)]
    if not usable:
        return float("nan")
    return float(np.mean([roc_auc_score((y == c).astype(int), S[:, c]) for c in usable]))


def ovr_f1(y_true: Iterable[int], rows: Sequence[Sequence[Any] | None]) -> float:
    """Macro F1 of the argmax of score rows (first maximum on ties); an invalid row predicts
    (label + 1) mod C. fomo26/fomo-metrics, fomo_challenge_metrics/classification.py, compute_ovr_f1.
    NaN when no row is valid (C unknown; the organisers' function raises there)."""
    from sklearn.metrics import f1_score

    y = [int(v) for v in y_true]
    n_classes, clean = _clean_rows(rows)
    if n_classes == 0:
        return float("nan")
    pred = [(lab + 1) % n_classes if r is None else int(np.argmax(r)) for lab, r in zip(y, clean)]
    return float(f1_score(y, pred, average="macro", zero_division=0))


def macro_f1(y_true: Iterable[Any], y_pred: Iterable[Any]) -> float:
    """Macro F1 of class predictions (scikit-learn, zero_division=0); an invalid prediction becomes
    1 for label 0 and 0 otherwise. fomo26/fomo-metrics, classification.py, compute_macro_f1."""
    from sklearn.metrics import f1_score

    y = [int(v) for v in y_true]
    pred = [(1 if lab == 0 else 0) if as_finite(p) is None else int(float(p)) for lab, p in zip(y, y_pred)]
    return float(f1_score(y, pred, average="macro", zero_division=0))


# --------------------------------------------------------------------------- regression

def _regression_pairs(y_true: Iterable[Any], y_pred: Iterable[Any], substitute: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray([float(v) for v in y_true], dtype=float)
    p_in = list(y_pred)
    if len(p_in) != len(t):
        raise ValueError(f"{len(t)} targets but {len(p_in)} predictions")
    p = np.array([substitute if as_finite(v) is None else float(v) for v in p_in], dtype=float)
    return t, p


def mae(y_true: Iterable[Any], y_pred: Iterable[Any]) -> float:
    """Mean absolute error; an invalid prediction counts as the value 100.0 (NaN for no case).
    fomo26/fomo-metrics, fomo_challenge_metrics/regression.py, compute_absolute_error."""
    t, p = _regression_pairs(y_true, y_pred, INVALID_MAE_PREDICTION)
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def pearson_r(y_true: Iterable[Any], y_pred: Iterable[Any]) -> float:
    """Pearson r (scipy); an invalid prediction counts as the value -100.0. NaN when undefined:
    constant targets or predictions, or fewer than two cases.
    fomo26/fomo-metrics, fomo_challenge_metrics/regression.py, compute_correlation."""
    from scipy.stats import pearsonr

    t, p = _regression_pairs(y_true, y_pred, INVALID_CORRELATION_PREDICTION)
    if t.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's ConstantInputWarning: r is NaN then
        return float(pearsonr(t, p)[0])


def pearson_r_undefined_reason(y_true: Sequence[float], y_used: Sequence[float]) -> str | None:
    """Why Pearson r is NaN, or None when it is defined."""
    if len(y_true) < 2:
        return "fewer than two cases"
    if np.ptp(np.asarray(y_used, dtype=float)) == 0:
        return "constant predictions"
    if np.ptp(np.asarray(y_true, dtype=float)) == 0:
        return "constant targets"
    return None


# --------------------------------------------------------------------------- fairness

def max_disparity(y_true: Sequence[int], scores: Sequence[Any], groups: Sequence[Any],
                  metric_fn: Callable[[list, list], float]) -> float:
    """max - min of metric_fn within each group (None groups left out); a group whose metric raises or
    is NaN is dropped; NaN if no group is left, 0.0 if exactly one is.
    fomo26/fomo-metrics, fomo_challenge_metrics/fairness.py, compute_max_disparity."""
    if not len(y_true) == len(scores) == len(groups):
        raise ValueError("y_true, scores and groups must have the same length")
    buckets: dict[Any, tuple[list, list]] = {}
    for label, s, g in zip(y_true, scores, groups):
        if g is not None:
            yt, ys = buckets.setdefault(g, ([], []))
            yt.append(label)
            ys.append(s)
    values = []
    for yt, ys in buckets.values():
        try:
            v = float(metric_fn(yt, ys))
        except (ValueError, TypeError, ZeroDivisionError):
            continue
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan")
    return 0.0 if len(values) == 1 else max(values) - min(values)


def fairness_score(y_true: Sequence[int], scores: Sequence[Any], groups_by_variable: Mapping[str, Sequence[Any]],
                   metric_fn: Callable[[list, list], float]) -> dict[str, Any]:
    """{"score", "disparities", "variables_used", "per_variable_contribution"}: the mean over the fairness
    variables with a defined disparity D_v of 1 - D_v (NaN if none).
    fomo26/fomo-metrics, fomo_challenge_metrics/fairness.py, compute_fairness_score."""
    disparities, contributions = {}, {}
    for name, groups in groups_by_variable.items():
        if len(groups) != len(y_true):
            raise ValueError(f"groups of {name!r} have length {len(groups)} but there are {len(y_true)} labels")
        d = max_disparity(y_true, scores, groups, metric_fn)
        disparities[name] = d
        if not math.isnan(d):
            contributions[name] = 1.0 - d
    score = sum(contributions.values()) / len(contributions) if contributions else float("nan")
    return {"score": score, "disparities": disparities, "variables_used": list(contributions),
            "per_variable_contribution": contributions}
