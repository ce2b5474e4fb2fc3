"""Checkpoints across frameworks: nnssl (ResEnc U-Net, Primus) and asparagus Primus in; ours out in asparagus's
and nnssl's form.

nnssl is not installed (it pins a development branch of dynamic-network-architectures, wandb and more).
Its networks are rebuilt here from its published definitions: ResEnc-L is dynamic-network-architectures'
ResidualEncoderUNet with the arguments of nnssl's `get_res_enc_l` (conv bias, affine instance norm,
LeakyReLU), at tiny widths; its Primus pretraining network `EvaMAE` is dynamic-network-architectures'
PatchEmbed (`down_projection`), Eva (`eva`), a second Eva as decoder (`decoder`), PatchDecode
(`up_projection`) and a `mask_token`, with tokens flattened as `(h w d)`. The checkpoint dict is the one
nnssl's `save_checkpoint` writes, adaptation plan included. asparagus's Primus is gardening-tools' own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from einops import rearrange
from torch import nn

from fomo_nnunet.models.checkpoint_import import (CHECKPOINT_FILE, REPORT_JSON, UnknownArchitectureError,
                                           import_checkpoint)
from fomo_nnunet.models.formats.export import export_checkpoint
from fomo_nnunet.models.transfer import CheckpointError, PretrainMetadata, load_checkpoint_safely

from helpers import run
from test_checkpoint_import import TOLERANCE, randomised, save_like_lightning, tiny_resenc  # noqa: E402

from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet  # noqa: E402
from dynamic_network_architectures.building_blocks.eva import Eva  # noqa: E402
from dynamic_network_architectures.building_blocks.patch_encode_decode import PatchDecode, PatchEmbed  # noqa: E402
from gardening_tools.modules.networks.primus import Primus as GardeningPrimus  # noqa: E402
from gardening_tools.modules.networks.resunet import ResidualEncoderUNet as GardeningResEncUNet  # noqa: E402

X = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(7))
XS = X[:1, :, :16, :16, :16].contiguous()   # enough for the U-Nets (4 stages), a quarter of the work


# ---- nnssl's networks and checkpoint, rebuilt from its definitions ------------------------------------
def nnssl_resenc(features=(4, 8, 16, 32), blocks=(1, 2, 1, 2), seed: int = 0) -> ResidualEncoderUNet:
    """nnssl architecture_registry.get_res_enc_l's arguments at tiny widths."""
    n = len(features)
    torch.manual_seed(seed)
    return randomised(ResidualEncoderUNet(
        input_channels=1, n_stages=n, features_per_stage=list(features), conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1), n_blocks_per_stage=list(blocks),
        num_classes=1, n_conv_per_stage_decoder=[1] * (n - 1), conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False), seed)


