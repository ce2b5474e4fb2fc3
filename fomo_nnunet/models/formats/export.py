"""Our pretrained checkpoints in the forms asparagus and nnssl load (`fomo-nnunet export-checkpoint`).

- asparagus: an asparagus run folder, `OUT/checkpoints/last.ckpt` (a Lightning-style dict: the network's
  state dict under `state_dict` with the LightningModule's `model.` prefix, `epoch`, `global_step`,
  `hyper_parameters`) and `OUT/hydra/config.yaml` (patch size, mask ratio and unit, the network preset),
  in gardening-tools' ResidualEncoderUNet names: what asparagus's `checkpoint_path` reads.
- nnssl: `OUT/checkpoint_final.pth` (`network_weights` in dynamic-network-architectures' names, which are
  nnssl's, and `nnssl_adaptation_plan`) plus `OUT/adaptation_plan.json`, as nnssl's published models
  carry it; what nnU-Net master's `nnUNetv2_preprocess_like_nnssl` and PretrainedTrainer read.

Both files also carry our `fomo_metadata`, which neither framework reads, so an import of the export
gives back the same checkpoint (settings their formats have no place for included). A ResidualEncoderUNet
is exported; other networks are refused with the reason.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fomo_nnunet.models.formats import nnssl
from fomo_nnunet.io.atomic import replacing
from fomo_nnunet.models.formats.nnssl import ADAPTATION_KEY, RESENC_UNET
from fomo_nnunet.models.transfer import METADATA_KEY, WEIGHTS_KEY, CheckpointError, PretrainMetadata

FORMATS = ("asparagus", "nnssl")
ASPARAGUS_CHECKPOINT = Path("checkpoints") / "last.ckpt"
ASPARAGUS_CONFIG = Path("hydra") / "config.yaml"
NNSSL_CHECKPOINT = "checkpoint_final.pth"
NNSSL_PLAN = "adaptation_plan.json"


@dataclass
class ExportReport:
    source: str
    format: str
    files: list[str]
    tensors: int
    parameters: int
    left_out: list[str] = field(default_factory=list)   # our tensor names with no place in their network
    notes: list[str] = field(default_factory=list)


def _refuse_unless_exportable(meta: PretrainMetadata, fmt: str) -> None:
    """Refuse, with the reason, networks the format has no class for."""
    if meta.network_class != RESENC_UNET:
        raise CheckpointError(f"export --format {fmt} writes ResidualEncoderUNet checkpoints (our ResEnc presets); "
                              f"this checkpoint's network is {meta.network_class}, which "
                              + ("gardening-tools has no class for" if fmt == "asparagus" else
                                 "nnssl's adaptation plans do not describe (they name ResEnc-L, Primus, "
                                 "ResidualEncoderUNet or PlainConvUNet)"))
    kw = meta.network_kwargs
    if fmt == "asparagus":
        kernels = {tuple(k) for k in kw["kernel_sizes"]}
        strides = {tuple(s) for s in kw["strides"][1:]}
        if len(kernels) != 1 or len(set(next(iter(kernels)))) != 1 or len(strides) != 1 or \
                len(set(next(iter(strides)))) != 1 or any(s != 1 for s in kw["strides"][0]):
            raise CheckpointError(f"gardening-tools' ResidualEncoderUNet takes one cubic kernel and one cubic stride "
                                  f"for every stage; this network has kernels {kw['kernel_sizes']} and strides "
                                  f"{kw['strides']}")
        if kw.get("nonlin") != "torch.nn.LeakyReLU" or (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01) \
                != 0.01 or kw.get("dropout_op") or (kw.get("norm_op_kwargs") or {}) != {"eps": 1e-5, "affine": True}:
            raise CheckpointError("gardening-tools' ResidualEncoderUNet has affine InstanceNorm (eps 1e-5), no dropout "
                                  "and LeakyReLU (slope 0.01); this network's layers differ")


def _asparagus_name(name: str, last_seg: int) -> str | None:
    """Our ResidualEncoderUNet's name -> gardening-tools' (None: no place in their network)."""
    if name.startswith("decoder.encoder."):
        return None     # dynamic-network-architectures' decoder holds the encoder again
    m = re.fullmatch(r"encoder\.stem\.convs\.0\.(conv|norm|all_modules\.\d)\.(weight|bias)", name)
    if m:
        return f"encoder.stem.conv1.{'norm_op' if m[1] == 'norm' else m[1]}.{m[2]}"
    if name.startswith("encoder.stages."):
        return name.replace(".norm.", ".norm_op.")
    m = re.fullmatch(r"decoder\.transpconvs\.(\d+)\.(weight|bias)", name)
    if m:
        return f"decoder.upsample_layers.{m[1]}.{m[2]}"
    m = re.fullmatch(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm|all_modules\.0|all_modules\.1)\.(weight|bias)",
                     name)
    if m:
        # their decoder block registers [conv, dropout, norm, nonlin]: the norm is all_modules.2
        part = {"conv": "conv", "norm": "norm_op", "all_modules.0": "all_modules.0", "all_modules.1": "all_modules.2"}
        return f"decoder.decoder_convs.{m[1]}.conv{int(m[2]) + 1}.{part[m[3]]}.{m[4]}"
    m = re.fullmatch(r"decoder\.seg_layers\.(\d+)\.(weight|bias)", name)
    if m and int(m[1]) == last_seg:
        return f"decoder.out_conv.{m[2]}"
    return None


def mask_unit(settings: dict) -> int | None:
    """The mask unit in voxels: our MAE trainers record it as `block_size`, imported checkpoints as `mask_unit`."""
    unit = settings.get("mask_unit", settings.get("block_size"))
    return None if unit is None else int(unit)


def _hydra_config(meta: PretrainMetadata, preset: str) -> str:
    """The parts of an asparagus pretraining config the importer (and a person) reads."""
    settings = meta.objective_settings
    lines = ["# written by fomo-nnunet export-checkpoint: the pretraining's settings in asparagus's config keys",
             "model:", f"  pretrain_net: {preset}", f"  patch_embed_size: {mask_unit(settings) or 4}",
             "training:", f"  patch_size: {json.dumps(list(meta.patch_size))}",
             f"  mask_ratio: {float(settings.get('mask_ratio', 0.6))}",
             "  mask_patch_size: ${model.patch_embed_size}"]
    return "\n".join(lines) + "\n"


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _unique_state(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies, one per stored tensor: names of one tensor keep sharing it in the file."""
    copies: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in weights.items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        out[name] = copies.setdefault(key, tensor.detach().clone().contiguous())
    return out


