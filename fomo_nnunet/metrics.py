"""FOMO26 metrics and local evaluation of prediction folders against ground truth.

The challenge's conventions (FOMO.md, "Metrics and ranking"), implemented here:

- Segmentation: Dice per foreground label (both empty = 1.0) and NSD, the surface Dice at a 1 mm
  tolerance computed with the `surface-distance` library (both empty = 0.0; one empty = 0.0).
  Spacing comes from the ground truth's header (nibabel zooms). A missing prediction file counts as
  an empty mask; a prediction that cannot be read or has another shape than the ground truth is an
  error row scored worst (Dice 0, NSD 0).
- Classification: AUROC; an invalid prediction (missing, not a number, not finite, outside [0, 1])
  is replaced by the WORST score, the one that minimises AUROC: a positive case gets a score below
  every valid score (-1.0) and a negative case a score above every valid score (2.0), so each
  invalid case is ranked wrong against every case of the other class.
- Regression: MAE and Pearson r; a missing or invalid prediction is replaced by the worst value
  within the range of the targets: the end of [min(targets), max(targets)] farthest from the
  case's truth. Pearson r of constant predictions is undefined; it is reported as 0.0.

Plain numpy / scikit-learn functions; `evaluate_task` writes per_case.csv and summary.json.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

# Scores that replace invalid classification predictions (see module docstring).
WORST_POSITIVE_SCORE = -1.0
WORST_NEGATIVE_SCORE = 2.0
NSD_TOLERANCE_MM = 1.0
NIFTI_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------- single metrics

def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks (non-zero = foreground); both empty = 1.0."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape}, ground truth {g.shape}")
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Iterable[float],
        tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice at `tolerance_mm` via `surface_distance`; both or one empty = 0.0."""
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape}, ground truth {g.shape}")
    if not p.any() or not g.any():
        return 0.0
    import surface_distance

    spacing = tuple(float(s) for s in spacing)[: g.ndim]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the library's scipy.ndimage.* imports
        sd = surface_distance.compute_surface_distances(g, p, spacing)
    return float(surface_distance.compute_surface_dice_at_tolerance(sd, tolerance_mm))


def _as_float(v: Any) -> float | None:
    """A finite float, or None for missing / unparsable / non-finite values."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def valid_probability(v: Any) -> bool:
    f = _as_float(v)
    return f is not None and 0.0 <= f <= 1.0


def worst_scores(y_true: Iterable[Any], scores: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels as int, scores with invalid ones replaced by the worst, mask of invalid)."""
    y = np.asarray([int(float(v)) for v in y_true], dtype=int)
    s_in = list(scores)
    if len(s_in) != len(y):
        raise ValueError(f"{len(y)} labels but {len(s_in)} scores")
    s = np.empty(len(y), dtype=float)
    invalid = np.zeros(len(y), dtype=bool)
    for i, (label, v) in enumerate(zip(y, s_in)):
        if valid_probability(v):
            s[i] = float(v)
        else:
            invalid[i] = True
            s[i] = WORST_POSITIVE_SCORE if label == 1 else WORST_NEGATIVE_SCORE
    return y, s, invalid


def auroc(y_true: Iterable[Any], scores: Iterable[Any]) -> float:
    """Binary AUROC (labels 0/1, scores = probability of class 1).

    Invalid scores (None, NaN, inf, unparsable, outside [0, 1]) are replaced by the worst value: a
    positive case gets -1.0 (below every valid score), a negative case 2.0 (above every valid score).
    Returns NaN when y_true does not hold both classes (AUROC undefined).
    """
    from sklearn.metrics import roc_auc_score

    y, s, _ = worst_scores(y_true, scores)
    if len(np.unique(y)) < 2:
        warnings.warn("AUROC undefined: ground truth holds only one class", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y, s))


