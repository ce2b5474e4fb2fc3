"""The fomo-lp linear probe: split, heads, selection, fairness, folder reading and the CLI.

Each protocol detail cites its source: repository fomo26/fomo-lp, pipeline/lp_fomo.py (commit 284a6ef)
and pipeline/fairness_report.py; repository Sllambias/asparagus,
asparagus/modules/lightning_modules/linear_probe_module.py (LinearProbeModule).
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fomo_nnunet.cli import main
from fomo_nnunet.exit_codes import BAD_INPUT
from fomo_nnunet.evaluation.scoring import probe_folder
from fomo_nnunet.evaluation.probe import (LEARNING_RATES, FairnessVariable, _SGDCosine, linear_probe, split_class, split_sizes, stratum,
                               torchmetrics_macro_auroc)


def test_split_rounds_each_stratum_then_tops_up_to_n_test():
    """lp_fomo._stratified_split: per decade round(len * n_test / total) to test (Python's round: 2.5 -> 2),
    then the test pool is topped up from train+val to exactly n_test; val = the first n_val of the rest."""
    items = [(f"y{i}", 21 + i) for i in range(5)] + [(f"o{i}", 35 + i) for i in range(5)]  # 20s x5, 30s x5
    train, val, test = split_class(items, 4, 1, 5, seed=42)
    assert (len(train), len(val), len(test)) == (4, 1, 5)
    assert sorted(train + val + test) == sorted(c for c, _ in items)
    # round(2.5) = 2 per decade -> 4, one more taken from train+val
    decades = Counter(c[0] for c in test)
    assert sorted(decades.values()) == [2, 3]
    assert split_class(items, 4, 1, 5, seed=42) == (train, val, test)  # seeded
    assert split_class(items, 4, 1, 5, seed=7) != (train, val, test)
    # 4 in the 20s and 6 in the 30s: exactly round(2.0) = 2 and round(3.0) = 3, no top-up
    items = [(f"y{i}", 25) for i in range(4)] + [(f"o{i}", 33) for i in range(6)]
    assert Counter(c[0] for c in split_class(items, 4, 1, 5, seed=0)[2]) == {"y": 2, "o": 3}
    # fomo-lp f915d5a: min(decade, 90), so ages 90 and above are one stratum: one 95 and one 104 are
    # round(1.0) = 1 to test whatever the seed (as strata of one each, round(0.5) = 0 + 0 and a random top-up)
    assert [stratum(v) for v in (89.9, 90, 104, 250, "x")] == [80, 90, 90, 90, -1]
    items = [("o0", 95), ("o1", 104)] + [(f"y{i}", 25) for i in range(8)]
    assert all(Counter(c[0] for c in split_class(items, 4, 1, 5, seed=s)[2]) == {"o": 1, "y": 4} for s in range(10))
    # an unparsable value is a stratum of its own
    assert len(split_class([(f"c{i}", "") for i in range(10)], 4, 1, 5, seed=0)[2]) == 5


def test_split_sizes():
    """lp_fomo.run_lp_fomo defaults n_train/n_val/n_test = 80/20/100 per class; smaller classes: 40/10/50 %."""
    assert split_sizes({"a": 200, "b": 300}) == (80, 20, 100)
    assert split_sizes({"a": 10, "b": 12}) == (4, 1, 5)
    assert split_sizes({"a": 10}, "6,2,2") == (6, 2, 2)
    with pytest.raises(ValueError, match="at least 3 per class"):
        split_sizes({"a": 3, "b": 10})
    with pytest.raises(ValueError, match="TRAIN,VAL,TEST"):
        split_sizes({"a": 10}, "half")


def test_fairness_variables_normalise_and_bin_as_fomo_lp():
    """fairness_report.py: normalize_categorical_feature (strip, lower-case, empty -> None) and
    bin_continuous_feature (first inclusive upper bound; <= 0, unparsable or above all bounds -> None)."""
    sex = FairnessVariable.parse("sex")
    assert (sex.name, sex.group_of(" F "), sex.group_of(""), sex.group_of(None)) == ("sex", "f", None, None)
    age = FairnessVariable.parse("age:25,50,75,1000")
    assert age.name == "age_bin" and age.bounds == (25, 50, 75, 1000)
    assert [age.group_of(v) for v in ("25", 25.1, "80", 0, -3, "n/a", 2000)] == [0, 1, 3, None, None, None, None]
    for bad in ("age:50,25", "age:x", ":1"):
        with pytest.raises(ValueError):
            FairnessVariable.parse(bad)


def test_validation_auroc_counts_an_absent_class_as_zero():
    """asparagus selects the head by torchmetrics' MulticlassAUROC(average='macro'): a class without
    positives scores 0 and stays in the mean (torchmetrics' own docstring example gives 0.5333)."""
    preds = np.array([[.75, .05, .05, .05, .05], [.05, .75, .05, .05, .05],
                      [.05, .05, .75, .05, .05], [.05, .05, .05, .75, .05]])
    assert torchmetrics_macro_auroc(preds, np.array([0, 1, 3, 2]), 5) == pytest.approx(0.5333, abs=1e-4)
    # logits outside [0, 1] are softmaxed first: a constant shift changes nothing
    logits = np.array([[2.0, -1.0], [0.5, 1.5], [3.0, 0.0], [-2.0, 1.0]])
    assert torchmetrics_macro_auroc(logits, np.array([0, 1, 0, 1]), 2) == 1.0
    assert torchmetrics_macro_auroc(logits + 7, np.array([0, 1, 0, 1]), 2) == 1.0


def test_sgd_with_cosine_equals_torch_optim():
    """LinearProbeModule.configure_optimizers: SGD(momentum=0.9, weight_decay=0) per-head learning rates,
    CosineAnnealingLR(T_max = all steps) stepped per batch; ours writes the same updates out."""
    torch.manual_seed(0)
    ref = [torch.nn.Linear(4, 3) for _ in range(2)]
    mine = [torch.nn.Linear(4, 3) for _ in range(2)]
    for a, b in zip(ref, mine):
        b.load_state_dict(a.state_dict())
    lrs, T = (0.1, 0.01), 7
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(ref, lrs)], momentum=0.9,
                          weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
    sgd = _SGDCosine([list(h.parameters()) for h in mine], lrs, T)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    for _ in range(T):
        for heads, step in ((ref, lambda: (opt.step(), sched.step())), (mine, sgd.step)):
            for h in heads:
                h.zero_grad()
            sum(torch.nn.functional.cross_entropy(h(x), y) for h in heads).backward()
            step()
        assert [g["lr"] for g in opt.param_groups] == sgd.lrs
    for a, b in zip(ref, mine):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def _data(n=60, d=8, k=3, seed=0, signal=4.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d))
    X[:, :k] += signal * np.eye(k)[y]
    cases = [f"s{i:03d}" for i in range(n)]
    attrs = {c: {"sex": "MF"[i % 2], "age": str(20 + (i * 7) % 60)} for i, c in enumerate(cases)}
    return {c: X[i] for i, c in enumerate(cases)}, {c: f"c{y[i]}" for i, c in enumerate(cases)}, attrs


