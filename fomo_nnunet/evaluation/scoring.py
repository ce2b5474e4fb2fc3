"""Scoring files of predictions exactly as the FOMO26 organisers do: a folder of segmentations or a table of
image-level predictions against the ground truth (`evaluate_task`, written as per_case.csv and summary.json), and
the linear probe on a folder of embeddings (`probe_folder`). The metrics themselves are the pure functions of
`fomo_nnunet.evaluation.metrics` and `fomo_nnunet.evaluation.probe`; `fomo-nnunet evaluate` and `fomo-nnunet
probe` (fomo_nnunet.commands.evaluate) parse arguments and print.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


# --------------------------------------------------------------------------- reading

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


def foreground_labels(labels: Mapping[str, Any]) -> dict[int, str]:
    """value -> name of the non-background labels; region labels (lists) are not supported."""
    out = {}
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise ValueError(f"region-based label {name!r} is not supported by the evaluator")
        if int(v) != 0:
            out[int(v)] = name
    return out


def _read_prediction(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    parr = np.asanyarray(nib.load(str(path)).dataobj)
    if parr.shape != shape:
        if parr.ndim > len(shape) and all(s == 1 for s in parr.shape[len(shape):]):
            parr = parr.reshape(parr.shape[: len(shape)])  # a trailing singleton axis is harmless
        if parr.shape != shape:
            raise ValueError(f"shape {parr.shape} differs from ground truth {shape}")
    if not np.all(np.isfinite(parr)):
        raise ValueError("non-finite values")
    return np.asarray(parr)  # as it is: fomo_challenge_metrics compares voxel values, never rounded


def evaluate_segmentation(pred_folder: str | Path, gt_folder: str | Path, labels: Mapping[str, Any]
                          ) -> tuple[list[dict[str, Any]], dict[str, dict[int, dict[str, float]]]]:
    """(rows {case, label, dice, nsd, status}, {case: {label value: {dice, nsd}}}) for every ground truth.
    status: ok, missing, or error: ... (a missing or unusable prediction scores 0 on its scored labels)."""
    import nibabel as nib

    from fomo_nnunet.evaluation.metrics import score_segmentation_case

    pred_folder, gt_folder = Path(pred_folder), Path(gt_folder)
    for what, f in (("ground-truth", gt_folder), ("prediction", pred_folder)):
        if not f.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {f}")
    fg = foreground_labels(labels)
    gts = _nifti_cases(gt_folder)
    if not gts:
        raise ValueError(f"no .nii.gz / .nii ground truth in {gt_folder}")
    preds = _nifti_cases(pred_folder)
    rows, cases = [], {}
    for cid, gpath in gts.items():
        gimg = nib.load(str(gpath))
        g = np.asarray(gimg.dataobj)
        spacing = tuple(float(z) for z in gimg.header.get_zooms()[: g.ndim])
        status, p = "ok", None
        if cid not in preds:
            status = "missing"
        else:
            try:
                p = _read_prediction(preds[cid], g.shape)
            except Exception as e:  # unreadable file, wrong shape: scored 0
                status = f"error: {e}"
        cases[cid] = score_segmentation_case(p, g, spacing, multiclass=len(fg) > 1)
        for v, s in cases[cid].items():
            rows.append({"case": cid, "label": fg.get(v, str(v)), **s, "status": status})
        if not cases[cid]:
            rows.append({"case": cid, "label": "", "dice": "", "nsd": "", "status": f"{status} (not scored: "
                         "no foreground label in the ground truth)"})
    return rows, cases


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
    from fomo_nnunet.evaluation.metrics import as_finite

    try:
        data = json.loads(Path(targets).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{targets}: not a readable JSON file ({e})")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{targets}: expected a non-empty JSON object {{case_id: value}}")
    out = {}
    for k, v in data.items():
        f = as_finite(v)
        if f is None:
            raise ValueError(f"{targets}: target of {k!r} is not a finite number: {v!r}")
        out[str(k)] = f
    return out


# --------------------------------------------------------------------------- scoring files

def evaluate_values(raw: Mapping[str, str], tgt: Mapping[str, float], kind: str
                    ) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float], list[str], list[str]]:
    """Score image-level predictions (case -> raw text) against targets; every target case is scored.
    Returns (rows, official metrics, informative metrics, invalid case ids, notes)."""
    from fomo_nnunet.evaluation import metrics as M
    from fomo_nnunet.tasks import CLASSIFICATION

    cases = sorted(tgt)
    notes: list[str] = []
    extra = sorted(set(raw) - set(tgt))
    if extra:
        notes.append(f"{len(extra)} predictions without a target ignored (e.g. {extra[:3]})")
    values = [raw.get(k) for k in cases]
    truth = [tgt[k] for k in cases]
    if kind == CLASSIFICATION:
        bad = [k for k in cases if tgt[k] not in (0.0, 1.0)]
        if bad:
            raise ValueError(f"classification targets must be 0 or 1; not so for {bad[:5]}")
        y, used, invalid = M.auroc_scores_used(truth, values)
        official = {"auroc": M.auroc(y, values)}
        outside = [k for k, u, b in zip(cases, used, invalid) if not b and not 0.0 <= u <= 1.0]
        if outside:
            notes.append(f"{len(outside)} scores outside [0, 1] used as they are, as the organisers' compute_auroc "
                         f"does (e.g. {outside[:3]}); a container's validator refuses them")
        ok = ~invalid
        informative = {"auroc_valid_predictions_only": M.auroc(y[ok], used[ok]) if ok.any() else math.nan}
        if len(np.unique(y)) < 2:
            notes.append("AUROC undefined: the targets hold only one class (the organisers' compute_auroc "
                         "raises there)")
    else:
        invalid = np.array([M.as_finite(v) is None for v in values], dtype=bool)
        used = np.array([M.INVALID_MAE_PREDICTION if bad_ else float(v) for v, bad_ in zip(values, invalid)])
        official = {"mae": M.mae(truth, values), "pearson_r": M.pearson_r(truth, values)}
        ok = ~invalid
        t_ok, p_ok = np.asarray(truth)[ok], used[ok]
        informative = {"mae_valid_predictions_only": M.mae(t_ok, p_ok) if ok.any() else math.nan,
                       "pearson_r_valid_predictions_only": M.pearson_r(t_ok, p_ok)}
        r_used = [M.INVALID_CORRELATION_PREDICTION if b else float(v) for v, b in zip(values, invalid)]
        reason = M.pearson_r_undefined_reason(truth, r_used)
        if reason:
            notes.append(f"Pearson r undefined (NaN, printed n/a): {reason}")
        if invalid.any():
            notes.append("invalid predictions count as the value 100.0 for MAE and -100.0 for Pearson r")
    rows = []
    for k, t, v, u, b in zip(cases, truth, values, used, invalid):
        status = "ok" if not b else ("missing" if k not in raw else "invalid")
        rows.append({"case": k, "target": t, "prediction": "" if v is None else v,
                     "score_used": float(u), "status": status})
    bad_cases = [k for k, b in zip(cases, invalid) if b]
    if bad_cases:
        notes.append(f"{len(bad_cases)} missing or invalid predictions scored with the organisers' substitutes")
    return rows, official, informative, bad_cases, notes


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

    summary.json: {"task", "n_cases", "metrics" (official), "informative", "per_label" (segmentation:
    {label: {"dice", "nsd", "n_cases"}}), "invalid": [case ids], "notes"}; undefined metrics are null.
    """
    from fomo_nnunet.evaluation.metrics import aggregate_segmentation
    from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, REGRESSION, SEGMENTATION, Task, get_task

    task = task if isinstance(task, Task) else get_task(task)
    summary: dict[str, Any] = {"task": task.key}
    if task.kind == SEGMENTATION:
        rows, cases = evaluate_segmentation(pred, gt, task.labels)
        agg = aggregate_segmentation(cases)
        fg = foreground_labels(task.labels)
        invalid = sorted({r["case"] for r in rows if not r["status"].startswith("ok")})
        notes = []
        if invalid:
            notes.append(f"{len(invalid)} cases with a missing or unusable prediction, scored 0")
        if agg["unscored_cases"]:
            notes.append(f"{len(agg['unscored_cases'])} cases not scored (no foreground label in the ground "
                         f"truth; multiclass tasks score the labels present): {agg['unscored_cases'][:5]}")
        summary.update({"n_cases": len(cases), "metrics": agg["metrics"], "informative": {},
                        "per_label": {fg.get(v, str(v)): m for v, m in agg["per_label"].items()},
                        "invalid": invalid, "unscored": agg["unscored_cases"], "notes": notes})
    elif task.kind in (CLASSIFICATION, REGRESSION):
        raw, notes = read_predictions(pred)
        rows, official, informative, invalid, more = evaluate_values(raw, read_targets(gt), task.kind)
        summary.update({"n_cases": len(rows), "metrics": official, "informative": informative,
                        "invalid": invalid, "notes": notes + more})
    elif task.kind == EMBEDDING:
        raise ValueError(f"{task.key} ({task.name}) is scored by a linear probe: use `fomo-nnunet probe`")
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "per_case.csv", rows)
    summary = _json_float(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- probe files

def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a TSV (or CSV, by extension) with a header, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label table not found: {path}")
    delim = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def read_embeddings(emb_dir: str | Path, case_ids: list[str]) -> tuple[dict[str, np.ndarray | None], dict[str, str]]:
    """case -> 1-D float vector, or None when missing or unusable (not 1-D, not finite); with reasons."""
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise FileNotFoundError(f"embedding folder not found: {emb_dir}")
    out: dict[str, np.ndarray | None] = {}
    problems: dict[str, str] = {}
    for cid in case_ids:
        f = emb_dir / f"{cid}.npy"
        out[cid] = None
        if not f.is_file():
            problems[cid] = "missing"
            continue
        try:
            v = np.load(f, allow_pickle=False)
            if v.ndim != 1:
                raise ValueError(f"shape {v.shape}, expected 1-D")
            if not np.all(np.isfinite(v)):
                raise ValueError("non-finite values")
            out[cid] = v.astype(np.float32)
        except Exception as e:
            problems[cid] = str(e)
    return out, problems


def probe_folder(emb_dir: str | Path, labels_table: str | Path, fairness: list[str] | None = None,
                 stratify: str | None = None, label_column: str = "label", **kwargs) -> dict[str, Any]:
    """The probe on `<case_id>.npy` in emb_dir with labels and attributes from a TSV; kwargs go to
    probe.linear_probe (protocol, seed, split, epochs, batch_size)."""
    from fomo_nnunet.evaluation.probe import FairnessVariable, linear_probe

    rows = read_table(labels_table)
    if not rows or "case_id" not in rows[0] or label_column not in rows[0]:
        raise ValueError(f"{labels_table}: needs columns case_id and {label_column}, "
                         f"found {list(rows[0]) if rows else []}")
    variables = [FairnessVariable.parse(s) for s in fairness or []]
    if stratify is None:
        stratify = next((v.column for v in variables if v.bounds is not None), None)
    for col in [v.column for v in variables] + ([stratify] if stratify else []):
        if col not in rows[0]:
            raise ValueError(f"{labels_table}: no column {col!r}; columns: {list(rows[0])}")
    table = {}
    for r in rows:
        if r["case_id"] and r[label_column] and r["case_id"] not in table:
            table[r["case_id"]] = r
    unlabelled = sorted(r["case_id"] for r in rows if r["case_id"] and not r[label_column])
    embeddings, problems = read_embeddings(emb_dir, list(table))
    if not any(v is not None for v in embeddings.values()):
        raise ValueError(f"no case of {labels_table} has a usable embedding in {emb_dir}")
    res = linear_probe(embeddings, {c: r[label_column] for c, r in table.items()}, table, variables, stratify,
                       **kwargs)
    res.update({"embedding_problems": problems, "without_label": unlabelled,
                "embeddings_not_in_table": sorted(f.stem for f in Path(emb_dir).glob("*.npy")
                                                  if f.stem not in table)})
    return res
