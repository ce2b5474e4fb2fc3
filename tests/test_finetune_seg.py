"""Segmentation finetuning: plan transfer, pretrained initialisation, nnU-Net's train and predict."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import run, save_fake_pretraining

pytestmark = pytest.mark.slow

MENINGIOMA = 902
TRIGEMINAL = 904
SMOKE = "nnUNetTrainerFomoSeg_tiny_smoke"


@pytest.fixture(scope="module")
def seg_ws(tasks_ws):
    return tasks_ws


def _trainer(env, monkeypatch, dataset, name, plans="fomoPlans"):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(k, env[k])
    from nnunetv2.run.run_training import get_trainer_from_args

    t = get_trainer_from_args(str(dataset), "3d_fullres", 0, name, plans, device=torch.device("cpu"))
    t.initialize()
    return t


@pytest.fixture(scope="module")
def scratch_plans(seg_ws):
    """`fomo-nnunet plan transfer --from-scratch` for the meningioma task, beside its pretrained plans and
    sharing their preprocessed data: the same network, no checkpoint."""
    root, env, ckpt = seg_ws
    folder = next((root / "preprocessed").glob(f"Dataset{MENINGIOMA}_*"))
    data = json.loads((folder / "fomoPlans.json").read_text())["configurations"]["3d_fullres"]["data_identifier"]
    run(["fomo-nnunet", "plan", "transfer", "-d", str(MENINGIOMA), "--pretrained", str(ckpt), "--from-scratch",
         "--plans-name", "fomoPlans_scratch", "--data-identifier", data, "-np", "1"], env)
    return "fomoPlans_scratch"


def test_transferred_plans_take_network_from_checkpoint_and_channels_from_task(seg_ws):
    root, _, ckpt = seg_ws
    plans = json.loads((root / "preprocessed" / f"Dataset{MENINGIOMA}_FOMO2Meningioma" / "fomoPlans.json").read_text())
    c = plans["configurations"]["3d_fullres"]
    from fomo_nnunet.models.checkpoints import read_checkpoint_metadata

    meta = read_checkpoint_metadata(ckpt)
    assert c["architecture"]["arch_kwargs"] == meta["network_kwargs"]
    assert c["spacing"] == meta["spacing"]
    # images smaller than the pretraining patch: the patch shrinks to cover the median image, on the strides' grid
    for p, m in zip(c["patch_size"], c["median_image_size_in_voxels"]):
        assert p % 8 == 0 and m <= p <= 32 and p - m < 8
    assert plans["fomo"]["task"] == "task2" and plans["fomo"]["pretrained_checkpoint"] == str(ckpt)
    assert len(json.loads((root / "preprocessed" / f"Dataset{MENINGIOMA}_FOMO2Meningioma" / "dataset.json")
                          .read_text())["channel_names"]) == 3


@pytest.mark.parametrize("name,decoder_loaded", [("nnUNetTrainerFomoSeg", True), (SMOKE, False)])
def test_initialisation_loads_encoder_adapts_stem_and_keeps_output_fresh(seg_ws, monkeypatch, name, decoder_loaded):
    root, env, ckpt = seg_ws
    trainer = _trainer(env, monkeypatch, MENINGIOMA, name)
    state = trainer.network.state_dict()
    pre = torch.load(ckpt, weights_only=True)["network_weights"]
    stem = "encoder.stem.convs.0.conv.weight"
    assert state[stem].shape[1] == 3
    assert torch.allclose(state[stem], pre[stem].repeat(1, 3, 1, 1, 1) / 3)
    encoder_keys = [k for k in pre if k.startswith("encoder.") and k != stem and "all_modules" not in k]
    assert len(encoder_keys) > 20
    for k in encoder_keys:
        assert torch.equal(state[k], pre[k]), k
    decoder = [k for k in pre if k.startswith("decoder.stages")]
    convs = [k for k in decoder if k.endswith("conv.weight")]
    assert convs and all(torch.equal(state[k], pre[k]) for k in (decoder if decoder_loaded else []))
    assert decoder_loaded or not any(torch.equal(state[k], pre[k]) for k in convs)  # tiny: a fresh decoder
    out = [k for k in state if k.startswith("decoder.seg_layers")]
    assert out and all(not torch.equal(state[k], pre[k]) for k in out if state[k].shape == pre[k].shape)
    report = json.loads((trainer.output_folder and open(f"{trainer.output_folder}/transfer_report.json").read()))
    assert report["adapted"] and report["fresh"]
    groups = {g["pretrained"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {True, False}


def test_from_scratch_plans_give_the_same_trainer_a_random_initialisation_and_record_it(seg_ws, scratch_plans,
                                                                                         monkeypatch):
    _, env, ckpt = seg_ws
    trainer = _trainer(env, monkeypatch, MENINGIOMA, SMOKE, scratch_plans)
    pre = torch.load(ckpt, weights_only=True)["network_weights"]
    k = "encoder.stages.1.blocks.0.conv1.conv.weight"
    assert not torch.equal(trainer.network.state_dict()[k], pre[k])
    assert [g["pretrained"] for g in trainer.optimizer.param_groups] == [False]
    assert not trainer.loads_pretrained and trainer.run_record()["pretrained_checkpoint"] is None
    assert trainer.run_record()["recipe"]["num_epochs"] == trainer.num_epochs == 2
    with open(trainer.log_file) as f:
        assert "training from scratch" in f.read()


def test_checkpoint_of_another_architecture_is_a_clear_error(seg_ws, monkeypatch, tmp_path):
    root, env, ckpt = seg_ws
    original = ckpt.read_bytes()
    try:
        save_fake_pretraining(ckpt, features=[4, 8, 16, 32])
        # past the sha256 check (which refuses any changed file first): the architecture check behind it
        monkeypatch.setattr("fomo_nnunet.trainer_checks.check_pretrained_unchanged", lambda path, plans: None)
        with pytest.raises(ValueError) as e:
            _trainer(env, monkeypatch, TRIGEMINAL, SMOKE)
        msg = str(e.value)
        assert type(e.value).__name__ == "WeightTransferError"
        assert "'encoder.stem.convs.0.conv.weight'" in msg
        assert "(4, 1, 3, 3, 3) in the checkpoint" in msg and "(8, 1, 3, 3, 3) in the model" in msg
    finally:
        ckpt.write_bytes(original)


def test_nnunet_train_and_predict_end_to_end(seg_ws, tmp_path):
    """nnU-Net's train (fold 0, with its final validation), predict and evaluate commands on our trainer, on
    the two-label task (trigeminal nerve and vessel). The three-channel meningioma task is trained through
    nnU-Net's training entry and predicted by nnU-Net's predictor in tests/test_seeding.py."""
    root, env, _ = seg_ws
    dataset, name, max_label = TRIGEMINAL, "FOMO4Trigeminal", 2
    run(["nnUNetv2_train", str(dataset), "3d_fullres", "0", "-p", "fomoPlans", "-tr", SMOKE, "-device", "cpu"], env)
    images = root / "raw" / f"Dataset{dataset}_{name}" / "imagesTs"
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset), "-c", "3d_fullres",
         "-p", "fomoPlans", "-tr", SMOKE, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--disable_tta"], env)
    for case in ("casets000", "casets001"):
        src = nib.load(images / f"{case}_0000.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == src.shape
        assert np.allclose(pred.affine, src.affine)
        values = np.unique(np.asarray(pred.dataobj))
        assert set(values.tolist()) <= set(range(max_label + 1))
    labels = root / "raw" / f"Dataset{dataset}_{name}" / "labelsTs"
    run(["nnUNetv2_evaluate_folder", str(labels), str(out), "-djfile",
         str(root / "preprocessed" / f"Dataset{dataset}_{name}" / "dataset.json"), "-pfile",
         str(root / "preprocessed" / f"Dataset{dataset}_{name}" / "fomoPlans.json")], env)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mean"]) == {str(v) for v in range(1, max_label + 1)}


def test_tiny_variants_skip_fold_all_self_validation_and_draw_progress_every_few_epochs(seg_ws, scratch_plans,
                                                                                       monkeypatch):
    _, env, _ = seg_ws
    trainer = _trainer(env, monkeypatch, MENINGIOMA, SMOKE, scratch_plans)
    from types import SimpleNamespace

    assert trainer.logger.plot_progress_png.__name__ == "maybe_draw"  # installed by the tiny recipe
    drawn = []
    trainer.num_epochs = 12
    trainer.logger = SimpleNamespace(plot_progress_png=lambda folder: drawn.append(trainer.current_epoch))
    trainer._throttle_progress_plot()
    for epoch in range(12):
        trainer.current_epoch = epoch
        trainer.logger.plot_progress_png(trainer.output_folder)
    assert drawn == [4, 9, 11]  # every 5th epoch and the last
    trainer.fold = "all"
    assert trainer.perform_actual_validation() is None  # returns before any sliding window
    with open(trainer.log_file) as f:
        assert "final validation skipped" in f.read()


def test_tiny_recipe_weights_cross_entropy_by_the_training_cases_label_frequencies(seg_ws, monkeypatch):
    root, env, _ = seg_ws
    from fomo_nnunet.class_weights import label_voxel_counts, sqrt_inverse_frequency
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

    def ce_weight(trainer):
        (loss,) = [m for m in trainer.loss.modules() if isinstance(m, DC_and_CE_loss)]
        return loss.ce.weight

    assert ce_weight(_trainer(env, monkeypatch, TRIGEMINAL, "nnUNetTrainerFomoSeg")) is None  # nnU-Net's loss
    trainer = _trainer(env, monkeypatch, TRIGEMINAL, SMOKE)
    keys = trainer.do_split()[0]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, keys)
    counts = label_voxel_counts((dataset.load_case(k)[1][:] for k in keys), 3)
    assert counts[1] > 0 and counts[2] > 0 and counts[0] > 10 * counts[1]
    expected = sqrt_inverse_frequency(counts, trainer.recipe.class_weight_cap)
    assert torch.allclose(ce_weight(trainer), torch.tensor(expected, dtype=torch.float32))
    with open(trainer.log_file) as f:
        assert f"cross-entropy class weights (sqrt_inverse_frequency over {len(keys)} training cases)" in f.read()
