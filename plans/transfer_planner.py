"""Plans transferred from a pretraining checkpoint to a task dataset (`fomoPlans.json`).

The network (class, widths, depths, kernels, strides), the spacing and the normalisation come from
the checkpoint's metadata, so every pretrained weight has a place to go. The input channels and
output classes come from the task's dataset.json; the patch comes from the pretraining patch,
shrunk to the task's images when they are smaller (segmentation), or grown to cover the median
brain (image-level tasks, whose heads see the whole brain). The plans record the checkpoint.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from fomo_nnunet.models.checkpoints import (CHECKPOINT_PREFERENCE, FINAL_ONLY, file_sha256, find_checkpoint,
                                     metadata_from_preset, read_checkpoint_metadata)
from fomo_nnunet.plans.fixed_network import FixedNetworkPlanner, copy_beside_plans, extract_fingerprint_if_missing
from fomo_nnunet.plans.presets import CONFIGURATION
from fomo_nnunet.tasks import Task, get_task

TRANSFER_PLANS_NAME = "fomoPlans"


def task_of_dataset(dataset_json: dict, dataset_name: str) -> Task:
    """The FOMO task a converted dataset belongs to (dataset.json's 'fomo_task', else its name)."""
    key = dataset_json.get("fomo_task")
    if key is None:
        m = re.match(r"Dataset\d{3}_FOMO(\d)", dataset_name)
        if m is None:
            raise ValueError(f"{dataset_name}: cannot tell which FOMO task it is; dataset.json has no 'fomo_task' "
                             f"and the name is not Dataset<ID>_FOMO<n>...; pass --task")
        key = int(m.group(1))
    return get_task(key)


def shape_divisor(strides: list[list[int]]) -> np.ndarray:
    """Per axis, what a patch must be divisible by for this network's strides."""
    return np.prod(np.array(strides), axis=0).astype(int)


def transfer_patch(pretrain_patch: list[int], median_shape: np.ndarray, divisor: np.ndarray,
                   cover_median: bool) -> list[int]:
    """Segmentation: the pretraining patch, cropped to the median image where that is smaller.
    Image-level: the median image rounded up, so one patch sees the whole brain."""
    fitted = [int(math.ceil(m / d) * d) for m, d in zip(median_shape, divisor)]
    minimum = [int(2 * d) for d in divisor]
    if cover_median:
        return [max(f, mn) for f, mn in zip(fitted, minimum)]
    return [max(min(p, f), mn) for p, f, mn in zip(pretrain_patch, fitted, minimum)]


class FomoTransferPlanner(FixedNetworkPlanner):
    """One 3d_fullres configuration whose network is the pretrained one."""

    def __init__(self, dataset_name_or_id: str | int, metadata: dict, checkpoint: str | None,
                 task: Task | None = None, patch: list[int] | None = None, batch_size: int | None = None,
                 plans_name: str = TRANSFER_PLANS_NAME, data_identifier: str | None = None):
        super().__init__(dataset_name_or_id, plans_name=plans_name, suppress_transpose=True)
        # plans that differ only in their checkpoint (one per pretraining seed) can share preprocessed data,
        # as nnU-Net's ResEnc planners share nnUNetPlans_<configuration>
        self.data_identifier = data_identifier
        self.metadata = metadata
        self.checkpoint = os.path.abspath(checkpoint) if checkpoint else None
        self.task = task or task_of_dataset(self.dataset_json, self.dataset_name)
        self.patch_override = patch
        self.batch_size = batch_size

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        n = len(self.dataset_json["channel_names"])
        scheme = self.metadata["normalization"][0]
        use_mask = bool(self.metadata.get("objective_settings", {}).get("use_mask_for_norm", [True])[0])
        return [scheme] * n, [use_mask] * n

    def _checked_patch(self, median_shape: np.ndarray, divisor: np.ndarray) -> list[int]:
        """--patch, else the transferred patch (`transfer_patch`); refused unless the strides divide it."""
        patch = self.patch_override or transfer_patch(list(self.metadata["patch_size"]), median_shape, divisor,
                                                      cover_median=self.task.has_image_target)
        bad = [p for p, d in zip(patch, divisor) if p % d]
        if bad:
            raise ValueError(f"patch {patch} must be divisible by {divisor.tolist()} (the network's strides)")
        return patch

    def _fullres_configuration(self, arch_kwargs: dict, patch: list[int], median_shape: np.ndarray,
                               spacing: np.ndarray) -> dict:
        """The 3d_fullres configuration: the pretrained network, this patch and spacing."""
        meta = self.metadata
        batch = self.batch_size or int(meta.get("objective_settings", {}).get("batch_size", 2))
        architecture = {"network_class_name": meta["network_class"], "arch_kwargs": arch_kwargs,
                        "_kw_requires_import": list(meta["arch_kwargs_requires_import"])}
        return self.fullres_configuration(self.data_identifier or self.generate_data_identifier(CONFIGURATION),
                                          batch, patch, median_shape, spacing, architecture)

    def _fomo_entry(self) -> dict:
        """The plans' `fomo` entry: the task and the pretrained checkpoint (path and sha256) they derive from."""
        meta = self.metadata
        return {"role": "finetune", "task": self.task.key, "task_kind": self.task.kind,
                "pretrained_checkpoint": self.checkpoint,
                "pretrained_sha256": file_sha256(self.checkpoint) if self.checkpoint else None,
                "pretrained_objective": meta.get("objective"),
                "pretrained_dataset": meta.get("dataset_name")}

    def plan_experiment(self) -> dict:
        """The plans (one 3d_fullres configuration, the pretrained network), saved and returned."""
        spacing = np.array(self.metadata["spacing"], dtype=float)
        arch_kwargs = dict(self.metadata["network_kwargs"])
        divisor = shape_divisor(arch_kwargs["strides"])
        median_shape = self.median_shape_at_spacing(spacing)
        patch = self._checked_patch(median_shape, divisor)
        configuration = self._fullres_configuration(arch_kwargs, patch, median_shape, spacing)
        return self.save_fixed_plans(configuration, self._fomo_entry())


def plan_transfer(dataset_id: int, pretrained: str | None, from_scratch: bool = False, arch: str | None = None,
                  task: str | None = None, patch: int | None = None, batch_size: int | None = None,
                  plans_name: str = TRANSFER_PLANS_NAME, num_processes: int = 2,
                  verify_dataset_integrity: bool = False, data_identifier: str | None = None) -> dict:
    """Extract the task's fingerprint when missing, then write the transferred plans."""
    if pretrained:
        # a results folder must hold a finished pretraining: a checkpoint_best/latest of a running one changes
        # under the finetuning (a file named explicitly is taken as it is)
        checkpoint = find_checkpoint(pretrained, CHECKPOINT_PREFERENCE if from_scratch else FINAL_ONLY)
        metadata = read_checkpoint_metadata(checkpoint)
    elif from_scratch and arch:
        checkpoint, metadata = None, metadata_from_preset(arch)
    else:
        raise ValueError("give --pretrained CHECKPOINT_OR_RESULTS_FOLDER (or --from-scratch with --arch PRESET)")
    if metadata["network_class"].endswith(".primus.Primus"):
        raise ValueError(f"{checkpoint}: a Primus (vision transformer) checkpoint; our finetuning trainers, heads and "
                         f"embeddings read a U-Net encoder's stages, which Primus does not have. Primus checkpoints "
                         f"import exactly (for inspection); finetune the original in its own framework (asparagus; "
                         f"nnU-Net master's PretrainedTrainer_Primusx for nnssl)")
    if from_scratch:
        checkpoint = None
    extract_fingerprint_if_missing(dataset_id, num_processes, verify_dataset_integrity)
    planner = FomoTransferPlanner(int(dataset_id), metadata, checkpoint, get_task(task) if task else None,
                                  [patch] * 3 if patch else None, batch_size, plans_name, data_identifier)
    plans = planner.plan_experiment()
    copy_beside_plans(planner.raw_dataset_folder, planner.dataset_name, TASK_FILES)
    return plans


# image-level targets and case attributes, for training after preprocessing
TASK_FILES = ("dataset.json", "targets.json", "targetsTs.json", "attributes.json")
