"""Metrics against hand-computed values, each edge case pinned to the organisers' definition it follows
(repository fomo26/fomo-metrics, package fomo_challenge_metrics, file and function named per test);
evaluate_task end to end and the evaluate CLI."""
from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import surface_distance

from fomo_nnunet.evaluation import metrics as M
from fomo_nnunet.cli import main
from fomo_nnunet.evaluation.scoring import evaluate_task
from fomo_nnunet.tasks import get_task


# ---------------------------------------------------------------- segmentation

def test_dice_empty_masks_follow_compute_dice_coefficient():
    """segmentation.py, compute_dice_coefficient: both empty 1.0, one empty 0.0, else 2|P&G|/(|P|+|G|)."""
    assert M.dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert M.dice(np.zeros(5), np.zeros(5)) == 1.0
    assert M.dice(np.zeros(5), np.array([0, 1, 0, 0, 0])) == 0.0
    assert M.dice(np.array([0, 1, 0, 0, 0]), np.zeros(5)) == 0.0
    assert M.dice(np.array([0, 2, 1]), np.array([0, 1, 1])) == 1.0  # non-zero = foreground (astype(bool))
    with pytest.raises(ValueError):
        M.dice(np.zeros(3), np.zeros(4))


def _cube(shape=(12, 12, 12), lo=3, hi=8, offset=(0, 0, 0)):
    a = np.zeros(shape, bool)
    a[lo + offset[0]:hi + offset[0], lo + offset[1]:hi + offset[1], lo + offset[2]:hi + offset[2]] = True
    return a


def test_nsd_empty_masks_follow_compute_normalized_surface_distance():
    """segmentation.py, compute_normalized_surface_distance: both empty 0.0 (not 1.0), one empty 0.0."""
    g = _cube()
    assert M.nsd(g, g, (1, 1, 1)) == pytest.approx(1.0)
    assert M.nsd(np.zeros_like(g), np.zeros_like(g), (1, 1, 1)) == 0.0
    assert M.nsd(np.zeros_like(g), g, (1, 1, 1)) == 0.0
    assert M.nsd(g, np.zeros_like(g), (1, 1, 1)) == 0.0
    far = np.zeros((30, 12, 12), bool)
    far[20:25, 3:8, 3:8] = True
    near = np.zeros((30, 12, 12), bool)
    near[3:8, 3:8, 3:8] = True
    assert M.nsd(far, near, (1, 1, 1)) == 0.0  # surfaces 12 mm apart, tolerance 1 mm
    shifted = _cube(offset=(1, 0, 0))
    assert M.nsd(shifted, g, (1, 1, 1)) == pytest.approx(1.0)
    assert M.nsd(shifted, g, (3, 1, 1)) < 1.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nsd_matches_surface_distance_anisotropic():
    rng = np.random.default_rng(0)
    g = _cube((14, 16, 10), 2, 9)
    p = g.copy()
    p[rng.random(p.shape) < 0.15] ^= True
    spacing = (0.7, 1.3, 2.5)
    sd = surface_distance.compute_surface_distances(g, p, spacing)
    ref = surface_distance.compute_surface_dice_at_tolerance(sd, 1.0)
    assert M.nsd(p, g, spacing) == pytest.approx(ref)
    assert 0.0 < ref < 1.0


def test_multiclass_case_is_scored_on_the_labels_of_its_ground_truth():
    """segmentation.py, compute_multiclass_dsc / compute_multiclass_nsd with labels=None: labels come
    from np.unique(gt) without 0, so a class absent from the ground truth is not scored for that case
    (before: label 2 predicted but absent scored Dice 0 and pulled the case to 0.5)."""
    gt = np.zeros((8, 8, 8), np.int64)
    gt[1:4, 1:4, 1:4] = 1
    pred = gt.copy()
    pred[5:7, 5:7, 5:7] = 2  # a false-positive class the ground truth does not hold
    assert M.labels_scored(gt) == [1]
    s = M.score_segmentation_case(pred, gt, (1, 1, 1), multiclass=True)
    assert list(s) == [1] and s[1] == {"dice": 1.0, "nsd": pytest.approx(1.0)}
    # empty ground truth: nothing is scored, the case drops out of the task mean
    assert M.score_segmentation_case(pred, np.zeros_like(gt), (1, 1, 1), multiclass=True) == {}
    # binary tasks compare non-zero masks and are always scored (both empty: Dice 1, NSD 0)
    assert M.score_segmentation_case(np.zeros_like(gt), np.zeros_like(gt), (1, 1, 1), multiclass=False) == \
        {1: {"dice": 1.0, "nsd": 0.0}}
    # a missing prediction scores 0 on every scored label
    assert M.score_segmentation_case(None, gt, (1, 1, 1), multiclass=True) == {1: {"dice": 0.0, "nsd": 0.0}}


