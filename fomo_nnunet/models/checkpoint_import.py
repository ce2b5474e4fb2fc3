"""Import published pretrained checkpoints into our self-describing checkpoint format.

Three frameworks are understood, every file read as data only (`load_torch_file_safely`: weights_only):

- `asparagus`: the FOMO26 organisers' framework (github.com/Sllambias/asparagus), whose networks come
  from the gardening-tools package: `ResidualEncoderUNet` (ResEnc-B and its S/L/H/G siblings), `UNet`,
  `Primus`. A Lightning checkpoint (`state_dict` under `model.`, `hyper_parameters`) or a bare state
  dict; the run's Hydra config beside `checkpoints/` gives patch and masking (models.formats.asparagus_config).
- `fomo25-baseline`: the yucca-based FOMO25 baseline codebase and AMAES (github.com/asbjrnmunk/amaes),
  whose `UNet` (U-Net B: 32 filters, U-Net XL: 64) halves the resolution by max-pooling.
- `nnssl`: github.com/MIC-DKFZ/nnssl (the OpenMind models): `checkpoint_final.pth` with its adaptation
  plan; ResEnc-L in dynamic-network-architectures' own names, Primus (models.formats.nnssl, .primus).

The architecture is recognised from the tensors themselves (widths, depths, kernel and stride,
input channels, bias, whether the decoder takes skip connections); the framework from the file, and a
`--format` that contradicts it is refused. Recorded settings (nnssl's adaptation plan, an asparagus run
config, hyper-parameters) fill in what tensors cannot say (patch size, spacing, normalisation, masking),
framework defaults the rest, and the report says which came from where. Every encoder tensor must find
its place in the target network with the same shape, or nothing is written. A decoder is mapped as a
whole or not at all.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fomo_nnunet.models.formats.common import (InexactArchitectureError, Recognised, Setting,
                                               UnknownArchitectureError, conv_kwargs as _conv_kwargs,
                                               residual_encoder,
                                               count as _count, cubic_kernel as _cubic_kernel, cubic_patch,
                                               require_affine_norm as _require_affine_norm)
from fomo_nnunet.models.formats import asparagus_config, nnssl, primus
from fomo_nnunet.models.formats.nnssl import ADAPTATION_KEY
from fomo_nnunet.io.atomic import replacing
from fomo_nnunet.models.transfer import (METADATA_KEY, WEIGHTS_KEY, CheckpointError, PretrainMetadata,
                                  load_torch_file_safely, strip_prefixes)

FORMATS = ("asparagus", "fomo25-baseline", "nnssl")
IMPORT_KEY = "fomo_import"
CHECKPOINT_FILE = "checkpoint_final.pth"
REPORT_JSON = "import_report.json"
REPORT_TEXT = "import_report.md"

RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
MAXPOOL_UNET = "fomo_nnunet.networks.PlainConvUNetMaxPool"
_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
# Added around the network by a LightningModule (`self.model`), torch.compile and DDP.
_WRAPPERS = ("model.", "_orig_mod.", "module.")


# ---- reading ------------------------------------------------------------------------------------
@dataclass
class SourceCheckpoint:
    """The tensors of a published checkpoint (wrapper prefixes stripped, each stored tensor once)."""

    path: Path
    container: str
    tensors: dict[str, torch.Tensor]
    aliases: dict[str, str]                  # another name of a stored tensor -> the name kept
    outside_network: dict[str, torch.Tensor]  # state-dict entries outside the LightningModule's `model`
    hyper_parameters: dict[str, Any]
    epoch: int | None = None
    global_step: int | None = None
    adaptation_plan: dict[str, Any] | None = None   # nnssl's `nnssl_adaptation_plan`
    trainer_name: str = ""
    run_config: dict[str, Any] | None = None        # the asparagus run's Hydra config beside the checkpoint
    run_config_path: str = ""
    fomo_metadata: dict[str, Any] | None = None     # ours, in a file `export-checkpoint` wrote


def _storage_key(t: torch.Tensor) -> tuple:
    """Equal for two names of one stored tensor (empty tensors have no memory to share: never equal)."""
    if t.numel() == 0:
        return ("empty", id(t))
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()


def read_source(path: str | os.PathLike) -> SourceCheckpoint:
    """A published checkpoint's network tensors and recorded hyper-parameters, loaded as data only."""
    path = Path(path)
    obj = load_torch_file_safely(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or a state dict")
    if WEIGHTS_KEY in obj and ADAPTATION_KEY not in obj:
        what = "already one of our checkpoints" if METADATA_KEY in obj else "an nnU-Net checkpoint"
        raise CheckpointError(f"{path} is {what} ({WEIGHTS_KEY!r}), not an organisers' checkpoint; "
                              f"give it to `plan transfer --pretrained` directly")
    hyper: dict[str, Any] = {}
    plan = None
    if ADAPTATION_KEY in obj:
        plan = nnssl.check_adaptation_plan(obj[ADAPTATION_KEY], path)
        if not isinstance(obj.get(WEIGHTS_KEY), Mapping):
            raise CheckpointError(f"{path}: an nnssl checkpoint without {WEIGHTS_KEY!r}")
        state, container = obj[WEIGHTS_KEY], "nnssl checkpoint"
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
        container = "Lightning checkpoint" if "pytorch-lightning_version" in obj else "dict with a 'state_dict'"
        hp = obj.get("hyper_parameters")
        hyper = dict(hp) if isinstance(hp, Mapping) else {}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, container = obj, "state dict"
    else:
        raise CheckpointError(f"{path} holds no network state dict: neither a 'state_dict' entry (Lightning) nor "
                              f"only tensors (found keys {sorted(map(str, obj))[:12]})")
    # A LightningModule keeps the network as `self.model`; anything beside it is not the network.
    in_model = any(str(k).startswith("model.") for k in state)
    outside: dict[str, torch.Tensor] = {}
    groups: dict[tuple, list[str]] = {}
    values: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if in_model and not str(key).startswith("model."):
            outside[str(key)] = value
            continue
        name = strip_prefixes(str(key), _WRAPPERS)
        values[name] = value
        groups.setdefault(_storage_key(value), []).append(name)
    # layers registered twice (`convK.conv` and `convK.all_modules.0`) are stored once: keep the readable name
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for names in groups.values():
        kept = next((n for n in names if ".all_modules." not in n), names[0])
        tensors[kept] = values[kept]
        aliases.update({n: kept for n in names if n != kept})
    if not tensors:
        raise CheckpointError(f"{path}: its state dict holds no tensors")
    config_path = asparagus_config.find_config(path) if plan is None else None
    epoch = _int_or_none(obj.get("current_epoch") if plan is not None else obj.get("epoch"))
    return SourceCheckpoint(path, container, tensors, aliases, outside, hyper, epoch,
                            _int_or_none(obj.get("global_step")), plan, str(obj.get("trainer_name") or ""),
                            asparagus_config.read_config(config_path) if config_path else None,
                            str(config_path or ""),
                            dict(obj[METADATA_KEY]) if isinstance(obj.get(METADATA_KEY), Mapping) else None)


def _int_or_none(v) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


# ---- recognising --------------------------------------------------------------------------------
_NO_SKIP_REASON = ("the organisers' pretraining decoder has no skip connections (its convolutions take C input "
                   "channels, not 2C); the dynamic-network-architectures decoder concatenates the encoder's skips, "
                   "so none of its tensors has an equivalent: the finetuning decoder starts fresh")
_DS_REASON = ("deep-supervision output of the organisers' decoder (applied to stage inputs; dynamic-network-"
              "architectures' seg_layers read stage outputs): an output layer, never transferred")


def _decoder_target(rest: str, upsample: str, convs: str, first: int, last_seg: int) -> str | None:
    """A tensor of the organisers' U-Net decoder (`rest`: its name inside the decoder) -> ours. They
    number stages from `first` in `<upsample><s>` and `<convs><s>.conv<k>` (k from 1); the 1x1 output
    convolution is our last seg_layer."""
    m = re.fullmatch(rf"{upsample}(\d+)\.(weight|bias)", rest)
    if m:
        return f"decoder.transpconvs.{int(m[1]) - first}.{m[2]}"
    m = re.fullmatch(rf"{convs}(\d+)\.conv(\d+)\.(conv|norm|norm_op)\.(weight|bias)", rest)
    if m:
        part = "conv" if m[3] == "conv" else "norm"
        return f"decoder.stages.{int(m[1]) - first}.convs.{int(m[2]) - 1}.{part}.{m[4]}"
    m = re.fullmatch(r"out_conv\.(weight|bias)", rest)
    return f"decoder.seg_layers.{last_seg}.{m[1]}" if m else None


_RESENC_EXACTNESS = (
    "exact: dynamic-network-architectures' ResidualEncoderUNet (BasicBlockD) computes the same function as "
    "gardening-tools' ResidualEncoderUNet: same stem, block order (conv-norm-LeakyReLU, conv-norm, "
    "shortcut average-pool + 1x1 conv without bias + norm, add, LeakyReLU), padding k//2, affine "
    "InstanceNorm (eps 1e-5), LeakyReLU slope 0.01, transposed-conv upsampling and [upsampled, skip] order",
    "names differ only: stem 'conv1' -> 'convs.0', norm 'norm_op' -> 'norm', 'upsample_layers' -> "
    "'transpconvs', 'decoder_convs.s.convK' -> 'stages.s.convs.K-1', 'out_conv' -> the last seg_layer",
)
_RESENC_NAMES = {(32, 64, 128, 256, 320, 320, 1, 3, 4, 6, 6, 6): "ResEnc-B",
                 (32, 64, 128, 256, 320, 320, 2, 2, 2, 2, 2, 2): "ResEnc-S",
                 (64, 128, 256, 512, 620, 620, 1, 3, 4, 6, 6, 6): "ResEnc-L"}


def _resenc_encoder(t: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int, list[int], list[int], bool]:
    """The residual encoder's stem weight, kernel, widths and blocks per stage, and conv bias."""
    stem = "encoder.stem.conv1.conv.weight"
    if "decoder.fc.weight" in t:
        raise InexactArchitectureError(
            "this is a finetuned classification/regression network (ResidualEncoderUNetCLSREG, 'decoder.fc'): its "
            "residual shortcuts downsample with max-pooling, which dynamic-network-architectures' BasicBlockD "
            "(average pooling) does not reproduce; import the organisers' pretraining checkpoint instead")
    w, kernel, features, blocks = residual_encoder(t, stem, "encoder.stem.conv1.norm_op.weight")
    return w, kernel, features, blocks, "encoder.stem.conv1.conv.bias" in t


def _resenc_decoder(t: Mapping[str, torch.Tensor], n_stages: int
                    ) -> tuple[bool, int, list[int], bool, list[str]]:
    """(has a decoder, stride, convolutions per decoder stage, takes skips, assumptions made)."""
    n_up = _count(t, "decoder.upsample_layers.{}.weight")
    if n_up != n_stages - 1:
        return False, 2, [1] * (n_stages - 1), False, [
            "no decoder in the checkpoint: stride 2 assumed (every asparagus ResEnc preset) and "
            "average-pool shortcuts (ResidualEncoderUNet, not the max-pool CLSREG variant)"]
    stride = int(t["decoder.upsample_layers.0.weight"].shape[2])
    convs_dec = [_count_from_one(t, f"decoder.decoder_convs.{s}.conv{{}}.conv.weight") for s in range(n_up)]
    first = t["decoder.decoder_convs.0.conv1.conv.weight"]
    return True, stride, convs_dec, first.shape[1] == 2 * first.shape[0], []


def _resenc_architecture(features: list[int], blocks: list[int], kernel: int, stride: int, has_decoder: bool,
                         skips: bool) -> str:
    """The ResEnc network described for the report (its preset name where it is one)."""
    name = _RESENC_NAMES.get(tuple(features + blocks), "ResEnc")
    return (f"{name} (gardening-tools ResidualEncoderUNet: features {'-'.join(map(str, features))}, "
            f"blocks {'-'.join(map(str, blocks))}, kernel {kernel}, stride {stride}, "
            f"decoder {'with' if skips else 'without'} skip connections)" if has_decoder else
            f"{name} encoder (gardening-tools ResidualUNetEncoder: features {'-'.join(map(str, features))}, "
            f"blocks {'-'.join(map(str, blocks))}, kernel {kernel}; no decoder in the checkpoint)")


def _resenc_target_of(last_seg: int) -> Callable[[str], str | None]:
    """Source name -> target name for a gardening-tools ResidualEncoderUNet."""
    def target_of(name: str) -> str | None:
        m = re.fullmatch(r"encoder\.stem\.conv1\.(conv|norm_op)\.(weight|bias)", name)
        if m:
            return f"encoder.stem.convs.0.{'norm' if m[1] == 'norm_op' else 'conv'}.{m[2]}"
        if name.startswith("encoder.stages."):
            return name.replace(".norm_op.", ".norm.")
        if name.startswith("decoder."):
            return _decoder_target(name[len("decoder."):], r"upsample_layers\.", r"decoder_convs\.", 0, last_seg)
        return None

    return target_of


def recognise_resenc(t: Mapping[str, torch.Tensor]) -> Recognised:
    """gardening-tools ResidualEncoderUNet (asparagus ResEnc-S/B/L/H/G) -> DNA ResidualEncoderUNet.

    Both build the same residual encoder: a one-convolution stem; per stage, blocks of
    conv(k, stride)-norm-LeakyReLU, conv(k)-norm, a shortcut of average-pool(stride) then
    1x1 conv (no bias)-norm where the shape changes, addition, LeakyReLU; and the same U-Net decoder
    (transposed conv with kernel = stride, concatenation [upsampled, skip], convolutions, 1x1 output).
    """
    w, kernel, features, blocks, bias = _resenc_encoder(t)
    n_stages = len(features)
    has_decoder, stride, convs_dec, skips, assumptions = _resenc_decoder(t, n_stages)
    kwargs = _conv_kwargs(n_stages, kernel, stride, bias)
    kwargs.update({"features_per_stage": features, "n_blocks_per_stage": blocks,
                   "n_conv_per_stage_decoder": convs_dec})
    architecture = _resenc_architecture(features, blocks, kernel, stride, has_decoder, skips)
    return Recognised("", architecture, RESENC_UNET, kwargs, int(w.shape[1]), _resenc_target_of(n_stages - 2),
                      ("decoder.",), has_decoder and skips,
                      "" if skips else (_NO_SKIP_REASON if has_decoder else "no decoder in the checkpoint"),
                      list(_RESENC_EXACTNESS), assumptions, {"decoder.ds_out_convs.": _DS_REASON})


def _count_from_one(tensors: Mapping[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n + 1) in tensors:
        n += 1
    return n


_MAXPOOL_EXACTNESS = (
    "not expressible by a dynamic-network-architectures class named in plans: PlainConvUNet downsamples with "
    "strided convolutions, the organisers' U-Net with a 2x2x2 max-pool before each deeper stage; our "
    "fomo_nnunet.networks.PlainConvUNetMaxPool (DNA's PlainConvEncoder with pool='max' and DNA's "
    "UNetDecoder) is exact",
    "exact otherwise: conv (kernel 3, padding 1) - affine InstanceNorm (eps 1e-5) - LeakyReLU (slope 0.01) per "
    "layer, no dropout at p = 0, 2x2x2 transposed-conv upsampling, [upsampled, skip] order, 1x1 output",
)
_MAXPOOL_HEADS = ("decoder.", "rec_head.", "pred_head.")


def _maxpool_encoder(t: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int, list[int], list[int], bool]:
    """The max-pool U-Net's first weight, kernel, convolutions and widths per stage, and conv bias."""
    in_conv = "encoder.in_conv.conv1.conv.weight"
    w = t[in_conv]
    kernel = _cubic_kernel(in_conv, w)
    if kernel != 3:
        raise InexactArchitectureError(f"{in_conv} has kernel {kernel}: the organisers' U-Net pads by 1, which "
                                       f"keeps the resolution only for kernel 3")
    norm = "norm" if "encoder.in_conv.conv1.norm.weight" in t else "norm_op"
    _require_affine_norm(t, f"encoder.in_conv.conv1.{norm}.weight")
    n_deeper = _count_from_one(t, "encoder.encoder_conv{}.conv1.conv.weight")
    blocks = ["in_conv"] + [f"encoder_conv{i}" for i in range(1, 1 + n_deeper)]
    convs = [_count_from_one(t, f"encoder.{b}.conv{{}}.conv.weight") for b in blocks]
    features = [int(t[f"encoder.{b}.conv1.conv.weight"].shape[0]) for b in blocks]
    return w, kernel, convs, features, "encoder.in_conv.conv1.conv.bias" in t


def _maxpool_decoder(t: Mapping[str, torch.Tensor], n_stages: int
                     ) -> tuple[str | None, list[int], bool, list[str]]:
    """(the prefix of the first head with a U-Net decoder layout or None, convolutions per decoder stage,
    takes skips, assumptions made)."""
    prefix = next((p for p in _MAXPOOL_HEADS if f"{p}upsample1.weight" in t), None)
    if prefix is None:
        return None, [2] * (n_stages - 1), False, [
            "no U-Net decoder in the checkpoint: the target decoder has 2 convolutions per stage "
            "(the organisers' segmentation decoder) and starts fresh"]
    n_up = _count_from_one(t, prefix + "upsample{}.weight")
    convs_dec = [_count_from_one(t, f"{prefix}decoder_conv{s}.conv{{}}.conv.weight") for s in range(1, n_up + 1)]
    first = t[f"{prefix}decoder_conv1.conv1.conv.weight"]
    skips = first.shape[1] == 2 * first.shape[0]
    if n_up != n_stages - 1:
        raise InexactArchitectureError(f"{n_up} upsampling layers for {n_stages} encoder stages")
    return prefix, convs_dec, skips, []


def _maxpool_architecture(features: list[int], convs: list[int], prefix: str | None, convs_dec: list[int],
                          skips: bool) -> str:
    """The max-pool U-Net described for the report (U-Net B or XL where it is one)."""
    name = {32: "U-Net B", 64: "U-Net XL"}.get(features[0], f"U-Net (starting filters {features[0]})")
    return (f"{name} (AMAES / FOMO25-baseline / gardening-tools UNet: features {'-'.join(map(str, features))}, "
            f"{convs[0]} convolutions per stage, max-pool downsampling, "
            + (f"decoder {'with' if skips else 'without'} skip connections, "
               f"{convs_dec[0]} convolution(s) per stage)" if prefix else "no U-Net decoder)"))


def _maxpool_target_of(prefix: str | None, last_seg: int) -> Callable[[str], str | None]:
    """Source name -> target name for the max-pool U-Net whose decoder is under `prefix`."""
    def target_of(name: str) -> str | None:
        m = re.fullmatch(r"encoder\.(in_conv|encoder_conv(\d+))\.conv(\d+)\.(conv|norm|norm_op)\.(weight|bias)", name)
        if m:
            stage = 0 if m[1] == "in_conv" else int(m[2])
            where = f"{stage}.0" if stage == 0 else f"{stage}.1"   # stage s > 0: [max-pool, convs]
            part = "conv" if m[4] == "conv" else "norm"
            return f"encoder.stages.{where}.convs.{int(m[3]) - 1}.{part}.{m[5]}"
        if prefix is None or not name.startswith(prefix):
            return None
        return _decoder_target(name[len(prefix):], "upsample", "decoder_conv", 1, last_seg)

    return target_of


def _maxpool_left_out_reasons(decoder_prefixes: tuple[str, ...], prefix: str | None) -> dict[str, str]:
    """Why the deep-supervision outputs and every head other than the mapped decoder are left out."""
    reasons = {f"{p}ds_out_conv": _DS_REASON for p in decoder_prefixes}
    for p in decoder_prefixes:
        if p != prefix:
            reasons[p] = ("a second head of the AMAES network (prediction vs reconstruction); the first with a "
                          "U-Net layout is mapped" if prefix else "not a U-Net decoder (a classification or "
                          "regression head?): it has no equivalent in the target network")
    return reasons


def recognise_maxpool_unet(t: Mapping[str, torch.Tensor]) -> Recognised:
    """AMAES / FOMO25-baseline UNet (also gardening-tools UNet) -> our PlainConvUNetMaxPool.

    Five stages of width f, 2f, 4f, 8f, 16f, each `MultiLayerConvDropoutNormNonlin` (conv 3, padding 1,
    norm, LeakyReLU), stage s > 0 preceded by a 2x2x2 max-pool; the decoder upsamples with a 2x2x2
    transposed convolution and concatenates [upsampled, skip]. dynamic-network-architectures'
    PlainConvUNet downsamples with strided convolutions instead; its PlainConvEncoder(pool='max')
    reproduces the max-pool, which our PlainConvUNetMaxPool exposes to plans.
    """
    w, kernel, convs, features, bias = _maxpool_encoder(t)
    n_stages = len(features)
    prefix, convs_dec, skips, assumptions = _maxpool_decoder(t, n_stages)
    kwargs = _conv_kwargs(n_stages, kernel, 2, bias)
    kwargs.update({"features_per_stage": features, "n_conv_per_stage": convs, "n_conv_per_stage_decoder": convs_dec})
    architecture = _maxpool_architecture(features, convs, prefix, convs_dec, skips)
    decoder_prefixes = tuple(p for p in _MAXPOOL_HEADS if any(k.startswith(p) for k in t))
    return Recognised("", architecture, MAXPOOL_UNET, kwargs, int(w.shape[1]),
                      _maxpool_target_of(prefix, n_stages - 2),
                      (prefix,) if prefix else decoder_prefixes, prefix is not None and skips,
                      "" if skips else (_NO_SKIP_REASON if prefix else "no U-Net decoder in the checkpoint"),
                      list(_MAXPOOL_EXACTNESS), assumptions, _maxpool_left_out_reasons(decoder_prefixes, prefix))


# network layout -> (the tensor that identifies it, reader)
_LAYOUTS: dict[str, tuple[str, Callable[[Mapping[str, torch.Tensor]], Recognised]]] = {
    "ResEnc U-Net": ("encoder.stem.conv1.conv.weight", recognise_resenc),
    "max-pool U-Net": ("encoder.in_conv.conv1.conv.weight", recognise_maxpool_unet),
}
_KNOWN = ("the asparagus / gardening-tools ResidualEncoderUNet ('encoder.stem.conv1.conv.weight', "
          "'encoder.stages.N.blocks.M...'), the AMAES / FOMO25-baseline UNet ('encoder.in_conv...', "
          "'encoder.encoder_convN...'), Primus ('eva.pos_embed' with 'encoder.proj' or 'down_projection.proj') and "
          "nnssl's ResEnc U-Net ('encoder.stem.convs.0.conv.weight', with its 'nnssl_adaptation_plan')")


def _layout(source: SourceCheckpoint) -> str:
    t = source.tensors
    if primus.is_primus(t):
        return "Primus"
    if nnssl.is_dna_layout(t):
        return "nnssl ResEnc U-Net"
    layout = next((name for name, (key, _) in _LAYOUTS.items() if key in t), None)
    if layout is None:
        raise UnknownArchitectureError(f"{source.path}: not a network layout this importer knows. It reads {_KNOWN}; "
                                       f"this checkpoint's first tensors are {list(t)[:5]}")
    return layout


def _framework(source: SourceCheckpoint, layout: str) -> tuple[str, str]:
    """(the framework that wrote the checkpoint, the evidence)."""
    if source.adaptation_plan is not None:
        return "nnssl", f"its {ADAPTATION_KEY!r}"
    if layout == "nnssl ResEnc U-Net":
        return "nnssl", "dynamic-network-architectures' names without an adaptation plan"
    if layout == "max-pool U-Net":
        if "encoder.in_conv.conv1.norm.weight" in source.tensors:
            return "fomo25-baseline", "its blocks name their norm 'norm' (AMAES / yucca), not 'norm_op'"
        if "model_name" in source.hyper_parameters:
            return "fomo25-baseline", "its hyper-parameters record 'model_name' (the baseline's LightningModule)"
        return "asparagus", "its blocks are gardening-tools' ('norm_op'), as in an asparagus U-Net"
    return "asparagus", f"a {layout} in gardening-tools' names"


def _pretraining_patch(source: SourceCheckpoint, patch: int | None) -> tuple[list[int] | None, str]:
    """The pretraining patch as given, recorded (nnssl plan, Hydra config, hyper-parameters), or None."""
    if patch:
        return [int(patch)] * 3, "--patch"
    if source.adaptation_plan is not None:
        name, config = nnssl.pretrain_configuration(source.adaptation_plan)
        if cubic_patch(config.get("patch_size")):
            return (cubic_patch(config.get("patch_size")),
                    f"adaptation plan: pretrain_plan configuration {name!r} patch_size")
    if source.run_config is not None and cubic_patch(asparagus_config.lookup(source.run_config, "training.patch_size")):
        return (cubic_patch(asparagus_config.lookup(source.run_config, "training.patch_size")),
                f"{source.run_config_path}: training.patch_size")
    if cubic_patch(source.hyper_parameters.get("patch_size")):
        return cubic_patch(source.hyper_parameters.get("patch_size")), "hyper_parameters['patch_size']"
    return None, ""


def recognise(source: SourceCheckpoint, fmt: str = "auto", patch: int | None = None) -> Recognised:
    """Which network the tensors are, and which framework wrote them (`fmt`, or found from the file).

    The layout comes from the tensors, the framework from the file: an nnssl checkpoint carries its
    adaptation plan; the max-pool U-Net is the FOMO25 baseline's (AMAES blocks name their norm `norm`; its
    LightningModule records `model_name`) unless its blocks are gardening-tools' (`norm_op`), as in an
    asparagus U-Net; the ResEnc U-Net and Primus in gardening-tools' names are asparagus's. A `fmt` that
    contradicts the evidence is refused, whichever the network.
    """
    if fmt not in (*FORMATS, "auto"):
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)} or auto")
    t = source.tensors
    layout = _layout(source)
    found, evidence = _framework(source, layout)
    if found == "nnssl" and source.adaptation_plan is None:
        raise UnknownArchitectureError(
            f"{source.path}: " + (f"--format {fmt}, but this is" if fmt != "auto" else "this looks like")
            + f" an nnssl network ({evidence}); an nnssl checkpoint_final.pth carries 'nnssl_adaptation_plan' with "
              f"the pretraining's patch, spacing and normalisation, and this file has none")
    if fmt not in ("auto", found):
        written = "an nnssl checkpoint" if found == "nnssl" else f"a {layout} written by {found}"
        raise UnknownArchitectureError(f"{source.path}: --format {fmt}, but this is {written} ({evidence}); "
                                       f"use --format {found} or auto")
    try:
        if layout == "Primus":
            pretrain_patch, _ = _pretraining_patch(source, patch)
            named = source.adaptation_plan["architecture_plans"]["arch_class_name"] if source.adaptation_plan else None
            rec = primus.recognise(t, found, pretrain_patch or [primus.patch_from_tokens(t) or 0] * 3, named)
        elif layout == "nnssl ResEnc U-Net":
            rec = nnssl.recognise_resenc(t, source.adaptation_plan)
        else:
            rec = _LAYOUTS[layout][1](t)
    except KeyError as e:
        raise UnknownArchitectureError(f"{source.path}: looks like a {layout} but lacks {e}") from e
    except CheckpointError as e:
        raise type(e)(f"{source.path}: {e}") from e
    rec.format = found
    return rec


