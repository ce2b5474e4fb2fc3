"""Data augmentation for masked-image-modelling pretraining, built from batchgeneratorsv2 transforms.

The reconstruction target is the clean, spatially augmented patch: spatial transforms run first,
the target is copied, and only then are intensity transforms applied, to the input alone. The
preset is lighter than nnU-Net's segmentation default (smaller rotations and scalings, no
simulated low resolution), since the network must reproduce the target, not just label it.

nnU-Net's data loader collects `image` and `segmentation` from each sample; `PackReconstructionTarget`
turns `segmentation` into the list [brain mask, clean image], which the loader batches like deep
supervision targets, so nnU-Net's loader and its multiprocessing run unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform

TARGET_KEY = "reconstruction_target"


class CopyImageAsTarget(BasicTransform):
    """Keep a copy of the (spatially augmented) image as the reconstruction target."""

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict[TARGET_KEY] = data_dict["image"].clone()
        return data_dict


class PackReconstructionTarget(BasicTransform):
    """segmentation -> [brain mask, clean image] so nnU-Net's loader batches both."""

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict["segmentation"] = [data_dict["segmentation"], data_dict.pop(TARGET_KEY)]
        return data_dict


@dataclass(frozen=True)
class PretrainAugmentation:
    """Probabilities and ranges of the pretraining augmentation (lighter than nnU-Net's default)."""

    p_rotation: float = 0.2
    max_rotation_deg: float = 15.0
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.85, 1.15)
    mirror: bool = True
    p_noise: float = 0.1
    p_blur: float = 0.1
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    p_gamma: float = 0.1


def training_transforms(patch_size: tuple[int, ...], aug: PretrainAugmentation,
                        mask_channels: list[int]) -> ComposeTransforms:
    """The pretraining pipeline; `mask_channels`: channels normalised inside the non-zero mask."""
    rot = np.deg2rad(aug.max_rotation_deg)
    rotation: RandomScalar = (-rot, rot)
    t: list[BasicTransform] = [
        SpatialTransform(patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=aug.p_rotation, rotation=rotation, p_scaling=aug.p_scaling,
                         scaling=aug.scaling, p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                         border_mode_seg="constant", padding_value_seg=-1),
    ]
    if aug.mirror:
        t.append(MirrorTransform(allowed_axes=(0, 1, 2)))
    t.append(CopyImageAsTarget())
    t += [
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.05), p_per_channel=1,
                                               synchronize_channels=True), apply_probability=aug.p_noise),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=True),
                        apply_probability=aug.p_blur),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.8, 1.2)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=aug.p_brightness),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.8, 1.2)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=aug.p_contrast),
        RandomTransform(GammaTransform(gamma=BGContrast((0.8, 1.25)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=aug.p_gamma),
    ]
    t += _finishing_transforms(mask_channels)
    return ComposeTransforms(t)


def validation_transforms(mask_channels: list[int]) -> ComposeTransforms:
    """No augmentation: the target is the input patch itself."""
    return ComposeTransforms([CopyImageAsTarget(), *_finishing_transforms(mask_channels)])


def _finishing_transforms(mask_channels: list[int]) -> list[BasicTransform]:
    t: list[BasicTransform] = []
    if mask_channels:
        t.append(MaskImageTransform(apply_to_channels=mask_channels, channel_idx_in_seg=0, set_outside_to=0))
    t += [RemoveLabelTransform(-1, 0), PackReconstructionTarget()]
    return t


def unpack_target(target: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(brain mask as bool, clean image) from a batch's target list."""
    seg, clean = target
    return seg > 0, clean
