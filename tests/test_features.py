"""The feature benchmark: probes, diagnostics, checkpoint discovery and one end-to-end run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fomo_nnunet.benchmarks import features as F
from fomo_nnunet.tasks import TASKS_BY_NUMBER


def test_rankme_counts_equal_directions_and_a_rank_one_matrix_is_one():
    X = np.zeros((40, 16))
    X[np.arange(8), np.arange(8)] = 3.0  # eight orthogonal directions of equal length
    assert F.rankme(X) == pytest.approx(8.0, rel=1e-3)
    assert F.rankme(np.outer(np.arange(1, 41), np.ones(16))) == pytest.approx(1.0, rel=1e-3)
    assert F.rankme(np.zeros((5, 4))) == 0.0


def test_diagnostics_name_dead_dimensions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    X[:, 2] = 4.0  # no spread at all
    X[:, 4] *= 1e-6  # a millionth of the others' spread
    d = F.embedding_diagnostics(X)
    assert d["dimensions"] == 6 and d["dead_dimensions"] == 2 and d["cases"] == 50
    assert 1.0 < d["rankme_centred"] <= 6.0


def _blobs(n: int, shift: float, seed: int, classes: int = 2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, 8)) * 5.0  # raw scale far from 1, as an encoder's may be
    X[:, 0] += shift * y * 5.0
    return X, y


def test_sgd_probe_separates_separable_classes_and_not_random_labels():
    Xtr, ytr = _blobs(60, 3.0, 0)
    Xte, yte = _blobs(40, 3.0, 1)
    P, info = F.sgd_probe(Xtr, ytr, Xte, 2)
    assert P.shape == (40, 2) and len(info["fold_learning_rates"]) == F.FOLDS
    assert F.score("auroc", yte, P) > 0.9
    shuffled = np.random.default_rng(2).permutation(ytr)
    P, _ = F.sgd_probe(Xtr, shuffled, Xte, 2)
    assert F.score("auroc", yte, P) < 0.8


def test_train_cv_scores_the_train_split_alone_by_nested_cross_validation():
    """probe_task's train_cv: high on separable train classes, near chance on shuffled ones, untouched by the
    test split (a different test split changes the test score, never train_cv), None when the train split
    is too small for the nesting."""
    task = TASKS_BY_NUMBER[5]
    Xtr, ytr = _blobs(40, 3.0, 0)
    Xte, yte = _blobs(40, 3.0, 1)
    r = F.probe_task(task, {"train": Xtr, "test": Xte}, {"train": ytr, "test": yte})
    assert r["train_cv"] > 0.9
    other = F.probe_task(task, {"train": Xtr, "test": Xte[:20] * 0.1}, {"train": ytr, "test": 1 - yte[:20]})
    assert other["train_cv"] == r["train_cv"] and other["score"] != r["score"]
    shuffled = np.random.default_rng(2).permutation(ytr)
    assert F.probe_task(task, {"train": Xtr, "test": Xte}, {"train": shuffled, "test": yte})["train_cv"] < 0.8
    # 2 cases per class: each outer fold leaves 1 per class, too few for the probe's inner folds: None, not an error
    X4, y4 = _blobs(4, 3.0, 0)
    assert F.train_cv_score("auroc", lambda a, b, c: F.sgd_probe(a, b, c, 2)[0], X4, y4, True) is None
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 10)) * 30.0
    y = 50.0 + X[:, 0] * 0.5 + rng.normal(size=60)
    reg = F.probe_task(TASKS_BY_NUMBER[3], {"train": X, "test": X[:10]}, {"train": y, "test": y[:10]})
    assert reg["train_cv"] < 0.2 * F.score("mae", y, np.full(60, y.mean()))


def test_logistic_reference_handles_three_classes():
    Xtr, ytr = _blobs(60, 3.0, 0, classes=3)
    Xte, yte = _blobs(30, 3.0, 1, classes=3)
    P, info = F.logistic_probe(Xtr, ytr, Xte, 3)
    assert P.shape == (30, 3) and np.allclose(P.sum(axis=1), 1.0)
    assert F.score("auroc", yte, P) > 0.8 and info["C"] in F.LOGISTIC_CS


def test_ridge_probe_beats_the_mean_on_a_linear_target():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 10)) * 30.0
    y = 50.0 + X[:, 0] * 0.5 + rng.normal(size=120)
    pred, info = F.ridge_probe(X[:80], y[:80], X[80:])
    mae = F.score("mae", y[80:], pred)
    assert mae < 0.2 * F.score("mae", y[80:], np.full(40, y[:80].mean()))
    assert info["alpha"] in F.RIDGE_ALPHAS


def test_bootstrap_interval_brackets_the_score():
    Xte, yte = _blobs(60, 1.0, 3)
    pred = np.stack([1 - Xte[:, 0] / 100, Xte[:, 0] / 100], axis=1)
    s = F.score("auroc", yte, pred)
    lo, hi = F.bootstrap_ci("auroc", yte, pred, n=200)
    assert lo < s < hi and hi - lo < 0.5


def test_resampled_scores_are_the_official_scores():
    rng = np.random.default_rng(4)
    for classes in (2, 3, 5):
        for trial in range(20):
            y = rng.integers(0, classes, 15)
            pred = rng.dirichlet(np.ones(classes), 15).round(1)  # rounded: many ties
            assert np.isclose(F.resample_score("auroc", y, pred), F.score("auroc", y, pred), equal_nan=True,
                              rtol=0, atol=1e-12), (classes, y, pred)
    assert np.isnan(F.resample_score("auroc", np.zeros(4, int), rng.dirichlet(np.ones(2), 4)))
    assert F.resample_score("mae", np.array([1.0, 2.0]), np.array([2.0, 4.0])) == 1.5


def test_work_checkpoints_finds_finished_runs_only(tmp_path):
    def make(seed, trainer, name):
        fold = (tmp_path / "runs" / seed / "nnUNet_results" / "Dataset900_FOMOPretrain"
                / f"{trainer}__fomoPretrainPlans__3d_fullres" / "fold_all")
        fold.mkdir(parents=True)
        (fold / name).write_bytes(b"x")

    make("seed0", "A", "checkpoint_final.pth")
    make("seed1", "A", "checkpoint_final.pth")
    make("seed1", "B", "checkpoint_final.pth")
    make("seed2", "A", "checkpoint_latest.pth")  # still training
    make("seedx", "A", "checkpoint_final.pth")  # not a seed folder
    found = F.work_checkpoints(tmp_path)
    assert sorted(found) == ["A", "B"] and sorted(found["A"]) == [0, 1] and list(found["B"]) == [1]
    assert found["A"][0].endswith("seed0/nnUNet_results/Dataset900_FOMOPretrain/"
                                  "A__fomoPretrainPlans__3d_fullres/fold_all/checkpoint_final.pth")


def test_cached_results_are_recomputed_when_the_fingerprint_changes(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"value": float("nan")}
    assert F.cached(tmp_path, "a", "f1", compute, log=lambda *_: None)["value"] != 0
    F.cached(tmp_path, "a", "f1", compute, log=lambda *_: None)
    assert len(calls) == 1
    F.cached(tmp_path, "a", "f2", compute, log=lambda *_: None)
    assert len(calls) == 2
    assert json.loads((tmp_path / "a.json").read_text())["value"] is None  # strict JSON


def test_kept_results_depend_on_the_probe_sets(tmp_path):
    """A result probed on 50/50 cases of tasks 1, 5, 6 is not reused for 100/100 cases of other tasks
    (the data folder can be deleted and remade; the per-encoder results must follow it)."""
    ckpt = tmp_path / "checkpoint_final.pth"
    ckpt.write_bytes(b"x")
    bench = lambda **kw: F.FeatureBenchmark(work=tmp_path, checkpoints={}, default="A", **kw)
    small = bench(tasks=tuple(TASKS_BY_NUMBER[n] for n in (1, 5, 6)), n_train=50, n_test=50)
    prints = {F._fingerprint(str(ckpt), "stages", b.probe_identity)
              for b in (small, bench(), bench(n_train=50, n_test=50), bench(data_seed=7))}
    assert len(prints) == 4
    assert F._fingerprint(str(ckpt), "stages", small.probe_identity) == \
        F._fingerprint(str(ckpt), "stages", bench(tasks=small.tasks[::-1], n_train=50, n_test=50).probe_identity)


def test_probe_sets_made_with_other_settings_are_refused(tmp_path):
    (tmp_path / "probe_sets.json").write_text(json.dumps({"seed": 1, "n_train": 5, "n_test": 5, "tasks": [3]}))
    with pytest.raises(ValueError, match="delete it"):
        F.make_probe_sets(tmp_path, [TASKS_BY_NUMBER[3]], n_train=6, n_test=6, seed=1)


@pytest.mark.slow
def test_feature_benchmark_end_to_end_with_two_checkpoints(tmp_path):
    """Synthesised probe sets for two tasks, two 'pretraining seeds' (random weights with a fake
    pretraining's metadata), two random-init twins: features.json has the promised shape; a rerun
    reuses every per-encoder result."""
    from helpers import save_fake_pretraining

    from fomo_nnunet.cli import main

    ckpts = [save_fake_pretraining(tmp_path / f"mae_{s}.pth", seed=10 + s) for s in (0, 1)]
    args = ["benchmark", "features", "--work", str(tmp_path / "w"), "--checkpoint", *map(str, ckpts),
            "--n-train", "8", "--n-test", "8", "--init-seeds", "2", "-np", "1", "--tasks", "3", "5"]
    tasks = (TASKS_BY_NUMBER[3], TASKS_BY_NUMBER[5])
    assert main([*args[:-3], "--tasks", "2"]) == 2  # segmentation has no probe
    assert main(args) == 0
    out = json.loads((tmp_path / "w" / "features" / "features.json").read_text())
    assert set(out["tasks"]) == {"task3", "task5"}
    t3, t5 = out["tasks"]["task3"], out["tasks"]["task5"]
    assert t3["metric"] == "mae" and t3["higher_is_better"] is False and t3["mean_predictor"] > 0
    assert t5["metric"] == "auroc" and t5["higher_is_better"] is True
    assert len(t5["pretrained"]) == 2 and len(t5["random_init"]) == 2
    assert all(0.0 <= v <= 1.0 for v in t5["pretrained"] + t5["random_init"])
    d = out["diagnostics"]["checkpoint"]
    assert len(d) == 2 and d[0]["dimensions"] == 64 and d[0]["cases"] == 16 * 2
    md = (tmp_path / "w" / "features" / "features.md").read_text()
    assert "RankMe" in md and f"task3: predicting the train split's mean gives MAE {t3['mean_predictor']:.3f}" in md
    assert "Step 2 of the default-objective rule" in md and "Goals" not in md
    assert "nested 5-fold cross-validation on the train split alone" in md
    assert all(len(v["train_cv"]) == 2 for v in out["variants"]["checkpoint"].values())
    assert all(v is not None and 0.0 <= v <= 1.0 for v in out["variants"]["checkpoint"]["task5"]["train_cv"])
    assert (tmp_path / "w" / "features" / "features_own.json").read_text() == \
        (tmp_path / "w" / "features" / "features.json").read_text()
    assert out["settings"]["pooling"] == "own" and d[0]["pooling"] == "deepest"
    assert [r["objective"] for r in out["pretraining"]["checkpoint"]] == ["mae", "mae"]  # no log: no loss
    assert out["pretraining"]["checkpoint"][0]["val_loss"] is None
    # --pooling stages on a checkpoint whose statistics are for "deepest": both arms pooled over every stage,
    # both freshly scaled over the same corpus (raw, the tiny encoder's sd is ~0.02), kept apart from deepest
    from fomo_nnunet.models.embedding_stats import EmbeddingStats, save_with_stats

    scaled = save_with_stats(ckpts[0], EmbeddingStats(np.zeros(64), np.full(64, 0.02), 5), tmp_path / "scaled.pth")
    assert main(["benchmark", "features", "--work", str(tmp_path / "w"), "--checkpoint", str(scaled), "--n-train", "8",
                 "--n-test", "8", "--init-seeds", "1", "-np", "1", "--tasks", "3", "5", "--pooling", "stages"]) == 0
    out_stages = json.loads((tmp_path / "w" / "features" / "features.json").read_text())
    assert out_stages["settings"]["pooling"] == "stages" and len(out_stages["tasks"]["task5"]["random_init"]) == 1
    for arm in ("checkpoint", "random_init"):
        diag = out_stages["diagnostics"][arm][0]
        assert diag["dimensions"] == 120 and diag["pooling"] == "stages" and 0.3 < diag["median_sd"] < 3.0, diag
    assert "`stages`" in (tmp_path / "w" / "features" / "features.md").read_text()
    kept = {f.name for f in (tmp_path / "w" / "features" / "results").glob("*.json")}
    assert {"checkpoint_seed0_stages.json", "checkpoint_seed0_deepest.json", "random_init_0_stages.json"} <= kept
    logs = []
    F.FeatureBenchmark(tmp_path / "w", {"checkpoint": dict(enumerate(map(str, ckpts)))}, "checkpoint", tasks,
                       n_train=8, n_test=8, init_seeds=(0, 1), log=logs.append).run()
    assert sum("kept from" in line for line in logs) == 4  # the stages run left the deepest results alone
    # a checkpoint with embedding statistics: its random-init twin is standardised too (its own statistics,
    # here over the probe sets' training scans, as there is no pretraining corpus in this folder)
    out = F.FeatureBenchmark(tmp_path / "w", {"scaled": {0: str(scaled)}}, "scaled", tasks, n_train=8, n_test=8,
                             init_seeds=(0,), log=logs.append).run()
    assert 0.3 < out["diagnostics"]["random_init"][0]["median_sd"] < 3.0
    assert d[0]["median_sd"] < 0.3  # the raw scale, for contrast


def test_pretraining_record_reads_the_last_epochs_losses_and_hinges_and_the_report_shows_them(tmp_path):
    """The pretraining-side measures come from the checkpoint itself: the last validation loss and, with a
    VICReg term, the last variance hinges after and before the expander; an MAE checkpoint has no hinge."""
    from helpers import save_fake_pretraining

    mae = save_fake_pretraining(tmp_path / "mae.pth")
    ckpt = torch.load(mae, weights_only=False)
    ckpt["logging"] = {"val_losses": [0.9, 0.5, 0.42]}
    ckpt["fomo_metadata"]["objective_settings"] = {"loss_region": "masked_brain", "vicreg_weight": 0.0}
    torch.save(ckpt, mae)
    ckpt["fomo_metadata"]["objective"] = "vicreg"
    # nnU-Net's init_args keep the plans the trainer ran with: the batch size comes from them
    ckpt["init_args"] = {"configuration": "3d_fullres",
                         "plans": {"configurations": {"3d_fullres": {"batch_size": 16}, "2d": {"batch_size": 99}}}}
    ckpt["fomo_metadata"]["objective_settings"] = {
        "loss_region": "masked_brain", "vicreg_weight": 1.0, "mae_weight": 0.0,
        "vicreg": {"history": {"per_epoch": {"variance": [1.9, 0.3], "feature_variance": [1.9, 1.2]}}}}
    torch.save(ckpt, tmp_path / "vicreg.pth")
    r = F.pretraining_record(str(mae))
    assert r == {"objective": "mae", "mae_weight": 1.0, "vicreg_weight": 0.0, "loss_region": "masked_brain",
                 "batch_size": None, "epochs": 3, "val_loss": 0.42, "variance_hinge": None, "pools_variance_hinge": None}
    v = F.pretraining_record(str(tmp_path / "vicreg.pth"))
    assert (v["objective"], v["mae_weight"], v["variance_hinge"], v["pools_variance_hinge"], v["batch_size"]) == \
        ("vicreg", 0.0, 0.3, 1.2, 16)
    probe = {"task5": {"seeds": [0], "scores": [0.5], "ci95": [[0.4, 0.6]], "scale_free": [0.5]}}
    summary = {"pretrained_arm": "a", "tasks": {"task5": {"metric": "auroc"}},
               "variants": {"a": probe, "b": probe}, "diagnostics": {"a": [], "b": []},
               "settings": {"n_train": 8, "n_test": 8, "data_seed": 0, "pooling": "own"},
               "pretraining": {"a": [r | {"seed": 0}], "b": [v | {"seed": 0}]}}
    text = F.markdown(summary)
    assert "| a | 0 | mae | 1 x 0 | n/a | 3 | 0.420 (masked_brain) | n/a | n/a |" in text
    assert "| b | 0 | vicreg | 0 x 1 | 16 | 3 | 0.420 (masked_brain) | 0.300 | 1.200 |" in text


def test_rule_step2_names_every_criterion_an_arm_misses():
    """The default-objective rule's step 2: +0.05 AUROC on tasks 1 and 5 and +0.10 on task 6 over random init
    (means over seeds), a task-3 MAE no higher, no dead dimension, 3 pretraining seeds."""
    def arm(t1, t3, t5, t6, seeds=3):
        return {k: {"scores": [v] * seeds} for k, v in (("task1", t1), ("task3", t3), ("task5", t5), ("task6", t6))}

    healthy = [{"dead_dimensions": 0}] * 3
    summary = {"variants": {"random_init": arm(0.80, 10.0, 0.50, 0.50),
                            "good": arm(0.85, 10.0, 0.56, 0.61),                   # exactly at or over each margin
                            "short": arm(0.84, 10.5, 0.56, 0.59, seeds=2),
                            "dead": arm(0.90, 9.0, 0.60, 0.70)},
               "diagnostics": {"good": healthy, "short": healthy[:2], "dead": healthy[:2] + [{"dead_dimensions": 4}]}}
    summary["variants"]["good"]["task1"]["scores"] = [0.84, 0.85, 0.86]            # the mean is what counts
    rule = F.rule_step2(summary)
    assert set(rule) == {"good", "short", "dead"}
    assert rule["good"]["qualifies"] and rule["good"]["misses"] == []
    assert rule["good"]["checks"]["task6"]["auroc_difference"] == pytest.approx(0.11)
    assert rule["short"]["misses"] == ["task1", "task6", "task3", "2 of 3 seeds"]
    assert rule["short"]["checks"]["task3"]["relative_mae_difference"] == pytest.approx(0.05)
    assert rule["dead"]["misses"] == ["dead dimensions"]
    del summary["variants"]["good"]["task3"]
    assert F.rule_step2(summary)["good"]["misses"] == ["task3 not probed"]
    text = "\n".join(F._rule_lines(F.rule_step2(summary)))
    assert "| short | 2 | +0.040 | +0.060 | +0.090 | +5.0% | 0 | misses: task1, task6, task3, 2 of 3 seeds |" in text
    assert "| good | 3 | +0.050 | +0.060 | +0.110 | not probed | 0 | misses: task3 not probed |" in text
