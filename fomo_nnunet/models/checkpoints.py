"""Finding checkpoints and reading what they say about themselves (safely: weights_only)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Which checkpoint of a fold folder stands for the model, in order of preference.
CHECKPOINT_PREFERENCE = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def find_checkpoint(path: str | os.PathLike, preference: tuple[str, ...] = CHECKPOINT_PREFERENCE) -> str:
    """A .pth file as given, or the first checkpoint of `preference` (by default the final, else latest, else
    best) in a results folder.

    A results folder is a trainer folder (`<trainer>__<plans>__<config>`, with fold_* inside) or
    one of its fold folders; with several folds, fold_all is preferred, then the lowest fold.
    """
    p = Path(path)
    if p.is_file():
        return str(p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint or results folder")
    folds = [p] if any((p / c).is_file() for c in CHECKPOINT_PREFERENCE) else \
        sorted(p.glob("fold_*"), key=lambda f: (f.name != "fold_all", f.name))
    for fold in folds:
        for c in preference:
            if (fold / c).is_file():
                return str(fold / c)
    others = [str(f / c) for f in folds for c in CHECKPOINT_PREFERENCE if (f / c).is_file()]
    if others and preference == FINAL_ONLY:
        raise FileNotFoundError(
            f"{p}: no checkpoint_final.pth yet, only {', '.join(others)}: the training has not finished (or stopped "
            f"early); wait for it to finish, or name a checkpoint file to use it as it is now (--pretrained "
            f"{others[0]}; finetuning refuses it if it changes later)")
    raise FileNotFoundError(f"{p}: no {' / '.join(preference)} in it or in its fold_* folders")


# A finished training only: what plans that record a checkpoint's sha256 should point to.
FINAL_ONLY = ("checkpoint_final.pth",)


def read_checkpoint_metadata(checkpoint: str | os.PathLike) -> dict:
    """The checkpoint file's fomo metadata as a validated dict; a clear error when there is none."""
    from fomo_nnunet.models.transfer import load_checkpoint_safely, read_metadata

    return read_metadata(load_checkpoint_safely(checkpoint), source=str(checkpoint)).to_dict()


def describe_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """Metadata (or None) plus tensor and parameter counts of the stored network."""
    import torch

    from fomo_nnunet.models.transfer import load_checkpoint_safely

    ckpt = load_checkpoint_safely(checkpoint)
    weights = ckpt["network_weights"]
    # nnU-Net's U-Net decoders hold a reference to the encoder: count each stored tensor once
    unique = {v.untyped_storage().data_ptr(): v for v in weights.values() if isinstance(v, torch.Tensor)}
    tensors = list(unique.values())
    return {"fomo_metadata": ckpt.get("fomo_metadata"), "num_tensors": len(tensors),
            "num_parameters": int(sum(t.numel() for t in tensors if t.is_floating_point())),
            "trainer_name": ckpt.get("trainer_name"), "epochs_completed": ckpt.get("current_epoch")}


def metadata_from_preset(arch: str, patch: int | None = None, spacing: float | None = None) -> dict:
    """Metadata of an untrained preset network, for from-scratch plans without any checkpoint."""
    from fomo_nnunet import __version__
    from fomo_nnunet.plans.presets import ARCH_PRESETS, architecture_dict
    from fomo_nnunet.models.transfer import PretrainMetadata

    preset = ARCH_PRESETS[arch]
    patch_size = [patch or preset.default_patch] * 3
    spacing_mm = [float(spacing or preset.default_spacing)] * 3
    arch_dict = architecture_dict(preset, patch_size, spacing_mm)
    return PretrainMetadata(
        network_class=arch_dict["network_class_name"], network_kwargs=arch_dict["arch_kwargs"],
        arch_kwargs_requires_import=arch_dict["_kw_requires_import"], patch_size=patch_size, spacing=spacing_mm,
        normalization=["ZScoreNormalization"], num_input_channels=1,
        channel_meaning=["any single MRI sequence, z-scored per scan over its non-zero region"],
        objective="none", objective_settings={"batch_size": preset.default_batch_size, "use_mask_for_norm": [True]},
        iterations_trained=0, epochs_trained=0, plans_name="", dataset_name="", trainer_name="",
        fomo_nnunet_version=__version__).to_dict()


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
