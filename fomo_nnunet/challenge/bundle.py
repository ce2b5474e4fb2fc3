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

import contextlib
import json
import os
import shutil
from pathlib import Path

from fomo_nnunet.models.checkpoints import file_sha256
from fomo_nnunet.tasks import EMBEDDING, TASKS_BY_NUMBER, Task

MANIFEST = "manifest.json"
BUNDLE_ENV = "FOMO_BUNDLE"
DEFAULT_BUNDLE = "/app/bundle"
# what prediction needs from a training checkpoint; optimiser state and logs stay behind
KEEP_KEYS = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes", "current_epoch",
             "fomo_metadata", "fomo_target_stats", "fomo_network")


REBUILD = "rebuild the bundle with `fomo-nnunet bundle` (see --help), or point --bundle / $" + BUNDLE_ENV + " at a good one"


class BundleError(ValueError):
    """A bundle that cannot serve a task; str() names the broken file and how to fix it."""


def default_bundle_dir() -> str:
    return os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE


def _sha256(path: str | os.PathLike) -> str:
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
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    import torch

    ckpt = load_checkpoint_safely(src)
    slim = {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}
    if "init_args" in slim:
        slim["init_args"] = {"configuration": slim["init_args"]["configuration"], "fold": slim["init_args"]["fold"]}
    if "fomo_network" not in slim:
        from fomo_nnunet.models.network_record import NETWORK_KEY, network_record, trainer_class

        record = network_record(trainer_class(ckpt["trainer_name"]))
        if record:  # how to build the network at prediction time, without the trainer search
            slim[NETWORK_KEY] = record
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, dst)


def _loads_pretrained(model_dir: Path, trainer: str) -> bool:
    """Whether the model's runs loaded pretrained weights: what every fold's recipe.json records (a fold folder
    from before recipe.json: its trainer was not one of the retired from-scratch trainers)."""
    from fomo_nnunet.models.network_record import RETIRED_SCRATCH_TRAINERS
    from fomo_nnunet.training.recipes import RECIPE_FILE

    records = [json.loads(p.read_text()) for p in sorted(model_dir.glob(f"fold_*/{RECIPE_FILE}"))]
    if records:
        return all(r.get("loads_pretrained", False) for r in records)
    return trainer not in RETIRED_SCRATCH_TRAINERS


def build_bundle(output: str | os.PathLike, models: dict[int, str], embedding: str | None,
                 folds: list[str] | None = None, checkpoint: str = "checkpoint_final.pth") -> dict:
    """Gather `models` ({task number: results folder}) and the embedding checkpoint into `output`."""
    out = Path(output)
    pretrained_sha: dict[str, str] = {}
    entries: dict[str, dict] = {}
    for number, folder in sorted(models.items()):
        task = TASKS_BY_NUMBER[number]
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
        if not sha or not _loads_pretrained(model_dir, trainer):
            raise BundleError(f"--task{number} {folder}: not finetuned from a pretrained checkpoint (trained from "
                              f"scratch: from-scratch plans, or trainer {trainer}); the challenge needs one "
                              f"pretrained checkpoint for every task")
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


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing ({what}); {REBUILD}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        from fomo_nnunet.io.nifti_checks import first_line

        raise BundleError(f"{path}: broken {what}, not readable JSON ({first_line(e)}); {REBUILD}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: broken {what}, a JSON object expected, found {type(data).__name__}; {REBUILD}")
    return data


def load_manifest(bundle: str | os.PathLike) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a model bundle (no {MANIFEST}); build one with `fomo-nnunet bundle`, or "
                          f"point --bundle / ${BUNDLE_ENV} at it")
    manifest = _read_json(path, "bundle manifest")
    if not isinstance(manifest.get("tasks"), dict):
        raise BundleError(f"{path}: broken bundle manifest, it has no 'tasks' table; {REBUILD}")
    return manifest


def model_entry(bundle: str | os.PathLike, manifest: dict, task: Task) -> tuple[Path, dict]:
    """(folder, manifest entry) of the model serving `task` (tasks 6/7: the embedding)."""
    where = Path(bundle) / MANIFEST
    if task.kind == EMBEDDING:
        if "embedding" not in manifest:
            raise BundleError(f"{bundle}: the bundle has no embedding checkpoint for {task.key}")
        e = manifest["embedding"]
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise BundleError(f"{where}: broken entry 'embedding' (no path); {REBUILD}")
        return Path(bundle) / e["path"], e
    if task.key not in manifest["tasks"]:
        raise BundleError(f"{bundle}: the bundle has no model for {task.key} ({task.name}); it has "
                          f"{', '.join(manifest['tasks']) or 'none'}")
    e = manifest["tasks"][task.key]
    if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not isinstance(e.get("folds"), list) \
            or not e["folds"]:
        raise BundleError(f"{where}: broken entry for {task.key} (a 'path' and a list of 'folds' expected); {REBUILD}")
    return Path(bundle) / e["path"], e


def check_model_files(model_dir: Path, entry: dict, task: Task) -> None:
    """The files a task's model needs are there and its JSON files parse (cheap, before any input is read)."""
    if task.kind == EMBEDDING:
        files = [model_dir]
    else:
        for name, what in (("plans.json", "nnU-Net plans"), ("dataset.json", "dataset.json")):
            _read_json(model_dir / name, f"{what} of the {task.key} model")
        files = [model_dir / f"fold_{f}" / "checkpoint_final.pth" for f in entry["folds"]]
    for f in files:
        if not f.is_file():
            raise BundleError(f"{f}: missing (the checkpoint of the {task.key} model); {REBUILD}")
        if f.stat().st_size == 0:
            raise BundleError(f"{f}: empty file (the checkpoint of the {task.key} model); {REBUILD}")


@contextlib.contextmanager
def loading_model(model_dir: Path, task: Task):
    """Any error while a model is loaded from the bundle is a BundleError naming the model."""
    try:
        yield
    except BundleError:
        raise
    except Exception as e:
        from fomo_nnunet.io.nifti_checks import first_line

        raise BundleError(f"{model_dir}: the {task.key} model does not load ({first_line(e, 300)}); {REBUILD}") from e
