"""Classification and regression heads on nnU-Net's pipeline, prediction to CSV, embeddings."""
from __future__ import annotations

from dataclasses import replace

import csv
import json

import numpy as np
import pytest
import torch

from helpers import run

INFARCT = 901
BRAINAGE = 903
N_TRAIN = 8


@pytest.fixture(scope="module")
def ws(tasks_ws):
    return tasks_ws


def _trainer(env, monkeypatch, dataset, name, fold=0):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    from nnunetv2.run.run_training import get_trainer_from_args

    t = get_trainer_from_args(str(dataset), "3d_fullres", fold, name, "fomoPlans", device=torch.device("cpu"))
    t.initialize()
    return t


def test_targets_missing_case_is_named(tmp_path):
    from fomo_nnunet.image_level import TargetError, load_targets

    (tmp_path / "targets.json").write_text(json.dumps({"a": 1, "b": "x"}))
    with pytest.raises(TargetError, match="case 'c' has no target"):
        load_targets(tmp_path, ["a", "c"], "classification")
    with pytest.raises(TargetError, match="case 'b'.*not a number"):
        load_targets(tmp_path, ["b"], "classification")
    with pytest.raises(TargetError, match="targets.json is missing"):
        load_targets(tmp_path / "nowhere", ["a"], "regression")


def test_regression_target_mapping_round_trips():
    from fomo_nnunet.image_level import TargetScaler, decode_outputs

    ages = np.array([21.0, 35.5, 62.0, 88.0])
    s = TargetScaler.fit(ages)
    z = s.forward(ages)
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    np.testing.assert_allclose(s.inverse(z), ages)
    np.testing.assert_allclose(TargetScaler.from_dict(s.to_dict()).inverse(z), ages)
    # the network's raw output decodes back to years with the stats it carries
    out = torch.tensor(z[:, None], dtype=torch.float32)
    np.testing.assert_allclose(decode_outputs(out, "regression", (s.mean, s.std)), ages, rtol=1e-5)


@pytest.mark.slow
def test_batches_carry_the_right_targets_and_classes_are_balanced(ws, monkeypatch):
    root, env, _ = ws
    from fomo_nnunet.image_level import ImageLevelDataLoader, load_targets

    trainer = _trainer(env, monkeypatch, INFARCT, "nnUNetTrainerFomoCls_tiny_smoke", fold="all")
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    targets = load_targets(trainer.preprocessed_dataset_folder_base, dataset_tr.identifiers, "classification")
    assert sorted(targets.values()).count(1.0) == 6
    patch = trainer.configuration_manager.patch_size
    np.random.seed(0)
    balanced = ImageLevelDataLoader(dataset_tr, 4, patch, patch, trainer.label_manager, targets, balance=True)
    plain = ImageLevelDataLoader(dataset_tr, 4, patch, patch, trainer.label_manager, targets, balance=False)
    drawn = {"balanced": [], "plain": []}
    for name, loader in (("balanced", balanced), ("plain", plain)):
        for _ in range(60):
            batch = loader.generate_train_batch()
            assert batch["data"].shape[2:] == tuple(patch)
            for k, y in zip(batch["keys"], batch["fomo_target"].tolist()):
                assert y == targets[k]
            drawn[name] += batch["fomo_target"].tolist()
    assert abs(np.mean(drawn["balanced"]) - 0.5) < 0.08      # 240 draws, classes equally often
    assert np.mean(drawn["plain"]) > 0.65                    # the raw set is 75 % positive


@pytest.mark.slow
def test_without_augmentation_a_training_batch_is_the_centred_crop(ws, monkeypatch):
    _, env, _ = ws
    from fomo_nnunet.image_level import crop_or_pad

    trainer = _trainer(env, monkeypatch, INFARCT, "nnUNetTrainerFomoCls_tiny_smoke", fold="all")
    patch = tuple(trainer.configuration_manager.patch_size)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    trainer.recipe = replace(trainer.recipe, augment=False, crop_jitter_fraction=0.0)
    batch = next(trainer.get_dataloaders()[0])
    for key, x in zip(batch["keys"], batch["data"].numpy()):
        np.testing.assert_array_equal(x, crop_or_pad(np.asarray(dataset_tr.load_case(key)[0]), patch))
    trainer.recipe = replace(trainer.recipe, augment=True)  # nnU-Net's augmentation changes the same crops
    batch = next(trainer.get_dataloaders()[0])
    assert any(not np.array_equal(x, crop_or_pad(np.asarray(dataset_tr.load_case(k)[0]), patch))
               for k, x in zip(batch["keys"], batch["data"].numpy()))


