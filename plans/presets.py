"""Foundation-model architecture presets (no heavy imports: the CLI's --help reads this table)."""
from __future__ import annotations

from dataclasses import dataclass

PRETRAIN_PLANS_NAME = "fomoPretrainPlans"
CONFIGURATION = "3d_fullres"

RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


@dataclass(frozen=True)
class ArchPreset:
    """A foundation-model architecture: widths and depths per resolution stage."""

    name: str
    network_class: str
    features_per_stage: tuple[int, ...]
    blocks_per_stage: tuple[int, ...]          # residual blocks (ResEnc) or convs (plain) per encoder stage
    convs_per_stage_decoder: tuple[int, ...]
    default_patch: int
    default_spacing: float
    default_batch_size: int
    description: str

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)


ARCH_PRESETS: dict[str, ArchPreset] = {p.name: p for p in (
    ArchPreset("resenc_b", RESENC_UNET, (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6), (1, 1, 1, 1, 1),
               160, 1.0, 2, "ResEnc U-Net B of the FOMO26 organisers (102M parameters)"),
    # nnU-Net's ResEnc-L shares ResEnc-M's topology and differs by its memory target: a larger batch.
    ArchPreset("resenc_l", RESENC_UNET, (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6), (1, 1, 1, 1, 1),
               160, 1.0, 4, "nnU-Net ResEnc-L as used by nnssl: same topology, 24 GB target, so batch 4 at 160^3 (102M parameters)"),
    ArchPreset("unet_b", PLAIN_UNET, (32, 64, 128, 256, 320, 320), (2, 2, 2, 2, 2, 2), (2, 2, 2, 2, 2),
               160, 1.0, 2, "plain-convolution U-Net B (AMAES-style, 31M parameters)"),
    # weights under 16 MB (float32): a checkpoint small enough to come back from a lent GPU (docs/gpu.md)
    ArchPreset("resenc_s", RESENC_UNET, (16, 32, 48, 64, 96, 96), (1, 2, 2, 2, 2, 2), (1, 1, 1, 1, 1),
               160, 1.0, 2, "mid-size ResEnc U-Net for short GPU pretraining runs (3.8M parameters)"),
    ArchPreset("tiny", RESENC_UNET, (8, 16, 32, 64), (1, 1, 1, 1), (1, 1, 1),
               32, 4.0, 2, "CPU-sized network for tests and the demo (0.3M parameters)"),
)}


def conv_block_kwargs(conv_bias: bool = True) -> dict:
    """The layer arguments every network here shares, as plans write them: 3-D convolutions, affine
    instance norm, LeakyReLU, no dropout (nnU-Net's defaults)."""
    return {
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "conv_bias": conv_bias,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def architecture_dict(preset: ArchPreset, patch_size: tuple[int, ...], spacing: tuple[float, ...]) -> dict:
    """The plans' 'architecture' entry for a preset at a patch and spacing.

    Kernel sizes and strides follow nnU-Net's topology rule for the spacing, but the number of
    stages is the preset's: the patch must be divisible by 2**(n_stages-1) on every axis.
    """
    # nnU-Net's planning code, imported here: the CLI's --help reads this module and stays light
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, strides, kernels, _, must_divide = get_pool_and_conv_props(
        list(spacing), list(patch_size), 4, preset.n_stages - 1)
    strides = [list(s) for s in strides]
    if len(strides) != preset.n_stages:
        raise ValueError(
            f"patch {tuple(patch_size)} at spacing {tuple(spacing)} allows only {len(strides)} resolution stages, "
            f"preset '{preset.name}' needs {preset.n_stages}: use a larger --patch "
            f"(a multiple of {2 ** (preset.n_stages - 1)} of at least {4 * 2 ** (preset.n_stages - 1)} per axis)")
    kwargs = {
        "n_stages": preset.n_stages,
        "features_per_stage": list(preset.features_per_stage),
        "kernel_sizes": [list(k) for k in kernels],
        "strides": strides,
        "n_conv_per_stage_decoder": list(preset.convs_per_stage_decoder),
        **conv_block_kwargs(conv_bias=True),
    }
    if preset.network_class == RESENC_UNET:
        kwargs["n_blocks_per_stage"] = list(preset.blocks_per_stage)
    else:
        kwargs["n_conv_per_stage"] = list(preset.blocks_per_stage)
    return {"network_class_name": preset.network_class, "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
