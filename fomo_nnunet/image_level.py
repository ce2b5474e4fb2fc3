"""Image-level targets (classification, regression) on top of nnU-Net's data pipeline.

nnU-Net's preprocessing handles images and a label map; image-level targets travel in
`targets.json` beside dataset.json (the converter writes it into nnUNet_raw and `fomo-nnunet plan
transfer` copies it into nnUNet_preprocessed). This module reads them, balances classes, scales
regression targets, and crops the whole brain around its centre instead of sampling a label map.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, get_task

TARGETS_FILE = "targets.json"


class TargetError(ValueError):
    """A case without a usable target (the message names the case and the file)."""


def load_targets(folder: str | os.PathLike, cases: Sequence[str], kind: str,
                 filename: str = TARGETS_FILE) -> dict[str, float]:
    """Targets of `cases` from `folder/targets.json`; an error names a missing or unusable case."""
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise TargetError(f"{path} is missing: image-level tasks need the converter's targets.json beside "
                          f"dataset.json (run `fomo-nnunet plan transfer`, which copies it from nnUNet_raw)")
    with open(path) as f:
        table = json.load(f)
    out: dict[str, float] = {}
    for case in cases:
        if case not in table:
            raise TargetError(f"{path}: case '{case}' has no target")
        value = table[case]
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TargetError(f"{path}: case '{case}' has target {value!r}, not a number") from None
        if not np.isfinite(value):
            raise TargetError(f"{path}: case '{case}' has a non-finite target {value}")
        if kind == CLASSIFICATION and (value != int(value) or value < 0):
            raise TargetError(f"{path}: case '{case}' has target {value}, not a class index")
        out[case] = value
    return out


def class_balanced_probabilities(cases: Sequence[str], targets: Mapping[str, float]) -> np.ndarray:
    """Sampling probability per case (in `cases` order) so that every class is drawn equally often."""
    classes = [int(targets[c]) for c in cases]
    counts = Counter(classes)
    p = np.array([1.0 / (len(counts) * counts[k]) for k in classes])
    return p / p.sum()


@dataclass(frozen=True)
class TargetScaler:
    """Regression targets standardised for training and mapped back (to years) at prediction."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: Sequence[float]) -> TargetScaler:
        v = np.asarray(values, dtype=float)
        std = float(v.std())
        return cls(float(v.mean()), std if std > 1e-8 else 1.0)

    def forward(self, y):
        return (y - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping) -> TargetScaler:
        return cls(float(d["mean"]), float(d["std"]))


def centred_bbox(shape: Sequence[int], patch: Sequence[int], jitter: Sequence[int] | int = 0,
                 rng: np.random.Generator | None = None) -> tuple[list[int], list[int]]:
    """Lower/upper corners of a patch centred on the volume (nnU-Net crops volumes to the brain's
    bounding box, so the volume centre is the brain centre), shifted by up to `jitter` voxels."""
    jitter = [jitter] * len(shape) if isinstance(jitter, int) else list(jitter)
    lbs = []
    for s, p, j in zip(shape, patch, jitter):
        lb = (int(s) - int(p)) // 2
        if j > 0:  # nnU-Net seeds np.random per data-loading worker
            lb += int(rng.integers(-j, j + 1)) if rng is not None else int(np.random.randint(-j, j + 1))
        lbs.append(lb)
    return lbs, [lb + int(p) for lb, p in zip(lbs, patch)]


