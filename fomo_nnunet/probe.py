"""Linear probe on frozen embeddings (FOMO26 tasks 6 and 7).

Protocol (FOMO.md, "Metrics and ranking"): stratified 40/10/50 train/val/test split with a fixed
seed, features standardised on train, logistic regression with C swept on the validation split
(macro one-vs-rest AUROC), scored on test by macro AUROC and macro F1; for task 7 the same metrics
per demographic group on the test split and the gap = max - min across groups.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fomo_nnunet.metrics import macro_auroc, macro_f1

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2)
SPLIT = (0.4, 0.1, 0.5)  # train, val, test


def _split(idx: np.ndarray, y: np.ndarray, test_size: float, seed: int, notes: list[str], what: str
           ) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    except ValueError as e:
        notes.append(f"{what} split not stratified ({e})")
        return train_test_split(idx, test_size=test_size, random_state=seed)


def _full_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with one column per class index 0..n_classes-1 (0 for classes unseen in train)."""
    P = np.zeros((X.shape[0], n_classes))
    P[:, model.classes_] = model.predict_proba(X)
    return P


def _scores(y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    return {"macro_auroc": macro_auroc(y, P), "macro_f1": macro_f1(y, P.argmax(axis=1))}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def linear_probe(X: np.ndarray, y: Iterable[Any], groups: Iterable[Any] | None = None, seed: int = 0,
                 c_grid: Iterable[float] = C_GRID) -> dict[str, Any]:
    """Fit and score a linear probe; returns a JSON-ready dict.

    {"metrics": {"macro_auroc", "macro_f1"} (test split), "C", "val_auroc": {C: value},
     "n_train", "n_val", "n_test", "classes", "groups": {group: {"n", "macro_auroc", "macro_f1"}},
     "gap": {metric: max - min over groups}, "seed", "notes"}. Undefined values (a group holding one
    class has no AUROC) are None and left out of the gap.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (cases x features), got shape {X.shape}")
    y_raw = np.asarray([str(v) for v in y])
    if len(y_raw) != X.shape[0]:
        raise ValueError(f"{X.shape[0]} embeddings but {len(y_raw)} labels")
    if not np.all(np.isfinite(X)):
        raise ValueError("embeddings hold non-finite values")
    enc = LabelEncoder().fit(y_raw)
    yi = enc.transform(y_raw)
    n_classes = len(enc.classes_)
    if n_classes < 2:
        raise ValueError(f"the probe needs at least two classes, found {list(enc.classes_)}")
    notes: list[str] = []
    idx = np.arange(len(yi))
    rest, test = _split(idx, yi, SPLIT[2], seed, notes, "test")
    train, val = _split(rest, yi[rest], SPLIT[1] / (SPLIT[0] + SPLIT[1]), seed, notes, "validation")
    if len(np.unique(yi[train])) < 2:
        raise ValueError("the training split holds one class only; more cases are needed")

    scaler = StandardScaler().fit(X[train])
    Xs = scaler.transform(X)

    def fit(C: float) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at large C on separable data
            return LogisticRegression(C=C, max_iter=2000).fit(Xs[train], yi[train])

    val_auc: dict[str, float | None] = {}
    best_c, best = None, -np.inf
    for C in c_grid:
        m = fit(float(C))
        a = macro_auroc(yi[val], _full_proba(m, Xs[val], n_classes))
        val_auc[repr(float(C))] = None if not math.isfinite(a) else a
        if math.isfinite(a) and a > best + 1e-12:
            best_c, best = float(C), a
    if best_c is None:
        best_c = 1.0
        notes.append("validation AUROC undefined (one class in the validation split): C = 1.0")
    model = fit(best_c)
    P = _full_proba(model, Xs[test], n_classes)
    out: dict[str, Any] = {
        "metrics": _scores(yi[test], P), "C": best_c, "val_auroc": val_auc,
        "n_train": int(len(train)), "n_val": int(len(val)), "n_test": int(len(test)),
        "classes": [str(c) for c in enc.classes_], "seed": int(seed)}
    if groups is not None:
        g = np.asarray([str(v) for v in groups])
        if len(g) != len(yi):
            raise ValueError(f"{len(yi)} labels but {len(g)} group values")
        per: dict[str, dict[str, Any]] = {}
        gt = g[test]
        for name in sorted(np.unique(gt)):
            sel = gt == name
            s = _scores(yi[test][sel], P[sel])
            per[name] = {"n": int(sel.sum()), **s}
        gap = {}
        for metric in ("macro_auroc", "macro_f1"):
            vals = [v[metric] for v in per.values() if math.isfinite(v[metric])]
            gap[metric] = float(max(vals) - min(vals)) if len(vals) >= 2 else float("nan")
        if len(per) < 2:
            notes.append("fewer than two groups in the test split: no gap")
        out["groups"], out["gap"] = per, gap
    out["notes"] = notes
    return _clean(out)


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a TSV (or CSV, by extension) with a header."""
    path = Path(path)
    delim = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def probe_folder(emb_dir: str | Path, labels_tsv: str | Path, groups_column: str | None = None,
                 seed: int = 0, label_column: str = "label") -> dict[str, Any]:
    """Linear probe on `<case_id>.npy` embeddings in emb_dir with labels from a TSV.

    The TSV has columns case_id, label (or `label_column`) and optional attribute columns
    (`groups_column` for the per-group scores). Cases without an embedding, embeddings without a
    label and unusable embeddings (not 1-D, not finite, other length) are reported in the result
    ("missing_embedding", "missing_label", "invalid_embedding") and left out; error if none is left.
    """
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise FileNotFoundError(f"embedding folder not found: {emb_dir}")
    rows = read_table(labels_tsv)
    if not rows or "case_id" not in rows[0] or label_column not in rows[0]:
        cols = list(rows[0]) if rows else []
        raise ValueError(f"{labels_tsv}: needs columns case_id and {label_column}, found {cols}")
    if groups_column and groups_column not in rows[0]:
        raise ValueError(f"{labels_tsv}: no column {groups_column!r}; columns: {list(rows[0])}")
    table = {r["case_id"]: r for r in rows if r["case_id"]}
    files = {f.stem: f for f in sorted(emb_dir.glob("*.npy"))}
    missing_emb = sorted(k for k in table if k not in files)
    missing_label = sorted(k for k in files if k not in table or not table[k][label_column])
    invalid: dict[str, str] = {}
    X, y, g, dim = [], [], [], None
    for cid in sorted(k for k in files if k in table and table[k][label_column]):
        try:
            v = np.load(files[cid], allow_pickle=False)
            if v.ndim != 1:
                raise ValueError(f"shape {v.shape}, expected 1-D")
            if not np.all(np.isfinite(v)):
                raise ValueError("non-finite values")
            if dim is not None and len(v) != dim:
                raise ValueError(f"length {len(v)}, others {dim}")
        except Exception as e:
            invalid[cid] = str(e)
            continue
        dim = len(v)
        X.append(v.astype(np.float64))
        y.append(table[cid][label_column])
        if groups_column:
            g.append(table[cid][groups_column] or "NA")
    if not X:
        raise ValueError(f"no case has both a usable embedding in {emb_dir} and a label in {labels_tsv}")
    out = linear_probe(np.stack(X), y, g if groups_column else None, seed=seed)
    out.update({"n_cases": len(X), "missing_embedding": missing_emb, "missing_label": missing_label,
                "invalid_embedding": invalid})
    if groups_column:
        out["groups_column"] = groups_column
    return out