# ---- settings the tensors cannot tell -------------------------------------------------------------
def _settings(rec: Recognised, source: SourceCheckpoint, patch: int | None,
              spacing: float | None) -> dict[str, Setting]:
    if rec.format == "nnssl":
        embed = rec.network_kwargs.get("patch_embed_size")
        return nnssl.settings(source.adaptation_plan, source.trainer_name, rec.num_input_channels, patch, spacing,
                              embed[0] if embed else None)
    s: dict[str, Setting] = {}
    recorded, where = _pretraining_patch(source, patch)
    s["patch_size"] = Setting(recorded, where) if recorded else Setting(
        [160] * 3, "not recorded; 160^3, the organisers' pretraining patch (asparagus configs/default_pretrain.yaml; "
                   "a run's hydra/config.yaml beside checkpoints/ says training.patch_size)")
    if spacing:
        s["spacing"] = Setting([float(spacing)] * 3, "--spacing")
    elif rec.format == "asparagus":
        s["spacing"] = Setting([1.0] * 3, "not recorded; 1 mm assumed. asparagus does not resample at conversion, "
                                          "so its pretraining saw each scan's native spacing")
    else:
        s["spacing"] = Setting([1.0] * 3, "the FOMO25 baseline preprocessing resamples to 1 mm (target_spacing)")
    if rec.format == "asparagus":
        s["normalization"] = Setting(["ZScoreNormalization"], "asparagus normalises each volume by its own mean "
                                     "and std over the whole non-zero-cropped volume: nnU-Net's ZScoreNormalization "
                                     "without the mask (use_mask_for_norm False)")
    else:
        s["normalization"] = Setting(["RescaleTo01Normalization"], "yucca's volume_wise_znorm clips at the 99th "
                                     "percentile of non-background voxels, z-scores them and rescales to [0, 1]; "
                                     "the nearest nnU-Net scheme, RescaleTo01Normalization, rescales to [0, 1] "
                                     "without the clipping (an approximation)")
    s["use_mask_for_norm"] = Setting([False], "both frameworks normalise over the whole cropped volume")
    s["mask_ratio"], s["mask_unit"] = _mask_settings(source, rec)
    return s


