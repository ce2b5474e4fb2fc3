"""A new user's mistakes, each answered in one line that says what to do, with exit code BAD_INPUT, before
any training or prediction starts: a trainer on a dataset of another kind of task, a pretraining that has
not finished or has changed since planning, an unknown dataset, prediction before training, nnU-Net's
predictor on an image-level model, a conversion that converts nothing, a typo in a subcommand's flag, and
a few-shot validation fold that cannot score. Also the MAE reconstruction picture's composite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import badfiles as B
from helpers import BIN, run_cli, save_fake_pretraining
from fomo_nnunet import exit_codes as X
from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION, get_task
from fomo_nnunet.trainer_checks import Refused


def _one_line_error(err: str, *fragments: str) -> None:
    """`err` is one line `error: ...` holding every fragment (Python warnings of the libraries aside)."""
    lines = [line for line in err.splitlines()
             if line.strip() and "Warning: " not in line and line.strip() != "warnings.warn("]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


# ---- a trainer on a dataset of another kind of task ------------------------------------------
def _plans(task: str, dataset="Dataset901_FOMO1Infarct", **fomo) -> dict:
    return {"plans_name": "fomoPlans", "dataset_name": dataset, "fomo": {"task": task, **fomo}}


@pytest.mark.parametrize("trainer, kinds, task, right", [
    ("nnUNetTrainerFomoSeg_tiny", (SEGMENTATION,), "task1", "nnUNetTrainerFomoCls_tiny"),
    ("nnUNetTrainerFomoCls", (CLASSIFICATION,), "task2", "nnUNetTrainerFomoSeg"),
    ("nnUNetTrainerFomoCls_tiny_smoke", (CLASSIFICATION,), "task3", "nnUNetTrainerFomoReg_tiny_smoke"),
    ("nnUNetTrainerFomoReg_250epochs", (REGRESSION,), "task5", "nnUNetTrainerFomoCls_250epochs"),
    ("nnUNetTrainerFomoSeg_nodecoder", (SEGMENTATION,), "task1", "nnUNetTrainerFomoCls"),  # no Cls_nodecoder
])
def test_trainer_on_another_kind_of_task_is_refused_naming_the_right_trainer(trainer, kinds, task, right, capsys):
    from fomo_nnunet.trainer_checks import check_trainer_fits_task

    with pytest.raises(Refused) as e:
        check_trainer_fits_task(trainer, kinds, _plans(task))
    assert e.value.code == X.BAD_INPUT
    err = capsys.readouterr().err
    _one_line_error(err, get_task(task).kind)
    assert err.rstrip().endswith(f"use -tr {right}"), err


def test_trainer_on_its_own_kind_or_on_plans_without_a_task_passes():
    from fomo_nnunet.trainer_checks import check_trainer_fits_task

    check_trainer_fits_task("nnUNetTrainerFomoCls", (CLASSIFICATION,), _plans("task5"))
    check_trainer_fits_task("nnUNetTrainerFomoSeg", (SEGMENTATION,), {"plans_name": "nnUNetPlans"})


@pytest.mark.slow
def test_nnunet_train_with_cls_on_brain_age_exits_2_before_training(tasks_ws, tmp_path):
    import subprocess

    root, env, _ = tasks_ws
    p = subprocess.run([str(BIN / "nnUNetv2_train"), "903", "3d_fullres", "0", "-p", "fomoPlans", "-tr",
                        "nnUNetTrainerFomoCls_tiny", "-device", "cpu"], env=env, capture_output=True, text=True)
    assert p.returncode == X.BAD_INPUT, p.stdout + p.stderr
    assert "use -tr nnUNetTrainerFomoReg_tiny" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (root / "results" / "Dataset903_FOMO3Brainage" / "nnUNetTrainerFomoCls_tiny__fomoPlans__3d_fullres"
                / "fold_0" / "checkpoint_final.pth").exists()


# ---- the link from plans to the pretrained checkpoint ----------------------------------------
def test_finetuning_refuses_a_pretrained_checkpoint_changed_since_planning(tmp_path, capsys):
    from fomo_nnunet.models.checkpoints import file_sha256
    from fomo_nnunet.finetune import load_pretrained
    from fomo_nnunet.trainer_checks import check_pretrained_unchanged

    ckpt = save_fake_pretraining(tmp_path / "checkpoint_best.pth")
    plans = _plans("task2", "Dataset902_FOMO2Meningioma", pretrained_checkpoint=str(ckpt),
                   pretrained_sha256=file_sha256(str(ckpt)))
    check_pretrained_unchanged(str(ckpt), plans)  # unchanged: passes
    save_fake_pretraining(ckpt, seed=1)  # the pretraining wrote a new best checkpoint
    with pytest.raises(Refused):
        load_pretrained(None, plans, load_decoder=True)  # refused before any weight is read
    _one_line_error(capsys.readouterr().err, str(ckpt), "changed",
                    f"fomo-nnunet plan transfer -d 902 --pretrained {ckpt}")


def _nnunet_folders_with_dataset_902(root: Path, monkeypatch) -> None:
    for k in ("raw", "pre"):
        (root / k / "Dataset902_FOMO2Meningioma").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "pre"))


def test_plan_transfer_refuses_a_pretraining_without_final_checkpoint_unless_named(tmp_path, monkeypatch, capsys):
    from fomo_nnunet.models.checkpoints import FINAL_ONLY, find_checkpoint

    results = tmp_path / "nnUNetTrainerFomoMAE_tiny__fomoPretrainPlans__3d_fullres"
    (results / "fold_all").mkdir(parents=True)
    best = save_fake_pretraining(results / "fold_all" / "checkpoint_best.pth")
    assert find_checkpoint(results) == str(best)  # what embed, bundle and inspect still accept
    with pytest.raises(FileNotFoundError, match="no checkpoint_final.pth yet"):
        find_checkpoint(results, FINAL_ONLY)
    assert find_checkpoint(best, FINAL_ONLY) == str(best)  # a file named explicitly
    _nnunet_folders_with_dataset_902(tmp_path, monkeypatch)
    code, _, err = run_cli(["plan", "transfer", "-d", "902", "--pretrained", results], capsys)
    assert code == X.BAD_INPUT
    _one_line_error(err, "no checkpoint_final.pth yet", f"--pretrained {best}")


def test_plan_transfer_of_an_unknown_dataset_lists_the_datasets_there(tmp_path, monkeypatch, capsys):
    _nnunet_folders_with_dataset_902(tmp_path, monkeypatch)
    code, _, err = run_cli(["plan", "transfer", "-d", "909", "--pretrained", tmp_path], capsys)
    assert code == X.BAD_INPUT
    _one_line_error(err, "no dataset 909", "fomo-nnunet convert task", "Dataset902_FOMO2Meningioma")


# ---- prediction --------------------------------------------------------------------------------
def test_predict_before_training_says_which_training_to_run(tmp_path, capsys):
    model = tmp_path / "results" / "Dataset901_FOMO1Infarct" / "nnUNetTrainerFomoCls_tiny__fomoPlans__3d_fullres"
    code, _, err = run_cli(["predict", "-i", tmp_path, "-o", tmp_path / "out", "-m", model], capsys)
    assert code == X.BAD_INPUT
    _one_line_error(err, f"no trained fold at {model}",
                    "run `nnUNetv2_train 901 3d_fullres all -p fomoPlans -tr nnUNetTrainerFomoCls_tiny` first")


@pytest.mark.slow
def test_nnunet_predict_on_an_image_level_model_points_to_fomo_predict_and_writes_nothing(tasks_ws, tmp_path, capsys):
    import subprocess

    from fomo_nnunet.benchmarks.throughput import write_untrained_model

    root, env, _ = tasks_ws
    env = dict(env, nnUNet_results=str(tmp_path / "results"))
    write_untrained_model(root / "preprocessed" / "Dataset901_FOMO1Infarct", tmp_path / "results")
    out = tmp_path / "out"
    p = subprocess.run([str(BIN / "nnUNetv2_predict"), "-i", str(root / "raw" / "Dataset901_FOMO1Infarct" / "imagesTs"),
                        "-o", str(out), "-d", "901", "-c", "3d_fullres", "-p", "fomoPlans", "-tr",
                        "nnUNetTrainerFomoCls", "-f", "all", "-device", "cpu"], env=env, capture_output=True, text=True)
    assert p.returncode == X.BAD_INPUT, p.stdout + p.stderr
    _one_line_error(p.stderr, "image-level (classification) model", "fomo-nnunet predict")
    assert not out.exists() or not any(out.iterdir())  # nnU-Net makes the folder first; nothing goes into it
    # what the line says to run works, and says whether it mirrors
    model = tmp_path / "results" / "Dataset901_FOMO1Infarct" / "nnUNetTrainerFomoCls__fomoPlans__3d_fullres"
    for flag, said in (("--no-tta", "mirroring test-time augmentation: off"),
                       ("--tta", "mirroring test-time augmentation: on, every subset of axes 0, 1, 2 (8x the forwards)")):
        with pytest.MonkeyPatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            code, printed, err = run_cli(["predict", "-i", root / "raw" / "Dataset901_FOMO1Infarct" / "imagesTs",
                                          "-o", tmp_path / flag, "-m", model, flag], capsys)
        assert code == 0 and said in printed and (tmp_path / flag / "predictions.csv").is_file(), err


# ---- conversion ----------------------------------------------------------------------------------
def test_converting_a_task_folder_as_another_task_exits_2_naming_the_task_it_looks_like(tmp_path, raw, capsys):
    src = tmp_path / "task2"
    for sub in ("sub_1", "sub_2"):
        ses = src / "preprocessed" / sub / "ses_1"
        for stem in ("flair", "dwi", "swi"):
            B.good(ses / f"{stem}.nii.gz")
        seg = np.zeros(B.SHAPE, np.uint8)
        seg[5:8, 5:8, 5:8] = 1
        B.save(src / "labels" / sub / "ses_1" / "seg.nii.gz", seg)
    code, out, err = run_cli(["convert", "task", "infarct", src, "--no-progress"], capsys)
    assert code == X.BAD_INPUT and "next:" not in out
    _one_line_error(err, "nothing converted", "looks like task2 (meningioma)", f"fomo-nnunet convert task task2 {src}")


# ---- usage -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, prog", [(["plan", "transfer", "-d", "902", "--pretraind", "x"], "plan transfer"),
                                        (["convert", "task", "task2", "src", "--nmae", "x"], "convert task"),
                                        (["predict", "-i", "a", "-o", "b", "-m", "c", "--ttta"], "predict")])
def test_a_flag_typo_prints_the_subcommands_own_usage(argv, prog, capsys):
    code, _, err = run_cli(argv, capsys)
    prog = f"fomo-nnunet {prog}"
    assert code == X.BAD_INPUT and err.startswith(f"usage: {prog} ") and "unrecognized arguments" in err, err


# ---- a validation fold that cannot score ---------------------------------------------------------
def test_validation_problem_names_a_fold_of_one_class():
    from fomo_nnunet.trainer_checks import validation_problem

    assert "all 3 validation case(s) are of class 1" in validation_problem(CLASSIFICATION, [1, 1, 1], "AUROC")
    assert validation_problem(CLASSIFICATION, [0, 1], "AUROC") is None
    assert validation_problem(REGRESSION, [42.0], "MAE") is None
    assert validation_problem(CLASSIFICATION, [], "AUROC") == "the validation fold has no cases"


@pytest.mark.slow
def test_a_fold_that_cannot_score_warns_and_picks_checkpoint_best_by_the_validation_loss(tasks_ws, monkeypatch):
    root, env, _ = tasks_ws
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(k, env[k])
    from nnunetv2.run.run_training import get_trainer_from_args

    t = get_trainer_from_args("901", "3d_fullres", 0, "nnUNetTrainerFomoCls_tiny_smoke", "fomoPlans",
                              device=torch.device("cpu"))
    t._check_validation_can_score([1.0, 1.0])
    assert "WARNING: fold 0: all 2 validation case(s) are of class 1" in Path(t.log_file).read_text()
    t.logger.log("val_losses", 0.7, 0)
    t.logger.log("val_metric", float("nan"), 0)
    value, message = t.selection()
    assert value == pytest.approx(-0.7) and "val loss" in message and t.is_new_best(value)


# ---- the MAE reconstruction picture -------------------------------------------------------------
def test_mae_picture_composite_shows_visible_input_and_reconstructed_masked_blocks(tmp_path):
    from fomo_nnunet.plots import mae_rows, plot_mae_reconstruction

    rng = np.random.default_rng(0)
    x, pred = rng.normal(size=(2, 8, 8, 8))
    mask = np.zeros((8, 8, 8), bool)
    mask[:4] = True
    example = {"input": x, "masked input": np.where(mask, 0, x), "reconstruction": pred, "target": x,
               "mask": mask.astype(np.float32)}
    rows = mae_rows(example)
    assert np.array_equal(rows["composite"][mask], pred[mask]) and np.array_equal(rows["composite"][~mask], x[~mask])
    assert list(rows) == ["input", "masked input", "composite", "network output", "target"]
    plot_mae_reconstruction(tmp_path / "reconstruction.png", example, "epoch 1")
    assert (tmp_path / "reconstruction.png").stat().st_size > 1000


def test_mae_picture_caption_says_what_the_loss_counts():
    from fomo_nnunet.plots import mae_caption
    from fomo_nnunet.ssl import LOSS_REGIONS

    assert "untrained" in mae_caption(LOSS_REGIONS["masked_brain"]) and "untrained" in mae_caption(LOSS_REGIONS["masked"])
    assert "untrained" not in mae_caption(LOSS_REGIONS["all"]) and "every voxel" in mae_caption(LOSS_REGIONS["all"])
