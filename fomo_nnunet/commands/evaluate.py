"""`fomo-nnunet evaluate` and `fomo-nnunet probe`: score predictions exactly as the FOMO26 organisers do.

Argument parsing and printing only: the scoring of files is fomo_nnunet.evaluation.scoring, the metrics are
the pure functions of `fomo_nnunet.evaluation.metrics` and `fomo_nnunet.evaluation.probe`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fomo_nnunet.exit_codes import BAD_INPUT

EVALUATE_EXAMPLES = """\
examples:
  fomo-nnunet evaluate task2 --pred preds/ --gt labelsTs/ -o eval/task2
  fomo-nnunet evaluate 1 --pred predictions.csv --gt targets.json -o eval/task1
  fomo-nnunet evaluate brainage --pred preds_txt/ --gt ages.json -o eval/task3

The organisers' conventions (fomo26/fomo-metrics, package fomo_challenge_metrics), followed for the
official numbers even where they surprise:
  segmentation  Dice and NSD at 1 mm per case (both empty: Dice 1, NSD 0; one empty: 0). A binary task
                compares non-zero masks; a multiclass task (task 4) scores each case only on the labels
                present in ITS ground truth, so a class absent from a case's ground truth does not
                count for that case, and a case with an empty ground truth is not scored. Each case
                weighs the same (a case's value: the mean over its scored labels). A missing or
                unreadable prediction scores 0 on every scored label.
  classification  AUROC; an invalid prediction (missing, not a number, not finite, outside [0, 1]) is
                replaced by 0.0 for a positive case and 1.0 for a negative one: these can TIE with
                valid scores of exactly 0 or 1.
  regression    MAE and Pearson r; an invalid prediction is replaced by the VALUE 100.0 for MAE and
                -100.0 for Pearson r (so a missing age costs |age - 100|). Pearson r is NaN (printed
                n/a, with the reason) for constant predictions or fewer than two cases.
Beside the official metrics, `informative` values (e.g. the metric over valid predictions only) are
printed and saved; they are never what the leaderboard uses.

writes OUT_DIR/per_case.csv and OUT_DIR/summary.json
"""

PROBE_EXAMPLES = """\
examples:
  fomo-nnunet probe embeddings/ --labels labels.tsv --stratify age -o eval/task6
  fomo-nnunet probe embeddings/ --labels labels.tsv --stratify age --groups sex --groups age:25,50,75,1000 -o eval/task7
  fomo-nnunet probe embeddings/ --labels labels.tsv --protocol logistic -o eval/task6_logistic

EMBEDDINGS_FOLDER holds <case_id>.npy (1-D vectors); the TSV has columns case_id, label and attribute
columns, in the order that fixes the split. Protocol fomo-lp (default; fomo26/fomo-lp,
pipeline/lp_fomo.py): per class a seeded split (80/20/100 cases, or 40/10/50 % of the smallest class
when a class has fewer than 200), stratified by the decades of --stratify; 13 linear heads trained
with SGD on the RAW embeddings (learning rates 1e-5 .. 0.1, momentum 0.9, batch 64, 20 epochs, cosine
decay), the head with the best validation AUROC tested. Official metrics: one-vs-rest macro AUROC and
F1 on the test split; with --groups per fairness variable the groups' metrics, their max - min
disparity (0 when only one group has a defined metric) and the fairness score = mean over the
variables of 1 - disparity. A test case without a usable embedding is scored as invalid; a train or
validation case without one is an error. Writes OUT_DIR/probe.json.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from fomo_nnunet.evaluation.probe import BATCH_SIZE, EPOCHS, EXAMPLE_BINS, PROTOCOLS, SEED
    from fomo_nnunet.tasks import task_choices

    ev = sub.add_parser(
        "evaluate", help="score predictions of a FOMO task against ground truth (Dice/NSD, AUROC, MAE/r)",
        description="Score one FOMO26 task's predictions with the organisers' metrics and conventions.",
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

    bins = ",".join(f"{b:g}" for b in EXAMPLE_BINS)
    pr = sub.add_parser(
        "probe", help="linear probe on frozen embeddings (tasks 6 and 7): the organisers' fomo-lp protocol",
        description="Fit and score the FOMO26 linear probe on a folder of embeddings, as fomo26/fomo-lp does.",
        epilog=PROBE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("embeddings", metavar="EMBEDDINGS_FOLDER", help="folder of <case_id>.npy")
    pr.add_argument("--labels", required=True, metavar="TABLE",
                    help="TSV (or .csv) with columns case_id, label and optional attribute columns")
    pr.add_argument("--label-column", default="label", help="column holding the class (default: label)")
    pr.add_argument("--groups", action="append", default=[], metavar="COLUMN[:BOUNDS]",
                    help="a fairness variable (repeatable): a categorical column (e.g. sex), or a continuous "
                         f"one binned by inclusive upper bounds (e.g. age:{bins}, the organisers' example "
                         "bins; their age bins are not public)")
    pr.add_argument("--stratify", default=None, metavar="COLUMN",
                    help="continuous column whose decades stratify the split within each class (fomo-lp's "
                         "FEATURE1, e.g. age; default: the first binned --groups column, else none)")
    pr.add_argument("--protocol", choices=PROTOCOLS, default="fomo-lp",
                    help="fomo-lp (default): the organisers' SGD heads; logistic: the same split and scoring "
                         "with a logistic regression on standardised features (a scale-free reference)")
    pr.add_argument("--split", default="auto", metavar="auto|TRAIN,VAL,TEST",
                    help="cases per class (default auto: 80,20,100 when every class has 200 cases, else "
                         "40/10/50 %% of the smallest class)")
    pr.add_argument("--seed", type=int, default=SEED, help=f"seed of split and heads (default: {SEED}, theirs)")
    pr.add_argument("--epochs", type=int, default=EPOCHS, help=f"fomo-lp epochs (default: {EPOCHS})")
    pr.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"fomo-lp batch size (default: {BATCH_SIZE})")
    pr.add_argument("-o", "--out", required=True, metavar="OUT_DIR", help="folder for probe.json")
    pr.set_defaults(func=run_probe)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def run_evaluate(args: argparse.Namespace) -> int:
    from fomo_nnunet.evaluation.scoring import evaluate_task
    from fomo_nnunet.tasks import get_task

    try:
        task = get_task(args.task)
        summary = evaluate_task(task, args.pred, args.gt, args.out)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}")
    print(f"{task.key} ({task.name}, {task.kind}): {summary['n_cases']} cases, "
          f"{len(summary['invalid'])} missing or invalid")
    for name, v in summary["metrics"].items():
        print(f"  {name:<10} {_fmt(v)}  (official)")
    for name, v in summary.get("informative", {}).items():
        print(f"  {name:<34} {_fmt(v)}  (informative, not the leaderboard's)")
    for label, m in summary.get("per_label", {}).items():
        print(f"  {label:<14} dice {_fmt(m['dice'])}  nsd {_fmt(m['nsd'])}  ({m['n_cases']} cases)")
    for n in summary.get("notes", []):
        print(f"  note: {n}")
    print(f"wrote {Path(args.out) / 'per_case.csv'} and {Path(args.out) / 'summary.json'}")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from fomo_nnunet.evaluation.scoring import probe_folder

    try:
        res = probe_folder(args.embeddings, args.labels, args.groups, args.stratify, args.label_column,
                           protocol=args.protocol, seed=args.seed, split=args.split, epochs=args.epochs,
                           batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(res, indent=2) + "\n")
    chosen = f"lr = {res['best_lr']:g}" if "best_lr" in res else f"C = {res['C']:g}"
    print(f"probe ({res['protocol']}): {res['n_cases']} cases ({res['n_train']} train / {res['n_val']} val / "
          f"{res['n_test']} test), {len(res['classes'])} classes, {chosen}")
    m = res["metrics"]
    print(f"  macro_auroc {_fmt(m['macro_auroc'])}  macro_f1 {_fmt(m['macro_f1'])}  (official: one-vs-rest)")
    for name, block in res.get("variables", {}).items():
        for metric, per in block["per_group"].items():
            groups = "  ".join(f"{g}: {_fmt(v)}" for g, v in per.items())
            print(f"  {name} {metric}: {groups}  disparity {_fmt(block['disparity'][metric])}")
    if "fairness_score" in res:
        print("  fairness score: " + "  ".join(f"{k} {_fmt(v)}" for k, v in res["fairness_score"].items())
              + "  (mean over the variables of 1 - disparity)")
    if res["embedding_problems"]:
        print(f"  {len(res['embedding_problems'])} cases without a usable embedding")
    for n in res.get("notes", []):
        print(f"  note: {n}")
    print(f"wrote {out / 'probe.json'}")
    return 0