def _mask_settings(source: SourceCheckpoint, rec: Recognised) -> tuple[Setting, Setting]:
    """The pretraining's masking: hyper-parameters, else the run's Hydra config, else the defaults."""
    hyper, config = source.hyper_parameters, source.run_config or {}
    found = []
    for key, default, why in (("mask_ratio", 0.6, "0.6, the organisers' default"),
                              ("mask_patch_size", (rec.patch_multiple or [4])[0],
                               f"{(rec.patch_multiple or [4])[0]} voxels, the organisers' default "
                               f"({'the ViT patch' if rec.patch_multiple else 'patch_embed_size 4'})")):
        if isinstance(hyper.get(key), int | float):
            found.append(Setting(hyper[key], "hyper_parameters"))
        elif isinstance(asparagus_config.lookup(config, f"training.{key}"), int | float):
            found.append(Setting(asparagus_config.lookup(config, f"training.{key}"),
                                 f"{source.run_config_path}: training.{key}"))
        else:
            found.append(Setting(default, "not recorded; " + why))
    return Setting(float(found[0].value), found[0].source), Setting(int(found[1].value), found[1].source)


def _check_patch(patch: list[int], rec: Recognised) -> None:
    kwargs = rec.network_kwargs
    divisor = 1
    for stride in kwargs.get("strides") or [rec.patch_multiple or [1]]:
        divisor *= stride[0]
    bad = [p for p in patch if p % divisor or p < divisor]
    if bad:
        raise ValueError(f"patch {patch} must be a positive multiple of {divisor} on every axis for this "
                         f"network ({rec.architecture.split(' (')[0]}); pass --patch")