def test_aggregate_weighs_cases_equally():
    """Each case weighs the same (fomo26.github.io, Leaderboard & Evaluation); a case's value is the mean
    over its scored labels; per label, the mean over the cases scored on it."""
    cases = {"a": {1: {"dice": 1.0, "nsd": 0.5}, 2: {"dice": 0.0, "nsd": 0.5}},
             "b": {1: {"dice": 0.4, "nsd": 0.2}},
             "c": {}}
    agg = M.aggregate_segmentation(cases)
    assert agg["metrics"] == pytest.approx({"dice": (0.5 + 0.4) / 2, "nsd": (0.5 + 0.2) / 2})
    assert agg["per_label"][1] == pytest.approx({"dice": 0.7, "nsd": 0.35, "n_cases": 2})
    assert agg["per_label"][2] == pytest.approx({"dice": 0.0, "nsd": 0.5, "n_cases": 1})
    assert agg["unscored_cases"] == ["c"]


# ---------------------------------------------------------------- classification

def test_auroc_invalid_scores_become_0_or_1_and_can_tie():
    """classification.py, compute_auroc: an invalid score becomes 0.0 for a positive and 1.0 for a
    negative; these TIE with valid scores of exactly 0 or 1 (before: -1 / 2, strictly worst)."""
    y = [0, 0, 1, 1]
    assert M.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # invalid positive -> 0.0, tied with the negative at 0.0: pairs 0.5 + 0 + 1 + 1 of 4
    assert M.auroc(y, [0.0, 0.4, None, 0.8]) == pytest.approx(2.5 / 4)
    # invalid negative -> 1.0, tied with the positive at 1.0: pairs 1 + 0.5 + 1 + 0 of 4
    assert M.auroc(y, [0.1, float("nan"), 1.0, 0.8]) == pytest.approx(2.5 / 4)
    # invalid kinds: missing, NaN, inf, unparsable
    for bad in (None, float("nan"), float("inf"), "abc"):
        assert M.auroc(y, [0.1, 0.4, bad, 0.8]) == pytest.approx(0.5)  # positive at 0.0 below both
    assert M.auroc(y, [None] * 4) == 0.0  # every pair wrong
    assert math.isnan(M.auroc([1, 1], [0.2, 0.3]))  # one class: undefined (theirs raises)


def test_auroc_uses_finite_scores_outside_0_1_as_they_are():
    """classification.py (505d699), compute_auroc: only `_is_invalid` scores are substituted; a finite score
    outside [0, 1] is ranked as it is (the validator's range rule is for a container's output)."""
    y = [0, 0, 1, 1]
    # a positive at -0.1 ranks below the negative at 0.0 (its substitute 0.0 would tie): 0 + 0 + 1 + 1 of 4
    assert M.auroc(y, [0.0, 0.4, -0.1, 0.8]) == pytest.approx(2 / 4)
    # a negative at 1.5 ranks above the positive at 1.0 (its substitute 1.0 would tie): 1 + 0 + 1 + 0 of 4
    assert M.auroc(y, [0.1, 1.5, 1.0, 0.8]) == pytest.approx(2 / 4)
    _, used, invalid = M.auroc_scores_used(y, [0.1, 1.5, None, 0.8])
    assert used.tolist() == [0.1, 1.5, 0.0, 0.8] and invalid.tolist() == [False, False, True, False]


def test_ovr_auroc_binary_uses_column_1_only():
    """classification.py, compute_ovr_auroc: with two classes the AUROC of column 1 alone (before: the
    mean of both columns' one-vs-rest AUROCs, 0.625 here)."""
    rows = [[0.1, 0.1], [0.9, 0.4], [0.5, 0.35], [0.2, 0.8]]
    assert M.ovr_auroc([0, 0, 1, 1], rows) == pytest.approx(0.75)  # column 1: 0.1 0.4 | 0.35 0.8
    assert math.isnan(M.ovr_auroc([1, 1, 1, 1], rows))  # one class: NaN