def export_checkpoint(src: str | os.PathLike, out_dir: str | os.PathLike, fmt: str) -> ExportReport:
    """Write our checkpoint `src` (a .pth or results folder) in `fmt`'s form into `out_dir`."""
    from fomo_nnunet.models.checkpoints import find_checkpoint
    from fomo_nnunet.models.transfer import load_checkpoint_safely, read_metadata

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    path = Path(find_checkpoint(src))
    checkpoint = load_checkpoint_safely(path)
    meta = read_metadata(checkpoint, str(path))
    _refuse_unless_exportable(meta, fmt)
    weights = {k: v for k, v in checkpoint[WEIGHTS_KEY].items() if isinstance(v, torch.Tensor)}
    out = Path(out_dir)
    report = ExportReport(str(path.resolve()), fmt, [], 0, 0)
    if fmt == "asparagus":
        last_seg = meta.network_kwargs["n_stages"] - 2
        state = {}
        for name, tensor in weights.items():
            theirs = _asparagus_name(name, last_seg)
            if theirs is None:
                if not name.startswith("decoder.encoder."):
                    report.left_out.append(name)
                continue
            state["model." + theirs] = tensor
        if report.left_out:
            report.notes.append("deep-supervision outputs (decoder.seg_layers except the last) have no place in "
                                "gardening-tools' network built without deep supervision")
        ckpt = {"state_dict": _unique_state(state), "epoch": meta.epochs_trained,
                "global_step": meta.iterations_trained,
                "hyper_parameters": {"patch_size": list(meta.patch_size),
                                     "mask_ratio": meta.objective_settings.get("mask_ratio"),
                                     "mask_patch_size": mask_unit(meta.objective_settings)},
                METADATA_KEY: meta.to_dict()}
        _write(out / ASPARAGUS_CHECKPOINT, ckpt)
        (out / ASPARAGUS_CONFIG).parent.mkdir(parents=True, exist_ok=True)
        (out / ASPARAGUS_CONFIG).write_text(_hydra_config(meta, "resenc_unet"))
        report.files = [str(out / ASPARAGUS_CHECKPOINT), str(out / ASPARAGUS_CONFIG)]
        stored = state
    else:
        channels = meta.num_input_channels
        plan = nnssl.adaptation_plan(meta.network_class, meta.network_kwargs, meta.patch_size, meta.spacing,
                                     meta.normalization, list(meta.objective_settings.get("use_mask_for_norm",
                                                                                          [True] * channels)),
                                     channels, meta.dataset_name, meta.plans_name)
        stored = {k: v for k, v in weights.items()}
        ckpt = {WEIGHTS_KEY: _unique_state(stored), ADAPTATION_KEY: plan, "current_epoch": meta.epochs_trained,
                "trainer_name": f"fomo_nnunet:{meta.trainer_name or 'unknown'}", "init_args": {},
                METADATA_KEY: meta.to_dict()}
        _write(out / NNSSL_CHECKPOINT, ckpt)
        (out / NNSSL_PLAN).write_text(json.dumps(plan, indent=1))
        report.files = [str(out / NNSSL_CHECKPOINT), str(out / NNSSL_PLAN)]
    unique = {t.untyped_storage().data_ptr(): t for t in stored.values() if t.numel()}
    report.tensors, report.parameters = len(unique), int(sum(t.numel() for t in unique.values()))
    return report
