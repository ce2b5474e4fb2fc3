"""`fomo-nnunet evaluate` and `fomo-nnunet probe`: score predictions the way FOMO26 does."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EVALUATE_EXAMPLES = """\
examples:
  fomo-nnunet evaluate task2 --pred preds/ --gt labelsTs/ -o eval/task2
      segmentation: folders of <case>.nii.gz; Dice and NSD (1 mm) per foreground label
  fomo-nnunet evaluate 1 --pred predictions.csv --gt targets.json -o eval/task1
      classification: CSV with columns case_id,prediction (probability of class 1) or a folder of
      <case>.txt; targets {case_id: 0 or 1}; AUROC, invalid or missing predictions count as worst
  fomo-nnunet evaluate brainage --pred predictions.csv --gt ages.json -o eval/task3
      regression: MAE and Pearson r; a missing prediction is replaced by the end of the target
      range farthest from the truth

writes OUT_DIR/per_case.csv and OUT_DIR/summary.json
"""

PROBE_EXAMPLES = """\
examples:
  fomo-nnunet probe embeddings/ --labels labels.tsv -o eval/task6
  fomo-nnunet probe embeddings/ --labels labels.tsv --groups sex -o eval/task7

EMBEDDINGS_FOLDER holds <case_id>.npy (1-D vectors); the TSV has columns case_id, label and
attribute columns. Stratified 40/10/50 train/val/test split (--seed), standardised features,
logistic regression with C swept on validation macro AUROC, test macro AUROC and macro F1; with
--groups also per group and the gap (max - min). Writes OUT_DIR/probe.json.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.tasks import task_choices

    ev = sub.add_parser(
        "evaluate", help="score predictions of a FOMO task against ground truth (Dice/NSD, AUROC, MAE/r)",
        description="Score one FOMO26 task's predictions with the challenge's metrics and conventions.",
        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("task", metavar="TASK",
                    help="the task: number, key or name (" + ", ".join(task_choices()) + ")")
    ev.add_argument("--pred", required=True,
                    help="predictions: folder of <case>.nii.gz (segmentation), predictions.csv or a "
                         "folder of <case>.txt (classification, regression)")
    ev.add_argument("--gt", required=True,
                    help="ground truth: folder of <case>.nii.gz, or targets JSON {case_id: value}")
    ev.add_argument("-o", "--out", required=True, metavar="OUT_DIR",
                    help="folder for per_case.csv and summary.json")
    ev.set_defaults(func=run_evaluate)

    pr = sub.add_parser(
        "probe", help="linear probe on frozen embeddings (tasks 6 and 7): macro AUROC/F1, group gap",
        description="Fit and score the FOMO26 linear probe on a folder of embeddings.",
        epilog=PROBE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("embeddings", metavar="EMBEDDINGS_FOLDER", help="folder of <case_id>.npy")
    pr.add_argument("--labels", required=True, metavar="TABLE",
                    help="TSV with columns case_id, label and optional attribute columns")
    pr.add_argument("--label-column", default="label", help="column holding the class (default: label)")
    pr.add_argument("--groups", default=None, metavar="COLUMN",
                    help="attribute column for per-group scores and the gap (task 7)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    pr.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="folder for probe.json")
    pr.set_defaults(func=run_probe)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def run_evaluate(args: argparse.Namespace) -> int:
    from fomo_nnunet.metrics import evaluate_task
    from fomo_nnunet.tasks import get_task

    try:
        task = get_task(args.task)
        summary = evaluate_task(task, args.pred, args.gt, args.out)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}")
    print(f"{task.key} ({task.name}, {task.kind}): {summary['n_cases']} cases, "
          f"{len(summary['invalid'])} missing or invalid")
    for name, v in summary["metrics"].items():
        print(f"  {name:<10} {_fmt(v)}")
    for label, m in summary.get("per_label", {}).items():
        print(f"  {label:<14} dice {_fmt(m['dice'])}  nsd {_fmt(m['nsd'])}")
    for n in summary.get("notes", []):
        print(f"  note: {n}")
    print(f"wrote {Path(args.out) / 'per_case.csv'} and {Path(args.out) / 'summary.json'}")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from fomo_nnunet.probe import probe_folder

    try:
        res = probe_folder(args.embeddings, args.labels, args.groups, args.seed, args.label_column)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["metrics"]
    print(f"probe: {res['n_cases']} cases ({res['n_train']} train / {res['n_val']} val / {res['n_test']} test), "
          f"{len(res['classes'])} classes, C = {res['C']:g}")
    print(f"  macro_auroc {_fmt(m['macro_auroc'])}  macro_f1 {_fmt(m['macro_f1'])}")
    for g, v in res.get("groups", {}).items():
        print(f"  {args.groups}={g} (n={v['n']}): macro_auroc {_fmt(v['macro_auroc'])}  "
              f"macro_f1 {_fmt(v['macro_f1'])}")
    if "gap" in res:
        print("  gap: " + "  ".join(f"{k} {_fmt(v)}" for k, v in res["gap"].items()))
    skipped = len(res["missing_embedding"]) + len(res["missing_label"]) + len(res["invalid_embedding"])
    if skipped:
        print(f"  skipped: {len(res['missing_embedding'])} without embedding, {len(res['missing_label'])} "
              f"without label, {len(res['invalid_embedding'])} unusable embeddings")
    for n in res.get("notes", []):
        print(f"  note: {n}")
    print(f"wrote {out / 'probe.json'}")
    return 0
