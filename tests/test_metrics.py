"""Metrics against hand-computed values, evaluate_task end to end, the evaluate CLI."""
from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import surface_distance

from fomo_nnunet import metrics as M
from fomo_nnunet.cli import main
from fomo_nnunet.tasks import get_task


def test_dice_hand_values():
    assert M.dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    assert M.dice(np.zeros(5), np.zeros(5)) == 1.0           # both empty
    assert M.dice(np.zeros(5), np.array([0, 1, 0, 0, 0])) == 0.0  # one empty
    assert M.dice(np.array([0, 1, 0, 0, 0]), np.zeros(5)) == 0.0
    with pytest.raises(ValueError):
        M.dice(np.zeros(3), np.zeros(4))


def _cube(shape=(12, 12, 12), lo=3, hi=8, offset=(0, 0, 0)):
    a = np.zeros(shape, bool)
    a[lo + offset[0]:hi + offset[0], lo + offset[1]:hi + offset[1], lo + offset[2]:hi + offset[2]] = True
    return a


def test_nsd_hand_values():
    g = _cube()
    assert M.nsd(g, g, (1, 1, 1)) == pytest.approx(1.0)
    assert M.nsd(np.zeros_like(g), np.zeros_like(g), (1, 1, 1)) == 0.0  # both empty
    assert M.nsd(np.zeros_like(g), g, (1, 1, 1)) == 0.0                # one empty
    assert M.nsd(g, np.zeros_like(g), (1, 1, 1)) == 0.0
    far = np.zeros((30, 12, 12), bool)
    far[20:25, 3:8, 3:8] = True
    near = np.zeros((30, 12, 12), bool)
    near[3:8, 3:8, 3:8] = True
    assert M.nsd(far, near, (1, 1, 1)) == 0.0  # surfaces 12 mm apart, tolerance 1 mm
    # a 1-voxel shift is within tolerance at 1 mm, beyond it at 3 mm along that axis
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


def test_auroc_and_invalid_worst():
    y = [0, 0, 1, 1]
    assert M.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # invalid positive -> ranked below both negatives: 2 of 4 pairs right
    for bad in (float("nan"), None, float("inf"), 1.5, -0.1, "abc"):
        assert M.auroc(y, [0.1, 0.4, bad, 0.8]) == pytest.approx(0.5)
    # invalid negative -> ranked above both positives
    assert M.auroc(y, [0.1, float("nan"), 0.35, 0.8]) == pytest.approx(0.5)
    # all invalid: every pair wrong
    assert M.auroc(y, [None] * 4) == pytest.approx(0.0)
    with pytest.warns(RuntimeWarning):
        assert math.isnan(M.auroc([1, 1], [0.2, 0.3]))


def test_mae_pearson():
    assert M.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert M.pearson_r([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert M.pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.pearson_r([1, 2, 3], [5, 5, 5]) == 0.0  # constant predictions


def test_macro_auroc_f1():
    y = [0, 1, 2, 0, 1, 2]
    perfect = np.eye(3)[y]
    assert M.macro_auroc(y, perfect) == pytest.approx(1.0)
    assert M.macro_auroc(y, 1 - perfect) == pytest.approx(0.0)
    # binary with a 1-D score vector
    assert M.macro_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # only the classes present count (class 2 column ignored)
    assert M.macro_auroc([0, 1, 0, 1], np.array([[.9, .1, 0], [.2, .8, 0], [.7, .3, 0], [.4, .6, 0]])) == 1.0
    assert M.macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 0.8) / 2)


def _save(path, arr, zooms=(1.0, 1.0, 1.0)):
    img = nib.Nifti1Image(arr.astype(np.uint8), np.diag([*zooms, 1.0]))
    nib.save(img, str(path))


