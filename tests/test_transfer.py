import json

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from fomo_nnunet.models.heads import EncoderClassifier, PoolingHead
from fomo_nnunet.models.transfer import (
    METADATA_KEY, WEIGHTS_KEY, CheckpointError, PretrainMetadata, WeightTransferError, load_checkpoint_safely,
    read_metadata, split_state_dict, transfer_from_checkpoint, transfer_weights,
)

STEM_WEIGHT = {ResidualEncoderUNet: "encoder.stem.convs.0.conv.weight",
               PlainConvUNet: "encoder.stages.0.0.convs.0.conv.weight"}


def tiny_unet(cls=ResidualEncoderUNet, input_channels=1, features=(4, 8, 16), num_classes=2, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    n = len(features)
    depth = dict(n_blocks_per_stage=(1, 2, 2, 2)[:n]) if cls is ResidualEncoderUNet else dict(n_conv_per_stage=2)
    net = cls(input_channels=input_channels, n_stages=n, features_per_stage=features, conv_op=nn.Conv3d,
              kernel_sizes=3, strides=(1,) + (2,) * (n - 1), num_classes=num_classes, n_conv_per_stage_decoder=1,
              conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
              nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, **depth)
    net.apply(net.initialize)
    # Norm layers start at exactly 1 and 0 in every seed; make every tensor unique to its seed.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def clone_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def metadata() -> PretrainMetadata:
    return PretrainMetadata(
        network_class="dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        network_kwargs={"n_stages": 3, "features_per_stage": (4, 8, 16), "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_blocks_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        arch_kwargs_requires_import=["conv_op", "norm_op", "dropout_op", "nonlin"],
        patch_size=(16, 16, 16), spacing=[1.0, 1.0, 1.0], normalization=["ZScoreNormalization"],
        num_input_channels=1, channel_meaning=["any single MRI sequence, z-scored per scan"], objective="mae",
        objective_settings={"mask_ratio": 0.6, "block_size": 4, "loss": "mse"}, iterations_trained=250,
        epochs_trained=1, plans_name="fomoPretrainPlans", dataset_name="Dataset900_FOMOPretrain",
        trainer_name="nnUNetTrainerFomoMAE")


def nnunet_like_checkpoint(net: nn.Module) -> dict:
    """The dict nnU-Net 2.8.1's save_checkpoint writes, with the value types it writes, plus our metadata."""
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    net(torch.zeros(1, 1, 16, 16, 16))[0].sum().backward()
    optimizer.step()
    return {
        WEIGHTS_KEY: net.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                    "dice_per_class_or_region": [[np.float64(0.5), np.float64(float("nan"))]],
                    "train_losses": [np.float32(0.7)], "val_losses": [np.float32(0.6)], "lrs": [0.01],
                    "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
        "_best_ema": np.float64(0.5),
        "current_epoch": 1,
        "init_args": {"plans": {"plans_name": "fomoPretrainPlans"}, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": {"labels": {"background": 0}}, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerFomoMAE",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        METADATA_KEY: metadata().to_dict(),
    }


@pytest.mark.parametrize("cls", [ResidualEncoderUNet, PlainConvUNet])
def test_split_state_dict_files_every_tensor_once_by_part(cls):
    net = tiny_unet(cls)
    state = net.state_dict()
    assert any(k.startswith("decoder.encoder.") for k in state)  # the duplicates exist ...
    parts = split_state_dict(state)
    names = [n for part in parts.values() for n in part]
    assert len(names) == len(set(names))
    assert not any(n.startswith("decoder.encoder.") for n in names)  # ... and are filed as encoder
    assert set(names) == {k.removeprefix("decoder.") if k.startswith("decoder.encoder.") else k for k in state}
    assert STEM_WEIGHT[cls] in parts["stem"]
    assert all(n.startswith("encoder.") for n in parts["stem"] | parts["encoder"])
    assert set(parts["output"]) == {k for k in state if k.startswith("decoder.seg_layers.")}
    assert parts["decoder"] and not any(n.startswith("decoder.seg_layers.") for n in parts["decoder"])
    assert not parts["other"]


@pytest.mark.parametrize("cls", [ResidualEncoderUNet, PlainConvUNet])
def test_transfer_copies_every_encoder_and_decoder_tensor_but_not_the_output_layers(cls):
    pretrained = clone_state(tiny_unet(cls, seed=1))
    model = tiny_unet(cls, seed=2)
    before = clone_state(model)
    report = transfer_weights(model, pretrained)
    after = model.state_dict()
    for name, tensor in after.items():
        if name.startswith("decoder.seg_layers."):
            assert torch.equal(tensor, before[name]) and not torch.equal(tensor, pretrained[name]), name
        else:
            assert torch.equal(tensor, pretrained[name]), name
    assert not report.adapted
    assert set(report.fresh) == {k for k in after if k.startswith("decoder.seg_layers.")}


@pytest.mark.parametrize("cls", [ResidualEncoderUNet, PlainConvUNet])
def test_single_channel_stem_is_repeated_over_channels_and_divided_by_their_number(cls):
    pretrained_net = tiny_unet(cls, seed=1)
    pretrained = clone_state(pretrained_net)
    model = tiny_unet(cls, input_channels=4, seed=2)
    report = transfer_weights(model, pretrained)
    stem = STEM_WEIGHT[cls]
    assert torch.allclose(model.state_dict()[stem], pretrained[stem].repeat(1, 4, 1, 1, 1) / 4)
    assert list(report.adapted) == [stem]
    assert report.adapted[stem] == "stem: 1->4 channels"
    stem_storage = model.state_dict()[stem].data_ptr()
    for name, tensor in model.state_dict().items():
        if name.startswith(("encoder.", "decoder.encoder.")) and tensor.data_ptr() != stem_storage:
            assert torch.equal(tensor, pretrained[name]), name
    # Four identical inputs now give what the single-channel network gave for one.
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        single = pretrained_net.encoder(x)[-1]
        repeated = model.encoder(x.repeat(1, 4, 1, 1, 1))[-1]
    assert torch.allclose(single, repeated, atol=1e-4)


def test_stem_with_as_many_channels_as_the_model_is_copied_as_is():
    pretrained = clone_state(tiny_unet(input_channels=3, seed=1))
    model = tiny_unet(input_channels=3, seed=2)
    report = transfer_weights(model, pretrained)
    assert not report.adapted
    stem = STEM_WEIGHT[ResidualEncoderUNet]
    assert torch.equal(model.state_dict()[stem], pretrained[stem])


def test_another_architecture_raises_naming_the_parameter_and_both_shapes_and_changes_nothing():
    pretrained = clone_state(tiny_unet(features=(4, 8, 16), seed=1))
    model = tiny_unet(features=(8, 16, 32), seed=2)
    before = clone_state(model)
    with pytest.raises(WeightTransferError) as error:
        transfer_weights(model, pretrained)
    message = str(error.value)
    assert "encoder.stem.convs.0.conv.weight" in message
    assert "(4, 1, 3, 3, 3)" in message and "(8, 1, 3, 3, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_multichannel_stem_that_cannot_be_adapted_is_refused():
    pretrained = clone_state(tiny_unet(input_channels=2, seed=1))
    with pytest.raises(WeightTransferError, match=r"\(4, 2, 3, 3, 3\).*\(4, 3, 3, 3, 3\)"):
        transfer_weights(tiny_unet(input_channels=3, seed=2), pretrained)


def test_checkpoint_with_a_deeper_encoder_is_refused():
    pretrained = clone_state(tiny_unet(features=(4, 8, 16, 16), seed=1))
    with pytest.raises(WeightTransferError, match="encoder.stages.3"):
        transfer_weights(tiny_unet(features=(4, 8, 16), seed=2), pretrained)


def test_non_strict_transfer_leaves_mismatched_encoder_tensors_fresh_with_a_note():
    pretrained = clone_state(tiny_unet(features=(4, 8, 16), seed=1))
    model = tiny_unet(features=(4, 8, 32), seed=2)
    before = clone_state(model)
    report = transfer_weights(model, pretrained, strict_encoder=False)
    assert report.fresh["encoder.stages.2.blocks.0.conv1.conv.weight"] == "encoder mismatch"
    assert torch.equal(model.state_dict()["encoder.stages.2.blocks.0.conv1.conv.weight"],
                       before["encoder.stages.2.blocks.0.conv1.conv.weight"])
    assert torch.equal(model.state_dict()["encoder.stages.1.blocks.0.conv1.conv.weight"],
                       pretrained["encoder.stages.1.blocks.0.conv1.conv.weight"])
    assert any("(16, 8, 3, 3, 3)" in note and "(32, 8, 3, 3, 3)" in note for note in report.notes)


def test_decoder_stays_fresh_when_load_decoder_is_false():
    pretrained = clone_state(tiny_unet(seed=1))
    model = tiny_unet(seed=2)
    before = clone_state(model)
    report = transfer_weights(model, pretrained, load_decoder=False)
    for name, tensor in model.state_dict().items():
        if name.startswith("decoder.") and not name.startswith("decoder.encoder."):
            assert torch.equal(tensor, before[name]), name
        else:
            assert torch.equal(tensor, pretrained[name]), name
    assert set(report.fresh.values()) == {"decoder not loaded", "output layers"}


def test_decoder_tensors_that_do_not_fit_are_skipped_with_a_note():
    pretrained = clone_state(tiny_unet(seed=1))
    pretrained["decoder.stages.0.convs.0.conv.weight"] = torch.zeros(8, 32, 3, 3, 3)
    del pretrained["decoder.stages.0.convs.0.all_modules.0.weight"]
    del pretrained["decoder.transpconvs.0.weight"]
    model = tiny_unet(seed=2)
    before = clone_state(model)
    report = transfer_weights(model, pretrained)
    assert report.fresh["decoder.stages.0.convs.0.conv.weight"] == "decoder mismatch"
    assert report.fresh["decoder.transpconvs.0.weight"] == "decoder not in checkpoint"
    assert torch.equal(model.state_dict()["decoder.transpconvs.0.weight"], before["decoder.transpconvs.0.weight"])
    assert torch.equal(model.state_dict()["decoder.transpconvs.1.weight"], pretrained["decoder.transpconvs.1.weight"])
    assert any("(8, 32, 3, 3, 3)" in n and "(8, 16, 3, 3, 3)" in n for n in report.notes)


def test_report_counts_each_distinct_tensor_once_and_summarises_them():
    pretrained = clone_state(tiny_unet(seed=1))
    model = tiny_unet(input_channels=4, seed=2)
    report = transfer_weights(model, pretrained)
    distinct = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    assert report.n_loaded + report.n_adapted + report.n_fresh == len(distinct)
    assert report.loaded_params + report.adapted_params + report.fresh_params == sum(
        t.numel() for t in distinct.values())
    assert report.n_fresh == 4  # two deep-supervision seg layers, weight and bias
    summary = report.summary()
    assert summary.startswith(f"loaded {report.n_loaded} tensors (")
    assert "adapted 1 (stem: 1->4 channels)" in summary
    assert "fresh 4 (" in summary and "output layers 4" in summary


def test_transfer_accepts_checkpoints_of_wrapped_networks():
    pretrained = {"module." + k: v for k, v in clone_state(tiny_unet(seed=1)).items()}
    model = tiny_unet(seed=2)
    transfer_weights(model, pretrained)
    assert torch.equal(model.state_dict()["encoder.stem.convs.0.conv.weight"],
                       pretrained["module.encoder.stem.convs.0.conv.weight"])


def test_encoder_classifier_receives_the_encoder_and_keeps_a_fresh_head():
    pretrained = clone_state(tiny_unet(seed=1))
    encoder = tiny_unet(input_channels=2, seed=2).encoder
    classifier = EncoderClassifier(encoder, PoolingHead([4, 8, 16], 1, hidden=8))
    head_before = clone_state(classifier.head)
    report = transfer_weights(classifier, pretrained)
    stem_storage = classifier.encoder.stem.convs[0].conv.weight.data_ptr()
    for name, tensor in classifier.encoder.state_dict().items():
        if tensor.data_ptr() != stem_storage:
            assert torch.equal(tensor, pretrained["encoder." + name]), name
    assert all(torch.equal(head_before[k], v) for k, v in classifier.head.state_dict().items())
    assert set(report.fresh) == {"head." + k for k in classifier.head.state_dict()}
    assert list(report.adapted) == ["encoder.stem.convs.0.conv.weight"]


def test_metadata_round_trips_through_to_dict_and_json():
    original = metadata()
    as_dict = original.to_dict()
    assert PretrainMetadata.from_dict(as_dict) == original
    assert PretrainMetadata.from_dict(json.loads(json.dumps(as_dict))) == original
    assert as_dict["patch_size"] == [16, 16, 16] and as_dict["objective_settings"]["mask_ratio"] == 0.6


def test_metadata_from_dict_names_the_missing_keys():
    broken = metadata().to_dict()
    del broken["network_class"], broken["patch_size"]
    with pytest.raises(ValueError, match=r"\['network_class', 'patch_size'\]"):
        PretrainMetadata.from_dict(broken)


def test_metadata_rejects_values_that_are_not_json():
    with pytest.raises(ValueError, match="network_kwargs"):
        PretrainMetadata(**(metadata().to_dict() | {"network_kwargs": {"conv_op": nn.Conv3d}}))


def test_metadata_rebuilds_its_network():
    net = metadata().build_network(num_outputs=3)
    assert isinstance(net, ResidualEncoderUNet)
    assert net.encoder.output_channels == [4, 8, 16]
    assert net.decoder.seg_layers[-1].out_channels == 3
    transfer_weights(net, clone_state(tiny_unet(seed=1)))  # same architecture as tiny_unet


def test_nnunet_checkpoint_with_metadata_survives_save_and_safe_load(tmp_path):
    net = tiny_unet(seed=1)
    checkpoint = nnunet_like_checkpoint(net)
    path = tmp_path / "checkpoint_final.pth"
    torch.save(checkpoint, path)
    loaded = load_checkpoint_safely(path)
    assert read_metadata(loaded) == metadata()
    assert loaded["_best_ema"] == checkpoint["_best_ema"]
    assert loaded["logging"]["train_losses"] == checkpoint["logging"]["train_losses"]
    assert loaded["init_args"]["device"] == torch.device("cpu")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded[WEIGHTS_KEY].items())
    model = tiny_unet(input_channels=2, seed=3)
    report = transfer_from_checkpoint(model, path)
    assert report.adapted and report.n_loaded > 0


class NotData:
    pass


def test_safe_loading_refuses_a_file_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({WEIGHTS_KEY: {}, "payload": NotData()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*NotData"):
        load_checkpoint_safely(path)


def test_safe_loading_names_the_file_that_is_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint_safely(text)
    weightless = tmp_path / "weightless.pth"
    torch.save({"state_dict": {}}, weightless)
    with pytest.raises(CheckpointError, match="weightless.pth.*'network_weights'"):
        load_checkpoint_safely(weightless)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_safely(tmp_path / "missing.pth")


def test_read_metadata_explains_a_checkpoint_without_it():
    with pytest.raises(CheckpointError, match="fomo_metadata"):
        read_metadata({WEIGHTS_KEY: {}})
