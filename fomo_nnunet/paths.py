"""Where things live: nnU-Net's environment variables, the plugin's trainer folder."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


TRAINERS_PACKAGE = "fomo_nnunet.trainers"


def trainers_dir() -> Path:
    """The folder nnUNet_extTrainer must point to (our installed trainers package), found without
    importing it: the trainers sit above everything else and import it."""
    spec = importlib.util.find_spec(TRAINERS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{TRAINERS_PACKAGE} is not installed: reinstall fomo-nnunet (pip install -e .)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def nnunet_defaults(work: str | os.PathLike) -> dict[str, str]:
    """nnU-Net folders under a work folder, for variables the user has not set."""
    work = Path(work).resolve()
    return {"nnUNet_raw": str(work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results")}


def environment(work: str | os.PathLike = "fomo_work") -> dict[str, str]:
    """The variables nnU-Net needs to see our trainers, keeping any the user already set."""
    env = {"nnUNet_extTrainer": str(trainers_dir())}
    for k, v in nnunet_defaults(work).items():
        env[k] = os.environ.get(k) or v
    return env


def require_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"error: environment variable {name} is not set; run `eval \"$(fomo-nnunet env)\"` "
                         f"or export it (see docs/commands.md, 'Environment variables')")
    return Path(value)


def dataset_name(dataset_id: int) -> str:
    """The DatasetNNN_* name of an ID under $nnUNet_raw or $nnUNet_preprocessed; a ValueError that lists the
    datasets there and says how to make one when there is none (nnU-Net's own lookup prints a traceback)."""
    folders = [Path(p) for p in (os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")) if p]
    prefix = f"Dataset{int(dataset_id):03d}_"
    found = sorted({d.name for f in folders if f.is_dir() for d in f.iterdir() if d.name.startswith(prefix)})
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ValueError(f"dataset ID {dataset_id} names several datasets ({', '.join(found)}): rename or remove all "
                         "but one")
    there = sorted({d.name for f in folders if f.is_dir() for d in f.iterdir() if d.name.startswith("Dataset")})
    raise ValueError(f"no dataset {dataset_id} in $nnUNet_raw ({folders[0] if folders else 'not set'})"
                     f"{' or $nnUNet_preprocessed' if len(folders) > 1 else ''}: convert one first "
                     f"(`fomo-nnunet convert task TASK SRC -d {dataset_id}`)"
                     + (f"; datasets there: {', '.join(there)}" if there else ""))
