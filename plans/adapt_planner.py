"""Choosing how to adapt the pretrained weights to a task by cross-validation on its training cases
(`fomo-nnunet plan transfer --adapt auto`), in the spirit of nnU-Net's own choice among configurations.

For each candidate adaptation (fomo_nnunet.training.adaptation) the trainer is trained on folds of nnU-Net's
5-fold split of the TRAINING cases (splits_final.json; the test split never takes part) and its validation
predictions are pooled over the folds: segmentation scores the mean Dice of the foreground classes over every
validation case (nnU-Net's validation/summary.json), classification the AUROC and regression the MAE of the
pooled centred-crop predictions (validation/predictions.csv). The candidate with the best pooled score wins; a
tie goes to the earlier candidate, so `recipe` (the trainer's own) wins ties. The choice and every candidate's
scores are written into the plans' `fomo.adaptation` entry; the trainer records them in `recipe.json`.

Each candidate is trained under plans of its own, `<plans>__adapt_<name>`, that share the task's preprocessed
data: its folds live in nnUNet_results beside the task's final models and a rerun skips the finished ones.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fomo_nnunet.io.atomic import write_json
from fomo_nnunet.tasks import SEGMENTATION
from fomo_nnunet.training.adaptation import (ADAPTATIONS, DEFAULT_CANDIDATES, PLANS_KEY, distinct_candidates,
                                             plans_entry)

CONFIGURATION = "3d_fullres"
NNUNET_FOLDS = 5  # nnU-Net's split of the training cases (splits_final.json)
RULE = ("the best validation score pooled over the folds (Dice and AUROC: highest; MAE: lowest); a tie goes to "
        "the earlier candidate")


def candidate_plans_name(plans_name: str, candidate: str) -> str:
    return f"{plans_name}__adapt_{candidate}"


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def segmentation_dice_values(validation: Path) -> list[float]:
    """Every foreground class's Dice of every validation case in nnU-Net's validation/summary.json (classes that
    are absent from both prediction and reference, whose Dice nnU-Net leaves undefined, are left out)."""
    summary = json.loads((validation / "summary.json").read_text())
    values = []
    for case in summary["metric_per_case"]:
        for metrics in case["metrics"].values():
            dice = _finite(metrics.get("Dice"))
            if dice is not None:
                values.append(dice)
    return values


def image_level_rows(validation: Path) -> list[tuple[str, object, float]]:
    """(case, prediction, target) of validation/predictions.csv, as the image-level trainers write it."""
    import csv

    with open(validation / "predictions.csv", newline="") as f:
        return [(r["case_id"], json.loads(r["prediction"]), float(r["target"])) for r in csv.DictReader(f)]


def pooled_score(kind: str, validations: Sequence[Path]) -> dict:
    """{"metric", "value", "score" (higher is better), "n"} of the validation folders pooled."""
    if kind == SEGMENTATION:
        values = [v for folder in validations for v in segmentation_dice_values(folder)]
        value = float(np.mean(values)) if values else float("nan")
        return {"metric": "dice", "value": _finite(value), "score": _finite(value), "n": len(values)}
    from fomo_nnunet.image_level import score_rows

    rows = [row for folder in validations for row in image_level_rows(folder)]
    name, value, score = score_rows(rows, kind)
    return {"metric": name, "value": _finite(value), "score": _finite(score), "n": len(rows)}


def choose(scores: dict[str, dict]) -> str | None:
    """The winner by RULE among `scores` (in candidate order); None when no candidate could be scored."""
    best, best_score = None, -math.inf
    for name, s in scores.items():
        if s["score"] is not None and s["score"] > best_score:
            best, best_score = name, s["score"]
    return best


def tied_with(scores: dict[str, dict], winner: str) -> list[str]:
    """Every candidate whose score equals the winner's, the winner first (in candidate order): more than one
    means the cross-validation did not tell them apart and the winner won by RULE's order alone."""
    best = scores[winner]["score"]
    return [name for name, s in scores.items() if s["score"] is not None and s["score"] == best]


def choice_words(entry: dict) -> str:
    """How an adaptation entry was chosen, in words: "user", "auto", or "auto: a tie among recipe, gentle,
    full, so the first" when the cross-validation could not tell the candidates apart."""
    tie = (entry.get("evidence") or {}).get("tie")
    if tie:
        return f"{entry['chosen_by']}: a tie among {', '.join(tie)}, so the first (undecided)"
    return entry["chosen_by"]


