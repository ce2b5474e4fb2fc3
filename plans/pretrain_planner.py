"""Pretraining plans: a fixed foundation-model architecture, patch and spacing in a standard plans file.

nnU-Net's default planner sizes the network to the dataset; for a foundation model we want the
opposite: one architecture chosen up front (a preset), one patch and one spacing, so that every
downstream task can load every weight. The plans file names only classes nnU-Net resolves
(DefaultPreprocessor, ZScoreNormalization, dynamic_network_architectures networks), so
`nnUNetv2_preprocess -plans_name fomoPretrainPlans` and `nnUNetv2_train -p fomoPretrainPlans`
work unchanged.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed

from fomo_nnunet.plans.presets import ARCH_PRESETS, CONFIGURATION, PRETRAIN_PLANS_NAME, ArchPreset, architecture_dict


def check_patch(preset: ArchPreset, patch_size: tuple[int, ...]) -> None:
    factor = 2 ** (preset.n_stages - 1)
    bad = [p for p in patch_size if p % factor or p < 4 * factor]
    if bad:
        raise ValueError(f"--patch {tuple(patch_size)}: every axis must be a multiple of {factor} and at least "
                         f"{4 * factor} for preset '{preset.name}' ({preset.n_stages} stages)")


class FomoPretrainPlanner(ExperimentPlanner):
    """Writes a plans file with one 3d_fullres configuration of a fixed preset architecture."""

    def __init__(self, dataset_name_or_id: str | int, preset: ArchPreset, patch_size: tuple[int, int, int],
                 spacing: tuple[float, float, float], batch_size: int, plans_name: str = PRETRAIN_PLANS_NAME):
        super().__init__(dataset_name_or_id, plans_name=plans_name, suppress_transpose=True)
        check_patch(preset, patch_size)
        self.preset = preset
        self.patch_size = tuple(int(p) for p in patch_size)
        self.target_spacing = tuple(float(s) for s in spacing)
        self.batch_size = int(batch_size)

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        # Z-score per scan, over the scan's non-zero region: skull-stripped and non-stripped scans
        # then share one intensity scale inside the head, and the background stays at zero.
        n = len(self.dataset_json["channel_names"])
        return ["ZScoreNormalization"] * n, [True] * n

    def plan_experiment(self) -> dict:
        spacing = np.array(self.target_spacing)
        resampling_data, resampling_data_kwargs, resampling_seg, resampling_seg_kwargs = self.determine_resampling()
        resampling_softmax, resampling_softmax_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization, use_mask = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        shapes = [np.array(s) * np.array(sp) / spacing for s, sp in
                  zip(self.dataset_fingerprint["shapes_after_crop"], self.dataset_fingerprint["spacings"])]
        median_shape = np.median(shapes, 0)
        configuration = {
            "data_identifier": self.generate_data_identifier(CONFIGURATION),
            "preprocessor_name": self.preprocessor_name,
            "batch_size": self.batch_size,
            "patch_size": list(self.patch_size),
            "median_image_size_in_voxels": [float(i) for i in median_shape],
            "spacing": list(self.target_spacing),
            "normalization_schemes": normalization,
            "use_mask_for_norm": use_mask,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": resampling_data_kwargs,
            "resampling_fn_seg_kwargs": resampling_seg_kwargs,
            "resampling_fn_probabilities": resampling_softmax.__name__,
            "resampling_fn_probabilities_kwargs": resampling_softmax_kwargs,
            "architecture": architecture_dict(self.preset, self.patch_size, self.target_spacing),
            "batch_dice": False,
        }
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(i) for i in np.median(self.dataset_fingerprint["spacings"], 0)],
            "original_median_shape_after_transp": [int(round(i)) for i in
                                                   np.median(self.dataset_fingerprint["shapes_after_crop"], 0)],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                self.dataset_fingerprint["foreground_intensity_properties_per_channel"],
            "fomo": {"role": "pretraining", "arch_preset": self.preset.name},
        }
        os.makedirs(os.path.join(nnUNet_preprocessed, self.dataset_name), exist_ok=True)
        self.plans = plans
        self.save_plans(plans)
        return plans


def plan_pretrain(dataset_id: int, arch: str = "resenc_b", patch: int | None = None,
                  spacing: float | None = None, batch_size: int | None = None,
                  plans_name: str = PRETRAIN_PLANS_NAME, num_processes: int = 2,
                  verify_dataset_integrity: bool = False) -> dict:
    """Extract nnU-Net's fingerprint when missing, then write the pretraining plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if arch not in ARCH_PRESETS:
        raise ValueError(f"--arch {arch!r} is not a preset; choose from {', '.join(ARCH_PRESETS)}")
    preset = ARCH_PRESETS[arch]
    name = maybe_convert_to_dataset_name(int(dataset_id))
    fingerprint = os.path.join(os.environ["nnUNet_preprocessed"], name, "dataset_fingerprint.json")
    if not os.path.isfile(fingerprint):
        extract_fingerprints([int(dataset_id)], num_processes=num_processes,
                             check_dataset_integrity=verify_dataset_integrity)
    patch = patch or preset.default_patch
    spacing = spacing or preset.default_spacing
    planner = FomoPretrainPlanner(int(dataset_id), preset, (patch,) * 3, (float(spacing),) * 3,
                                  batch_size or preset.default_batch_size, plans_name)
    plans = planner.plan_experiment()
    # nnU-Net's preprocessing reads dataset.json from the preprocessed folder, where its own planning leaves it
    shutil.copy(os.path.join(planner.raw_dataset_folder, "dataset.json"),
                os.path.join(nnUNet_preprocessed, planner.dataset_name, "dataset.json"))
    return plans