def test_evaluate_task_segmentation(tmp_path):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt.mkdir(), pred.mkdir()
    a = np.zeros((12, 12, 12), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    a[7:10, 7:10, 7:10] = 2
    b = np.zeros_like(a)
    b[3:7, 3:7, 3:7] = 1
    _save(gt / "a.nii.gz", a, (1.0, 1.0, 2.0))
    _save(gt / "b.nii.gz", b)
    _save(gt / "c.nii.gz", a)
    _save(pred / "a.nii.gz", a, (1.0, 1.0, 2.0))          # perfect
    # b: missing -> empty mask; c: wrong shape -> worst
    _save(pred / "c.nii.gz", np.zeros((5, 5, 5), np.uint8))
    s = M.evaluate_task("task4", pred, gt, out)
    assert s["task"] == "task4" and s["n_cases"] == 3
    assert s["invalid"] == ["b", "c"]
    # nerve (1): a 1, b 0, c 0; vessel (2): a 1, b both empty -> dice 1 / nsd 0, c 0
    assert s["per_label"]["nerve"] == pytest.approx({"dice": 1 / 3, "nsd": 1 / 3})
    assert s["per_label"]["vessel"] == pytest.approx({"dice": 2 / 3, "nsd": 1 / 3})
    assert s["metrics"] == pytest.approx({"dice": 0.5, "nsd": 1 / 3})
    on_disk = json.loads((out / "summary.json").read_text())
    assert {"task", "n_cases", "metrics", "per_label", "invalid"} <= set(on_disk)
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert len(rows) == 6 and {"case", "label", "dice", "nsd"} <= set(rows[0])
    assert [r["status"] for r in rows if r["case"] == "b"] == ["missing", "missing"]
    assert all(r["status"].startswith("error") for r in rows if r["case"] == "c")


def _write_csv(path, rows, header=("case_id", "prediction", "extra")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_evaluate_task_classification(tmp_path):
    _write_csv(tmp_path / "p.csv", [("a", 0.1, "x"), ("b", "nan", "x"), ("c", 0.35, "x"), ("zz", 0.5, "x")])
    (tmp_path / "t.json").write_text(json.dumps({"a": 0, "b": 0, "c": 1, "d": 1}))
    s = M.evaluate_task(get_task(1), tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "out")
    # b (negative, invalid) -> 2.0, d (positive, missing) -> -1.0: pairs (a,c) right only -> 1/4
    assert s["metrics"] == {"auroc": pytest.approx(0.25)}
    assert s["n_cases"] == 4 and s["invalid"] == ["b", "d"]
    assert (tmp_path / "out" / "per_case.csv").exists()
    # folder of <case>.txt
    txt = tmp_path / "txt"
    txt.mkdir()
    for k, v in {"a": "0.1", "b": "0.4", "c": "0.35", "d": "0.8"}.items():
        (txt / f"{k}.txt").write_text(v + "\n")
    s = M.evaluate_task("infarct", txt, tmp_path / "t.json", tmp_path / "out2")
    assert s["metrics"]["auroc"] == pytest.approx(0.75) and s["invalid"] == []


def test_evaluate_task_regression(tmp_path):
    _write_csv(tmp_path / "p.csv", [("a", 10), ("b", ""), ("d", 32)], header=("case_id", "prediction"))
    (tmp_path / "t.json").write_text(json.dumps({"a": 10, "b": 20, "c": 30, "d": 30}))
    s = M.evaluate_task("3", tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "out")
    # b invalid (truth 20, range [10, 30], tie -> 10): |20-10| = 10; c missing (30 -> 10): 20; d: 2
    assert s["metrics"]["mae"] == pytest.approx((0 + 10 + 20 + 2) / 4)
    assert s["metrics"]["pearson_r"] == pytest.approx(M.pearson_r([10, 20, 30, 30], [10, 10, 10, 32]))
    assert s["invalid"] == ["b", "c"]
    with pytest.raises(ValueError):
        M.evaluate_task("task6", tmp_path / "p.csv", tmp_path / "t.json", tmp_path / "o")


def test_cli_evaluate(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    a = np.zeros((10, 10, 10), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    _save(gt / "x.nii.gz", a)
    _save(pred / "x.nii.gz", a)
    rc = main(["evaluate", "meningioma", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "o")])
    assert rc == 0
    assert "dice" in capsys.readouterr().out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["metrics"] == {"dice": 1.0, "nsd": 1.0}
    with pytest.raises(SystemExit):
        main(["evaluate", "task99", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "o")])