def nnunet_train_command() -> str:
    """nnU-Net's training command of this environment (beside this Python first)."""
    found = shutil.which("nnUNetv2_train", path=os.path.dirname(sys.executable)) or shutil.which("nnUNetv2_train")
    if not found:
        raise FileNotFoundError("nnUNetv2_train is not on PATH (is nnU-Net installed in this environment?)")
    return found


def run_command(cmd: list[str]) -> None:
    """Run one training; its output goes to the console. A failure names the command."""
    rc = subprocess.call(cmd)
    if rc != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {rc}")


def _preprocessed_folder(dataset: str) -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / dataset


def _check_trainer(trainer: str, kind: str):
    from fomo_nnunet.finetune import Finetuning
    from fomo_nnunet.models.network_record import trainer_class

    try:
        cls = trainer_class(trainer)
    except Exception as e:  # nnU-Net's search raises a bare RuntimeError/AttributeError when nothing matches
        raise ValueError(f"--adapt-trainer {trainer}: no such trainer ({e})") from None
    if cls is None or not issubclass(cls, Finetuning):
        raise ValueError(f"--adapt-trainer {trainer} is not a fomo finetuning trainer (nnUNetTrainerFomoSeg, ...Cls, "
                         f"...Reg or one of their variants): it cannot load pretrained weights")
    kinds = getattr(cls, "task_kinds", ())
    if kind not in kinds:
        raise ValueError(f"--adapt-trainer {trainer} trains {' or '.join(kinds)} tasks; this task is {kind}")
    return cls


def _ensure_preprocessed(dataset_id: int, plans_name: str, num_processes: int, log) -> int:
    """Preprocess the plans' data where cases are missing (resumable); returns the number of training cases."""
    from fomo_nnunet.data import preprocess as P

    name, plans, _, cases = P.load_dataset(dataset_id, plans_name, CONFIGURATION)
    data = _preprocessed_folder(name) / plans["configurations"][CONFIGURATION]["data_identifier"]
    if any(not (data / f"{k}.b2nd").is_file() for k in cases):
        log(f"preprocessing {name} with {plans_name} for the cross-validation ({len(cases)} cases)")
        P.preprocess(dataset_id, plans_name, CONFIGURATION, None, num_processes)
    return len(cases)


