"""Linear probe: separable vs random embeddings, groups and gap, folder reading, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fomo_nnunet.cli import main
from fomo_nnunet.probe import linear_probe, probe_folder


def _separable(n=120, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d))
    X[:, :k] += 6.0 * np.eye(k)[y]
    return X, y


def test_probe_separable():
    X, y = _separable()
    r = linear_probe(X, [f"c{v}" for v in y], seed=0)
    assert r["metrics"]["macro_auroc"] > 0.95 and r["metrics"]["macro_f1"] > 0.9
    assert (r["n_train"], r["n_val"], r["n_test"]) == (48, 12, 60)
    assert r["classes"] == ["c0", "c1", "c2"] and r["C"] in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    # fixed seed -> same result
    assert linear_probe(X, y, seed=0)["metrics"] == r["metrics"]


def test_probe_random():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 16))
    y = rng.integers(0, 2, 600)
    r = linear_probe(X, y, seed=0)
    assert 0.35 < r["metrics"]["macro_auroc"] < 0.65


def test_probe_groups_gap():
    X, y = _separable(n=200, k=2, seed=2)
    rng = np.random.default_rng(3)
    g = np.where(np.arange(200) % 3 == 0, "B", "A")
    # group B's embeddings carry no signal
    X[g == "B"] = rng.normal(size=((g == "B").sum(), X.shape[1]))
    r = linear_probe(X, y, groups=g, seed=0)
    assert set(r["groups"]) == {"A", "B"}
    assert r["groups"]["A"]["macro_auroc"] > r["groups"]["B"]["macro_auroc"]
    assert r["gap"]["macro_auroc"] == pytest.approx(r["groups"]["A"]["macro_auroc"] - r["groups"]["B"]["macro_auroc"])
    assert r["gap"]["macro_auroc"] > 0.2
    assert sum(v["n"] for v in r["groups"].values()) == r["n_test"]


def test_probe_small_class_falls_back():
    X, y = _separable(n=40, k=2)
    y = y.copy()
    y[:] = 0
    y[0] = 1
    y[1] = 1  # two cases: stratification of the validation split impossible
    X[0, 1] += 6
    r = linear_probe(X, y, seed=0)
    assert any("not stratified" in n for n in r["notes"])


def _folder(tmp_path, n=80):
    X, y = _separable(n=n, k=2, seed=4)
    emb = tmp_path / "emb"
    emb.mkdir()
    for i, v in enumerate(X):
        np.save(emb / f"s{i:03d}.npy", v.astype(np.float32))
    np.save(emb / "nolabel.npy", X[0].astype(np.float32))
    np.save(emb / "bad.npy", np.zeros((2, 2), np.float32))
    lines = ["case_id\tlabel\tsex"] + [f"s{i:03d}\t{y[i]}\t{'MF'[i % 2]}" for i in range(n)]
    lines += ["ghost\t1\tM", "bad\t0\tF"]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    return emb, tmp_path / "labels.tsv"


def test_probe_folder(tmp_path):
    emb, tsv = _folder(tmp_path)
    r = probe_folder(emb, tsv, groups_column="sex", seed=0)
    assert r["n_cases"] == 80
    assert r["missing_embedding"] == ["ghost"] and r["missing_label"] == ["nolabel"]
    assert list(r["invalid_embedding"]) == ["bad"]
    assert set(r["groups"]) == {"F", "M"} and set(r["gap"]) == {"macro_auroc", "macro_f1"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        probe_folder(tmp_path / "empty", tsv)


def test_cli_probe(tmp_path, capsys):
    emb, tsv = _folder(tmp_path)
    out = tmp_path / "o"
    assert main(["probe", str(emb), "--labels", str(tsv), "--groups", "sex", "-o", str(out)]) == 0
    r = json.loads((out / "probe.json").read_text())
    assert {"metrics", "C", "n_train", "n_val", "n_test", "groups", "gap"} <= set(r)
    assert set(r["metrics"]) == {"macro_auroc", "macro_f1"}
    assert "macro_auroc" in capsys.readouterr().out