def test_fomo_lp_probe_learns_and_reports_the_fairness_score():
    emb, labels, attrs = _data()
    variables = [FairnessVariable.parse("sex"), FairnessVariable.parse("age:25,50,75,1000")]
    g = torch.get_rng_state()
    r = linear_probe(emb, labels, attrs, variables, stratify="age")
    assert torch.equal(g, torch.get_rng_state())  # the caller's torch generator is left alone
    assert r["protocol"] == "fomo-lp" and r["split_per_class"] == [8, 2, 10] and r["n_test"] == 30
    assert r["best_lr"] in LEARNING_RATES and r["selected_after_epoch"] == 20
    assert r["metrics"]["macro_auroc"] > 0.9
    # fairness score = mean over the variables of 1 - disparity, per metric
    for m in ("macro_auroc", "macro_f1"):
        d = [r["variables"][v]["disparity"][m] for v in ("sex", "age_bin")]
        assert r["fairness_score"][m] == pytest.approx(np.mean([1 - x for x in d]))
        assert r["variables_used"][m] == ["sex", "age_bin"]
    assert sum(r["variables"]["sex"]["groups"].values()) == 30
    assert linear_probe(emb, labels, attrs, variables, stratify="age")["metrics"] == r["metrics"]  # seeded


def test_missing_test_embedding_is_scored_invalid_missing_train_embedding_is_an_error():
    """lp_fomo.run_lp_fomo: a test case without an embedding gets None scores (worst case in
    compute_ovr_auroc); a train or validation case without one raises."""
    emb, labels, attrs = _data()
    full = linear_probe(emb, labels, attrs, stratify="age", epochs=5)
    test_case = next(iter(full["predictions"]))
    emb[test_case] = None
    r = linear_probe(emb, labels, attrs, stratify="age", epochs=5)
    assert r["test_missing_embedding"] == [test_case] and r["predictions"][test_case]["scores"] is None
    assert r["metrics"]["macro_auroc"] <= full["metrics"]["macro_auroc"]
    train_case = next(c for c in labels if c not in full["predictions"])
    emb[train_case] = None
    with pytest.raises(ValueError, match="train/validation cases have no usable embedding"):
        linear_probe(emb, labels, attrs, stratify="age", epochs=5)