def mae(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    t, p = np.asarray(list(y_true), dtype=float), np.asarray(list(y_pred), dtype=float)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape} targets but {p.shape} predictions")
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def pearson_r(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (r undefined; reported as no correlation)."""
    t, p = np.asarray(list(y_true), dtype=float), np.asarray(list(y_pred), dtype=float)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape} targets but {p.shape} predictions")
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return 0.0
    tc, pc = t - t.mean(), p - p.mean()
    return float(np.clip((tc @ pc) / math.sqrt(float(tc @ tc) * float(pc @ pc)), -1.0, 1.0))


def macro_auroc(y_true: Iterable[int], proba: np.ndarray) -> float:
    """One-vs-rest macro AUROC over the classes present in y_true.

    `proba` is (n, n_classes) with column c = score of class c (y_true holds class indices), or a
    1-D vector of class-1 scores for a binary problem. A class counts when y_true holds it and at
    least one other class; NaN when no class counts.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(list(y_true), dtype=int)
    P = np.asarray(proba, dtype=float)
    if P.ndim == 1:
        P = np.stack([1.0 - P, P], axis=1)
    if P.shape[0] != len(y):
        raise ValueError(f"{len(y)} labels but {P.shape[0]} score rows")
    aucs = []
    for c in np.unique(y):
        pos = y == c
        if pos.all() or c >= P.shape[1] or c < 0:
            continue
        aucs.append(roc_auc_score(pos.astype(int), P[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def macro_f1(y_true: Iterable[Any], y_pred: Iterable[Any]) -> float:
    """Macro F1 over the labels of y_true and y_pred (scikit-learn, zero_division=0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(y_true), list(y_pred), average="macro", zero_division=0))


# --------------------------------------------------------------------------- folders and files

def _case_id(path: Path) -> str | None:
    for suf in NIFTI_SUFFIXES:
        if path.name.endswith(suf):
            return path.name[: -len(suf)]
    return None


def _nifti_cases(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(Path(folder).iterdir()):
        cid = _case_id(f)
        if cid is not None and f.is_file() and cid not in out:
            out[cid] = f
    return out


def foreground_labels(labels: Mapping[str, Any]) -> dict[str, int]:
    """name -> value for the non-background labels (value 0 is background); region labels (lists)
    are not supported."""
    out = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise ValueError(f"region-based label {name!r} is not supported by the evaluator")
        if int(v) != 0:
            out[name] = int(v)
    return out


def evaluate_segmentation(pred_folder: str | Path, gt_folder: str | Path, labels: Mapping[str, Any],
                          tolerance_mm: float = NSD_TOLERANCE_MM) -> list[dict[str, Any]]:
    """Per-case, per-label rows {case, label, dice, nsd, status} for every ground truth in gt_folder.

    Files are `<case>.nii.gz` (or `.nii`) in both folders. status: "ok"; "missing" (no prediction:
    scored as an empty mask); "error: ..." (unreadable or other shape: Dice 0, NSD 0).
    """
    import nibabel as nib

    pred_folder, gt_folder = Path(pred_folder), Path(gt_folder)
    if not gt_folder.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_folder}")
    if not pred_folder.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_folder}")
    fg = foreground_labels(labels)
    gts = _nifti_cases(gt_folder)
    if not gts:
        raise ValueError(f"no .nii.gz / .nii ground truth in {gt_folder}")
    preds = _nifti_cases(pred_folder)
    rows: list[dict[str, Any]] = []
    for cid, gpath in gts.items():
        gimg = nib.load(str(gpath))
        g = np.rint(np.asanyarray(gimg.dataobj)).astype(np.int64)
        spacing = tuple(float(z) for z in gimg.header.get_zooms()[: g.ndim])
        status, p = "ok", None
        if cid not in preds:
            status, p = "missing", np.zeros_like(g)
        else:
            try:
                parr = np.asanyarray(nib.load(str(preds[cid])).dataobj)
                if parr.shape != g.shape:
                    # a trailing singleton axis is harmless
                    squeezed = parr.reshape(parr.shape[: g.ndim]) if (
                        parr.ndim > g.ndim and all(s == 1 for s in parr.shape[g.ndim:])) else parr
                    if squeezed.shape != g.shape:
                        raise ValueError(f"shape {parr.shape} differs from ground truth {g.shape}")
                    parr = squeezed
                if not np.all(np.isfinite(parr)):
                    raise ValueError("non-finite values")
                p = np.rint(parr).astype(np.int64)
            except Exception as e:  # unreadable file, wrong shape: worst score
                status = f"error: {e}"
        for name, v in fg.items():
            if p is None:
                d, s = 0.0, 0.0
            else:
                d, s = dice(p == v, g == v), nsd(p == v, g == v, spacing, tolerance_mm)
            rows.append({"case": cid, "label": name, "dice": d, "nsd": s, "status": status})
    return rows


def read_predictions(pred: str | Path) -> tuple[dict[str, str], list[str]]:
    """case_id -> raw prediction text, from a CSV (header with case_id and prediction; extra columns
    allowed) or from a folder of `<case_id>.txt` files holding one number each. Also returns notes."""
    pred, notes, out = Path(pred), [], {}
    if pred.is_dir():
        for f in sorted(pred.glob("*.txt")):
            out[f.stem] = f.read_text().strip()
        return out, notes
    if not pred.is_file():
        raise FileNotFoundError(f"predictions not found: {pred}")
    with open(pred, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "case_id" not in cols or "prediction" not in cols:
            raise ValueError(f"{pred}: the header must have columns case_id and prediction, found {cols}")
        for r in reader:
            cid = (r.get("case_id") or "").strip()
            if not cid:
                continue
            if cid in out:
                notes.append(f"duplicate prediction for {cid}: the first one is used")
                continue
            out[cid] = (r.get("prediction") or "").strip()
    return out, notes


def read_targets(targets: str | Path) -> dict[str, float]:
    data = json.loads(Path(targets).read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{targets}: expected a non-empty JSON object {{case_id: value}}")
    out = {}
    for k, v in data.items():
        f = _as_float(v)
        if f is None:
            raise ValueError(f"{targets}: target of {k!r} is not a finite number: {v!r}")
        out[str(k)] = f
    return out


def evaluate_values(predictions: str | Path, targets: str | Path, kind: str
                    ) -> tuple[list[dict[str, Any]], dict[str, float], list[str], list[str]]:
    """Score image-level predictions against targets {case_id: value}.

    kind: "classification" (prediction = probability of class 1; AUROC) or "regression" (MAE,
    Pearson r). Every case of the targets is scored; missing / invalid predictions use the worst
    value (see the module docstring). Returns (rows, metrics, invalid case ids, notes); predictions
    of cases that are not in the targets are ignored (noted).
    """
    from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION

    if kind not in (CLASSIFICATION, REGRESSION):
        raise ValueError(f"evaluate_values handles classification and regression, not {kind!r}")
    raw, notes = read_predictions(predictions)
    tgt = read_targets(targets)
    extra = sorted(set(raw) - set(tgt))
    if extra:
        notes.append(f"{len(extra)} predictions without a target ignored (e.g. {extra[:3]})")
    cases = sorted(tgt)
    rows: list[dict[str, Any]] = []
    invalid: list[str] = []
    if kind == CLASSIFICATION:
        bad = [k for k in cases if tgt[k] not in (0.0, 1.0)]
        if bad:
            raise ValueError(f"classification targets must be 0 or 1; not so for {bad[:5]}")
        y, s, inv = worst_scores([tgt[k] for k in cases], [raw.get(k) for k in cases])
        for k, label, score, bad_ in zip(cases, y, s, inv):
            status = "ok" if not bad_ else ("missing" if k not in raw else "invalid")
            if bad_:
                invalid.append(k)
            rows.append({"case": k, "target": int(label), "prediction": raw.get(k, ""),
                         "score_used": float(score), "status": status})
        if len(np.unique(y)) < 2:
            notes.append("AUROC undefined: the targets hold only one class")
            metrics = {"auroc": float("nan")}
        else:
            from sklearn.metrics import roc_auc_score

            metrics = {"auroc": float(roc_auc_score(y, s))}
    else:
        t = np.array([tgt[k] for k in cases])
        lo, hi = float(t.min()), float(t.max())
        used = []
        for k, truth in zip(cases, t):
            f = _as_float(raw.get(k))
            if f is None:
                invalid.append(k)
                f = lo if abs(truth - lo) >= abs(truth - hi) else hi
                status = "missing" if k not in raw else "invalid"
            else:
                status = "ok"
            used.append(f)
            rows.append({"case": k, "target": float(truth), "prediction": raw.get(k, ""),
                         "score_used": f, "status": status})
        if len(np.unique(used)) < 2 and len(used) > 1:
            notes.append("Pearson r undefined for constant predictions: reported as 0.0")
        metrics = {"mae": mae(t, used), "pearson_r": pearson_r(t, used)}
    if invalid:
        notes.append(f"{len(invalid)} missing or invalid predictions scored with the worst value")
    return rows, metrics, invalid, notes


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _json_float(v: Any) -> Any:
    """NaN -> None so that summary.json is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_float(x) for k, x in v.items()}
    return v


def evaluate_task(task: Any, pred: str | Path, gt: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Evaluate one FOMO task and write out_dir/per_case.csv and out_dir/summary.json.

    task: a tasks.Task or anything tasks.get_task accepts. Segmentation: pred and gt are folders of
    `<case>.nii.gz`. Classification / regression: pred is predictions.csv (case_id,prediction) or a
    folder of `<case>.txt`, gt a JSON {case_id: value}. Embedding tasks are scored with `probe`.

    summary.json: {"task", "n_cases", "metrics": {name: value}, "per_label" (segmentation only):
    {label: {"dice", "nsd"}}, "invalid": [case ids], "notes": [...]}; undefined metrics are null.
    """
    from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, REGRESSION, SEGMENTATION, Task, get_task

    task = task if isinstance(task, Task) else get_task(task)
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"task": task.key}
    if task.kind == SEGMENTATION:
        rows = evaluate_segmentation(pred, gt, task.labels)
        per_label = {}
        for name in foreground_labels(task.labels):
            sel = [r for r in rows if r["label"] == name]
            per_label[name] = {"dice": float(np.mean([r["dice"] for r in sel])),
                               "nsd": float(np.mean([r["nsd"] for r in sel]))}
        cases = sorted({r["case"] for r in rows})
        invalid = sorted({r["case"] for r in rows if r["status"] != "ok"})
        summary.update({
            "n_cases": len(cases),
            "metrics": {m: float(np.mean([v[m] for v in per_label.values()])) for m in ("dice", "nsd")},
            "per_label": per_label, "invalid": invalid, "notes": []})
        if invalid:
            summary["notes"].append(f"{len(invalid)} cases with missing (empty mask) or invalid (worst) "
                                    "predictions")
    elif task.kind in (CLASSIFICATION, REGRESSION):
        rows, metrics, invalid, notes = evaluate_values(pred, gt, task.kind)
        summary.update({"n_cases": len(rows), "metrics": metrics, "invalid": invalid, "notes": notes})
    elif task.kind == EMBEDDING:
        raise ValueError(f"{task.key} ({task.name}) is scored by a linear probe: use `fomo-nnunet probe` "
                         "or fomo_nnunet.probe.probe_folder")
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "per_case.csv", rows)
    summary = _json_float(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
