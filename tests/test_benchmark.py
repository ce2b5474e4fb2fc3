"""The benchmark end to end in miniature: every step runs (a few iterations each) and the report is written."""
from __future__ import annotations

import json

import pytest

from fomo_nnunet.report import markdown_table, table_rows
from helpers import nnunet_env, run


def test_report_table_marks_which_variant_is_better():
    results = {"task2": {"pretrained": {"metrics": {"dice": 0.6, "nsd": 0.5}}, "scratch": {"metrics": {"dice": 0.4}}},
               "task3": {"pretrained": {"metrics": {"mae": 9.0, "pearson_r": 0.5}},
                         "scratch": {"metrics": {"mae": 7.0, "pearson_r": 0.6}}},
               "task7": {"pretrained": {"metrics": {"macro_auroc": 0.7}, "fairness_score": {"macro_auroc": 0.9}},
                         "scratch": {"metrics": {"macro_auroc": 0.6}, "fairness_score": {"macro_auroc": 0.7}}}}
    rows = {(r["task"], r["metric"]): r for r in table_rows(results)}
    assert rows[("task2", "dice")]["pretraining_helped"] is True
    assert rows[("task2", "nsd")]["pretraining_helped"] is None  # scratch has no NSD: n/a, not a guess
    assert rows[("task3", "mae")]["pretraining_helped"] is False and rows[("task3", "mae")]["lower_is_better"]
    # task 7 shows the organisers' fairness score (mean over fairness variables of 1 - gap): higher is better
    assert rows[("task7", "macro_auroc_fairness")]["pretraining_helped"] is True
    assert not rows[("task7", "macro_auroc_fairness")]["lower_is_better"]
    table = markdown_table(list(rows.values()))
    assert "| task2 meningioma | **dice** | 0.600 | 0.400 | 0.200 | yes |" in table
    flat = {"text": "", "degenerate": True}
    results["task2"]["pretrained"]["learning_check"] = results["task2"]["scratch"]["learning_check"] = flat
    assert "| 0.200 | yes (neither learned) |" in markdown_table(table_rows(results))
    results["task2"]["scratch"]["metrics"]["dice"] = 0.6
    assert "| 0.000 | tie (neither learned) |" in markdown_table(table_rows(results))


@pytest.mark.slow
def test_miniature_benchmark_writes_the_report_and_resumes(tmp_path):
    work = tmp_path / "work"
    env = nnunet_env(tmp_path / "unused")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(k)  # the benchmark puts nnU-Net's folders in its work folder
    cmd = ["fomo-nnunet", "benchmark", "--preset", "smoke", "--tasks", "3", "6", "--n-train", "6", "--n-test", "6",
           "--work", str(work), "-np", "2"]
    first = run(cmd, env, timeout=900)
    report = work / "report" / "report.md"
    text = report.read_text()
    assert "| task3 brainage | **mae (lower is better)** |" in text and "| task6 probing | **macro_auroc** |" in text
    for png in ("pretrained_vs_scratch.png", "pretraining_loss.png", "reconstruction.png"):
        assert (work / "report" / png).is_file(), png
    results = json.loads((work / "report" / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"task3", "task6"}
    assert "container_task3" in results["step_seconds"] and "The submission" in text
    assert "| task" in first.stdout  # the table is printed at the end
    second = run(cmd, env, timeout=300)
    assert "[step]" not in second.stdout and second.stdout.count("[skip]") >= 10


def test_learning_check_flags_models_that_have_not_left_their_start(tmp_path):
    import nibabel as nib
    import numpy as np

    from fomo_nnunet.report import learning_check
    from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION

    seg = tmp_path / "seg"
    seg.mkdir()
    for i, fg in enumerate((0, 0, 1)):
        a = np.zeros((4, 4, 4), np.uint8)
        a[1, 1, 1] = fg
        nib.save(nib.Nifti1Image(a, np.eye(4)), seg / f"c{i}.nii.gz")
    assert learning_check(SEGMENTATION, seg, tmp_path) == {"text": "predicts foreground in 1 of 3 test cases",
                                                           "degenerate": False}
    (seg / "c2.nii.gz").unlink()
    assert learning_check(SEGMENTATION, seg, tmp_path)["degenerate"]

    def scores(name, targets, preds):
        d = tmp_path / name
        d.mkdir()
        lines = ["case,target,prediction,score_used,status"] + [
            f"c{i},{t},{p},{p},ok" for i, (t, p) in enumerate(zip(targets, preds))] + ["cx,1,,0,missing"]
        (d / "per_case.csv").write_text("\n".join(lines) + "\n")
        return d

    flat = learning_check(CLASSIFICATION, tmp_path, scores("c1", [0, 1, 0, 1], [0.57, 0.571, 0.569, 0.57]))
    assert flat["degenerate"] and "0.570 ± 0.001" in flat["text"]
    assert not learning_check(CLASSIFICATION, tmp_path, scores("c2", [0, 1, 0, 1], [0.2, 0.8, 0.3, 0.6]))["degenerate"]
    mean_predictor = learning_check(REGRESSION, tmp_path, scores("r1", [20, 40, 60, 80], [50, 50.1, 49.9, 50]))
    assert mean_predictor["degenerate"] and "= 0.00" in mean_predictor["text"]
    assert not learning_check(REGRESSION, tmp_path, scores("r2", [20, 40, 60, 80], [30, 45, 50, 70]))["degenerate"]


def test_pipeline_runs_light_commands_in_process_with_the_work_folders_environment(tmp_path, monkeypatch):
    import os

    from fomo_nnunet.pipeline import Pipeline, StepFailed

    monkeypatch.delenv("nnUNet_raw", raising=False)
    pipe = Pipeline(tmp_path / "work", log=lambda *a: None)
    gt = tmp_path / "targets.json"
    gt.write_text(json.dumps({"a": 0, "b": 1, "c": 0, "d": 1}))
    pred = tmp_path / "predictions.csv"
    pred.write_text("case_id,prediction\na,0.1\nb,0.9\nc,0.4\nd,0.6\n")
    assert pipe.run(["fomo-nnunet", "evaluate", "task1", "--pred", str(pred), "--gt", str(gt),
                     "-o", str(tmp_path / "scores")]) == ""  # in process: nothing captured
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["metrics"]["auroc"] == 1.0
    assert "nnUNet_raw" not in os.environ  # the work folder's variables were lent, then taken back
    with pytest.raises(StepFailed, match="fomo-nnunet evaluate task1"):
        pipe.run(["fomo-nnunet", "evaluate", "task1", "--pred", str(tmp_path / "missing.csv"), "--gt", str(gt),
                  "-o", str(tmp_path / "scores2")])
    with pytest.raises(StepFailed, match="exited with 2"):
        pipe.run(["fomo-nnunet", "evaluate", "--no-such-flag"])