def test_ovr_auroc_invalid_row_and_absent_class():
    """classification.py, compute_ovr_auroc: an invalid row becomes 0 for the true class and 1/(C-1) for
    the others; classes without positives are left out of the macro mean; C is the rows' width."""
    # row of case 1 (label 1) -> [0.5, 0.0, 0.5]: class 0: 1, class 1: 0, class 2: 1
    assert M.ovr_auroc([0, 1, 2], [[.9, .05, .05], None, [.05, .05, .9]]) == pytest.approx(2 / 3)
    # a non-finite entry makes the whole row invalid, also in first position
    assert M.ovr_auroc([1, 0, 2], [[.05, float("nan"), .05], [.9, .05, .05], [.05, .05, .9]]) == pytest.approx(2 / 3)
    # class 2 absent from y: mean over classes 0 and 1 only
    rows = [[.7, .2, .1], [.2, .7, .1], [.6, .3, .1], [.3, .6, .1]]
    assert M.ovr_auroc([0, 1, 0, 1], rows) == 1.0
    assert math.isnan(M.ovr_auroc([0, 1], [[1.0], [0.0]]))  # fewer than two columns
    assert math.isnan(M.ovr_auroc([0, 1], [None, None]))


def test_ovr_f1_and_macro_f1_invalid_predictions():
    """classification.py: compute_ovr_f1 predicts (label + 1) mod C for an invalid row and the first
    argmax otherwise; compute_macro_f1 predicts 1 for label 0 and 0 otherwise when invalid."""
    assert M.ovr_f1([0, 1, 2], [[.05, .9, .05], None, None]) == 0.0  # predictions 1, 2, 0: all wrong
    assert M.ovr_f1([0, 1], [[.5, .5], [.4, .6]]) == 1.0  # tie -> first maximum (class 0)
    # [0, 1, None, 1] -> [0, 1, 1, 1]: F1 class 0 = 2/3, class 1 = 0.8
    assert M.macro_f1([0, 1, 0, 1], [0, 1, None, 1]) == pytest.approx((2 / 3 + 0.8) / 2)
    assert math.isnan(M.ovr_f1([0, 1], [None, None]))


# ---------------------------------------------------------------- regression

def test_mae_invalid_prediction_counts_as_100():
    """regression.py, compute_absolute_error: an invalid prediction is the value 100.0 (before: the end
    of the target range farthest from the truth)."""
    assert M.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert M.mae([60, 30], [58, None]) == pytest.approx((2 + 70) / 2)
    assert M.mae([60], [float("nan")]) == pytest.approx(40.0)
    assert math.isnan(M.mae([], []))