@pytest.mark.slow
def test_intensity_augmentation_keeps_the_geometry_of_the_centred_crop(ws, monkeypatch):
    """augment = "intensity": nnU-Net's intensity transforms change the crop's values, never where the
    anatomy is (no rotation, scaling or mirroring); an unknown value is refused."""
    _, env, _ = ws
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    from fomo_nnunet.image_level import crop_or_pad

    trainer = _trainer(env, monkeypatch, BRAINAGE, "nnUNetTrainerFomoReg_tiny_smoke", fold="all")
    patch = tuple(trainer.configuration_manager.patch_size)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    trainer.recipe = replace(trainer.recipe, augment="intensity", crop_jitter_fraction=0.0)
    loader = trainer.get_dataloaders()[0]
    steps = loader.data_loader.transforms.transforms  # nnUNet_n_proc_DA=0: a SingleThreadedAugmenter
    spatial = [t for t in steps if isinstance(t, SpatialTransform)]
    assert len(spatial) == 1 and spatial[0].p_rotation == spatial[0].p_scaling == spatial[0].p_elastic_deform == 0
    assert not any(isinstance(t, MirrorTransform) for t in steps) and len(steps) > 5  # the intensity ones stay
    np.random.seed(0)
    changed = 0
    for _ in range(4):
        batch = next(loader)
        for key, x in zip(batch["keys"], batch["data"].numpy()):
            ref = crop_or_pad(np.asarray(dataset_tr.load_case(key)[0]), patch)
            assert x.shape == ref.shape
            assert np.corrcoef(x.ravel(), ref.ravel())[0, 1] > 0.8, key  # the same anatomy, in the same place
            changed += not np.allclose(x, ref)
    assert changed > 0
    with pytest.raises(ValueError, match="augment must be"):  # refused where the recipe is made
        replace(trainer.recipe, augment="spatial")


@pytest.mark.slow
def test_classifier_loads_pretrained_encoder_and_fresh_head(ws, monkeypatch):
    _, env, ckpt = ws
    trainer = _trainer(env, monkeypatch, INFARCT, "nnUNetTrainerFomoCls_tiny_smoke")
    pre = torch.load(ckpt, weights_only=True)["network_weights"]
    state = trainer.network.state_dict()
    stem = "encoder.stem.convs.0.conv.weight"
    assert state[stem].shape[1] == 4  # four input channels from one pretrained channel
    torch.testing.assert_close(state[stem], pre[stem].repeat(1, 4, 1, 1, 1) / 4)
    deep = [k for k in state if k.startswith("encoder.stages") and k in pre]
    assert deep and all(torch.equal(state[k], pre[k]) for k in deep)
    assert any(k.startswith("head.") for k in state) and not any(k.startswith("head.") for k in pre)
    x = torch.randn(2, 4, *trainer.configuration_manager.patch_size)
    assert trainer.network(x).shape == (2, 2)
    report = trainer.transfer_report
    assert report.n_loaded > 0 and report.n_adapted == 1


def _csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_and_predict_classification_and_regression(ws):
    root, env, ckpt = ws
    raw, results = root / "raw", root / "results"
    for d, name, trainer in ((INFARCT, "Dataset901_FOMO1Infarct", "nnUNetTrainerFomoCls_tiny_smoke"),
                             (BRAINAGE, "Dataset903_FOMO3Brainage", "nnUNetTrainerFomoReg_tiny_smoke")):
        run(["nnUNetv2_train", str(d), "3d_fullres", "all", "-p", "fomoPlans", "-tr", trainer, "-device", "cpu"], env)
        model = results / name / f"{trainer}__fomoPlans__3d_fullres"
        fold = model / "fold_all"
        assert (fold / "checkpoint_final.pth").is_file() and (fold / "progress.png").is_file()
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        assert summary["n_cases"] == N_TRAIN and summary["metric"] in ("auroc", "mae")
        out = root / "pred" / name
        run(["fomo-nnunet", "predict", "-i", str(raw / name / "imagesTs"), "-o", str(out), "-m", str(model),
             "-f", "all", "--tta"], env)
        rows = _csv_rows(out / "predictions.csv")
        assert [r["case_id"] for r in rows] == [f"casets{i:03d}" for i in range(3)]
        values = [float(r["prediction"]) for r in rows]
        assert all(np.isfinite(values))
        if d == INFARCT:
            assert all(0 <= v <= 1 for v in values)
            assert all(abs(float(r["p_no_infarct"]) + float(r["p_infarct"]) - 1) < 1e-4 for r in rows)
        else:
            assert "p_" not in "".join(rows[0])  # regression: one value per case
            # the tiny regressor standardises its head's inputs over the training crops, saved with the weights
            logs = [f.read_text() for f in fold.glob("training_log*.txt")]  # other tests may have left one
            assert any(f"head inputs standardised over the centred crops of {N_TRAIN} training cases" in log
                       for log in logs)
            weights = torch.load(fold / "checkpoint_final.pth", weights_only=False, map_location="cpu")["network_weights"]
            assert not torch.equal(weights["head.input_scale"], torch.ones_like(weights["head.input_scale"]))
        # the challenge's entry point reads the same model from arrays
        from fomo_nnunet.challenge.inference import predict_case_arrays
        import nibabel as nib

        files = sorted((raw / name / "imagesTs").glob("casets000_*.nii.gz"))
        imgs = [nib.load(f) for f in files]
        v = predict_case_arrays(model, ["all"], [np.asanyarray(i.dataobj) for i in imgs], imgs[0].affine, mirror=True)
        assert abs(v - values[0]) < 1e-4
        # the run's record: the recipe and that it loaded the plans' checkpoint, in the fold and every checkpoint
        record = json.loads((fold / "recipe.json").read_text())
        assert record["trainer"] == trainer and record["loads_pretrained"] and record["recipe"]["num_epochs"] == 2
        saved = torch.load(fold / "checkpoint_final.pth", weights_only=False, map_location="cpu")
        assert saved["fomo_recipe"] == record
        if d == INFARCT:
            _old_scratch_folder_still_predicts(model, saved, files, imgs, values[0])


