"""The model bundle a submission ships: every task's trained model plus the pretrained encoder.

```
BUNDLE/manifest.json          what is where, and the sha256 of the ONE pretrained checkpoint
BUNDLE/task2/plans.json, dataset.json, fold_<k>/checkpoint_final.pth   (weights only, no optimiser)
BUNDLE/embedding/pretrained.pth                                         (tasks 6 and 7)
```
The challenge rule is one pretrained checkpoint for every task: a bundle whose models were
transferred from different checkpoints (or trained from scratch) is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from fomo_nnunet.tasks import EMBEDDING, TASKS, Task

MANIFEST = "manifest.json"
BUNDLE_ENV = "FOMO_BUNDLE"
DEFAULT_BUNDLE = "/app/bundle"
# what prediction needs from a training checkpoint; optimiser state and logs stay behind
KEEP_KEYS = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes", "current_epoch",
             "fomo_metadata", "fomo_target_stats")


class BundleError(ValueError):
    pass


def default_bundle_dir() -> str:
    return os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE


def _sha256(path: str | os.PathLike) -> str:
    from fomo_nnunet.plans.transfer_planner import file_sha256

    return file_sha256(str(path))


def _folds(model_dir: Path, folds: list[str] | None, checkpoint: str) -> list[str]:
    available = sorted(p.name[len("fold_"):] for p in model_dir.glob("fold_*") if (p / checkpoint).is_file())
    if not available:
        raise BundleError(f"{model_dir}: no fold_*/{checkpoint}")
    chosen = folds or available
    missing = [f for f in chosen if f not in available]
    if missing:
        raise BundleError(f"{model_dir}: folds {missing} have no {checkpoint} (available: {available})")
    return chosen


def _slim_checkpoint(src: Path, dst: Path) -> None:
    from fomo_nnunet.transfer import load_checkpoint_safely

    ckpt = load_checkpoint_safely(src)
    slim = {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}
    if "init_args" in slim:
        slim["init_args"] = {"configuration": slim["init_args"]["configuration"], "fold": slim["init_args"]["fold"]}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, dst)


def build_bundle(output: str | os.PathLike, models: dict[int, str], embedding: str | None,
                 folds: list[str] | None = None, checkpoint: str = "checkpoint_final.pth") -> dict:
    """Gather `models` ({task number: results folder}) and the embedding checkpoint into `output`."""
    out = Path(output)
    pretrained_sha: dict[str, str] = {}
    entries: dict[str, dict] = {}
    for number, folder in sorted(models.items()):
        task = next(t for t in TASKS if t.number == number)
        model_dir = Path(folder)
        plans_file = model_dir / "plans.json"
        if not plans_file.is_file():
            raise BundleError(f"--task{number} {folder}: no plans.json (expected an nnU-Net trainer output folder)")
        plans = json.loads(plans_file.read_text())
        fomo = plans.get("fomo") or {}
        if fomo.get("task") not in (None, task.key):
            raise BundleError(f"--task{number} {folder}: the model was planned for {fomo['task']}, not {task.key}")
        sha = fomo.get("pretrained_sha256")
        trainer = model_dir.name.split("__")[0]
        if not sha or trainer.endswith("_scratch"):
            raise BundleError(f"--task{number} {folder}: not finetuned from a pretrained checkpoint "
                              f"(trainer {trainer}); the challenge needs one pretrained checkpoint for every task")
        pretrained_sha[f"task{number}"] = sha
        entries[task.key] = {"kind": task.kind, "path": task.key, "trainer": trainer,
                             "folds": _folds(model_dir, folds, checkpoint), "pretrained_sha256": sha,
                             "source": str(model_dir.resolve())}
    if embedding:
        pretrained_sha["embedding"] = _sha256(embedding)
    if len(set(pretrained_sha.values())) > 1:
        groups: dict[str, list[str]] = {}
        for who, sha in pretrained_sha.items():
            groups.setdefault(sha[:12], []).append(who)
        detail = "; ".join(f"{sha}...: {', '.join(w)}" for sha, w in groups.items())
        raise BundleError(f"the models come from different pretrained checkpoints ({detail}); "
                          f"the challenge allows one pretrained checkpoint for all tasks")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key, e in entries.items():
        src = Path(e.pop("source"))
        (tmp / key).mkdir(parents=True, exist_ok=True)
        for name in ("plans.json", "dataset.json"):
            shutil.copy(src / name, tmp / key / name)
        for f in e["folds"]:
            _slim_checkpoint(src / f"fold_{f}" / checkpoint, tmp / key / f"fold_{f}" / "checkpoint_final.pth")
    manifest = {"format": 1, "pretrained_sha256": next(iter(pretrained_sha.values()), None), "tasks": entries}
    if embedding:
        (tmp / "embedding").mkdir()
        shutil.copy(embedding, tmp / "embedding" / "pretrained.pth")
        manifest["embedding"] = {"path": "embedding/pretrained.pth", "sha256": pretrained_sha["embedding"]}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return manifest


def load_manifest(bundle: str | os.PathLike) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a model bundle (no {MANIFEST}); build one with `fomo-nnunet bundle`, or "
                          f"point --bundle / ${BUNDLE_ENV} at it")
    return json.loads(path.read_text())


def model_entry(bundle: str | os.PathLike, manifest: dict, task: Task) -> tuple[Path, dict]:
    """(folder, manifest entry) of the model serving `task` (tasks 6/7: the embedding)."""
    if task.kind == EMBEDDING:
        if "embedding" not in manifest:
            raise BundleError(f"{bundle}: the bundle has no embedding checkpoint for {task.key}")
        return Path(bundle) / manifest["embedding"]["path"], manifest["embedding"]
    if task.key not in manifest["tasks"]:
        raise BundleError(f"{bundle}: the bundle has no model for {task.key} ({task.name}); it has "
                          f"{', '.join(manifest['tasks']) or 'none'}")
    e = manifest["tasks"][task.key]
    return Path(bundle) / e["path"], e