def crop_or_pad(data: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """(C, *spatial) -> (C, *patch): centred crop, zero padding where the volume is smaller."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    lbs, ubs = centred_bbox(data.shape[1:], patch)
    return crop_and_pad_nd(data, [[lb, ub] for lb, ub in zip(lbs, ubs)], 0)


def image_level_outputs(task) -> int:
    """Network outputs of an image-level task: one logit per class, or one value."""
    if task.kind == CLASSIFICATION:
        return max(2, task.num_classes)
    if task.kind == REGRESSION:
        return 1
    raise ValueError(f"{task.key} ({task.name}) is a {task.kind} task, not classification or regression")


def task_from_plans(plans: Mapping):
    """The FOMO task that `fomo-nnunet plan transfer` recorded in the plans."""
    fomo = plans.get("fomo") or {}
    if "task" not in fomo:
        raise ValueError(f"plans '{plans.get('plans_name')}' do not name a FOMO task: write them with "
                         f"`fomo-nnunet plan transfer` (image-level trainers need the task's kind and classes)")
    return get_task(fomo["task"])


def decode_outputs(outputs, kind: str, target_stats=None) -> np.ndarray:
    """Network outputs (B, K) -> class probabilities (B, K) or values in the task's unit (B,)."""
    outputs = outputs.float()
    if kind == CLASSIFICATION:
        return torch.softmax(outputs, 1).cpu().numpy()
    values = outputs[:, 0]
    if target_stats is not None:
        values = values * target_stats[1] + target_stats[0]
    return values.cpu().numpy()


def validation_score(kind: str, predictions: np.ndarray, targets: np.ndarray) -> tuple[str, float, float]:
    """(metric name, value, score where higher is better) of the task's own metric.

    AUROC (macro one-vs-rest beyond two classes) for classification, MAE for regression. An AUROC
    that is undefined (one class only among the validation cases) is NaN.
    """
    from sklearn.metrics import roc_auc_score

    if kind == CLASSIFICATION:
        y = targets.astype(int)
        if len(np.unique(y)) < 2:
            return "auroc", float("nan"), float("nan")
        if predictions.shape[1] == 2:
            auc = roc_auc_score(y, predictions[:, 1])
        else:
            present = np.unique(y)
            p = predictions[:, present] / np.clip(predictions[:, present].sum(1, keepdims=True), 1e-8, None)
            auc = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present) if len(present) > 2 \
                else roc_auc_score(y == present[1], p[:, 1])
        return "auroc", float(auc), float(auc)
    mae = float(np.mean(np.abs(predictions - targets)))
    return "mae", mae, -mae


def without_spatial_augmentation(transforms):
    """nnU-Net's training transforms (a ComposeTransforms) with its SpatialTransform reduced to the crop
    (no rotation, scaling or elastic deformation); the intensity transforms (noise, blur, brightness,
    contrast, low resolution, gamma) stay as nnU-Net draws them. Changes `transforms` and returns it."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    spatial = [t for t in transforms.transforms if isinstance(t, SpatialTransform)]
    if len(spatial) != 1:
        raise TypeError(f"expected nnU-Net's training transforms with one SpatialTransform, found {len(spatial)}")
    spatial[0].p_rotation = spatial[0].p_scaling = spatial[0].p_elastic_deform = 0.0
    return transforms


class ImageLevelDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader for image-level tasks: crops centred on the (brain-cropped) volume with a
    random shift of up to `jitter` voxels, never on a label map's foreground; draws classes equally
    often with `balance`; adds `batch['fomo_target']`, the target of each case in `batch['keys']`."""

    def __init__(self, data, batch_size, patch_size, final_patch_size, label_manager,
                 targets: Mapping[str, float], balance: bool = False, jitter=0, transforms=None):
        missing = [k for k in data.identifiers if k not in targets]
        if missing:
            raise TargetError(f"no target for case(s) {', '.join(missing[:5])}")
        probs = class_balanced_probabilities(data.identifiers, targets) if balance else None
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=probs, transforms=transforms)
        self.targets = dict(targets)
        self.jitter = jitter

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        return centred_bbox(data_shape, self.patch_size, self.jitter)

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch["fomo_target"] = torch.tensor([self.targets[k] for k in batch["keys"]], dtype=torch.float32)
        return batch


