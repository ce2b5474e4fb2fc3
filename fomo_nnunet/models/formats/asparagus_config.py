"""The Hydra config an asparagus run writes beside its checkpoints.

asparagus (github.com/Sllambias/asparagus, configs/core/base.yaml) runs under Hydra with
`output_subdir: hydra`: a run folder holds `checkpoints/last.ckpt` and `hydra/config.yaml`, the
composed config before interpolation. The pretraining settings the tensors cannot tell are there:
`training.patch_size`, `training.mask_ratio`, `training.mask_patch_size` (an interpolation of
`model.patch_embed_size`), and the network preset `model.pretrain_net`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def find_config(checkpoint: Path) -> Path | None:
    """The run's Hydra config for a checkpoint in RUN/checkpoints/ (or in RUN/), if there is one."""
    for run in (checkpoint.parent.parent, checkpoint.parent):
        for sub in ("hydra", ".hydra"):
            if (run / sub / "config.yaml").is_file():
                return run / sub / "config.yaml"
    return None


def read_config(path: Path) -> dict[str, Any]:
    """The config as plain data (yaml.safe_load: nothing in it runs); a clear error when unreadable."""
    import yaml

    from fomo_nnunet.models.transfer import CheckpointError

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: not a readable Hydra config ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a Hydra config is a mapping, found a {type(data).__name__}")
    return data


def lookup(config: dict[str, Any], dotted: str, depth: int = 0) -> Any:
    """`a.b.c` in the config, following plain `${x.y}` interpolations; None where absent."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    m = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if m and depth < 8:
        return lookup(config, m[1], depth + 1)
    return value
