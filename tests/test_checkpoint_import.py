"""`fomo-nnunet import-checkpoint`: the organisers' published checkpoints as our checkpoints.

The organisers' networks are built with their own published package, gardening-tools (asparagus's
ResidualEncoderUNet and UNet), at a tiny width with random weights (norm affines included), and
saved as their framework saves them: a Lightning checkpoint of a LightningModule holding the network
as `self.model`. yucca (the FOMO25 baseline's base package) is not installed: it pins wandb, weave,
monai and lightning, none of which our tests need. The baseline's state-dict layout is therefore
built from its published module definitions (AMAES / FOMO25 baseline `ConvDropoutNormNonlin`: `conv`,
`norm`, `activation`, no `all_modules` registry, no dropout module at p = 0) by renaming the same
gardening-tools UNet's tensors, whose forward computation is the baseline's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fomo_nnunet.models.checkpoint_import import (CHECKPOINT_FILE, REPORT_JSON, REPORT_TEXT, InexactArchitectureError,
                                           UnknownArchitectureError, import_checkpoint)
from fomo_nnunet.models.transfer import CheckpointError, PretrainMetadata, load_checkpoint_safely

L = pytest.importorskip("lightning", reason="test extra: lightning (how the organisers' frameworks save)")
pytest.importorskip("gardening_tools", reason="test extra: gardening-tools (the organisers' networks)")
from gardening_tools.modules.networks.resunet import ResidualEncoderUNet as GardeningResEncUNet  # noqa: E402
from gardening_tools.modules.networks.unet import UNet as GardeningUNet  # noqa: E402

TOLERANCE = 1e-5


class _FrameworkModule(L.LightningModule):
    """What asparagus's SelfSupervisedModule and the baseline's SelfSupervisedModel save: the network as
    `self.model` and the constructor's arguments as hyper-parameters."""

    def __init__(self, model: torch.nn.Module, **hyper_parameters):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model