def choose_adaptation(dataset_id: int, plans_name: str, trainer: str,
                      candidates: Sequence[str] = DEFAULT_CANDIDATES, folds: Sequence[int] = tuple(range(NNUNET_FOLDS)),
                      device: str = "cpu", num_processes: int = 2,
                      run: Callable[[list[str]], None] = run_command, log: Callable[[str], None] = print) -> dict:
    """Cross-validate `candidates` with `trainer` on the training cases of the task that `plans_name` was
    planned for, write the winner and the evidence into the plans, and return the plans' adaptation entry."""
    from fomo_nnunet.paths import dataset_name

    if not candidates or len(set(candidates)) != len(candidates):
        raise ValueError(f"--adapt-candidates must name distinct adaptations, got {list(candidates)}")
    unknown = [c for c in candidates if c not in ADAPTATIONS]
    if unknown:
        raise ValueError(f"--adapt-candidates: unknown {unknown}; choose from {', '.join(ADAPTATIONS)}")
    bad = [f for f in folds if not (isinstance(f, int) and 0 <= f < NNUNET_FOLDS)]
    if not folds or bad or len(set(folds)) != len(folds):
        raise ValueError(f"--adapt-folds must be distinct folds of nnU-Net's split, 0..{NNUNET_FOLDS - 1}; got "
                         f"{list(folds)}")
    name = dataset_name(dataset_id)
    plans_file = _preprocessed_folder(name) / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"no plans {plans_file}: run `fomo-nnunet plan transfer` first")
    plans = json.loads(plans_file.read_text())
    fomo = plans.get("fomo") or {}
    if not fomo.get("pretrained_checkpoint"):
        raise ValueError(f"plans {plans_file} name no pretrained checkpoint (from scratch): nothing to adapt")
    kind = fomo["task_kind"]
    cls = _check_trainer(trainer, kind)
    kept, skipped = distinct_candidates(candidates, kind, cls.recipe)
    evidence = {"trainer": trainer, "folds": list(folds), "rule": RULE, "candidates": {}, "skipped": skipped}
    if len(kept) == 1:
        evidence["note"] = "one distinct candidate for this trainer: chosen without training"
        return _record(plans_file, plans, plans_entry(kept[0], "auto", evidence))
    n_cases = _ensure_preprocessed(dataset_id, plans_name, num_processes, log)
    if n_cases < NNUNET_FOLDS:
        raise ValueError(f"{name} has {n_cases} training case(s); nnU-Net's {NNUNET_FOLDS}-fold split of the training "
                         f"cases needs at least {NNUNET_FOLDS}: use --adapt with a named adaptation instead of auto")
    results = Path(os.environ["nnUNet_results"]) / name
    runs = [(c, f) for c in kept for f in folds]
    for i, (candidate, fold) in enumerate(runs, 1):
        cplans = candidate_plans_name(plans_name, candidate)
        folder = results / f"{trainer}__{cplans}__{CONFIGURATION}"
        if i == 1 or runs[i - 2][0] != candidate:
            _write_candidate_plans(plans_file.parent / f"{cplans}.json", _candidate_plans(plans, cplans, candidate),
                                   folder, log)
        validation = folder / f"fold_{fold}" / "validation"
        done = (validation / "summary.json").is_file()
        log(f"[adapt {i}/{len(runs)}] {candidate} fold {fold}: {'done before' if done else 'training'} "
            f"({ADAPTATIONS[candidate].description})")
        if not done:
            run([nnunet_train_command(), str(dataset_id), CONFIGURATION, str(fold), "-p", cplans, "-tr", trainer,
                 "-device", device])
    for candidate in kept:
        cplans = candidate_plans_name(plans_name, candidate)
        folder = results / f"{trainer}__{cplans}__{CONFIGURATION}"
        validations = [folder / f"fold_{f}" / "validation" for f in folds]
        score = pooled_score(kind, validations)
        score["per_fold"] = {str(f): pooled_score(kind, [v])["value"] for f, v in zip(folds, validations)}
        score["plans"] = cplans
        evidence["candidates"][candidate] = score
        log(f"  {candidate}: {score['metric']} {score['value']} over {score['n']} validation values")
    winner = choose(evidence["candidates"])
    if winner is None:
        raise ValueError(f"no candidate could be scored on folds {list(folds)} of {name} (e.g. one class only among "
                         f"the validation cases): add folds, or name an adaptation")
    tie = tied_with(evidence["candidates"], winner)
    if len(tie) > 1:
        evidence["tie"] = tie
        log(f"  undecided: {', '.join(tie)} scored the same; {winner} comes first in the candidates' order")
    return _record(plans_file, plans, plans_entry(winner, "auto", evidence))


def _candidate_plans(plans: dict, cplans: str, candidate: str) -> dict:
    """The task's plans with `candidate` recorded, under their own name, on the same preprocessed data."""
    out = json.loads(json.dumps(plans))
    out["plans_name"] = cplans
    out["fomo"][PLANS_KEY] = plans_entry(candidate, "candidate of `plan transfer --adapt auto`")
    return out


def _write_candidate_plans(path: Path, cplans: dict, folder: Path, log) -> None:
    """Write a candidate's plans; folds trained under other plans of that name (another checkpoint, another
    planning) are removed first, so that a rerun never scores them."""
    if path.is_file() and json.loads(path.read_text()) != cplans and folder.exists():
        log(f"  {path.name} changed since its folds were trained: removing {folder}")
        shutil.rmtree(folder)
    write_json(cplans, path)


def record_adaptation(dataset_id: int, plans_name: str, name: str) -> dict:
    """Write the named adaptation, chosen by the user, into the plans; returns the entry."""
    from fomo_nnunet.paths import dataset_name

    plans_file = _preprocessed_folder(dataset_name(dataset_id)) / f"{plans_name}.json"
    plans = json.loads(plans_file.read_text())
    if not (plans.get("fomo") or {}).get("pretrained_checkpoint"):
        raise ValueError(f"plans {plans_file} name no pretrained checkpoint (from scratch): nothing to adapt")
    kind = plans["fomo"]["task_kind"]
    adaptation = ADAPTATIONS.get(name)
    if adaptation is None:
        raise ValueError(f"--adapt {name}: unknown; choose from {', '.join(ADAPTATIONS)} or auto")
    if not adaptation.applies_to(kind):
        raise ValueError(f"--adapt {name} is for {' or '.join(adaptation.kinds)} tasks; this task is {kind}")
    return _record(plans_file, plans, plans_entry(name, "user"))


def _record(plans_file: Path, plans: dict, entry: dict) -> dict:
    plans["fomo"][PLANS_KEY] = entry
    write_json(plans, plans_file)
    return entry