# ---- mapping --------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    source: str
    source_sha256: str
    container: str
    format: str
    architecture: str
    network_class: str
    exactness: list[str]
    assumptions: list[str]
    settings: dict[str, dict[str, Any]]
    mapped: list[dict[str, Any]] = field(default_factory=list)      # {source, target, shape}
    adapted: list[dict[str, Any]] = field(default_factory=list)     # {source, how}: values changed (Primus)
    left_out: list[dict[str, Any]] = field(default_factory=list)    # {source, shape, reason}
    aliases: int = 0
    mapped_params: int = 0
    left_out_params: int = 0
    encoder_params: int = 0
    decoder_mapped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        return (f"mapped {len(self.mapped)} tensors ({self.mapped_params:,} parameters, "
                f"encoder {self.encoder_params:,}), adapted {len(self.adapted)}, left out {len(self.left_out)} "
                f"({self.left_out_params:,} parameters); decoder {'mapped' if self.decoder_mapped else 'left out'}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _target_layout(meta: PretrainMetadata, num_outputs: int) -> tuple[dict[str, tuple[int, ...]], dict[str, list[str]]]:
    """The target network's tensors, built without allocating memory: shape per canonical name, and
    every name the network's state dict gives that tensor (blocks register layers twice, the decoder
    holds the encoder again), so the written weights load like the network's own state dict."""
    from fomo_nnunet.models.transfer import _model_tensors

    with torch.device("meta"):
        net = meta.build_network(num_outputs=num_outputs)
    shapes: dict[str, tuple[int, ...]] = {}
    names: dict[str, list[str]] = {}
    for _, all_names, tensor in _model_tensors(net):
        canonical = next((n for n in all_names if ".all_modules." not in n), all_names[0])
        shapes[canonical] = tuple(tensor.shape)
        names[canonical] = list(dict.fromkeys(all_names))
    owner = {alias: canonical for canonical, aliases in names.items() for alias in aliases}
    for name in net.state_dict():
        if name.startswith("decoder.encoder."):
            names[owner[name[len("decoder."):]]].append(name)
    return shapes, names


def _num_outputs(source: SourceCheckpoint, rec: Recognised) -> int:
    """Output channels of the source's output layer (the last tensor mapped to a seg_layer), else 1."""
    if rec.num_outputs is not None:
        return rec.num_outputs
    num_outputs = 1
    for name, tensor in source.tensors.items():
        if rec.target_of(name) and rec.target_of(name).startswith("decoder.seg_layers."):
            num_outputs = int(tensor.shape[0])
    return num_outputs


def _leave_out(report: ImportReport, name: str, tensor: torch.Tensor, reason: str) -> None:
    """Record a source tensor that is not written, and why."""
    report.left_out.append({"source": name, "shape": list(tensor.shape), "reason": reason})
    report.left_out_params += tensor.numel()


def _check_encoder_tensor(source: SourceCheckpoint, rec: Recognised, name: str, tensor: torch.Tensor,
                          target: str | None, target_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse the import unless an encoder tensor has a place of the same shape in the target network."""
    if target is None:
        raise InexactArchitectureError(f"{source.path}: encoder tensor {name!r} has no place in "
                                       f"{rec.network_class}; nothing was written")
    if target_shapes.get(target) != tuple(tensor.shape):
        raise InexactArchitectureError(
            f"{source.path}: encoder tensor {name!r} {tuple(tensor.shape)} would go to {target!r}, which "
            f"has shape {target_shapes.get(target)} in {rec.network_class}; nothing was written")


def _decoder_tensor_problem(name: str, tensor: torch.Tensor, target: str | None,
                            target_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Why a decoder tensor has no equivalent in the target decoder ('' where it fits)."""
    if target is None:
        return f"{name!r} has no equivalent in the target decoder"
    if target_shapes.get(target) != tuple(tensor.shape):
        return f"{name!r} {tuple(tensor.shape)} does not fit {target!r} {target_shapes.get(target)}"
    return ""


def _refuse_incomplete_encoder(source: SourceCheckpoint, target_shapes: Mapping[str, tuple[int, ...]],
                               out: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> None:
    """Refuse the import when a target encoder tensor has no tensor in the checkpoint."""
    missing = sorted(n for n in target_shapes if n.startswith(prefixes) and n not in out)
    if missing:
        raise InexactArchitectureError(f"{source.path}: the target encoder's {missing[0]!r} (and {len(missing) - 1} "
                                       f"more) has no tensor in the checkpoint; nothing was written")


def _take_decoder_whole_or_not(candidates: list[tuple[str, str | None, torch.Tensor]], problem: str,
                               out: dict[str, torch.Tensor], report: ImportReport, written: dict[str, str]) -> None:
    """Map every decoder tensor, or (where any one does not fit) leave them all out with the reason."""
    if not candidates:
        return
    if problem:
        # a decoder is taken whole or not at all: part of one would be "most of it"
        for name, _, tensor in candidates:
            _leave_out(report, name, tensor, "decoder: " + problem)
    else:
        for name, target, tensor in candidates:
            out[target] = tensor
            written[target] = name
        report.decoder_mapped = True


def _record_mapped(source: SourceCheckpoint, rec: Recognised, written: Mapping[str, str],
                   report: ImportReport) -> None:
    """List every source tensor that was written, where it went, and the alias count."""
    for name, tensor in source.tensors.items():
        target = rec.target_of(name)
        if written.get(target) == name:
            report.mapped.append({"source": name, "target": target, "shape": list(tensor.shape)})
            report.mapped_params += tensor.numel()
    report.aliases = len(source.aliases)


def _under_every_name(out: Mapping[str, torch.Tensor], target_names: Mapping[str, list[str]]
                      ) -> dict[str, torch.Tensor]:
    """The written state dict: a contiguous copy of each tensor under every name the network gives it."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in out.items():
        copy = tensor.detach().clone().contiguous()
        weights.update({alias: copy for alias in target_names[name]})
    return weights


def map_tensors(source: SourceCheckpoint, rec: Recognised, meta: PretrainMetadata,
                report: ImportReport) -> dict[str, torch.Tensor]:
    """The target state dict; fills the report's mapped / left_out lists. Refuses unless the encoder
    maps completely (every source and every target encoder tensor, same shapes)."""
    target_shapes, target_names = _target_layout(meta, _num_outputs(source, rec))
    out: dict[str, torch.Tensor] = {}
    written: dict[str, str] = {}   # target name -> source name
    decoder_candidates: list[tuple[str, str | None, torch.Tensor]] = []
    decoder_problem = rec.decoder_reason if not rec.decoder_mapped else ""
    for name, tensor in source.tensors.items():
        target = rec.target_of(name)
        if name.startswith(rec.encoder_prefixes):
            _check_encoder_tensor(source, rec, name, tensor, target, target_shapes)
            out[target], how = rec.adapt(name, tensor) if rec.adapt else (tensor, "")
            if how:
                report.adapted.append({"source": name, "how": how})
            written[target] = name
            report.encoder_params += tensor.numel()
            continue
        reason = next((r for p, r in rec.left_out_reasons.items() if name.startswith(p)), None)
        if reason:
            _leave_out(report, name, tensor, reason)
        elif any(name.startswith(p) for p in rec.decoder_prefixes):
            decoder_candidates.append((name, target, tensor))
            if not decoder_problem:
                decoder_problem = _decoder_tensor_problem(name, tensor, target, target_shapes)
        else:
            _leave_out(report, name, tensor, "neither encoder nor decoder of the organisers' network")
    _refuse_incomplete_encoder(source, target_shapes, out, rec.target_encoder_prefixes)
    _take_decoder_whole_or_not(decoder_candidates, decoder_problem, out, report, written)
    for name, tensor in source.outside_network.items():
        _leave_out(report, name, tensor, "a LightningModule entry outside its `model` (not part of the network)")
    _record_mapped(source, rec, written, report)
    return _under_every_name(out, target_names)


# ---- the whole import ------------------------------------------------------------------------------
def import_checkpoint(src: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "auto",
                      patch: int | None = None, spacing: float | None = None) -> ImportReport:
    """Read `src`, map it, and write OUT_DIR/checkpoint_final.pth plus import_report.json / .md."""
    import time

    from fomo_nnunet import __version__

    start = time.perf_counter()
    src = Path(src)
    source = read_source(src)
    rec = recognise(source, fmt, patch)
    settings = _settings(rec, source, patch, spacing)
    if rec.network_class == primus.PRIMUS and settings["patch_size"].value != rec.network_kwargs["input_shape"]:
        # a Primus is built for one patch: its position embedding has one token per ViT patch of it
        settings["patch_size"] = Setting(rec.network_kwargs["input_shape"], "the position embedding's token count")
    _check_patch(settings["patch_size"].value, rec)
    if source.fomo_metadata:
        _settings_of_our_export(settings, source.fomo_metadata, patch, spacing)
    meta = PretrainMetadata(
        network_class=rec.network_class, network_kwargs=rec.network_kwargs,
        arch_kwargs_requires_import=[k for k in _REQUIRES_IMPORT if k in rec.network_kwargs],
        patch_size=settings["patch_size"].value,
        spacing=settings["spacing"].value, normalization=settings["normalization"].value,
        num_input_channels=rec.num_input_channels,
        channel_meaning=["any single MRI sequence, normalised as the organisers' framework does "
                         "(see import_report.md)"] * rec.num_input_channels,
        objective=f"mae (imported from {rec.format}{' ' + source.trainer_name if source.trainer_name else ''})",
        objective_settings={"mask_ratio": settings["mask_ratio"].value, "mask_unit": settings["mask_unit"].value,
                            "use_mask_for_norm": settings["use_mask_for_norm"].value[:1] * rec.num_input_channels,
                            "imported_from": str(src.resolve()), "import_format": rec.format},
        iterations_trained=source.global_step or 0, epochs_trained=source.epoch or 0,
        plans_name="", dataset_name=f"imported:{rec.format}",
        trainer_name=f"imported:{rec.architecture.split(' (')[0]}",
        fomo_nnunet_version=__version__)
    report = ImportReport(str(src.resolve()), _sha256(src), source.container, rec.format, rec.architecture,
                          rec.network_class, rec.exactness, rec.assumptions,
                          {k: {"value": v.value, "from": v.source} for k, v in settings.items()})
    weights = map_tensors(source, rec, meta, report)
    report.seconds = round(time.perf_counter() - start, 3)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {WEIGHTS_KEY: weights, METADATA_KEY: meta.to_dict(), IMPORT_KEY: report.to_dict(),
                  "trainer_name": meta.trainer_name, "current_epoch": meta.epochs_trained}
    with replacing(out / CHECKPOINT_FILE) as tmp:
        torch.save(checkpoint, tmp)
    (out / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=1))
    (out / REPORT_TEXT).write_text(render_report(report))
    return report


def _settings_of_our_export(settings: dict[str, Setting], ours: Mapping[str, Any], patch: int | None,
                            spacing: float | None) -> None:
    """A checkpoint written by `export-checkpoint` carries our metadata: take from it what the foreign
    format has no place for, so that importing an export gives back the checkpoint that was exported."""
    where = "fomo_metadata (written by fomo-nnunet export-checkpoint)"
    objective = ours.get("objective_settings") or {}
    found = {"spacing": None if spacing else ours.get("spacing"), "normalization": ours.get("normalization"),
             "patch_size": None if patch else ours.get("patch_size"),
             "use_mask_for_norm": objective.get("use_mask_for_norm"), "mask_ratio": objective.get("mask_ratio"),
             "mask_unit": objective.get("mask_unit")}
    for key, value in found.items():
        if value is not None:
            settings[key] = Setting(value, where)


def render_report(r: ImportReport) -> str:
    """The mapping report for a person: what was recognised, from where, and where every tensor went."""
    lines = [f"# Imported checkpoint: {r.architecture}", "",
             f"- source: `{r.source}` ({r.container}, sha256 {r.source_sha256[:16]}...)",
             f"- format: {r.format}; target network: `{r.network_class}`",
             f"- {r.summary()}; {r.aliases} alias names of stored tensors (layers registered twice) not counted",
             "", "## Exactness", *[f"- {e}" for e in r.exactness]]
    if r.assumptions:
        lines += ["", "## Assumptions", *[f"- {a}" for a in r.assumptions]]
    lines += ["", "## Settings", "", "| setting | value | from |", "|---|---|---|",
              *[f"| {k} | {v['value']} | {v['from']} |" for k, v in r.settings.items()]]
    lines += ["", "## Left out", ""]
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for e in r.left_out:
        by_reason.setdefault(e["reason"], []).append(e)
    for reason, entries in by_reason.items():
        params = sum(math.prod(e["shape"]) for e in entries)
        lines += [f"{len(entries)} tensors ({params:,} parameters): {reason}", "",
                  *[f"- `{e['source']}` {tuple(e['shape'])}" for e in entries], ""]
    if not r.left_out:
        lines.append("nothing")
    lines += ["", "## Adapted", "", "nothing: every mapped tensor is copied unchanged" if not r.adapted else
              "\n".join(f"- `{e['source']}`: {e['how']}" for e in r.adapted)]
    lines += ["", "## Mapped", "", "| their tensor | our tensor | shape |", "|---|---|---|",
              *[f"| `{e['source']}` | `{e['target']}` | {tuple(e['shape'])} |" for e in r.mapped]]
    return "\n".join(lines) + "\n"
