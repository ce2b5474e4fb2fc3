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
