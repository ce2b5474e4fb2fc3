"""Checks the fomo trainers make before any training starts: each mistake is refused in one line on stderr
that says what to do, with exit code BAD_INPUT (fomo_nnunet.exit_codes), instead of a traceback later on.

- a trainer on a dataset of another kind of task (names the trainer to use instead);
- a pretrained checkpoint that changed since `fomo-nnunet plan transfer` recorded its sha256;
- `nnUNetv2_predict` on an image-level model (nnU-Net's predictor segments; `fomo-nnunet predict` it is);
- a few-shot validation fold on which the task's metric cannot be computed (a warning, not a refusal).
"""
from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from fomo_nnunet.exit_codes import BAD_INPUT
from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, REGRESSION, SEGMENTATION, get_task

# the trainer family of each kind of task; embeddings are not finetuned (`fomo-nnunet embed`)
TRAINER_FOR_KIND = {SEGMENTATION: "nnUNetTrainerFomoSeg", CLASSIFICATION: "nnUNetTrainerFomoCls",
                    REGRESSION: "nnUNetTrainerFomoReg"}


class Refused(SystemExit):
    """A user's mistake, refused: the process exits with BAD_INPUT; `message` was printed on stderr."""

    def __init__(self, message: str):
        super().__init__(BAD_INPUT)
        self.message = message


def refuse(message: str) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit with BAD_INPUT (no traceback: nnU-Net's commands print one
    for any exception)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise Refused(message)


def _trainer_exists(name: str) -> bool:
    """Whether this package's trainers folder defines `name` (nnU-Net's own search is slow and narrates)."""
    import importlib
    import pkgutil

    from fomo_nnunet.paths import TRAINERS_PACKAGE, trainers_dir

    return any(hasattr(importlib.import_module(f"{TRAINERS_PACKAGE}.{m.name}"), name)
               for m in pkgutil.iter_modules([str(trainers_dir())]))


def trainer_for_task(kind: str, user_trainer: str) -> str:
    """The trainer for a task of `kind`, with the user's variant suffix where that variant exists
    (nnUNetTrainerFomoSeg_tiny on a classification task -> nnUNetTrainerFomoCls_tiny)."""
    base = TRAINER_FOR_KIND[kind]
    m = re.match(r"nnUNetTrainerFomo[A-Za-z]+(_.+)$", user_trainer)
    if m and _trainer_exists(base + m.group(1)):
        return base + m.group(1)
    return base


def check_trainer_fits_task(trainer_name: str, trainer_kinds: tuple[str, ...], plans: Mapping) -> None:
    """Refuse a trainer for `trainer_kinds` tasks on plans whose FOMO task is of another kind (plans without a
    FOMO task, e.g. nnU-Net's own, pass)."""
    fomo = plans.get("fomo") or {}
    if "task" not in fomo:
        return
    task = get_task(fomo["task"])
    if task.kind in trainer_kinds:
        return
    trains = " or ".join(trainer_kinds)
    where = f"{plans.get('dataset_name', 'this dataset')} (plans '{plans.get('plans_name')}')"
    if task.kind == EMBEDDING:
        refuse(f"{trainer_name} trains {trains}, but {where} is {task.key} ({task.name}), an embedding task: "
               "nothing is finetuned for it; embed with `fomo-nnunet embed --checkpoint PRETRAINING_RESULTS`")
    refuse(f"{trainer_name} trains {trains}, but {where} is {task.key} ({task.name}), a {task.kind} task: "
           f"use -tr {trainer_for_task(task.kind, trainer_name)}")


def check_pretrained_unchanged(path: str, plans: Mapping) -> None:
    """Refuse a pretrained checkpoint whose sha256 differs from the one the plans recorded (plans written
    before the hash was recorded pass)."""
    from fomo_nnunet.models.checkpoints import file_sha256

    recorded = (plans.get("fomo") or {}).get("pretrained_sha256")
    if not recorded:
        return
    now = file_sha256(path)
    if now != recorded:
        dataset = re.match(r"Dataset(\d+)", str(plans.get("dataset_name", "")))
        d = dataset.group(1).lstrip("0") if dataset else "ID"
        refuse(f"pretrained checkpoint {path} changed since plans '{plans.get('plans_name')}' recorded it (sha256 "
               f"{recorded[:12]}... then, {now[:12]}... now; was the pretraining still running?): rerun "
               f"`fomo-nnunet plan transfer -d {d} --pretrained {path} --plans-name {plans.get('plans_name')}` "
               "to finetune from the file as it is now, then train again")


def called_by_nnunet_predictor(depth: int = 4) -> bool:
    """True when one of the `depth` calling frames is nnU-Net's predictor loading a trained model folder
    (nnUNetPredictor.initialize_from_trained_model_folder builds the network through the trainer class)."""
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return False
            if frame.f_code.co_name == "initialize_from_trained_model_folder" and \
                    type(frame.f_locals.get("self")).__name__ == "nnUNetPredictor":
                return True
        return False
    finally:
        del frame


def refuse_nnunet_predictor(trainer_name: str, kind: str) -> None:
    """Called where an image-level trainer builds its network: refuse nnU-Net's predictor before it writes
    anything into its output folder."""
    if called_by_nnunet_predictor():
        refuse(f"{trainer_name} is an image-level ({kind}) model: nnUNetv2_predict segments and cannot predict it; "
               "use `fomo-nnunet predict -i IMAGES -o OUT -m MODEL_FOLDER -f FOLDS` (writes predictions.csv)")


def validation_problem(kind: str, targets: Sequence[float], metric: str) -> str | None:
    """Why the task's metric cannot score these validation targets, or None when it can."""
    if len(targets) == 0:
        return "the validation fold has no cases"
    if kind == CLASSIFICATION:
        classes = sorted({int(t) for t in targets})
        if len(classes) < 2:
            return (f"all {len(targets)} validation case(s) are of class {classes[0]}: {metric} needs both a positive "
                    "and a negative case and is undefined")
    return None


def fold_advice(fold) -> str:
    """What to do about a validation fold that cannot score."""
    if str(fold) == "all":  # fold 'all' validates on its own training cases
        return "fold 'all' validates on its training cases, so they are all of one class: check targets.json"
    return ("with this few cases, train fold 'all' (no held-out score), or give every fold both classes in "
            "splits_final.json")
