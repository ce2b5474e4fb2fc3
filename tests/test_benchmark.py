"""The benchmark end to end in miniature: every step runs (a few iterations each) and the report is written."""
from __future__ import annotations

import json

import pytest

from fomo_nnunet.benchmarks.report import markdown_table, table_rows
from helpers import nnunet_env, run


def _run(p: dict, q: dict) -> dict:
    return {"pretrained": {"metrics": p}, "scratch": {"metrics": q}}


def test_report_table_gives_mean_sd_paired_differences_wins_and_verdicts():
    runs = {
        0: {"task2": _run({"dice": 0.6, "nsd": 0.5}, {"dice": 0.4}), "task3": _run({"mae": 9.0}, {"mae": 7.0}),
            "task1": _run({"auroc": 0.7}, {"auroc": 0.6})},
        1: {"task2": _run({"dice": 0.7, "nsd": 0.5}, {"dice": 0.4}), "task3": _run({"mae": 8.0}, {"mae": 7.5}),
            "task1": _run({"auroc": 0.5}, {"auroc": 0.6})},
        2: {"task2": _run({"dice": 0.5, "nsd": 0.5}, {"dice": 0.45}), "task3": _run({"mae": 9.5}, {"mae": 8.0}),
            "task1": _run({"auroc": 0.9}, {"auroc": 0.6})},
    }
    rows = {(r["task"], r["metric"]): r for r in table_rows(runs)}
    dice = rows[("task2", "dice")]
    assert dice["pretrained"] == [0.6, 0.7, 0.5] and dice["wins"] == 3 and dice["n"] == 3
    assert abs(dice["pretrained_mean"] - 0.6) < 1e-12 and abs(dice["pretrained_sd"] - 0.1) < 1e-12
    assert abs(dice["difference_mean"] - 0.55 / 3) < 1e-12
    assert dice["verdict"] == "better"  # every seed favours pretrained, mean diff 0.18 > sd 0.13
    assert rows[("task2", "nsd")]["verdict"] == "n/a" and rows[("task2", "nsd")]["n"] == 0  # scratch has no NSD
    mae = rows[("task3", "mae")]  # lower is better: pretrained has the larger error in every seed
    assert mae["lower_is_better"] and mae["wins"] == 0 and mae["verdict"] == "worse"
    assert rows[("task1", "auroc")]["verdict"] == "undecided"  # wins 2 of 3: signs differ
    table = markdown_table(list(rows.values()))
    assert "| task2 meningioma | **dice** | 0.600 ± 0.100 | 0.417 ± 0.029 | 0.183 ± 0.126 | 3/3 | better |" in table
    one = table_rows({0: runs[0]})
    assert {r["verdict"] for r in one if r["n"]} == {"undecided"}  # one seed never decides
    assert "| 1/1 | undecided (1 seed) |" in markdown_table(one)


def test_task7_rows_show_the_organisers_fairness_score_higher_is_better():
    runs = {0: {"task7": {"pretrained": {"metrics": {"macro_auroc": 0.7}, "fairness_score": {"macro_auroc": 0.9}},
                          "scratch": {"metrics": {"macro_auroc": 0.6}, "fairness_score": {"macro_auroc": 0.7}}}}}
    row = {r["metric"]: r for r in table_rows(runs)}["macro_auroc_fairness"]
    assert not row["lower_is_better"] and row["wins"] == 1 and abs(row["difference_mean"] - 0.2) < 1e-12


def test_verdict_rule_needs_consistent_sign_and_mean_beyond_sd():
    from fomo_nnunet.benchmarks.report import verdict

    assert verdict([0.1, 0.12, 0.11], False) == "better"
    assert verdict([0.01, 0.5], False) == "undecided"  # same sign, but mean 0.255 < sd 0.35
    assert verdict([-0.1, -0.12], True) == "better"  # lower is better (MAE): pretrained lower in both seeds
    assert verdict([0.0, 0.0], False) == "tie"
    assert verdict([0.2], False) == "undecided"
    assert verdict([float("nan")], False) == "n/a"