def test_pearson_invalid_prediction_counts_as_minus_100_and_undefined_is_nan():
    """regression.py, compute_correlation: an invalid prediction is the value -100.0; r is scipy's
    pearsonr, NaN for constant input (before: 0.0), undefined for fewer than two cases."""
    assert M.pearson_r([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # [1, 2, None] -> [1, 2, -100]: deviations (-1, 0, 1) and (100, 103, -203)/3 -> -303 / sqrt(123636)
    assert M.pearson_r([1, 2, 3], [1, 2, None]) == pytest.approx(-303 / math.sqrt(123636))
    assert math.isnan(M.pearson_r([1, 2, 3], [5, 5, 5]))
    assert M.pearson_r_undefined_reason([1, 2, 3], [5, 5, 5]) == "constant predictions"
    assert math.isnan(M.pearson_r([1], [1]))
    assert M.pearson_r_undefined_reason([1], [1]) == "fewer than two cases"


# ---------------------------------------------------------------- fairness

def test_max_disparity_one_defined_group_is_zero_none_is_nan():
    """fairness.py, compute_max_disparity: None groups left out, NaN metrics dropped; one group left:
    0.0; none: NaN."""
    y = [0, 1, 0, 0]
    rows = [[.9, .1], [.1, .9], [.8, .2], [.7, .3]]
    # group A has both classes (AUROC 1), B only class 0 (AUROC NaN, dropped) -> 0.0
    assert M.max_disparity(y, rows, ["A", "A", "B", "B"], M.ovr_auroc) == 0.0
    assert math.isnan(M.max_disparity(y, rows, ["B", None, "B", "B"], M.ovr_auroc))
    assert math.isnan(M.max_disparity(y, rows, [None] * 4, M.ovr_auroc))
    with pytest.raises(ValueError):
        M.max_disparity(y, rows, ["A"], M.ovr_auroc)


def test_fairness_score_is_mean_of_one_minus_gap_over_defined_variables():
    """fairness.py, compute_fairness_score: (1/|V'|) sum over V' of (1 - D_v), V' = variables with a
    defined disparity."""
    y = [0, 1, 0, 1]
    rows = [[.9, .1], [.1, .9], [.4, .6], [.6, .4]]  # cases 0-1 ranked right (1.0), 2-3 wrong (0.0)
    groups = {"sex": ["f", "f", "m", "m"], "site": ["x"] * 4, "age_bin": [None] * 4}
    r = M.fairness_score(y, rows, groups, M.ovr_auroc)
    assert r["disparities"]["sex"] == 1.0 and r["disparities"]["site"] == 0.0
    assert math.isnan(r["disparities"]["age_bin"])
    assert r["variables_used"] == ["sex", "site"]
    assert r["score"] == pytest.approx(((1 - 1.0) + (1 - 0.0)) / 2)
    assert math.isnan(M.fairness_score(y, rows, {"age_bin": [None] * 4}, M.ovr_auroc)["score"])


# ---------------------------------------------------------------- files

def _save(path, arr, zooms=(1.0, 1.0, 1.0)):
    img = nib.Nifti1Image(arr.astype(np.uint8), np.diag([*zooms, 1.0]))
    nib.save(img, str(path))


def test_evaluate_task_multiclass_segmentation(tmp_path):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt.mkdir(), pred.mkdir()
    a = np.zeros((12, 12, 12), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    a[7:10, 7:10, 7:10] = 2
    b = np.zeros_like(a)
    b[3:7, 3:7, 3:7] = 1
    for name, arr in (("a", a), ("b", b), ("c", a), ("d", np.zeros_like(a)), ("e", b)):
        _save(gt / f"{name}.nii.gz", arr)
    _save(pred / "a.nii.gz", a)                              # perfect
    _save(pred / "c.nii.gz", np.zeros((5, 5, 5), np.uint8))   # wrong shape: 0; b: missing: 0
    _save(pred / "d.nii.gz", a)                              # empty ground truth: not scored
    _save(pred / "e.nii.gz", np.where(a == 2, 2, b))         # label 2 absent from its ground truth: ignored
    s = evaluate_task("task4", pred, gt, out)
    assert s["n_cases"] == 5 and s["invalid"] == ["b", "c"] and s["unscored"] == ["d"]
    # case values: a 1, b 0, c 0, e 1 (d left out)
    assert s["metrics"] == pytest.approx({"dice": 0.5, "nsd": 0.5})
    assert s["per_label"]["nerve"] == pytest.approx({"dice": 0.5, "nsd": 0.5, "n_cases": 4})
    assert s["per_label"]["vessel"] == pytest.approx({"dice": 0.5, "nsd": 0.5, "n_cases": 2})
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["status"] for r in rows if r["case"] == "b"] == ["missing"]
    assert all(r["status"].startswith("error") for r in rows if r["case"] == "c")
    assert json.loads((out / "summary.json").read_text())["unscored"] == ["d"]


def test_evaluate_task_binary_segmentation_empty_cases(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    empty = np.zeros((10, 10, 10), np.uint8)
    _save(gt / "x.nii.gz", empty)
    _save(pred / "x.nii.gz", empty)   # both empty: Dice 1, NSD 0
    _save(gt / "y.nii.gz", empty)     # missing prediction: 0 (not an empty mask's Dice 1)
    s = evaluate_task("meningioma", pred, gt, tmp_path / "o")
    assert s["metrics"] == {"dice": 0.5, "nsd": 0.0} and s["invalid"] == ["y"]


def test_segmentation_voxel_values_are_used_unrounded(tmp_path):
    """segmentation.py: binary masks are `astype(bool)` (every non-zero voxel, 0.4 included, is
    foreground), multiclass ones `== label`; a file of non-integer values is never rounded first."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    a = np.zeros((10, 10, 10), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    _save(gt / "x.nii.gz", a)
    nib.save(nib.Nifti1Image(a * np.float32(0.4), np.eye(4)), str(pred / "x.nii.gz"))  # rounds to 0
    assert evaluate_task("meningioma", pred, gt, tmp_path / "o")["metrics"] == {"dice": 1.0, "nsd": 1.0}
    # multiclass: 1.4 is neither label 1 nor background; the label-1 voxels that hold 1.0 count
    m = a.astype(np.float32)
    m[2:4] *= 1.4
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(pred / "x.nii.gz"))
    s = evaluate_task("task4", pred, gt, tmp_path / "o4")
    assert s["metrics"]["dice"] == pytest.approx(2 * 32 / (32 + 64))


def _write_csv(path, rows, header=("case_id", "prediction", "extra")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_evaluate_task_classification(tmp_path):
    _write_csv(tmp_path / "p.csv", [("a", 0.0, "x"), ("b", "nan", "x"), ("c", 0.35, "x"), ("zz", 0.5, "x")])
    (tmp_path / "t.json").write_text(json.dumps({"a": 0, "b": 0, "c": 1, "d": 1}))
    s = evaluate_task(get_task(1), tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "out")
    # negatives a 0.0, b invalid -> 1.0; positives c 0.35, d missing -> 0.0 (ties with a): 1 + 0 + 0.5 + 0
    assert s["metrics"] == {"auroc": pytest.approx(1.5 / 4)}
    assert s["informative"] == {"auroc_valid_predictions_only": 1.0}
    assert s["n_cases"] == 4 and s["invalid"] == ["b", "d"]
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out" / "per_case.csv"))}
    assert float(rows["b"]["score_used"]) == 1.0 and rows["d"]["status"] == "missing"
    txt = tmp_path / "txt"
    txt.mkdir()
    for k, v in {"a": "0.1", "b": "0.4", "c": "0.35", "d": "0.8"}.items():
        (txt / f"{k}.txt").write_text(v + "\n")
    s = evaluate_task("infarct", txt, tmp_path / "t.json", tmp_path / "out2")
    assert s["metrics"]["auroc"] == pytest.approx(0.75) and s["invalid"] == []


def test_evaluate_task_classification_scores_outside_0_1_count_with_a_note(tmp_path):
    _write_csv(tmp_path / "p.csv", [("a", 0.1, "x"), ("b", 1.5, "x"), ("c", 1.0, "x"), ("d", 0.8, "x")])
    (tmp_path / "t.json").write_text(json.dumps({"a": 0, "b": 0, "c": 1, "d": 1}))
    s = evaluate_task("infarct", tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "out")
    assert s["metrics"] == {"auroc": pytest.approx(2 / 4)} and s["invalid"] == []
    assert any("1 scores outside [0, 1] used as they are" in n and "'b'" in n for n in s["notes"])


def test_evaluate_task_regression(tmp_path):
    _write_csv(tmp_path / "p.csv", [("a", 10), ("b", ""), ("d", 32)], header=("case_id", "prediction"))
    (tmp_path / "t.json").write_text(json.dumps({"a": 10, "b": 20, "c": 30, "d": 30}))
    s = evaluate_task("3", tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "out")
    # b invalid and c missing count as 100 (MAE) / -100 (r): |20-100| = 80, |30-100| = 70
    assert s["metrics"]["mae"] == pytest.approx((0 + 80 + 70 + 2) / 4)
    # r of (10,20,30,30) and (10,-100,-100,32): cov -385, sums of squares 275 and 14883
    assert s["metrics"]["pearson_r"] == pytest.approx(-385 / math.sqrt(275 * 14883))
    assert s["informative"] == pytest.approx({"mae_valid_predictions_only": 1.0,
                                              "pearson_r_valid_predictions_only": 1.0})
    assert s["invalid"] == ["b", "c"]
    _write_csv(tmp_path / "q.csv", [(k, 40) for k in "abcd"], header=("case_id", "prediction"))
    s = evaluate_task("3", tmp_path / "q.csv", tmp_path / "t.json", tmp_path / "out2")
    assert s["metrics"]["pearson_r"] is None  # constant predictions: NaN, with the reason in the notes
    assert any("constant predictions" in n for n in s["notes"])
    with pytest.raises(ValueError):
        evaluate_task("task6", tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "o")


def test_cli_evaluate(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    a = np.zeros((10, 10, 10), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    _save(gt / "x.nii.gz", a)
    _save(pred / "x.nii.gz", a)
    rc = main(["evaluate", "meningioma", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "o")])
    assert rc == 0
    assert "(official)" in capsys.readouterr().out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["metrics"] == {"dice": 1.0, "nsd": 1.0}
    with pytest.raises(SystemExit):
        main(["evaluate", "task99", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a readable JSON"):
        main(["evaluate", "1", "--pred", str(pred), "--gt", str(tmp_path / "nope.json"), "-o", str(tmp_path / "o")])