# ---- what the image-level trainers do with these pieces ------------------------------------------------
def training_crop_transforms(trainer, augment: bool | str, patch, rotation, dummy_2d, mirror_axes,
                             initial_patch, common: dict):
    """(training transforms, the loader's initial patch) for `augment` (fomo_nnunet.training.recipes.AUGMENTS),
    from nnU-Net's transforms of `trainer`: True nnU-Net's augmentation; "intensity" its intensity transforms
    only (crops cut at the patch size, no mirroring); False none (as nnU-Net's NoDA variant)."""
    norm_mask = trainer.configuration_manager.use_mask_for_norm
    if augment == "intensity":
        transforms = without_spatial_augmentation(trainer.get_training_transforms(
            patch, rotation, None, (), dummy_2d, use_mask_for_norm=norm_mask, **common))
        trainer.print_to_log_file("training crops get nnU-Net's intensity augmentation only (augment = 'intensity')")
        return transforms, patch
    if augment:
        return trainer.get_training_transforms(patch, rotation, None, mirror_axes, dummy_2d,
                                               use_mask_for_norm=norm_mask, **common), initial_patch
    trainer.print_to_log_file("training crops are not augmented (augment = False)")
    return trainer.get_validation_transforms(None, **common), patch


def centred_crop(data, patch: Sequence[int]) -> torch.Tensor:
    """(1, C, *patch): a preprocessed case's centred crop (zero-padded where smaller), on the CPU."""
    return torch.from_numpy(crop_or_pad(np.asarray(data), patch)[None]).float()


def score_rows(rows: Sequence[tuple], kind: str) -> tuple[str, float, float]:
    """validation_score of (case, prediction, target) rows; a classifier's prediction is the probability of class 1
    (binary) or the list of class probabilities."""
    preds = np.array([r[1] for r in rows], dtype=float)
    if kind == CLASSIFICATION and preds.ndim == 1:
        preds = np.stack([1 - preds, preds], 1)
    return validation_score(kind, preds, np.array([r[2] for r in rows], dtype=float))


def write_centred_crop_validation(folder: str | os.PathLike, rows: Sequence[tuple], kind: str) -> tuple[str, float]:
    """predictions.csv (case_id, prediction, target) and summary.json (the task's metric) in `folder` from
    `rows` of (case, prediction, target); returns (metric name, value)."""
    import csv

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "prediction", "target"])
        for key, p, t in rows:
            w.writerow([key, p if np.ndim(p) == 0 else json.dumps(np.asarray(p).tolist()), t])
    name, value, _ = score_rows(rows, kind)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump({"metric": name, "value": value, "n_cases": len(rows)}, f, indent=1)
    return name, value


def centred_crop_predictions(net, dataset, patch: Sequence[int], device, kind: str, target_stats,
                             targets: Mapping[str, float]) -> list[tuple]:
    """(case, prediction, target) for every case of `dataset` (nnU-Net's), from its centred crop; a binary
    classifier's prediction is the probability of class 1."""
    net.eval()
    rows = []
    for key in dataset.identifiers:
        x = centred_crop(dataset.load_case(key)[0], patch)
        with torch.no_grad():
            out = decode_outputs(net(x.to(device)), kind, target_stats)[0]
        rows.append((key, float(out[1]) if kind == CLASSIFICATION and out.shape[0] == 2 else out, targets[key]))
    return rows


def standardise_head_inputs(net, crops) -> str:
    """Set the pooling head's input statistics of `net` (an EncoderClassifier) from the pooled features of
    `crops` (an iterable of (1, C, *patch) tensors on the network's device); returns the log line."""
    was_training = net.training
    net.eval()
    pooled = []
    with torch.no_grad():
        for x in crops:
            pooled.append(net.head.pool(net.stage_features(x)).cpu())
    net.train(was_training)
    summary = net.head.set_input_statistics(torch.cat(pooled))
    return (f"head inputs standardised over the centred crops of {summary['cases']} training cases: median sd "
            f"{summary['median_sd']:.4g} per pooled feature, {summary['floored']} of {net.head.in_features} raised "
            "to 1 % of it (standardise_head_inputs)")