def test_not_learned_models_are_counted_per_arm_in_the_table():
    failed, passed = {"learned": False, "text": ""}, {"learned": True, "text": ""}
    runs = {s: {"task2": {"pretrained": {"metrics": {"dice": 0.1}, "learning_check": failed if s else passed},
                          "scratch": {"metrics": {"dice": 0.0}, "learning_check": failed}}} for s in (0, 1)}
    rows = table_rows(runs)
    assert rows[0]["not_learned"] == {"pretrained": 1, "scratch": 2}
    assert "(not learned: pretrained 1/2, scratch 2/2)" in markdown_table(rows)


@pytest.mark.slow
def test_miniature_benchmark_writes_the_report_and_resumes(tmp_path):
    work = tmp_path / "work"
    env = nnunet_env(tmp_path / "unused")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(k)  # the benchmark puts nnU-Net's folders in its work folder
    cmd = ["fomo-nnunet", "benchmark", "--preset", "smoke", "--tasks", "3", "6", "--n-train", "6", "--n-test", "6",
           "--work", str(work), "-np", "1"]
    first = run(cmd, env, timeout=900)
    report = work / "report" / "report.md"
    text = report.read_text()
    assert "| task3 brainage | **mae (lower is better)** |" in text and "| task6 probing | **macro_auroc** |" in text
    for png in ("pretrained_vs_scratch.png", "pretraining_loss.png", "reconstruction.png"):
        assert (work / "report" / png).is_file(), png
    results = json.loads((work / "report" / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"task3", "task6"}
    assert results["seeds"] == [0] and "better" in results["verdict_rule"]
    assert {(c["seed"], c["task"], c["arm"]) for c in results["learning_checks"]} == \
        {(0, "task3", "pretrained"), (0, "task3", "scratch")}
    seed_file = json.loads(next((work / "runs" / "seed0" / "nnUNet_results").rglob("seed.json")).read_text())
    assert seed_file["seed"] == 0
    # one trainer for both arms; the plans decide whether it loads the checkpoint, the fold folder records it
    for plans, loads in (("fomoPlans_seed0", True), ("fomoPlans_seed0_scratch", False)):
        folder = next((work / "runs" / "seed0" / "nnUNet_results").rglob(f"*__{plans}__3d_fullres"))
        record = json.loads((folder / "fold_all" / "recipe.json").read_text())
        assert folder.name.startswith("nnUNetTrainerFomoReg_tiny_smoke__") and record["loads_pretrained"] is loads
    assert "container_task3" in results["step_seconds"] and "The submission" in text
    assert "| task" in first.stdout  # the table is printed at the end
    second = run(cmd, env, timeout=300)
    assert "[step]" not in second.stdout and second.stdout.count("[skip]") >= 10


def test_learning_check_applies_the_strict_criteria(tmp_path):
    import nibabel as nib
    import numpy as np

    from fomo_nnunet.benchmarks.report import learning_check
    from fomo_nnunet.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION

    seg = tmp_path / "seg"
    seg.mkdir()
    for i in range(5):
        a = np.zeros((4, 4, 4), np.uint8)
        a[1, 1, 1] = int(i > 0)
        nib.save(nib.Nifti1Image(a, np.eye(4)), seg / f"c{i}.nii.gz")
    scores = tmp_path / "seg_scores"
    scores.mkdir()
    (scores / "summary.json").write_text(json.dumps({"metrics": {"dice": 0.31}}))
    check = learning_check(SEGMENTATION, seg, scores)
    assert check["learned"] and check["figures"]["cases_with_foreground"] == 4  # 4 of 5 = 80 %, Dice 0.31
    assert check["text"] == "predicts foreground in 4 of 5 test cases, mean Dice 0.310"
    (scores / "summary.json").write_text(json.dumps({"metrics": {"dice": 0.29}}))
    assert not learning_check(SEGMENTATION, seg, scores)["learned"]  # foreground, but Dice below 0.3
    (scores / "summary.json").write_text(json.dumps({"metrics": {"dice": 0.9}}))
    (seg / "c1.nii.gz").unlink()
    (seg / "c2.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), seg / "c5.nii.gz")
    assert not learning_check(SEGMENTATION, seg, scores)["learned"]  # foreground in 2 of 4 cases only

    def scores_csv(name, targets, preds):
        d = tmp_path / name
        d.mkdir()
        lines = ["case,target,prediction,score_used,status"] + [
            f"c{i},{t},{p},{p},ok" for i, (t, p) in enumerate(zip(targets, preds))] + ["cx,1,,0,missing"]
        (d / "per_case.csv").write_text("\n".join(lines) + "\n")
        return d

    flat = learning_check(CLASSIFICATION, tmp_path, scores_csv("c1", [0, 1, 0, 1], [0.57, 0.571, 0.569, 0.57]))
    assert not flat["learned"] and "0.570 ± 0.001" in flat["text"]
    # sd 0.04: moves a little, still below the 0.05 the criterion asks for
    assert not learning_check(CLASSIFICATION, tmp_path, scores_csv("c2", [0, 1], [0.46, 0.54]))["learned"]
    assert learning_check(CLASSIFICATION, tmp_path, scores_csv("c3", [0, 1, 0, 1], [0.2, 0.8, 0.3, 0.6]))["learned"]
    mean_predictor = learning_check(REGRESSION, tmp_path, scores_csv("r1", [20, 40, 60, 80], [50, 50.1, 49.9, 50]))
    assert not mean_predictor["learned"] and "= 0.00" in mean_predictor["text"]
    # sd ratio 0.2: some spread, not enough
    assert not learning_check(REGRESSION, tmp_path, scores_csv("r2", [20, 40, 60, 80], [46, 49, 51, 54]))["learned"]
    assert learning_check(REGRESSION, tmp_path, scores_csv("r3", [20, 40, 60, 80], [30, 45, 50, 70]))["learned"]


def test_pipeline_runs_light_commands_in_process_with_the_work_folders_environment(tmp_path, monkeypatch):
    import os

    from fomo_nnunet.cli import main
    from fomo_nnunet.benchmarks.pipeline import Pipeline, StepFailed

    monkeypatch.delenv("nnUNet_raw", raising=False)
    pipe = Pipeline(tmp_path / "work", log=lambda *a: None, in_process=main)
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


# a benchmark step's command: it says where its pid is, then waits; on SIGTERM it leaves a mark and exits 75 (what
# a fomo trainer does after writing checkpoint_latest.pth), or, with IGNORE, it ignores SIGTERM
_STEP_CHILD = """
import os, signal, sys, time
out = sys.argv[1]
stop = []
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "IGNORE" else lambda *a: stop.append(1))
open(out + ".pid", "w").write(str(os.getpid()))
print("child ready", flush=True)
while not stop:
    time.sleep(0.05)
print("child stopping after SIGTERM", flush=True)
open(out + ".stopped", "w").write("checkpoint")
sys.exit(75)
"""
# the benchmark's side: the CLI's SIGTERM handler, a Pipeline running the step
_STEP_DRIVER = """
import signal, sys
from fomo_nnunet import cli
from fomo_nnunet.benchmarks.pipeline import Pipeline
signal.signal(signal.SIGTERM, cli._terminate)
Pipeline.STOP_GRACE_S = float(sys.argv[4])
pipe = Pipeline(sys.argv[1], log=lambda line: print(line, flush=True))
try:
    pipe.run([sys.executable, "-c", sys.argv[2], sys.argv[3], sys.argv[5]])
except KeyboardInterrupt:
    print("benchmark interrupted", flush=True)
    sys.exit(143)
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("child", ["STOPS", "IGNORE"])
def test_a_stopped_benchmark_stops_its_running_command_and_waits_for_it(child, tmp_path):
    """SIGTERM to the benchmark alone (a `kill PID`, not the process group) used to end it while its
    nnUNetv2_train ran on, orphaned, writing into the work folder. Now the command gets SIGTERM and the benchmark
    waits for it (a fomo trainer: checkpoint, exit 75); one that ignores SIGTERM is killed after the grace."""
    import os
    import signal
    import subprocess
    import sys
    import time

    mark = tmp_path / "child"
    driver = subprocess.Popen([sys.executable, "-c", _STEP_DRIVER, str(tmp_path / "work"), _STEP_CHILD, str(mark),
                               "2", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in driver.stdout:
        lines.append(line)
        if line.strip() == "child ready":  # the child's own line (the logged command holds the words too)
            break
    pid = int((tmp_path / "child.pid").read_text())
    t0 = time.monotonic()
    driver.send_signal(signal.SIGTERM)  # the benchmark only
    out = "".join(lines) + driver.stdout.read()
    assert driver.wait(timeout=60) == 143, out
    with pytest.raises(ProcessLookupError):  # the command ended and was reaped: nothing left running
        os.kill(pid, 0)
    assert "stopping `" in out and "SIGTERM, waiting up to 2 s" in out
    if child == "STOPS":
        assert (tmp_path / "child.stopped").is_file() and "child stopping after SIGTERM" in out
        assert "ended with exit code 75" in out and out.index("exit code 75") < out.index("benchmark interrupted")
    else:
        assert not (tmp_path / "child.stopped").exists() and "ended with exit code -9" in out
        assert time.monotonic() - t0 >= 2  # killed only after the grace


def test_every_trainer_a_preset_names_exists():
    """Both arms of a task run the preset's trainer (the from-scratch arm on from-scratch plans)."""
    from fomo_nnunet.benchmarks.fomo_synth import PRESETS
    from fomo_nnunet.models.network_record import trainer_class

    for preset in PRESETS.values():
        for name in (preset.pretrain_trainer, preset.seg_trainer, preset.cls_trainer, preset.reg_trainer):
            assert trainer_class(name).__name__ == name


@pytest.mark.parametrize("name, message", [
    ("nnUNetTrainerFomoMAE_nonexistent", "no such trainer"),
    ("nnUNetTrainerFomoSeg_tiny", "not a pretraining trainer"),
])
def test_benchmark_refuses_a_pretraining_trainer_that_is_not_one(tmp_path, capsys, name, message):
    from fomo_nnunet.cli import main

    work = tmp_path / "work"
    assert main(["benchmark", "--preset", "smoke", "--work", str(work), "--pretrain-trainer", name]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()


def test_every_pretraining_trainer_is_accepted_and_no_finetuning_one():
    """--pretrain-trainer takes every trainer whose recipe is a pretraining recipe (the presets', the variants',
    the organisers' AMAES) and no finetuning trainer."""
    from fomo_nnunet.benchmarks.fomo_synth import PRESETS
    from fomo_nnunet.commands.benchmark import pretraining_trainer_problem

    for name in {p.pretrain_trainer for p in PRESETS.values()} | {
            "nnUNetTrainerFomoMAE_tiny_amaes", "nnUNetTrainerFomoMAE_tiny_vicreg_w0p1_stages_expander128",
            "nnUNetTrainerFomoMAE_tiny_vicreg_alone_stages_expander128"}:
        assert pretraining_trainer_problem(name) is None, name
    for p in PRESETS.values():
        for name in (p.seg_trainer, p.cls_trainer, p.reg_trainer):
            assert "not a pretraining trainer" in pretraining_trainer_problem(name), name


def test_a_work_folder_keeps_the_pretraining_trainer_it_started_with(tmp_path, capsys):
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.cli import main

    hybrid = "nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions_smoke"
    old = tmp_path / "old"  # a folder finetuned before the record existed: the preset's trainer
    (old / "steps").mkdir(parents=True)
    (old / "steps" / "pretrain_seed0.json").write_text("{}")
    Benchmark(old, "smoke", pretrain_trainer=hybrid).claim_pretraining()  # pretrainings alone: may be shared
    (old / "pretraining.json").unlink()
    (old / "steps" / "plan_task1_seed0.json").write_text("{}")
    Benchmark(old, "smoke").claim_pretraining()
    with pytest.raises(ValueError, match=f"pretrained with nnUNetTrainerFomoMAE_tiny_smoke.*new --work folder for {hybrid}"):
        Benchmark(old, "smoke", pretrain_trainer=hybrid).claim_pretraining()
    new = tmp_path / "new"
    bench = Benchmark(new, "smoke", pretrain_trainer=hybrid)
    assert bench.p.pretrain_trainer == hybrid and bench.p.seg_trainer == "nnUNetTrainerFomoSeg_tiny_smoke"
    bench.claim_pretraining()
    assert json.loads((new / "pretraining.json").read_text()) == {"pretrain_trainer": hybrid, "adapt": None}
    Benchmark(new, "smoke", pretrain_trainer=hybrid).claim_pretraining()  # the same trainer again: fine
    assert main(["benchmark", "--preset", "smoke", "--work", str(new)]) == 2  # the preset's: refused up front
    assert f"pretrained with {hybrid}" in capsys.readouterr().err


def test_benchmark_reuses_the_checkpoints_benchmark_features_pretrained(tmp_path):
    """`benchmark features --pretrain X` and `benchmark --pretrain-trainer X` name X's pretraining step alike, so
    either reuses the other's checkpoints in one folder; the preset's own trainer keeps `pretrain`; a folder
    benchmarked with --pretrain-trainer X before this naming keeps its `pretrain` step."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark

    hybrid = "nnUNetTrainerFomoMAE_tiny_noskip_vicreg_sessions_smoke"
    work = tmp_path / "w"
    features = Benchmark(work, "smoke")  # what `benchmark features` uses: the preset's trainer plus variants
    assert features.pretrain_step("nnUNetTrainerFomoMAE_tiny_smoke") == "pretrain"
    assert features.pretrain_step(hybrid) == f"pretrain_{hybrid}"
    bench = Benchmark(work, "smoke", pretrain_trainer=hybrid)
    bench.claim_pretraining()
    assert bench.pretrain_step(hybrid) == f"pretrain_{hybrid}"
    # the preset's trainer pretrained here first: its `pretrain` step is not the hybrid's
    (work / "steps" / "pretrain_seed0.json").write_text(json.dumps({"seconds": 1}))
    dataset = work / "nnUNet_preprocessed" / "Dataset900_FOMOPretrain"
    dataset.mkdir(parents=True)
    assert bench.pretrain_step(hybrid) == f"pretrain_{hybrid}"
    # ... but where the hybrid's checkpoint sits under `pretrain` (the old naming), that step is its own
    final = bench.pretrain_folder(hybrid) / "fold_all" / "checkpoint_final.pth"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"")
    assert bench.pretrain_step(hybrid) == "pretrain"
    (work / "steps" / f"pretrain_{hybrid}_seed0.json").write_text(json.dumps({"seconds": 1}))
    assert bench.pretrain_step(hybrid) == f"pretrain_{hybrid}"


def test_a_work_folder_keeps_the_adaptation_it_finetuned_with(tmp_path):
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark

    work = tmp_path / "w"
    Benchmark(work, "smoke").claim_pretraining()
    Benchmark(work, "smoke", adapt="auto").claim_pretraining()  # nothing finetuned yet: the folder may change
    assert json.loads((work / "pretraining.json").read_text())["adapt"] == "auto"
    (work / "steps" / "train_task2_pretrained_fold_all_seed0.json").write_text("{}")
    with pytest.raises(ValueError, match="finetuning with --adapt auto.*new --work folder for --adapt \\(none\\)"):
        Benchmark(work, "smoke").claim_pretraining()
    Benchmark(work, "smoke", adapt="auto").claim_pretraining()


def test_the_report_shows_each_seeds_adaptation_and_its_evidence():
    from fomo_nnunet.benchmarks.report import adaptation_lines

    auto = {"name": "gentle", "chosen_by": "auto", "evidence": {"candidates": {
        "recipe": {"metric": "dice", "value": 0.41}, "gentle": {"metric": "dice", "value": 0.52},
        "full": {"metric": "dice", "value": None}}}}
    runs = {0: {"task2": {"pretrained": {"adaptation": auto}, "scratch": {}}, "task3": _run({}, {})},
            1: {"task2": {"pretrained": {"adaptation": {"name": "full", "chosen_by": "user", "evidence": None}}}}}
    assert adaptation_lines(runs) == [
        "- seed 0 task2: **gentle** (chosen by auto; cross-validation on the training cases: recipe dice 0.410, "
        "gentle dice 0.520, full dice n/a)",
        "- seed 1 task2: **full** (chosen by user)"]
    assert adaptation_lines({0: {"task3": _run({}, {})}}) == []
    tie = {"name": "recipe", "chosen_by": "auto", "evidence": {"tie": ["recipe", "full"], "candidates": {
        "recipe": {"metric": "auroc", "value": 1.0}, "full": {"metric": "auroc", "value": 1.0}}}}
    assert adaptation_lines({2: {"task5": {"pretrained": {"adaptation": tie}}}}) == [
        "- seed 2 task5: **recipe** (chosen by auto: a tie among recipe, full, so the first (undecided); "
        "cross-validation on the training cases: recipe auroc 1.000, full auroc 1.000)"]


@pytest.mark.parametrize("argv, message", [
    (["--n-train", "4"], "--n-train must be at least 5 (got 4)"),
    (["--n-test", "0"], "--n-test must be at least 5 (got 0)"),
    (["--init-seeds", "0"], "--init-seeds must be at least 1 (got 0)"),
    (["--pretrain", "nnUNetTrainerFomoMAE_tiny", "--seeds", "0"], "--seeds must be at least 1 (got 0)"),
])
def test_feature_benchmark_refuses_too_few_cases_or_seeds_before_doing_anything(tmp_path, capsys, argv, message):
    from fomo_nnunet.cli import main

    work = tmp_path / "work"
    assert main(["benchmark", "features", "--work", str(work), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()  # nothing pretrained or synthesised, no folder made


@pytest.mark.parametrize("argv, message", [
    (["--n-train", "0"], "--n-train must be at least 1 (got 0)"),
    (["--n-test", "0"], "--n-test must be at least 1 (got 0)"),
    (["--seeds", "0"], "--seeds must be at least 1 (got 0)"),
])
def test_benchmark_refuses_empty_splits_and_no_seeds_before_doing_anything(tmp_path, capsys, argv, message):
    from fomo_nnunet.cli import main

    work = tmp_path / "work"
    assert main(["benchmark", "--preset", "smoke", "--work", str(work), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not work.exists()  # nothing synthesised, no folder made


def test_with_adapt_auto_the_pretrained_plans_are_cross_validated_after_preprocessing(tmp_path, monkeypatch):
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.tasks import TASKS_BY_NUMBER

    bench = Benchmark(tmp_path / "w", "smoke", adapt="auto", adapt_folds=(0, 2), log=lambda s: None)
    task = TASKS_BY_NUMBER[4]
    commands = []
    monkeypatch.setattr(bench.pipe, "run", lambda cmd: commands.append(cmd) or "")
    monkeypatch.setattr(bench, "train_and_score", lambda task, arm, trainer, plans: {"arm": arm})
    (bench.raw / "Dataset904_FOMO4Trigeminal").mkdir(parents=True)
    plans = bench.pre / "Dataset904_FOMO4Trigeminal" / f"{bench.plans}.json"
    plans.parent.mkdir(parents=True)
    entry = {"name": "gentle", "chosen_by": "auto", "evidence": {"candidates": {}}}
    plans.write_text(json.dumps({"fomo": {"adaptation": entry}}))
    results = bench.finetune(task, tmp_path / "pretrained")
    assert [c[1] if c[0] == "fomo-nnunet" else c[0] for c in commands] == [
        "plan", "plan", "nnUNetv2_preprocess", "plan"]  # pretrained, scratch, preprocessing, then the choice
    adapt = commands[-1]
    assert adapt[adapt.index("--plans-name") + 1] == "fomoPlans_seed0" and "--from-scratch" not in adapt
    assert adapt[adapt.index("--adapt"):] == ["--adapt", "auto", "--adapt-trainer", bench.trainer_for(task),
                                              "--adapt-folds", "0", "2", "-device", "cpu"]
    assert results["pretrained"]["adaptation"] == entry and "adaptation" not in results["scratch"]


@pytest.mark.parametrize("pretrain_batch, finetune_batch", [(None, None), (16, "2")])
def test_a_pretraining_batch_size_leaves_the_finetuning_batch_at_the_presets(tmp_path, monkeypatch, pretrain_batch,
                                                                            finetune_batch):
    """Both arms' task plans take the architecture preset's batch (tiny: 2) when only the pretraining batch was
    changed; without --pretrain-batch-size `plan transfer` keeps its default (the checkpoint's batch)."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.tasks import TASKS_BY_NUMBER

    bench = Benchmark(tmp_path / "w", "smoke", pretrain_batch_size=pretrain_batch, log=lambda s: None)
    commands = []
    monkeypatch.setattr(bench.pipe, "run", lambda cmd: commands.append(cmd) or "")
    monkeypatch.setattr(bench, "train_and_score", lambda task, arm, trainer, plans: {"arm": arm})
    (bench.pre / "Dataset904_FOMO4Trigeminal").mkdir(parents=True)
    (bench.pre / "Dataset904_FOMO4Trigeminal" / f"{bench.plans}.json").write_text("{}")
    (bench.raw / "Dataset904_FOMO4Trigeminal").mkdir(parents=True)
    bench.finetune(TASKS_BY_NUMBER[4], tmp_path / "pretrained")
    plans = [c for c in commands if c[:3] == ["fomo-nnunet", "plan", "transfer"]]
    assert len(plans) == 2  # the pretrained arm's and the scratch arm's
    for c in plans:
        assert (c[c.index("--batch-size") + 1] if "--batch-size" in c else None) == finetune_batch
    # a folder planned at batch 16 by `benchmark features`, benchmarked without the option: still the preset's
    monkeypatch.setattr(bench, "pretrain_plans_batch", lambda: 16)
    bench.pretrain_batch_size = None
    assert bench.finetune_batch() == ("--batch-size", "2")


def test_a_pretraining_batch_size_goes_to_the_plans_and_a_folder_keeps_the_batch_it_planned(tmp_path, capsys):
    """`--pretrain-batch-size N` plans the pretraining with `plan pretrain --batch-size N`; a folder whose plans
    hold another batch is refused before any work (its plans are shared by every seed and trainer)."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.cli import main

    work = tmp_path / "w"
    bench = Benchmark(work, "smoke", pretrain_batch_size=16)
    commands = []
    bench.pipe.run = lambda cmd, **kw: commands.append(list(cmd)) or True
    plans = work / "nnUNet_preprocessed" / "Dataset900_FOMOPretrain" / "fomoPretrainPlans.json"
    plans.parent.mkdir(parents=True)                           # as the conversion leaves it: no plans yet
    bench.pretrain()
    plan = next(c for c in commands if c[:3] == ["fomo-nnunet", "plan", "pretrain"])
    assert plan[-2:] == ["--batch-size", "16"]
    assert not any("--batch-size" in c for c in commands if c is not plan)
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"batch_size": 2}}}))
    assert bench.pretrain_plans_batch() == 2
    with pytest.raises(ValueError, match="plans with batch size 2, not 16; use a new --work folder"):
        bench.claim_pretraining()
    Benchmark(work, "smoke").claim_pretraining()               # no batch asked for: the folder's own
    Benchmark(work, "smoke", pretrain_batch_size=2).claim_pretraining()
    args = ["benchmark", "features", "--work", str(work), "--preset", "smoke", "--pretrain", "nnUNetTrainerFomoMAE_tiny_smoke"]
    assert main(args + ["--pretrain-batch-size", "16"]) == 2
    assert "batch size 2, not 16" in capsys.readouterr().err
    assert not (work / "synth").exists()                       # refused before synthesising anything
    assert main(["benchmark", "features", "--work", str(work), "--pretrain-batch-size", "16"]) == 2
    assert "applies to the pretraining that --pretrain runs" in capsys.readouterr().err
    assert main(args + ["--pretrain-batch-size", "0"]) == 2
    assert "--pretrain-batch-size must be at least 1" in capsys.readouterr().err


def test_a_training_cut_short_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """The benchmark's nnUNetv2_train steps add `--c` where the fold folder holds a checkpoint (a run killed before
    its step finished), and nothing where there is none (nnU-Net would only warn)."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark

    bench = Benchmark(tmp_path / "w", "smoke", log=lambda s: None)
    commands = []
    monkeypatch.setattr(bench.pipe, "run", lambda cmd: commands.append(cmd) or "")
    (bench.pre / "Dataset900_FOMOPretrain").mkdir(parents=True)
    bench.pretrain()
    assert commands[-1][0] == "nnUNetv2_train" and "--c" not in commands[-1]
    fold = bench.pretrain_folder() / "fold_all"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    (bench.work / "steps" / "pretrain_seed0.json").unlink()
    bench.pretrain()
    assert commands[-1][0] == "nnUNetv2_train" and commands[-1][-1] == "--c"


def test_the_report_times_only_this_benchmarks_steps(tmp_path):
    """A folder that also holds other trainers' pretrainings (left by `benchmark features --pretrain`): the
    report's time counts this run's pretraining and every other step, not theirs."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark

    bench = Benchmark(tmp_path / "w", "smoke", seeds=(0, 1), log=lambda s: None)
    for name in ("synth", "pretrain_seed0", "pretrain_seed1", "pretrain_nnUNetTrainerFomoMAE_tiny_amaes_seed0",
                 "train_task1_pretrained_foldall_seed0", "plan_pretrain"):
        (bench.work / "steps" / f"{name}.json").write_text(json.dumps({"seconds": 2.0}))
    assert set(bench.own_step_seconds()) == {"synth", "pretrain_seed0", "pretrain_seed1",
                                             "train_task1_pretrained_foldall_seed0", "plan_pretrain"}
    amaes = Benchmark(tmp_path / "w", "smoke", pretrain_trainer="nnUNetTrainerFomoMAE_tiny_amaes", log=lambda s: None)
    assert "pretrain_nnUNetTrainerFomoMAE_tiny_amaes_seed0" in amaes.own_step_seconds()
    assert "pretrain_seed0" not in amaes.own_step_seconds()


def test_a_folder_benchmarked_again_with_more_tasks_bundles_them_all(tmp_path, monkeypatch):
    """The bundle step of a folder first run with `--tasks 4 5` held those two models only, so a later run with
    every task stopped at its container check ("the bundle has no model for task1"): a bundle made for other
    models is made again, and the container checked again on it; the same run again reuses it."""
    from fomo_nnunet.benchmarks.fomo_synth import Benchmark
    from fomo_nnunet.models import checkpoints

    monkeypatch.setattr(checkpoints, "find_checkpoint", lambda folder: str(folder / "checkpoint_final.pth"))
    commands = []
    for name in ("Dataset901_FOMO1Infarct", "Dataset904_FOMO4Trigeminal", "Dataset905_FOMO5Polymicrogyria"):
        (tmp_path / "w" / "nnUNet_raw" / name).mkdir(parents=True)
    (tmp_path / "w" / "nnUNet_preprocessed" / "Dataset900_FOMOPretrain").mkdir(parents=True)

    def bundles(tasks):
        bench = Benchmark(tmp_path / "w", "smoke", tasks=tasks, log=lambda s: None)
        monkeypatch.setattr(bench.pipe, "run", lambda cmd: commands.append(cmd) or "")
        bench.bundle()
        return [c for c in commands if c[:2] == ["fomo-nnunet", "bundle"]]

    assert len(bundles((4, 5))) == 1
    (tmp_path / "w" / "steps" / "container_task4.json").write_text(json.dumps({"seconds": 1.0, "result": {}}))
    again = bundles((1, 4, 5))
    assert len(again) == 2 and "--task1" in again[-1] and "--task4" in again[-1]
    assert not (tmp_path / "w" / "steps" / "container_task4.json").exists()  # checked again on the new bundle
    assert len(bundles((1, 4, 5))) == 2  # the same models: the bundle is kept