def test_logistic_protocol_shares_split_and_scoring():
    emb, labels, attrs = _data()
    r = linear_probe(emb, labels, attrs, [FairnessVariable.parse("sex")], "age", protocol="logistic")
    assert r["protocol"] == "logistic" and r["C"] > 0 and r["metrics"]["macro_auroc"] > 0.9
    assert set(r["predictions"]) == set(linear_probe(emb, labels, attrs, stratify="age", epochs=1)["predictions"])
    with pytest.raises(ValueError, match="unknown protocol"):
        linear_probe(emb, labels, attrs, protocol="svm")


def _folder(tmp_path, n=48):
    emb, labels, attrs = _data(n=n, k=2, seed=4)
    d = tmp_path / "emb"
    d.mkdir()
    for c, v in emb.items():
        np.save(d / f"{c}.npy", v.astype(np.float32))
    np.save(d / "nolabel.npy", np.zeros(8, np.float32))
    lines = ["case_id\tlabel\tsex\tage"] + [f"{c}\t{labels[c]}\t{attrs[c]['sex']}\t{attrs[c]['age']}" for c in labels]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    return d, tmp_path / "labels.tsv"


def test_probe_folder_reports_files_it_could_not_use(tmp_path):
    emb, tsv = _folder(tmp_path)
    r = probe_folder(emb, tsv, ["sex"], stratify="age", epochs=5)
    assert r["n_cases"] == 48 and r["embeddings_not_in_table"] == ["nolabel"] and r["embedding_problems"] == {}
    np.save(emb / "s000.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="no column 'site'"):
        probe_folder(emb, tsv, ["site"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no case"):
        probe_folder(tmp_path / "empty", tsv)


def test_cli_probe(tmp_path, capsys):
    emb, tsv = _folder(tmp_path)
    out = tmp_path / "o"
    assert main(["probe", str(emb), "--labels", str(tsv), "--groups", "sex", "--groups", "age:25,50,75,1000",
                 "--epochs", "5", "-o", str(out)]) == 0
    r = json.loads((out / "probe.json").read_text())
    assert r["stratify"] == "age"  # the first binned fairness variable stratifies the split
    assert set(r["metrics"]) == {"macro_auroc", "macro_f1"} and set(r["fairness_score"]) == {"macro_auroc", "macro_f1"}
    assert "fairness score" in capsys.readouterr().out
    assert main(["probe", str(emb), "--labels", str(tsv), "--groups", "age:9,3", "-o", str(out)]) == BAD_INPUT
    assert "bounds" in capsys.readouterr().err


def test_cli_probe_split_larger_than_a_class_exits_2_naming_the_class(tmp_path, capsys):
    """The organisers' 80/20/100 on 67 cases per class leaves train empty: their pipeline (and ours before)
    stopped with "need at least one array to stack"."""
    emb, tsv = _folder(tmp_path, n=134)
    out = tmp_path / "o"
    assert main(["probe", str(emb), "--labels", str(tsv), "--split", "80,20,100", "-o", str(out)]) == BAD_INPUT
    err = capsys.readouterr().err
    assert "split 80,20,100: class 'c0' has 67 cases" in err and "121 cases" in err and "--split auto" in err
    assert "stack" not in err and not (out / "probe.json").exists()
    # the same counts work as soon as one case per class is left for training (as in fomo-lp)
    (tmp_path / "b").mkdir()
    emb, tsv = _folder(tmp_path / "b", n=242)
    assert main(["probe", str(emb), "--labels", str(tsv), "--split", "80,20,100", "--epochs", "1",
                 "-o", str(out)]) == 0
    assert json.loads((out / "probe.json").read_text())["n_train"] == 2
