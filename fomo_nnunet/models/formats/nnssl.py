"""nnssl checkpoints (github.com/MIC-DKFZ/nnssl; the OpenMind models): the adaptation plan and the
ResEnc U-Net.

An nnssl trainer saves nnU-Net's checkpoint dict (`network_weights`, `current_epoch`, `trainer_name`,
...) plus `nnssl_adaptation_plan`: the architecture (`architecture_plans.arch_class_name`: `ResEncL`,
`NoSkipResEncL`, `PrimusS/B/M/L`, or `ResidualEncoderUNet` / `PlainConvUNet` with their `arch_kwargs`),
the pretraining plan (per configuration: spacing, patch size, normalisation schemes, use_mask_for_norm),
the pretraining input channels, the recommended downstream patch, and where encoder and stem sit in the
state dict (`key_to_encoder`, `key_to_stem`, `keys_to_in_proj`, `key_to_lpe`).

nnssl builds ResEnc-L with dynamic-network-architectures' ResidualEncoderUNet itself (features
32-64-128-256-320-320, blocks 1-3-4-6-6-6, kernel 3, stride 2, conv bias), so its tensors carry our
target network's own names.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fomo_nnunet.models.formats.common import (InexactArchitectureError, Recognised, Setting, conv_kwargs, count,
                                               cubic_patch, residual_encoder)
from fomo_nnunet.models.transfer import CheckpointError

ADAPTATION_KEY = "nnssl_adaptation_plan"
STEM = "encoder.stem.convs.0.conv.weight"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
# nnssl architectures/architecture_registry.py get_res_enc_l (NoSkipResEncL: the same encoder)
RESENC_L = {"features_per_stage": [32, 64, 128, 256, 320, 320], "n_blocks_per_stage": [1, 3, 4, 6, 6, 6]}
# the normalisation schemes nnU-Net finds by name (nnssl's schemes carry the same names)
NNUNET_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")

_EXACT = ("identical: nnssl builds its ResEnc U-Net with dynamic-network-architectures' ResidualEncoderUNet "
          "(nnssl architectures/architecture_registry.py), the class our plans name; every tensor keeps its name")
_NO_SKIP = ("nnssl's NoSkipResEncL decoder has no skip connections (its convolutions take C input channels, not "
            "2C, and its output layer is one 'seg_layer'); the dynamic-network-architectures decoder concatenates "
            "the encoder's skips, so none of its tensors has an equivalent: the finetuning decoder starts fresh")


def check_adaptation_plan(plan: Any, path: Path) -> dict[str, Any]:
    """The adaptation plan as a dict, after checking the entries the import reads."""
    if not isinstance(plan, Mapping):
        raise CheckpointError(f"{path}: {ADAPTATION_KEY!r} is a {type(plan).__name__}, not a dict")
    missing = [k for k in ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels") if k not in plan]
    arch = plan.get("architecture_plans")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("arch_class_name"), str):
        missing.append("architecture_plans.arch_class_name")
    configurations = (plan.get("pretrain_plan") or {}).get("configurations") if isinstance(
        plan.get("pretrain_plan"), Mapping) else None
    if not isinstance(configurations, Mapping) or not configurations:
        missing.append("pretrain_plan.configurations")
    if missing:
        raise CheckpointError(f"{path}: the nnssl adaptation plan lacks {', '.join(dict.fromkeys(missing))}")
    return dict(plan)


def pretrain_configuration(plan: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(name, settings) of the pretraining configuration (nnssl plans hold the one the run used)."""
    name, config = next(iter(plan["pretrain_plan"]["configurations"].items()))
    return str(name), config if isinstance(config, Mapping) else {}


def _decoder(t: Mapping[str, torch.Tensor], n_stages: int) -> tuple[bool, int | None, list[int], bool]:
    """(has a decoder, stride from the transposed convolutions, convolutions per stage, takes skips)."""
    n_up = count(t, "decoder.transpconvs.{}.weight")
    if n_up != n_stages - 1 or n_up == 0:
        return False, None, [1] * (n_stages - 1), False
    stride = int(t["decoder.transpconvs.0.weight"].shape[2])
    convs = [count(t, f"decoder.stages.{s}.convs.{{}}.conv.weight") for s in range(n_up)]
    first = t["decoder.stages.0.convs.0.conv.weight"]
    return True, stride, convs, first.shape[1] == 2 * first.shape[0]