class EvaMAE(nn.Module):
    """nnssl architectures/evaMAE_module.py EvaMAE: attribute names, modules and token order."""

    def __init__(self, embed_dim=24, depth=4, heads=4, patch=(32, 32, 32), vit=(8, 8, 8)):
        super().__init__()
        grid = tuple(p // v for p, v in zip(patch, vit))
        eva = dict(embed_dim=embed_dim, num_heads=heads, ref_feat_shape=grid, init_values=0.1, scale_attn_inner=True)
        self.down_projection = PatchEmbed(vit, 1, embed_dim)
        self.eva = Eva(depth=depth, **eva)
        self.up_projection = PatchDecode(vit, embed_dim, 1)
        self.decoder = Eva(depth=2, **eva)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def encode(self, x):
        """The encoder's tokens as a (B, C, W, H, D) map (EvaMAE.forward up to its decoder, without dropping)."""
        x = self.down_projection(x)
        _, _, w, h, d = x.shape
        tokens, _ = self.eva(rearrange(x, "b c w h d -> b (h w d) c"))
        return rearrange(tokens, "b (h w d) c -> b c w h d", h=h, w=w, d=d)


def adaptation_plan(arch: str, patch=(32, 32, 32), spacing=(4.0, 4.0, 4.0), primus_keys: bool = False) -> dict:
    """nnssl AdaptationPlan.serialize() of a pretraining on `patch` at `spacing` (nnssl's own field names)."""
    config = {"data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
              "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"],
              "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {}, "resampling_fn_mask": "resample_data_or_seg_to_shape",
              "resampling_fn_mask_kwargs": {}, "spacing": list(spacing), "patch_size": list(patch)}
    keys = ({"key_to_encoder": "eva", "key_to_stem": "down_projection", "keys_to_in_proj": ["down_projection.proj"],
             "key_to_lpe": "eva.pos_embed"} if primus_keys else
            {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
             "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
             "key_to_lpe": None})
    return {"architecture_plans": {"arch_class_name": arch, "arch_kwargs": None, "arch_kwargs_requiring_import": None},
            "pretrain_plan": {"dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
                              "original_median_spacing_after_transp": [1, 1, 1],
                              "image_reader_writer": "NibabelReaderWriter",
                              "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                              "configurations": {"onemmiso": config}, "experiment_planner_used": "ExperimentPlanner"},
            "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": list(patch), **keys}


def save_like_nnssl(net: nn.Module, path, plan: dict, trainer: str) -> None:
    """What nnssl AbstractBaseTrainer.save_checkpoint writes."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": optimizer.state_dict(),
                "grad_scaler_state": None, "logging": {"train_losses": [0.5, 0.4]}, "_best_ema": None,
                "current_epoch": 3, "init_args": {"configuration_name": "onemmiso", "fold": 0},
                "trainer_name": trainer, "nnssl_adaptation_plan": plan}, path)


def ours(out_dir, dtype=torch.float32) -> tuple[nn.Module, dict]:
    ckpt = load_checkpoint_safely(out_dir / CHECKPOINT_FILE)
    net = PretrainMetadata.from_dict(ckpt["fomo_metadata"]).build_network(num_outputs=1).eval()
    result = net.load_state_dict(ckpt["network_weights"], strict=False)   # a decoder left out stays fresh
    assert result.unexpected_keys == [] and not any(k.startswith(("encoder.", "eva.", "down_projection."))
                                                    for k in result.missing_keys)
    return net.to(dtype), ckpt


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---- nnssl in ------------------------------------------------------------------------------------------
def test_nnssl_resenc_l_is_the_same_network_and_plans_like_its_pretraining(tmp_path):
    theirs = nnssl_resenc()
    save_like_nnssl(theirs, tmp_path / "checkpoint_final.pth", adaptation_plan("ResEncL"), "BaseMAETrainer")
    report = import_checkpoint(tmp_path / "checkpoint_final.pth", tmp_path / "imported")
    assert report.format == "nnssl" and report.container == "nnssl checkpoint" and report.decoder_mapped
    assert report.left_out == [] and any("the tensors decide" in a for a in report.assumptions)   # tiny, not ResEnc-L
    settings = {k: v["value"] for k, v in report.settings.items()}
    assert settings["spacing"] == [4.0] * 3 and settings["patch_size"] == [32] * 3
    assert settings["normalization"] == ["ZScoreNormalization"] and settings["use_mask_for_norm"] == [False]
    assert report.settings["spacing"]["from"].startswith("adaptation plan")
    mine, ckpt = ours(tmp_path / "imported")
    assert ckpt["fomo_metadata"]["epochs_trained"] == 3
    with torch.no_grad():
        d32 = max_diff(theirs(XS), mine(XS))
        d64 = max_diff(theirs.double()(XS.double()), mine.double()(XS.double()))
    print(f"\nnnssl ResEnc U-Net, whole network: max |diff| float32 {d32}, float64 {d64}")
    assert d32 <= TOLERANCE and d64 == 0.0


class NoSkipResEncUNet(nn.Module):
    """nnssl architectures/noskipResEncUNet.py: dynamic-network-architectures' ResidualEncoder (bottleneck
    only) and a decoder whose stages take the upsampled features alone (C -> C), one `seg_layer`."""

    def __init__(self, features=(4, 8, 16, 32), blocks=(1, 2, 1, 2)):
        from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
        from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

        super().__init__()
        n, layers = len(features), dict(conv_bias=True, norm_op=nn.InstanceNorm3d,
                                         norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
                                         dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
        self.encoder = ResidualEncoder(1, n, list(features), nn.Conv3d, 3, [1] + [2] * (n - 1), list(blocks),
                                       return_skips=False, **layers)
        self.decoder = nn.Module()
        self.decoder.encoder = self.encoder
        self.decoder.stages = nn.ModuleList(StackedConvBlocks(1, nn.Conv3d, features[-s - 1], features[-s - 1], 3, 1,
                                                              **layers) for s in range(1, n))
        self.decoder.transpconvs = nn.ModuleList(nn.ConvTranspose3d(features[-s], features[-s - 1], 2, 2)
                                                 for s in range(1, n))
        self.decoder.seg_layer = nn.Conv3d(features[0], 1, 1)


def test_nnssl_noskip_resenc_maps_the_encoder_and_leaves_the_decoder_out_with_the_reason(tmp_path):
    theirs = randomised(NoSkipResEncUNet(), seed=6)
    save_like_nnssl(theirs, tmp_path / "checkpoint_final.pth", adaptation_plan("NoSkipResEncL"), "BaseMAETrainer")
    report = import_checkpoint(tmp_path / "checkpoint_final.pth", tmp_path / "imported")
    assert not report.decoder_mapped and {e["source"].split(".")[0] for e in report.left_out} == {"decoder"}
    assert all("no skip connections" in e["reason"] for e in report.left_out)
    mine, _ = ours(tmp_path / "imported")
    with torch.no_grad():
        d32 = max_diff(theirs.encoder(XS), mine.encoder(XS)[-1])
    print(f"\nnnssl NoSkipResEncL, bottleneck: max |diff| float32 {d32}")
    assert d32 <= TOLERANCE


def test_nnssl_primus_encoder_gives_the_same_features_in_dna_primus(tmp_path):
    torch.manual_seed(1)
    theirs = randomised(EvaMAE(), seed=1)
    save_like_nnssl(theirs, tmp_path / "checkpoint_final.pth", adaptation_plan("PrimusM", primus_keys=True),
                    "BaseEvaMAETrainer")
    report = import_checkpoint(tmp_path / "checkpoint_final.pth", tmp_path / "imported", fmt="nnssl")
    assert report.network_class == "dynamic_network_architectures.architectures.primus.Primus"
    assert not report.decoder_mapped and {e["source"].split(".")[0] for e in report.left_out} == {
        "decoder", "up_projection", "mask_token"}
    adapted = {part for e in report.adapted for part in e["source"].split(".")}
    assert {"pos_embed", "q_proj", "k_proj"} <= adapted and "v_proj" not in adapted
    assert report.settings["mask_unit"]["value"] == 8
    mine, _ = ours(tmp_path / "imported")

    def features(net):
        x = net.down_projection(X.to(net.down_projection.proj.weight.dtype))
        _, _, w, h, d = x.shape
        tokens, _ = net.eva(rearrange(x, "b c w h d -> b (w h d) c"))
        return rearrange(tokens, "b (w h d) c -> b c w h d", h=h, w=w, d=d)

    with torch.no_grad():
        d32 = max_diff(theirs.encode(X), features(mine))
        d64 = max_diff(theirs.double().encode(X.double()), features(mine.double()))
    print(f"\nnnssl Primus (EvaMAE) encoder: max |diff| float32 {d32}, float64 {d64}")
    assert d32 <= TOLERANCE and d64 <= 1e-12


def test_primus_already_in_dna_token_order_is_copied_unchanged(tmp_path):
    from dynamic_network_architectures.architectures.primus import Primus

    theirs = randomised(Primus(input_channels=1, embed_dim=24, patch_embed_size=(8, 8, 8), num_classes=1,
                               eva_depth=4, eva_numheads=4, input_shape=(32, 32, 32)), seed=8)
    save_like_nnssl(theirs, tmp_path / "checkpoint_final.pth", adaptation_plan("PrimusM", primus_keys=True), "ft")
    report = import_checkpoint(tmp_path / "checkpoint_final.pth", tmp_path / "imported")
    assert report.adapted == [] and report.left_out == [] and report.decoder_mapped
    mine, _ = ours(tmp_path / "imported")
    with torch.no_grad():
        assert max_diff(theirs.double()(X.double()), mine.double()(X.double())) == 0.0


def test_asparagus_primus_reads_its_run_config_and_gives_the_same_output(tmp_path):
    # asparagus primus_debug, saved as asparagus's pretraining saves it, its Hydra config beside
    theirs = randomised(GardeningPrimus(input_channels=1, num_classes=1, input_shape=[32, 32, 32], embed_dim=24,
                                        patch_embed_size=(8, 8, 8), eva_depth=4, eva_numheads=4), seed=2)
    run = tmp_path / "run_id=0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "hydra").mkdir()
    (run / "hydra" / "config.yaml").write_text(
        "model:\n  pretrain_net: primus_debug\n  patch_embed_size: 8\ntraining:\n  patch_size: [32, 32, 32]\n"
        "  mask_ratio: 0.6\n  mask_patch_size: ${model.patch_embed_size}\n")
    src = save_like_lightning(theirs, run / "checkpoints" / "last.ckpt", learning_rate=3e-4)
    report = import_checkpoint(src, tmp_path / "imported", spacing=4.0)
    assert report.format == "asparagus" and report.decoder_mapped and report.left_out == []
    assert report.settings["patch_size"]["from"].endswith("training.patch_size")
    assert report.settings["mask_unit"] == {"value": 8,
                                            "from": f"{run / 'hydra' / 'config.yaml'}: training.mask_patch_size"}
    mine, _ = ours(tmp_path / "imported")
    with torch.no_grad():
        d32 = max_diff(theirs(X), mine(X))
        d64 = max_diff(theirs.double()(X.double()), mine.double()(X.double()))
    print(f"\nasparagus Primus, whole network: max |diff| float32 {d32}, float64 {d64}")
    assert d32 <= TOLERANCE and d64 <= 1e-12


def test_primus_import_is_refused_by_plan_transfer_with_the_reason(tmp_path):
    from fomo_nnunet.plans.transfer_planner import plan_transfer

    theirs = randomised(GardeningPrimus(input_channels=1, num_classes=1, input_shape=[32, 32, 32], embed_dim=24,
                                        patch_embed_size=(8, 8, 8), eva_depth=4, eva_numheads=4), seed=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in theirs.state_dict().items()}}, tmp_path / "p.ckpt")
    import_checkpoint(tmp_path / "p.ckpt", tmp_path / "imported")   # patch from the position embedding: 32
    with pytest.raises(ValueError, match="U-Net encoder's stages"):
        plan_transfer(999, str(tmp_path / "imported"))


# ---- a contradicting --format, whichever the network ---------------------------------------------------
def _gardening_unet_state(norm: str) -> dict:
    from gardening_tools.modules.networks.unet import UNet

    state = UNet(input_channels=1, output_channels=1, starting_filters=4).state_dict()
    return {f"model.{k.replace('.norm_op.', norm)}": v for k, v in state.items() if ".all_modules." not in k}


@pytest.mark.parametrize("network,fmt,says", [
    ("asparagus_resenc", "fomo25-baseline", "written by asparagus"),
    ("asparagus_resenc", "nnssl", "written by asparagus"),
    ("asparagus_unet", "fomo25-baseline", "gardening-tools' ('norm_op')"),
    ("baseline_unet", "asparagus", "'norm' (AMAES / yucca)"),
    ("nnssl_resenc", "asparagus", "an nnssl checkpoint"),
    ("dna_names_without_plan", "nnssl", "this file has none"),
])
def test_format_that_contradicts_the_file_is_refused_with_the_reason(tmp_path, network, fmt, says):
    path = tmp_path / "ckpt.pth"
    if network == "asparagus_resenc":
        torch.save({"state_dict": {f"model.{k}": v for k, v in tiny_resenc(True).state_dict().items()}}, path)
    elif network in ("asparagus_unet", "baseline_unet"):
        norm = ".norm_op." if network == "asparagus_unet" else ".norm."
        torch.save({"state_dict": _gardening_unet_state(norm)}, path)
    elif network == "nnssl_resenc":
        save_like_nnssl(nnssl_resenc(), path, adaptation_plan("ResEncL"), "BaseMAETrainer")
    else:
        torch.save({"state_dict": {f"model.{k}": v for k, v in nnssl_resenc().state_dict().items()}}, path)
    with pytest.raises(UnknownArchitectureError, match=f"--format {fmt}, but this is") as e:
        import_checkpoint(path, tmp_path / "out", fmt=fmt)
    assert says in str(e.value)
    assert not (tmp_path / "out").exists()


# ---- ours out ------------------------------------------------------------------------------------------
def our_checkpoint(tmp_path) -> tuple[nn.Module, object]:
    """A tiny pretraining checkpoint of ours (the `tiny` preset, random weights, recorded masking)."""
    from fomo_nnunet.models.checkpoints import metadata_from_preset

    meta = metadata_from_preset("tiny")
    meta["objective"], meta["objective_settings"] = "mae", {"mask_ratio": 0.7, "mask_unit": 8,
                                                             "use_mask_for_norm": [True]}
    net = randomised(PretrainMetadata.from_dict(meta).build_network(num_outputs=1), seed=4)
    path = tmp_path / "ours" / "checkpoint_final.pth"
    path.parent.mkdir()
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta}, path)
    return net, path


def _round_trip_is_exact(original: dict, out_dir, without: tuple[str, ...] = ()) -> None:
    back = load_checkpoint_safely(out_dir / CHECKPOINT_FILE)
    weights = {k: v for k, v in back["network_weights"].items() if k not in without}
    expected = {k: v for k, v in original["network_weights"].items() if k not in without}
    assert set(weights) == set(expected)
    assert all(torch.equal(weights[k], v) for k, v in expected.items())
    for key in ("network_class", "network_kwargs", "patch_size", "spacing", "normalization", "num_input_channels"):
        assert back["fomo_metadata"][key] == original["fomo_metadata"][key], key
    for key in ("mask_ratio", "mask_unit", "use_mask_for_norm"):
        assert back["fomo_metadata"]["objective_settings"][key] == original["fomo_metadata"]["objective_settings"][key]


def test_asparagus_export_loads_into_gardening_tools_and_round_trips_exactly(tmp_path):
    mine, path = our_checkpoint(tmp_path)
    report = export_checkpoint(path, tmp_path / "asparagus", "asparagus")
    exported = torch.load(tmp_path / "asparagus" / "checkpoints" / "last.ckpt", weights_only=True)
    theirs = GardeningResEncUNet(input_channels=1, output_channels=1, dimensions="3D", kernel_size=3, stride=2,
                                 features_per_stage=(8, 16, 32, 64), n_blocks_per_stage=(1, 1, 1, 1),
                                 n_conv_per_stage_decoder=(1, 1, 1)).eval()
    theirs.load_state_dict({k[len("model."):]: v for k, v in exported["state_dict"].items()}, strict=True)
    with torch.no_grad():
        d32 = max_diff(theirs(XS), mine.eval()(XS))
    print(f"\nexport asparagus -> gardening-tools ResidualEncoderUNet: max |diff| float32 {d32}; "
          f"left out {report.left_out}")
    assert d32 <= TOLERANCE and all(n.startswith("decoder.seg_layers.") for n in report.left_out)
    import_checkpoint(tmp_path / "asparagus" / "checkpoints" / "last.ckpt", tmp_path / "back")
    # deep-supervision outputs have no place in their network: the rest comes back unchanged
    _round_trip_is_exact(torch.load(path, weights_only=True), tmp_path / "back", tuple(report.left_out))


def test_asparagus_export_names_the_mask_unit_our_trainer_records_as_block_size(tmp_path):
    from fomo_nnunet.models.checkpoints import metadata_from_preset

    meta = metadata_from_preset("tiny")
    meta["objective"], meta["objective_settings"] = "mae", {"mask_ratio": 0.75, "block_size": 16}
    net = PretrainMetadata.from_dict(meta).build_network(num_outputs=1)
    path = tmp_path / "ours" / "checkpoint_final.pth"
    path.parent.mkdir()
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta}, path)
    export_checkpoint(path, tmp_path / "asparagus", "asparagus")
    exported = torch.load(tmp_path / "asparagus" / "checkpoints" / "last.ckpt", weights_only=True)
    assert exported["hyper_parameters"]["mask_patch_size"] == 16
    assert "patch_embed_size: 16" in (tmp_path / "asparagus" / "hydra" / "config.yaml").read_text()


def test_nnssl_export_loads_as_nnssl_builds_its_network_and_round_trips_exactly(tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    mine, path = our_checkpoint(tmp_path)
    export_checkpoint(path, tmp_path / "nnssl", "nnssl")
    exported = torch.load(tmp_path / "nnssl" / "checkpoint_final.pth", weights_only=True)
    plan = exported["nnssl_adaptation_plan"]
    assert plan == json.loads((tmp_path / "nnssl" / "adaptation_plan.json").read_text())
    arch = plan["architecture_plans"]
    # nnssl get_network_from_plans for a dynamic architecture: the class by name, arguments from the plan
    assert arch["arch_class_name"] == "ResidualEncoderUNet"
    theirs = get_network_from_plans(f"dynamic_network_architectures.architectures.unet.{arch['arch_class_name']}",
                                    arch["arch_kwargs"], arch["arch_kwargs_requiring_import"],
                                    plan["pretrain_num_input_channels"], 1, allow_init=False,
                                    deep_supervision=False).eval()
    theirs.load_state_dict(exported["network_weights"], strict=True)
    # nnssl's own check before pretraining (AbstractBaseTrainer._test_load_weight): encoder and stem by their keys
    for key in (plan["key_to_encoder"], plan["key_to_stem"]):
        theirs.get_submodule(key).load_state_dict(
            {k[len(key) + 1:]: v for k, v in exported["network_weights"].items() if k.startswith(key + ".")})
    with torch.no_grad():
        d64 = max_diff(theirs.double()(XS.double()), mine.double().eval()(XS.double()))
    print(f"\nexport nnssl -> ResidualEncoderUNet from the adaptation plan: max |diff| float64 {d64}")
    assert d64 == 0.0
    config = next(iter(plan["pretrain_plan"]["configurations"].values()))
    assert config["spacing"] == [4.0] * 3 and config["patch_size"] == [32] * 3
    import_checkpoint(tmp_path / "nnssl" / "checkpoint_final.pth", tmp_path / "back")
    _round_trip_is_exact(torch.load(path, weights_only=True), tmp_path / "back")
    assert json.loads((tmp_path / "back" / REPORT_JSON).read_text())["decoder_mapped"]


def test_export_cli_writes_and_refuses_with_one_line(tmp_path, capsys):
    from fomo_nnunet.cli import main

    _, path = our_checkpoint(tmp_path)
    assert main(["export-checkpoint", str(path), "-o", str(tmp_path / "out"), "--format", "nnssl"]) == 0
    assert "checkpoint_final.pth" in capsys.readouterr().out and (tmp_path / "out" / "adaptation_plan.json").is_file()
    with pytest.raises(SystemExit, match="does not exist|no such checkpoint"):
        main(["export-checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "o2"), "--format", "asparagus"])


def test_export_of_a_network_the_format_has_no_class_for_is_refused(tmp_path):
    from fomo_nnunet.models.checkpoints import metadata_from_preset

    path = tmp_path / "plain.pth"
    torch.save({"network_weights": {}, "fomo_metadata": metadata_from_preset("unet_b")}, path)
    for fmt in ("asparagus", "nnssl"):
        with pytest.raises(CheckpointError, match="PlainConvUNet, which"):
            export_checkpoint(path, tmp_path / fmt, fmt)


# ---- end to end: nnssl import -> plan transfer -> finetune -> bundle -> challenge entry (seg, embedding) --------
SEG, CLS = (904, "Dataset904_FOMO4Trigeminal"), (901, "Dataset901_FOMO1Infarct")
PLANS = "fomoImportedPlans"


@pytest.mark.slow
def test_imported_checkpoints_plan_finetune_bundle_and_run_the_challenge_entry(tasks_ws, tmp_path):
    """nnssl ResEnc (segmentation task and the embedding, bundled and run through the challenge entry) and
    asparagus ResEnc (classification task, planned and finetuned). Each import plans like its pretraining:
    nnssl's adaptation plan says 4 mm and 32^3 (no --patch / --spacing), the asparagus file is told."""
    root, env, _ = tasks_ws
    save_like_nnssl(nnssl_resenc(seed=5), tmp_path / "checkpoint_final.pth", adaptation_plan("ResEncL"),
                    "BaseMAETrainer")
    nnssl_dir, asparagus_dir = root / "imported_nnssl", root / "imported_asparagus"
    import_checkpoint(tmp_path / "checkpoint_final.pth", nnssl_dir)   # the CLI is this call
    import_checkpoint(save_like_lightning(tiny_resenc(True, seed=5), tmp_path / "last.ckpt"), asparagus_dir,
                      patch=32, spacing=4.0)
    # `fomo-nnunet plan transfer -d ID --pretrained DIR` per dataset, then nnUNetv2_preprocess, in one process
    run([sys.executable, "-c", "import sys; from fomo_nnunet.plans.transfer_planner import plan_transfer; "
         "from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess; a = sys.argv[1:]; "
         f"[plan_transfer(int(d), c, num_processes=1, plans_name='{PLANS}') for d, c in ((a[0], a[1]), (a[2], a[3]))]; "
         f"preprocess([int(a[0]), int(a[2])], '{PLANS}', ['3d_fullres'], [2], show_progress_bar=False)",
         str(SEG[0]), str(nnssl_dir), str(CLS[0]), str(asparagus_dir)], env)
    plans = json.loads((root / "preprocessed" / SEG[1] / f"{PLANS}.json").read_text())
    assert plans["fomo"]["pretrained_checkpoint"] == str(nnssl_dir / CHECKPOINT_FILE)
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["spacing"] == [4.0] * 3 and fullres["use_mask_for_norm"] == [False]   # the adaptation plan's
    assert fullres["normalization_schemes"] == ["ZScoreNormalization"]
    bin_dir = Path(sys.executable).parent
    jobs = [subprocess.Popen([str(bin_dir / "nnUNetv2_train"), str(d), "3d_fullres", "all", "-p", PLANS, "-tr", tr,
                              "-device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for d, tr in ((SEG[0], "nnUNetTrainerFomoSeg_tiny_smoke"), (CLS[0], "nnUNetTrainerFomoCls_tiny_smoke"))]
    for job in jobs:
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, out[-4000:]
    seg_model = root / "results" / SEG[1] / f"nnUNetTrainerFomoSeg_tiny_smoke__{PLANS}__3d_fullres"
    cls_model = root / "results" / CLS[1] / f"nnUNetTrainerFomoCls_tiny_smoke__{PLANS}__3d_fullres"
    seg_transfer = json.loads((seg_model / "fold_all" / "transfer_report.json").read_text())
    cls_transfer = json.loads((cls_model / "fold_all" / "transfer_report.json").read_text())
    assert any(n.startswith("encoder.stages.") for n in seg_transfer["loaded"])   # the nnssl encoder is used
    assert any("1->4 channels" in why for why in cls_transfer["adapted"].values())  # stem over 4 sequences
    from fomo_nnunet.challenge.bundle import build_bundle

    bundle = tmp_path / "bundle"
    # one pretrained checkpoint per bundle (the challenge's rule): the nnssl one; the asparagus-based classifier
    # has shown above that it plans and finetunes
    build_bundle(bundle, {4: str(seg_model)}, str(nnssl_dir / CHECKPOINT_FILE), folds=["all"])
    case = root / "raw" / SEG[1] / "imagesTs" / "casets000_0000.nii.gz"
    # the challenge entry for a segmentation task and for the embedding task, in one process
    run([sys.executable, "-c", "import sys; from fomo_nnunet.cli import main; a = sys.argv[1:]; "
         "sys.exit(main(['fomo26', 'task4', '--t2', a[0], '--output', a[1], '--bundle', a[3], '--no-mirroring']) "
         "or main(['fomo26', 'task6', '--input', a[0], '--output', a[2], '--bundle', a[3]]))",
         str(case), str(tmp_path / "seg.nii.gz"), str(tmp_path / "emb.npy"), str(bundle)], env)
    assert nib.load(tmp_path / "seg.nii.gz").shape == nib.load(case).shape
    embedding = np.load(tmp_path / "emb.npy", allow_pickle=False)
    assert embedding.shape == (32,) and np.all(np.isfinite(embedding))
