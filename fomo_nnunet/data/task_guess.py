"""Which FOMO task a task folder looks like: what `fomo-nnunet convert task` says when it converted nothing."""
from __future__ import annotations

from pathlib import Path

from fomo_nnunet.data.fomo_layout import list_task_cases
from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, REGRESSION, TASKS, Task


def _labels_fit(task: Task, label_files: list[Path]) -> bool:
    """Image-level labels: class indices for a classification task, any numbers for regression."""
    if task.kind not in (CLASSIFICATION, REGRESSION):
        return True
    values = []
    for f in label_files[:20]:
        try:
            values.append(float(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return False
    if task.kind == REGRESSION:
        return bool(values)
    return all(v.is_integer() and 0 <= v < task.num_classes for v in values)


def usable_cases(task: Task, src: str | Path) -> int:
    """How many cases of `src` have every channel and the label that `task` needs."""
    try:
        cases = list_task_cases(task, Path(src))
    except (OSError, ValueError):
        return 0
    good = [c for c in cases if c.problem is None]
    return len(good) if _labels_fit(task, [c.label for c in good if c.label is not None]) else 0


def guess_task(src: str | Path) -> Task | None:
    """The task whose inputs and labels most cases of `src` have; among equals the more specific (more
    channels; class labels over numbers); the embedding tasks, which take any single sequence, only when no
    other fits. None when none fits."""
    scored = [(usable_cases(t, src), len(t.channels), t.kind == CLASSIFICATION, -t.number, t)
              for t in TASKS if t.kind != EMBEDDING]
    best = max(scored, key=lambda s: s[:4])
    if best[0] > 0:
        return best[4]
    embedding = next(t for t in TASKS if t.kind == EMBEDDING)
    return embedding if usable_cases(embedding, src) > 0 else None
