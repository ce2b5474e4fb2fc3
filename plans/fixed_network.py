"""What the pretraining and the transfer planner share: one 3d_fullres configuration whose network,
patch and spacing are given instead of derived from the dataset.

nnU-Net's `ExperimentPlanner` sizes a network to each dataset. A foundation model fixes the network
once, so both of our planners keep nnU-Net's choices for everything else (resampling functions,
preprocessor, reader/writer, the fingerprint's intensity statistics) and write the same standard
plans file that `nnUNetv2_preprocess -plans_name` and `nnUNetv2_train -p` read.

Both also extract nnU-Net's dataset fingerprint through `FomoFingerprintExtractor`, which bounds the
foreground intensity samples per case (below).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed

from fomo_nnunet.plans.presets import CONFIGURATION

# nnU-Net draws 1e8 foreground intensities per channel for the whole dataset, 1e8 / cases from each case, with
# replacement. A few-shot task of 8 cases then draws 12.5 million values per channel from each case's foreground
# (about 1.5 million voxels for a brain at 1 mm, 14,000 at 4 mm), and planning spends seconds per channel and case
# drawing, pickling and sorting copies of the same voxels. From 1000 cases up the bound below changes nothing.
MAX_INTENSITY_SAMPLES_PER_CASE = 100_000


class FomoFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's fingerprint extractor with at most MAX_INTENSITY_SAMPLES_PER_CASE foreground intensities
    drawn per case and channel. Every case still contributes equally; the shapes, spacings and crop sizes are
    nnU-Net's. The intensity statistics are estimates from the drawn samples either way; they normalise CT
    channels only (MRI channels use per-image z-scores)."""

    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        self.num_foreground_voxels_for_intensitystats = min(self.num_foreground_voxels_for_intensitystats,
                                                            MAX_INTENSITY_SAMPLES_PER_CASE * len(self.dataset))


def extract_fingerprint_if_missing(dataset_id: int, num_processes: int, check_dataset_integrity: bool = False) -> None:
    """Extract and save the dataset's fingerprint (nnUNet_preprocessed/NAME/dataset_fingerprint.json) unless
    it is there already."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(int(dataset_id))
    if not os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], name, "dataset_fingerprint.json")):
        extract_fingerprint_dataset(int(dataset_id), FomoFingerprintExtractor, num_processes, check_dataset_integrity)


class FixedNetworkPlanner(ExperimentPlanner):
    """An nnU-Net planner for one 3d_fullres configuration with a given network, patch and spacing."""

    def median_shape_at_spacing(self, spacing) -> np.ndarray:
        """The dataset's median image shape in voxels once resampled to `spacing`."""
        spacing = np.asarray(spacing, dtype=float)
        shapes = [np.array(s) * np.array(sp) / spacing for s, sp in
                  zip(self.dataset_fingerprint["shapes_after_crop"], self.dataset_fingerprint["spacings"])]
        return np.median(shapes, 0)

    def fullres_configuration(self, data_identifier: str, batch_size: int, patch, median_shape, spacing,
                              architecture: dict) -> dict:
        """The 3d_fullres entry: the given network, patch, spacing and batch; nnU-Net's resampling."""
        resampling_data, rd_kwargs, resampling_seg, rs_kwargs = self.determine_resampling()
        resampling_softmax, rsm_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization, use_mask = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        return {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": int(batch_size),
            "patch_size": [int(p) for p in patch],
            "median_image_size_in_voxels": [float(i) for i in median_shape],
            "spacing": [float(s) for s in spacing],
            "normalization_schemes": normalization,
            "use_mask_for_norm": use_mask,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": rd_kwargs,
            "resampling_fn_seg_kwargs": rs_kwargs,
            "resampling_fn_probabilities": resampling_softmax.__name__,
            "resampling_fn_probabilities_kwargs": rsm_kwargs,
            "architecture": architecture,
            "batch_dice": False,
        }

    def save_fixed_plans(self, configuration: dict, fomo: dict) -> dict:
        """Wrap the configuration in a standard plans file (with our `fomo` entry), save and return it."""
        fingerprint = self.dataset_fingerprint
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(i) for i in np.median(fingerprint["spacings"], 0)],
            "original_median_shape_after_transp": [int(round(i)) for i in
                                                   np.median(fingerprint["shapes_after_crop"], 0)],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
            "fomo": fomo,
        }
        os.makedirs(os.path.join(nnUNet_preprocessed, self.dataset_name), exist_ok=True)
        self.plans = plans
        self.save_plans(plans)
        return plans


def copy_beside_plans(raw_folder: str, dataset_name: str, names: tuple[str, ...]) -> list[str]:
    """Copy `names` that exist in the raw dataset folder into its preprocessed folder: dataset.json,
    which nnU-Net's preprocessing reads there (its own planners copy it), and the files our trainers
    read during training. Returns the names copied."""
    copied = []
    for name in names:
        src = os.path.join(raw_folder, name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(nnUNet_preprocessed, dataset_name, name))
            copied.append(name)
    return copied