def _check_plan_kwargs(arch_kwargs: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse where the adaptation plan's ResidualEncoderUNet arguments contradict the tensors."""
    for key in ("features_per_stage", "n_blocks_per_stage", "conv_bias"):
        if key in arch_kwargs and arch_kwargs[key] is not None and arch_kwargs[key] != kwargs[key]:
            raise InexactArchitectureError(f"the adaptation plan's {key} {arch_kwargs[key]} contradicts the "
                                           f"tensors' {kwargs[key]}")


def recognise_resenc(t: Mapping[str, torch.Tensor], plan: Mapping[str, Any]) -> Recognised:
    """An nnssl ResEnc U-Net (ResEncL, NoSkipResEncL, or a ResidualEncoderUNet with its arguments in the
    plan) -> dynamic-network-architectures' ResidualEncoderUNet, tensor for tensor."""
    w, kernel, features, blocks = residual_encoder(t, STEM, "encoder.stem.convs.0.norm.weight")
    n_stages = len(features)
    has_decoder, stride, convs_dec, skips = _decoder(t, n_stages)
    name = plan["architecture_plans"]["arch_class_name"]
    arch_kwargs = plan["architecture_plans"].get("arch_kwargs") or {}
    assumptions: list[str] = []
    if stride is None:
        stride = 2
        assumptions.append("no decoder in the checkpoint: stride 2 assumed (nnssl's ResEnc-L)")
    kwargs = conv_kwargs(n_stages, kernel, stride, "encoder.stem.convs.0.conv.bias" in t)
    kwargs.update({"features_per_stage": features, "n_blocks_per_stage": blocks,
                   "n_conv_per_stage_decoder": convs_dec})
    if arch_kwargs:   # a ResidualEncoderUNet planned by nnssl: its strides and kernels may be anisotropic
        _check_plan_kwargs(arch_kwargs, kwargs)
        kwargs.update({k: [list(map(int, v)) for v in arch_kwargs[k]] for k in ("kernel_sizes", "strides")
                       if isinstance(arch_kwargs.get(k), list)})
    elif name in ("ResEncL", "NoSkipResEncL") and {k: kwargs[k] for k in RESENC_L} != RESENC_L:
        assumptions.append(f"the adaptation plan names {name}, whose widths are 32-64-128-256-320-320 with blocks "
                           f"1-3-4-6-6-6; the tensors have {features} and {blocks}: the tensors decide")
    architecture = (f"{name} (nnssl, dynamic-network-architectures ResidualEncoderUNet: features "
                    f"{'-'.join(map(str, features))}, blocks {'-'.join(map(str, blocks))}, kernel {kernel}, "
                    + (f"decoder {'with' if skips else 'without'} skip connections)" if has_decoder else
                       "no decoder in the checkpoint)"))
    decoder_reason = "" if skips else (_NO_SKIP if has_decoder or "decoder.seg_layer.weight" in t
                                       else "no decoder in the checkpoint")

    def target_of(source: str) -> str | None:
        if source.startswith("encoder.") or (skips and source.startswith("decoder.")):
            return source
        return None

    return Recognised("nnssl", architecture, RESENC_UNET, kwargs, int(w.shape[1]), target_of, ("decoder.",),
                      has_decoder and skips, decoder_reason, [_EXACT], assumptions)


def _normalization(config: Mapping[str, Any], channels: int) -> Setting:
    schemes = config.get("normalization_schemes")
    if not isinstance(schemes, list) or not schemes or not all(isinstance(s, str) for s in schemes):
        return Setting(["ZScoreNormalization"] * channels, "not recorded; ZScoreNormalization, nnssl's default")
    unknown = [s for s in schemes if s not in NNUNET_SCHEMES]
    if unknown:
        raise CheckpointError(f"the nnssl pretraining normalised with {unknown}, which nnU-Net 2.8 has no scheme "
                              f"for; expected one of {', '.join(NNUNET_SCHEMES)}")
    return Setting(list(schemes), "adaptation plan: pretrain_plan normalization_schemes")


def _mask_settings(trainer: str, patch_embed: int | None) -> tuple[Setting, Setting]:
    """Masking of the pretraining: not in the checkpoint; nnssl's MAE trainers' defaults by trainer name."""
    if patch_embed:   # EvaMAE trainers drop tokens of the ViT patch size
        why = f"not recorded; nnssl {trainer or 'BaseEvaMAETrainer'}: mask_percentage 0.75 of the ViT patches"
        return Setting(0.75, why), Setting(int(patch_embed), "the ViT patch size (tokens are dropped whole)")
    why = f"not recorded; nnssl {trainer or 'BaseMAETrainer'} default (mask_percentage 0.75, block_size 16)"
    return Setting(0.75, why), Setting(16, why)


def settings(plan: Mapping[str, Any], trainer: str, channels: int, patch: int | None, spacing: float | None,
             patch_embed: int | None = None) -> dict[str, Setting]:
    """Patch, spacing, normalisation and masking of an nnssl pretraining, and where each came from."""
    name, config = pretrain_configuration(plan)
    s: dict[str, Setting] = {}
    recorded = cubic_patch(config.get("patch_size"))
    recommended = cubic_patch(plan.get("recommended_downstream_patchsize"))
    if patch:
        s["patch_size"] = Setting([int(patch)] * 3, "--patch")
    elif recorded:
        s["patch_size"] = Setting(recorded, f"adaptation plan: pretrain_plan configuration {name!r} patch_size")
    elif recommended:
        s["patch_size"] = Setting(recommended, "adaptation plan: recommended_downstream_patchsize")
    else:
        s["patch_size"] = Setting([160] * 3, "not recorded; 160^3, nnssl's MAE pretraining patch")
    recorded_spacing = config.get("spacing")
    if spacing:
        s["spacing"] = Setting([float(spacing)] * 3, "--spacing")
    elif isinstance(recorded_spacing, list | tuple) and len(recorded_spacing) == 3 and all(
            isinstance(v, int | float) for v in recorded_spacing):
        s["spacing"] = Setting([float(v) for v in recorded_spacing],
                               f"adaptation plan: pretrain_plan configuration {name!r} spacing")
    else:
        s["spacing"] = Setting([1.0] * 3, f"not recorded (spacing_style {config.get('spacing_style')!r}: no fixed "
                                          f"target spacing); 1 mm assumed, say --spacing if you know better")
    s["normalization"] = _normalization(config, channels)
    use_mask = config.get("use_mask_for_norm")
    if isinstance(use_mask, bool):
        use_mask = [use_mask] * channels
    s["use_mask_for_norm"] = Setting([bool(v) for v in use_mask], "adaptation plan: use_mask_for_norm") \
        if isinstance(use_mask, list) and use_mask else Setting([False] * channels, "not recorded; False")
    s["mask_ratio"], s["mask_unit"] = _mask_settings(trainer, patch_embed)
    return s


def adaptation_plan(network_class: str, network_kwargs: Mapping[str, Any], patch: list[int], spacing: list[float],
                    normalization: list[str], use_mask_for_norm: list[bool], channels: int,
                    dataset_name: str, plans_name: str) -> dict[str, Any]:
    """An nnssl adaptation plan describing our ResidualEncoderUNet (arch_class_name ResidualEncoderUNet with
    its arguments, as nnssl's DynamicArchitecturePlans serialises them)."""
    if network_class != RESENC_UNET:
        raise CheckpointError(f"nnssl export writes ResidualEncoderUNet checkpoints; this one is {network_class}")
    fields = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage",
              "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
              "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
    arch_kwargs = {k: network_kwargs.get(k) for k in fields}
    requires_import = [k for k in ("conv_op", "norm_op", "dropout_op", "nonlin") if isinstance(arch_kwargs[k], str)]
    configuration = {"data_identifier": f"{plans_name or 'fomoPlans'}_3d_fullres",
                     "preprocessor_name": "DefaultPreprocessor", "spacing_style": "onemmiso" if spacing == [1.0] * 3
                     else "median", "normalization_schemes": list(normalization),
                     "use_mask_for_norm": list(use_mask_for_norm),
                     "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                     "resampling_fn_mask": "resample_data_or_seg_to_shape",
                     "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                     "spacing": list(spacing), "patch_size": list(patch)}
    return {"architecture_plans": {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": arch_kwargs,
                                   "arch_kwargs_requiring_import": requires_import},
            "pretrain_plan": {"dataset_name": dataset_name or "fomo_nnunet", "plans_name": plans_name or "fomoPlans",
                              "original_median_spacing_after_transp": list(spacing),
                              "image_reader_writer": "NibabelReaderWriter", "transpose_forward": [0, 1, 2],
                              "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": configuration},
                              "experiment_planner_used": "fomo_nnunet"},
            "pretrain_num_input_channels": channels, "recommended_downstream_patchsize": list(patch),
            "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
            "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
            "key_to_lpe": None}


def is_dna_layout(t: Mapping[str, torch.Tensor]) -> bool:
    return STEM in t

