"""Adaptations of the pretrained weights: the table, the plans' entry the trainers apply, and `plan transfer
--adapt auto`, which chooses one by cross-validation on the training cases."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from helpers import run


# ---- the table and the recipe ------------------------------------------------------------------------
def test_each_adaptation_changes_only_its_settings_of_the_trainers_recipe():
    from fomo_nnunet.training.adaptation import ADAPTATIONS
    from fomo_nnunet.training.recipes import TINY_SEG

    assert ADAPTATIONS["recipe"].apply(TINY_SEG) == TINY_SEG
    assert ADAPTATIONS["gentle"].apply(TINY_SEG) == replace(TINY_SEG, pretrained_lr_scale=0.1)
    full = ADAPTATIONS["full"].apply(TINY_SEG)
    assert (full.fresh_only_epochs, full.pretrained_lr_scale) == (0, 1.0)
    assert full.num_epochs == TINY_SEG.num_epochs and full.initial_lr == TINY_SEG.initial_lr  # the budget stays


def test_an_adaptation_may_not_touch_the_budget():
    from fomo_nnunet.training.adaptation import Adaptation, adapted_recipe
    from fomo_nnunet.training.recipes import TINY_SEG

    with pytest.raises(ValueError, match="may set only"):
        Adaptation("longer", "more epochs", (("num_epochs", 99),))
    plans = {"plans_name": "p", "fomo": {"adaptation": {"name": "x", "settings": {"initial_lr": 1.0}}}}
    with pytest.raises(ValueError, match="plans 'p': adaptation 'x' cannot be applied.*initial_lr"):
        adapted_recipe(TINY_SEG, plans)
    plans["fomo"]["adaptation"]["settings"] = {"pretrained_lr_scale": -1}  # the recipe's own validation
    with pytest.raises(ValueError, match="pretrained_lr_scale"):
        adapted_recipe(TINY_SEG, plans)


def test_candidates_that_give_the_same_recipe_or_do_not_apply_are_skipped():
    from fomo_nnunet.training.adaptation import DEFAULT_CANDIDATES, distinct_candidates
    from fomo_nnunet.training.recipes import TINY_CLS, TINY_SEG

    # the tiny segmentation recipe already leaves the decoder out: "encoder" is "recipe" again
    kept, skipped = distinct_candidates(DEFAULT_CANDIDATES, "segmentation", TINY_SEG)
    assert kept == ["recipe", "gentle", "full"] and "the same recipe as 'recipe'" in skipped["encoder"]
    kept, skipped = distinct_candidates(DEFAULT_CANDIDATES, "classification", TINY_CLS)
    assert kept == ["recipe", "gentle", "full"] and skipped["encoder"] == "not for classification tasks"
    kept, _ = distinct_candidates(["full", "recipe"], "segmentation", replace(TINY_SEG, fresh_only_epochs=0))
    assert kept == ["full"]  # "recipe" gives the same recipe as the earlier "full"


# ---- scoring the validation folds and the rule ----------------------------------------------------
def _seg_summary(folder, dices):
    folder.mkdir(parents=True, exist_ok=True)
    cases = [{"metrics": {"1": {"Dice": d1}, "2": {"Dice": d2}}} for d1, d2 in dices]
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": cases}))


def _predictions(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "prediction", "target"])
        w.writerows(rows)


def test_scores_pool_the_validation_cases_of_all_folds(tmp_path):
    from fomo_nnunet.plans.adapt_planner import pooled_score

    # Dice values of both foreground classes of every case; nnU-Net's NaN (class absent in both) is left out
    _seg_summary(tmp_path / "s0", [(0.5, float("nan")), (1.0, 0.0)])
    _seg_summary(tmp_path / "s1", [(0.25, 0.75)])
    s = pooled_score("segmentation", [tmp_path / "s0", tmp_path / "s1"])
    assert s == {"metric": "dice", "value": 0.5, "score": 0.5, "n": 5}
    # AUROC over the pooled cases: fold a alone has one class (undefined), pooled it is 3/4
    _predictions(tmp_path / "a", [("c1", 0.9, 1), ("c2", 0.2, 1)])
    _predictions(tmp_path / "b", [("c3", 0.4, 0), ("c4", 0.1, 0)])
    assert pooled_score("classification", [tmp_path / "a"])["value"] is None
    s = pooled_score("classification", [tmp_path / "a", tmp_path / "b"])
    assert (s["metric"], s["value"], s["n"]) == ("auroc", 0.75, 4)
    # MAE: lower is better, so its score is the negative
    _predictions(tmp_path / "r", [("c1", 30.0, 20.0), ("c2", 50.0, 52.0)])
    s = pooled_score("regression", [tmp_path / "r"])
    assert (s["metric"], s["value"], s["score"]) == ("mae", 6.0, -6.0)


def test_the_best_score_wins_and_a_tie_goes_to_the_earlier_candidate():
    from fomo_nnunet.plans.adapt_planner import choose

    assert choose({"recipe": {"score": 0.5}, "gentle": {"score": 0.7}, "full": {"score": 0.7}}) == "gentle"
    assert choose({"recipe": {"score": None}, "full": {"score": -3.0}}) == "full"
    assert choose({"recipe": {"score": None}}) is None


def test_a_tie_is_recorded_and_said_as_undecided():
    from fomo_nnunet.plans.adapt_planner import choice_words, tied_with

    scores = {"recipe": {"score": 0.6}, "gentle": {"score": 0.7}, "full": {"score": 0.7}, "encoder": {"score": None}}
    assert tied_with(scores, "gentle") == ["gentle", "full"]
    assert tied_with({"recipe": {"score": 0.6}, "full": {"score": 0.7}}, "full") == ["full"]
    assert choice_words({"chosen_by": "auto", "evidence": {"tie": ["recipe", "gentle", "full"]}}) == \
        "auto: a tie among recipe, gentle, full, so the first (undecided)"
    assert choice_words({"chosen_by": "auto", "evidence": {"candidates": {}}}) == "auto"
    assert choice_words({"chosen_by": "user", "evidence": None}) == "user"


# ---- the chooser, with a stand-in for the trainings ---------------------------------------------------
@pytest.fixture
def seg_plans(tmp_path, monkeypatch):
    pre = tmp_path / "pre" / "Dataset904_FOMO4Trigeminal"
    pre.mkdir(parents=True)
    for var, folder in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"), ("nnUNet_results", "res")):
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / folder))
    plans = {"plans_name": "fomoPlans", "configurations": {"3d_fullres": {"data_identifier": "fomoPlans_3d_fullres"}},
             "fomo": {"task": "task4", "task_kind": "segmentation", "pretrained_checkpoint": "/ckpt.pth"}}
    (pre / "fomoPlans.json").write_text(json.dumps(plans))
    from fomo_nnunet.plans import adapt_planner
    monkeypatch.setattr(adapt_planner, "_ensure_preprocessed", lambda *a: 6)
    monkeypatch.setattr(adapt_planner, "nnunet_train_command", lambda: "nnUNetv2_train")
    return pre, tmp_path / "res" / "Dataset904_FOMO4Trigeminal"


def test_auto_trains_each_distinct_candidate_on_each_fold_and_records_the_winner(seg_plans):
    from fomo_nnunet.plans.adapt_planner import choose_adaptation

    pre, results = seg_plans
    dice = {"recipe": 0.4, "gentle": 0.6, "full": 0.5}
    calls = []

    def fake_train(cmd):  # what nnUNetv2_train leaves: validation/summary.json of the fold
        calls.append(cmd)
        plans_name, fold = cmd[cmd.index("-p") + 1], cmd[3]
        candidate = plans_name.split("__adapt_")[1]
        folder = results / f"nnUNetTrainerFomoSeg_tiny__{plans_name}__3d_fullres" / f"fold_{fold}" / "validation"
        _seg_summary(folder, [(dice[candidate], dice[candidate] + 0.1 * int(fold))])

    entry = choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", folds=(0, 1), run=fake_train,
                              log=lambda s: None)
    assert [(c[c.index("-p") + 1], c[3]) for c in calls] == [
        (f"fomoPlans__adapt_{c}", f) for c in ("recipe", "gentle", "full") for f in ("0", "1")]
    assert entry["name"] == "gentle" and entry["chosen_by"] == "auto"
    assert entry["settings"] == {"pretrained_lr_scale": 0.1}
    ev = entry["evidence"]
    assert ev["candidates"]["gentle"]["value"] == pytest.approx(0.625)  # (0.6 + 0.6 + 0.6 + 0.7) / 4
    assert ev["candidates"]["recipe"]["per_fold"] == {"0": pytest.approx(0.4), "1": pytest.approx(0.45)}
    assert "encoder" in ev["skipped"]
    saved = json.loads((pre / "fomoPlans.json").read_text())
    assert saved["fomo"]["adaptation"] == json.loads(json.dumps(entry))
    cand = json.loads((pre / "fomoPlans__adapt_full.json").read_text())
    assert cand["plans_name"] == "fomoPlans__adapt_full"
    assert cand["configurations"]["3d_fullres"]["data_identifier"] == "fomoPlans_3d_fullres"  # the same data
    assert cand["fomo"]["adaptation"]["settings"] == {"fresh_only_epochs": 0, "pretrained_lr_scale": 1.0}

    # a rerun scores the finished folds without training them again
    calls.clear()
    assert choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", folds=(0, 1), run=fake_train,
                             log=lambda s: None)["name"] == "gentle" and calls == []
    # another checkpoint: the candidates' old folds are removed and trained again
    saved["fomo"]["pretrained_checkpoint"] = "/other.pth"
    del saved["fomo"]["adaptation"]
    (pre / "fomoPlans.json").write_text(json.dumps(saved))
    choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", folds=(0, 1), run=fake_train, log=lambda s: None)
    assert len(calls) == 6 and "tie" not in ev
    # every candidate scores the same: the recipe (first) is kept, and the plans and the log say it was a tie
    dice.update(gentle=0.4, full=0.4)
    saved = json.loads((pre / "fomoPlans.json").read_text())
    saved["fomo"]["pretrained_checkpoint"] = "/third.pth"
    (pre / "fomoPlans.json").write_text(json.dumps(saved))
    log = []
    entry = choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", folds=(0, 1), run=fake_train,
                              log=log.append)
    assert entry["name"] == "recipe" and entry["evidence"]["tie"] == ["recipe", "gentle", "full"]
    assert "  undecided: recipe, gentle, full scored the same; recipe comes first in the candidates' order" in log


def test_auto_refuses_from_scratch_plans_a_wrong_trainer_and_bad_folds(seg_plans):
    from fomo_nnunet.plans.adapt_planner import choose_adaptation

    pre, _ = seg_plans
    never = lambda cmd: pytest.fail("nothing may train")  # noqa: E731
    with pytest.raises(ValueError, match="trains classification tasks; this task is segmentation"):
        choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoCls_tiny", run=never)
    with pytest.raises(ValueError, match="not a fomo finetuning trainer"):
        choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoMAE_tiny", run=never)
    with pytest.raises(ValueError, match="--adapt-folds must be distinct folds"):
        choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", folds=(0, 5), run=never)
    with pytest.raises(ValueError, match="unknown \\['lora'\\]"):
        choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", candidates=("recipe", "lora"), run=never)
    plans = json.loads((pre / "fomoPlans.json").read_text())
    plans["fomo"]["pretrained_checkpoint"] = None
    (pre / "fomoPlans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="from scratch.*nothing to adapt"):
        choose_adaptation(904, "fomoPlans", "nnUNetTrainerFomoSeg_tiny", run=never)


# ---- end to end: nnU-Net's trainings, the trainer applying the plans' adaptation ----------------------
@pytest.mark.slow
@pytest.mark.subprocess
def test_plan_transfer_adapt_auto_cross_validates_and_the_trainer_uses_the_choice(tasks_ws):
    root, env, ckpt = tasks_ws
    cmd = ["fomo-nnunet", "plan", "transfer", "-d", "903", "--pretrained", str(ckpt), "--plans-name", "adaptPlans",
           "--data-identifier", "fomoPlans_3d_fullres", "-np", "1", "--adapt", "auto", "--adapt-trainer",
           "nnUNetTrainerFomoReg_tiny_smoke", "--adapt-candidates", "recipe", "full", "--adapt-folds", "0",
           "-device", "cpu"]
    out = run(cmd, env).stdout
    assert "chosen by auto" in out and "recipe: mae" in out and "full: mae" in out
    pre = root / "preprocessed" / "Dataset903_FOMO3Brainage"
    entry = json.loads((pre / "adaptPlans.json").read_text())["fomo"]["adaptation"]
    ev = entry["evidence"]
    scores = {c: ev["candidates"][c]["value"] for c in ("recipe", "full")}
    assert entry["name"] == min(scores, key=scores.get) and ev["folds"] == [0]
    # the candidate's fold recorded the recipe the trainer actually ran: the adaptation applied
    fold = root / "results" / "Dataset903_FOMO3Brainage" / \
        "nnUNetTrainerFomoReg_tiny_smoke__adaptPlans__adapt_full__3d_fullres" / "fold_0"
    record = json.loads((fold / "recipe.json").read_text())
    assert record["adaptation"]["name"] == "full" and record["recipe"]["fresh_only_epochs"] == 0
    assert (fold / "validation" / "predictions.csv").is_file()
    # a rerun (plans rewritten the same) trains nothing again
    assert run(cmd, env).stdout.count("done before") == 2
    # a named adaptation is the user's choice, recorded without training
    out = run([*cmd[:cmd.index("--adapt")], "--adapt", "gentle"], env).stdout
    assert "adaptation: gentle" in out and "chosen by user" in out
    with pytest.raises(AssertionError, match="--from-scratch plans have none"):
        run([*cmd[:cmd.index("--adapt")], "--from-scratch", "--adapt", "full"], env)