def _old_scratch_folder_still_predicts(model, saved, files, imgs, expected):
    """A fold folder of a retired `_scratch` trainer (from before from-scratch became the plans' setting): its
    checkpoint names the retired trainer and has no recipe record. It predicts with the trainer it was a variant
    of (fomo-nnunet predict, the container entry's arrays, a bundle's network record); a bundle refuses it, as
    it refused every from-scratch model."""
    import shutil

    from fomo_nnunet.challenge.bundle import BundleError, _slim_checkpoint, build_bundle
    from fomo_nnunet.challenge.inference import predict_case_arrays

    retired = "nnUNetTrainerFomoCls_tiny_smoke_scratch"
    old = model.parent / f"{retired}__fomoPlans__3d_fullres"
    shutil.copytree(model, old, dirs_exist_ok=True)
    (old / "fold_all" / "recipe.json").unlink()
    torch.save({**{k: v for k, v in saved.items() if k != "fomo_recipe"}, "trainer_name": retired},
               old / "fold_all" / "checkpoint_final.pth")
    v = predict_case_arrays(old, ["all"], [np.asanyarray(i.dataobj) for i in imgs], imgs[0].affine, mirror=True)
    assert abs(v - expected) < 1e-4
    _slim_checkpoint(old / "fold_all" / "checkpoint_final.pth", old / "slim.pth")
    assert torch.load(old / "slim.pth", weights_only=False)["fomo_network"]["head_pooling"] == "avgmax"
    with pytest.raises(BundleError, match="trained from scratch"):
        build_bundle(old.parent / "bundle", {1: str(old)}, None)


def test_predict_refuses_segmentation_models(tmp_path):
    from fomo_nnunet.challenge.inference import ImageLevelModel

    (tmp_path / "plans.json").write_text(json.dumps({"plans_name": "fomoPlans", "fomo": {"task": "task2"}}))
    with pytest.raises(ValueError, match="nnUNetv2_predict"):
        ImageLevelModel.load(tmp_path)


@pytest.mark.slow
def test_embeddings_are_deterministic_and_differ_between_images(ws, tmp_path):
    root, env, ckpt = ws
    images = root / "raw" / "Dataset903_FOMO3Brainage" / "imagesTr"
    out = tmp_path / "emb"
    run(["fomo-nnunet", "embed", "-i", str(images), "-o", str(out), "--checkpoint", str(ckpt)], env)
    files = sorted(out.glob("*.npy"))
    assert [f.stem for f in files] == [f"casetr{i:03d}" for i in range(N_TRAIN)]
    vecs = [np.load(f, allow_pickle=False) for f in files]
    assert all(v.ndim == 1 and v.dtype == np.float32 and np.all(np.isfinite(v)) for v in vecs)
    assert len({v.shape for v in vecs}) == 1 and vecs[0].shape[0] == 64  # tiny preset's deepest width
    assert not np.allclose(vecs[0], vecs[1])
    from fomo_nnunet.challenge.inference import embed_array
    import nibabel as nib

    img = nib.load(images / "casetr000_0000.nii.gz")
    again = embed_array(ckpt, np.asanyarray(img.dataobj), img.affine)
    np.testing.assert_array_equal(again, vecs[0])