def save_like_lightning(net: torch.nn.Module, path: Path, **hyper_parameters) -> Path:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(_FrameworkModule(net, **hyper_parameters))
    trainer.save_checkpoint(path)
    return path


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (norm scales and shifts too, which are 1 and 0 at initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def tiny_resenc(skips: bool, seed: int = 0) -> torch.nn.Module:
    return randomised(GardeningResEncUNet(input_channels=1, output_channels=1, dimensions="3D", kernel_size=3,
                                          stride=2, features_per_stage=(4, 8, 16, 32), n_blocks_per_stage=(1, 2, 1, 2),
                                          n_conv_per_stage_decoder=(1, 2, 1), use_skip_connections=skips), seed)


def ours(out_dir: Path) -> tuple[torch.nn.Module, dict]:
    """Our network rebuilt from the imported checkpoint's metadata, with the imported weights."""
    ckpt = load_checkpoint_safely(out_dir / CHECKPOINT_FILE)
    meta = PretrainMetadata.from_dict(ckpt["fomo_metadata"])
    net = meta.build_network(num_outputs=1).eval()
    result = net.load_state_dict(ckpt["network_weights"], strict=False)
    assert result.unexpected_keys == []
    return net, ckpt


def max_differences(theirs: torch.nn.Module, mine: torch.nn.Module, x: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return [float((a - b).abs().max()) for a, b in zip(theirs.encoder(x), mine.encoder(x), strict=True)]


@pytest.mark.parametrize("skips", [True, False], ids=["skips", "no-skips"])
def test_asparagus_resenc_gives_the_same_encoder_features_and_output(tmp_path, skips):
    theirs = tiny_resenc(skips)
    src = save_like_lightning(theirs, tmp_path / "last.ckpt", learning_rate=1e-4, warmup_epochs=10)
    report = import_checkpoint(src, tmp_path / "imported", patch=32, spacing=4.0)
    assert report.format == "asparagus" and "ResidualEncoderUNet" in report.network_class
    mine, ckpt = ours(tmp_path / "imported")
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    diffs = max_differences(theirs, mine, x)
    print(f"\nasparagus ResEnc ({'skips' if skips else 'no skips'}): max |diff| per encoder stage {diffs}")
    assert len(diffs) == 4 and max(diffs) <= TOLERANCE
    decoder_left_out = [e for e in report.left_out if e["source"].startswith("decoder.")]
    if skips:
        with torch.no_grad():
            out_diff = float((theirs(x) - mine(x)).abs().max())
        print(f"asparagus ResEnc output: max |diff| {out_diff}")
        assert out_diff <= TOLERANCE and report.decoder_mapped and decoder_left_out == []
    else:
        assert not report.decoder_mapped and decoder_left_out
        assert all("no skip connections" in e["reason"] for e in decoder_left_out)
        assert not any(k.startswith("decoder.stages.") for k in ckpt["network_weights"])
        assert "no skip connections" in (tmp_path / "imported" / REPORT_TEXT).read_text()
    settings = json.loads((tmp_path / "imported" / REPORT_JSON).read_text())["settings"]
    assert settings["normalization"]["value"] == ["ZScoreNormalization"]
    assert settings["patch_size"] == {"value": [32, 32, 32], "from": "--patch"}


def baseline_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gardening-tools UNet tensors under the AMAES / FOMO25-baseline names (norm `norm`, no `all_modules`),
    inside a torch.compile'd LightningModule (`model._orig_mod.`), as the baseline's --compile saves them."""
    return {k.replace("model.", "model._orig_mod.", 1).replace(".norm_op.", ".norm."): v
            for k, v in state.items() if ".all_modules." not in k}


@pytest.mark.parametrize("decoder_convs,skips", [(2, True), (1, False)], ids=["unet_b", "unet_b_lw_dec"])
def test_fomo25_baseline_unet_gives_the_same_encoder_features_and_output(tmp_path, decoder_convs, skips):
    theirs = randomised(GardeningUNet(input_channels=1, output_channels=1, starting_filters=4,
                                      decoder_basic_block=_decoder_block(decoder_convs),
                                      use_skip_connections=skips), seed=2)
    path = save_like_lightning(theirs, tmp_path / "last.ckpt", model_name="unet_b", patch_size=(32, 32, 32),
                               mask_patch_size=4, mask_ratio=0.6, config={"batch_size": 2})
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = baseline_layout(ckpt["state_dict"])
    torch.save(ckpt, path)
    report = import_checkpoint(path, tmp_path / "imported", spacing=4.0)
    assert report.format == "fomo25-baseline" and report.network_class == "fomo_nnunet.networks.PlainConvUNetMaxPool"
    assert report.settings["patch_size"] == {"value": [32, 32, 32], "from": "hyper_parameters['patch_size']"}
    assert report.settings["normalization"]["value"] == ["RescaleTo01Normalization"]
    mine, _ = ours(tmp_path / "imported")
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    diffs = max_differences(theirs, mine, x)
    print(f"\nFOMO25 baseline U-Net ({'skips' if skips else 'no skips'}): max |diff| per encoder stage {diffs}")
    assert len(diffs) == 5 and max(diffs) <= TOLERANCE
    if skips:
        with torch.no_grad():
            out_diff = float((theirs(x) - mine(x)).abs().max())
        print(f"FOMO25 baseline U-Net output: max |diff| {out_diff}")
        assert out_diff <= TOLERANCE and report.decoder_mapped
    else:
        assert not report.decoder_mapped and all("no skip connections" in e["reason"] for e in report.left_out)


def _decoder_block(n: int):
    from gardening_tools.modules.networks.components.blocks import MultiLayerConvDropoutNormNonlin

    return MultiLayerConvDropoutNormNonlin.get_block_constructor(n)


@pytest.mark.slow
def test_full_size_resenc_b_maps_every_encoder_tensor_by_name_and_shape(tmp_path):
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.models.transfer import _model_tensors

    # asparagus resenc_unet_b as the FOMO26 organisers pretrain it (use_skip_connections: False)
    torch.manual_seed(0)
    theirs = GardeningResEncUNet(input_channels=1, output_channels=1, dimensions="3D", kernel_size=3, stride=2,
                                 features_per_stage=(32, 64, 128, 256, 320, 320), n_blocks_per_stage=(1, 3, 4, 6, 6, 6),
                                 n_conv_per_stage_decoder=(1, 1, 1, 1, 1), use_skip_connections=False)
    src = save_like_lightning(theirs, tmp_path / "last.ckpt", learning_rate=1e-4)
    del theirs
    start = time.perf_counter()
    report = import_checkpoint(src, tmp_path / "imported")
    print(f"\nfull-size ResEnc-B import: {time.perf_counter() - start:.1f} s; {report.summary()}")
    assert report.architecture.startswith("ResEnc-B ")
    meta = PretrainMetadata.from_dict(load_checkpoint_safely(tmp_path / "imported" / CHECKPOINT_FILE)["fomo_metadata"])
    preset = metadata_from_preset("resenc_b")["network_kwargs"]
    for key in ("features_per_stage", "n_blocks_per_stage", "kernel_sizes", "strides", "conv_bias"):
        assert meta.network_kwargs[key] == preset[key], key   # the organisers' ResEnc-B is our resenc_b preset
    with torch.device("meta"):
        target = meta.build_network(num_outputs=1)
    encoder = {canonical: tuple(t.shape) for canonical, _, t in _model_tensors(target) if canonical.startswith("encoder.")}
    mapped = {e["target"]: tuple(e["shape"]) for e in report.mapped}
    assert mapped == encoder
    assert report.encoder_params == sum(int(np.prod(s)) for s in encoder.values()) > 85_000_000
    assert {e["source"].split(".")[0] for e in report.left_out} == {"decoder"}


def test_unknown_architecture_is_refused_naming_what_it_reads(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Conv3d(4, 4, 3)).state_dict(), path)
    with pytest.raises(UnknownArchitectureError, match="not a network layout this importer knows"):
        import_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out" / CHECKPOINT_FILE).exists()


def test_finetuned_classifier_with_max_pool_shortcuts_is_refused_not_half_loaded(tmp_path):
    state = {f"model.{k}": v for k, v in tiny_resenc(True).state_dict().items() if not k.startswith("decoder.")}
    state["model.decoder.fc.weight"] = torch.zeros(2, 32)
    torch.save({"state_dict": state}, tmp_path / "cls.ckpt")
    with pytest.raises(InexactArchitectureError, match="max-pooling"):
        import_checkpoint(tmp_path / "cls.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    src = save_like_lightning(tiny_resenc(True), tmp_path / "last.ckpt")
    data = src.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        import_checkpoint(cut, tmp_path / "out")


class _RunsCode:
    """A pickle that would create a folder if it were ever unpickled with code execution."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    state = {f"model.{k}": v for k, v in tiny_resenc(True).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"callback": _RunsCode(str(marker))}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="not plain data"):
        import_checkpoint(tmp_path / "evil.ckpt", tmp_path / "out")
    assert not marker.exists()


def test_cli_reports_and_refuses_with_one_line(tmp_path, capsys):
    from fomo_nnunet.cli import main

    src = save_like_lightning(tiny_resenc(False), tmp_path / "last.ckpt")
    assert main(["import-checkpoint", str(src), "-o", str(tmp_path / "imp"), "--patch", "32", "--spacing", "4"]) == 0
    assert "decoder left out" in capsys.readouterr().out and (tmp_path / "imp" / CHECKPOINT_FILE).is_file()
    with pytest.raises(SystemExit, match="multiple of 8"):
        main(["import-checkpoint", str(src), "-o", str(tmp_path / "imp2"), "--patch", "20"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["import-checkpoint", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "imp3")])
