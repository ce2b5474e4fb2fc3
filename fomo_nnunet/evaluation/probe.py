"""Linear probe on frozen embeddings (FOMO26 tasks 6 and 7): the organisers' fomo-lp protocol.

Protocol (repository fomo26/fomo-lp, pipeline/lp_fomo.py at commit f915d5a, which trains asparagus'
LinearProbeModule, repository Sllambias/asparagus,
asparagus/modules/lightning_modules/linear_probe_module.py):

- Split: per class (classes = the sorted label values), cases in table order are grouped into strata
  by the decade of a continuous column (their FEATURE1, e.g. age; 90 and above one stratum; unparsable:
  one stratum of its own);
  `random.Random(seed)` shuffles each stratum and sends round(len * n_test / total) of it to test, then
  the test and train+val pools are shuffled, trimmed or topped up to exactly n_test, the first n_val of
  the rest are validation and the remainder (shuffled once more) is train. Defaults: n = 80 / 20 / 100
  per class (40/10/50 %), seed 42 (`lp_fomo._stratified_split`).
- Heads: one `nn.Linear(dim, classes)` per learning rate of 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3,
  2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, created in that order after `torch.manual_seed(seed)`, weights
  re-drawn from N(0, 0.01), bias 0; on the RAW embeddings (no standardisation, so the embedding's scale
  matters). All heads train at once: cross-entropy, SGD momentum 0.9 without weight decay, batch 64
  shuffled by a `torch.Generator` seeded with the seed, 20 epochs, cosine annealing to 0 over all steps
  (stepped per batch).
- Selection: validation before training and after every 5th epoch; each time the head with the highest
  validation macro AUROC (torchmetrics' MulticlassAUROC: softmax of the logits, a class without
  positives or without negatives counts 0.0, first head on ties) becomes the best; the last selection
  is the one tested.
- Scores: the best head's softmax on the test split; a test case without a usable embedding gets no
  scores and is scored as invalid. Official metrics (pipeline/fairness_report.py,
  build_fairness_report): one-vs-rest macro AUROC and F1 (`metrics.ovr_auroc`, `metrics.ovr_f1`), per
  fairness variable the groups' metrics and the max - min disparity, and the fairness score per metric
  (mean over the variables of 1 - disparity, `metrics.fairness_score`). A categorical variable is
  stripped and lower-cased (empty: no group); a continuous one is binned by inclusive upper bounds
  (value <= 0, unparsable or above the last bound: no group).

`protocol="logistic"` keeps the same split and scoring but fits a scikit-learn logistic regression on
standardised features with C swept on the validation macro AUROC: a scale-free reference.
"""
from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fomo_nnunet.evaluation.metrics import fairness_score, max_disparity, ovr_auroc, ovr_f1

PROTOCOLS = ("fomo-lp", "logistic")
SOURCE = "fomo26/fomo-lp pipeline/lp_fomo.py (commit f915d5a) + Sllambias/asparagus LinearProbeModule"
LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
EPOCHS = 20
BATCH_SIZE = 64
SEED = 42
MOMENTUM = 0.9
HEAD_INIT_STD = 0.01
VALIDATE_EVERY = 5  # Trainer(check_val_every_n_epoch=5)
SPLIT_PER_CLASS = (80, 20, 100)  # train, val, test cases per class
SPLIT_FRACTIONS = (0.4, 0.1, 0.5)
# The organisers' example bins (fomo-lp pipeline/fairness_report.py, bin_continuous_feature docstring);
# the bins they use for age are not public.
EXAMPLE_BINS = (25.0, 50.0, 75.0, 1000.0)
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2)
# Official metric names in fomo-lp's report -> the names used here (tasks.py).
METRICS: dict[str, Callable] = {"macro_auroc": ovr_auroc, "macro_f1": ovr_f1}


# --------------------------------------------------------------------------- fairness variables

@dataclass(frozen=True)
class FairnessVariable:
    """A column of the label table that defines groups: categorical (bounds None) or continuous,
    binned by inclusive upper bounds into groups 0, 1, ..."""
    column: str
    bounds: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        return self.column if self.bounds is None else f"{self.column}_bin"

    @classmethod
    def parse(cls, spec: str) -> "FairnessVariable":
        """'sex' (categorical) or 'age:25,50,75,1000' (continuous, inclusive upper bounds)."""
        column, _, bounds = spec.partition(":")
        if not column.strip():
            raise ValueError(f"fairness variable {spec!r}: no column name")
        if not _:
            return cls(column.strip())
        try:
            b = tuple(float(v) for v in bounds.split(","))
        except ValueError:
            raise ValueError(f"fairness variable {spec!r}: bounds must be numbers, e.g. age:25,50,75,1000")
        if not b or list(b) != sorted(b) or len(set(b)) != len(b):
            raise ValueError(f"fairness variable {spec!r}: bounds must be strictly increasing")
        return cls(column.strip(), b)

    def group_of(self, raw: Any) -> str | int | None:
        """fomo-lp pipeline/fairness_report.py: normalize_categorical_feature / bin_continuous_feature."""
        if self.bounds is None:
            s = "" if raw is None else str(raw).strip()
            return s.lower() or None
        try:
            a = float(raw)
        except (TypeError, ValueError):
            return None
        if not a > 0:
            return None
        return next((i for i, upper in enumerate(self.bounds) if a <= upper), None)


# --------------------------------------------------------------------------- split

def stratum(raw: Any) -> int:
    """The decade of a continuous value, 90 and above in one stratum (`min(decade, 90)`); -1 when it is not
    a finite number (lp_fomo._stratified_split)."""
    try:
        return min(int(float(raw) // 10) * 10, 90)
    except (TypeError, ValueError, OverflowError):
        return -1


def split_class(items: Sequence[tuple[str, Any]], n_train: int, n_val: int, n_test: int, seed: int
                ) -> tuple[list[str], list[str], list[str]]:
    """fomo-lp's per-class split of (case, stratify value) pairs in table order -> (train, val, test)."""
    rng = random.Random(seed)
    total = n_train + n_val + n_test
    strata: dict[int, list[str]] = defaultdict(list)
    for case, raw in items:
        strata[stratum(raw)].append(case)
    test: list[str] = []
    trainval: list[str] = []
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        n_t = round(len(members) * n_test / total)
        test.extend(members[:n_t])
        trainval.extend(members[n_t:])
    rng.shuffle(test)
    rng.shuffle(trainval)
    delta = len(test) - n_test
    if delta > 0:
        trainval.extend(test[n_test:])
        test = test[:n_test]
    elif delta < 0:
        test.extend(trainval[:-delta])
        trainval = trainval[-delta:]
    val, train = trainval[:n_val], trainval[n_val:]
    rng.shuffle(train)
    return train, val, test


def split_sizes(class_counts: Mapping[str, int], spec: str | Sequence[int] = "auto") -> tuple[int, int, int]:
    """Cases per class (train, val, test). 'auto': the organisers' 80/20/100 when every class has at
    least 200 cases, else 40/10/50 % of the smallest class (at least one validation and one test case)."""
    if isinstance(spec, str) and spec != "auto":
        try:
            spec = tuple(int(v) for v in spec.split(","))
        except ValueError:
            raise ValueError(f"split {spec!r}: expected 'auto' or TRAIN,VAL,TEST counts per class")
    if not isinstance(spec, str):
        sizes = tuple(int(v) for v in spec)
        if len(sizes) != 3 or min(sizes) < 1:
            raise ValueError(f"split {spec!r}: three positive counts per class (train, val, test)")
        # fomo-lp fills test first, then validation: a class with fewer cases leaves train (or more) empty
        # and their pipeline stops with "need at least one array to stack"
        n_train, n_val, n_test = sizes
        short = {k: n for k, n in class_counts.items() if n < n_val + n_test + 1}
        if short:
            k = min(short, key=short.get)
            raise ValueError(f"split {','.join(map(str, sizes))}: class {k!r} has {short[k]} cases, but the split "
                             f"sends {n_test} per class to test and {n_val} to validation and needs at least one "
                             f"for training ({n_val + n_test + 1} cases); use --split auto (40/10/50 % of the "
                             f"smallest class) or smaller counts")
        return sizes  # type: ignore[return-value]
    m = min(class_counts.values())
    if m >= sum(SPLIT_PER_CLASS):
        return SPLIT_PER_CLASS
    n_val = max(1, int(SPLIT_FRACTIONS[1] * m + 0.5))
    n_test = max(1, int(SPLIT_FRACTIONS[2] * m + 0.5))
    if m - n_val - n_test < 1:
        smallest = min(class_counts, key=class_counts.get)
        raise ValueError(f"class {smallest!r} has {m} cases: the probe needs at least 3 per class "
                         "(train, validation and test)")
    return m - n_val - n_test, n_val, n_test


# --------------------------------------------------------------------------- heads

def torchmetrics_macro_auroc(logits: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Validation AUROC as asparagus computes it (torchmetrics MulticlassAUROC, average='macro'):
    softmax unless every value lies in [0, 1]; a class without positives or without negatives counts
    0.0; mean over all classes."""
    from scipy.stats import rankdata

    P = np.asarray(logits, dtype=np.float32)
    if not np.all((P >= 0) & (P <= 1)):
        e = np.exp(P - P.max(axis=1, keepdims=True))
        P = e / e.sum(axis=1, keepdims=True)
    vals = []
    for c in range(n_classes):
        pos = np.asarray(y) == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            vals.append(0.0)
            continue
        # the area under the ROC curve = the Mann-Whitney statistic with tied scores counting 1/2
        ranks = rankdata(P[:, c])
        vals.append(float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)))
    return float(np.mean(vals))


class _SGDCosine:
    """torch.optim.SGD(momentum=0.9, weight_decay=0) with CosineAnnealingLR(T_max) stepped per batch,
    written out with the same tensor operations (torch.optim would import torch._dynamo, a slow import)."""

    def __init__(self, groups: list[list[Any]], learning_rates: Sequence[float], t_max: int):
        self.groups, self.base = groups, [float(v) for v in learning_rates]
        self.lrs, self.t_max, self.t = list(self.base), t_max, 0
        self.buffers: dict[int, Any] = {}

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for params, lr in zip(self.groups, self.lrs):
                for p in params:
                    buf = self.buffers.get(id(p))
                    if buf is None:
                        buf = self.buffers[id(p)] = torch.clone(p.grad).detach()
                    else:
                        buf.mul_(MOMENTUM).add_(p.grad, alpha=1.0)
                    p.add_(buf, alpha=-lr)
        self.t += 1
        # CosineAnnealingLR.get_lr's recursive form (eta_min 0), as torch computes it
        t, T = self.t, self.t_max
        if (t - 1 - T) % (2 * T) == 0:
            self.lrs = [lr + b * (1 - math.cos(math.pi / T)) / 2 for lr, b in zip(self.lrs, self.base)]
        else:
            f = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
            self.lrs = [f * lr for lr in self.lrs]


def train_sgd_heads(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                    n_classes: int, learning_rates: Sequence[float] = LEARNING_RATES, epochs: int = EPOCHS,
                    batch_size: int = BATCH_SIZE, seed: int = SEED) -> tuple[Callable, dict[str, Any]]:
    """fomo-lp's multi-head SGD probe (see the module docstring). Returns (predict: X -> softmax scores
    of the selected head, info {"best_lr", "val_auroc": {lr: value}, "selected_after_epoch"})."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    Xt = torch.as_tensor(np.asarray(X_train, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    Xv = torch.as_tensor(np.asarray(X_val, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):  # the organisers seed the global generator; ours stays untouched
        torch.manual_seed(seed)
        heads = nn.ModuleList()
        for _ in learning_rates:
            head = nn.Linear(Xt.shape[1], n_classes)  # its default init draws first, as in asparagus
            nn.init.normal_(head.weight, mean=0.0, std=HEAD_INIT_STD)
            nn.init.zeros_(head.bias)
            heads.append(head)
    g = torch.Generator()
    g.manual_seed(seed)
    # A DataLoader over indices draws from `g` exactly as theirs does (sampler permutation, base seed).
    loader = DataLoader(np.arange(len(Xt)), batch_size=batch_size, shuffle=True, generator=g)
    sgd = _SGDCosine([list(h.parameters()) for h in heads], learning_rates, max(1, epochs * len(loader)))

    def select(after_epoch: int) -> dict[str, Any]:
        with torch.no_grad():
            aucs = [torchmetrics_macro_auroc(h(Xv).numpy(), y_val, n_classes) for h in heads]
        best = max(range(len(aucs)), key=lambda i: aucs[i])  # first maximum, as max() over their dict
        return {"index": best, "aucs": aucs, "after_epoch": after_epoch}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only adds waiting (seconds on a busy machine)
    try:
        chosen = select(0)  # trainer.validate before trainer.fit
        for epoch in range(1, epochs + 1):
            for idx in loader:
                xb, yb = Xt[idx], yt[idx]
                for h in heads:
                    h.zero_grad()
                loss = sum(F.cross_entropy(h(xb), yb) for h in heads)
                loss.backward()
                sgd.step()
            if epoch % VALIDATE_EVERY == 0:
                chosen = select(epoch)
    finally:
        torch.set_num_threads(threads)
    head = heads[chosen["index"]]

    def predict(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(head(torch.as_tensor(np.asarray(X, dtype=np.float32))), dim=1).numpy()

    info = {"best_lr": float(learning_rates[chosen["index"]]), "selected_after_epoch": chosen["after_epoch"],
            "val_auroc": {repr(float(lr)): a for lr, a in zip(learning_rates, chosen["aucs"])}}
    return predict, info


def fit_logistic(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                 n_classes: int, c_grid: Sequence[float] = C_GRID) -> tuple[Callable, dict[str, Any]]:
    """Standardised features, logistic regression with C swept on validation one-vs-rest AUROC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)

    def fit(C: float) -> Callable:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at large C on separable data
            m = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(X_train), y_train)

        def proba(X: np.ndarray) -> np.ndarray:
            P = np.zeros((len(X), n_classes))
            P[:, m.classes_] = m.predict_proba(scaler.transform(X))
            return P
        return proba

    best, best_auc, val = None, -math.inf, {}
    for C in c_grid:
        proba = fit(float(C))
        a = ovr_auroc(y_val, list(proba(X_val)))
        val[repr(float(C))] = a
        if math.isfinite(a) and a > best_auc:
            best, best_auc = (float(C), proba), a
    notes = []
    if best is None:
        best = (1.0, fit(1.0))
        notes.append("validation AUROC undefined for every C: C = 1.0")
    return best[1], {"C": best[0], "val_auroc": val, "notes": notes}


# --------------------------------------------------------------------------- the probe

def fairness_report(y: Sequence[int], scores: Sequence[Any], groups_by_variable: Mapping[str, Sequence[Any]]
                    ) -> dict[str, Any]:
    """Per variable: group sizes, per-group metrics and the disparity; the fairness score per metric.
    fomo-lp pipeline/fairness_report.py, build_fairness_report."""
    variables = {}
    for name, groups in groups_by_variable.items():
        present = sorted({g for g in groups if g is not None}, key=str)
        block: dict[str, Any] = {"groups": {str(g): sum(x == g for x in groups) for g in present},
                                 "disparity": {}, "per_group": {}}
        for mname, fn in METRICS.items():
            block["disparity"][mname] = max_disparity(y, scores, groups, fn)
            block["per_group"][mname] = {
                str(g): fn([t for t, x in zip(y, groups) if x == g], [s for s, x in zip(scores, groups) if x == g])
                for g in present}
        variables[name] = block
    score = {m: fairness_score(y, scores, groups_by_variable, fn) for m, fn in METRICS.items()}
    return {"variables": variables,
            "fairness_score": {m: s["score"] for m, s in score.items()},
            "variables_used": {m: s["variables_used"] for m, s in score.items()}}


def _split_cases(labels: Mapping[str, Any], classes: list[str], attributes: Mapping[str, Mapping[str, Any]],
                 stratify: str | None, split: str | Sequence[int], seed: int
                 ) -> tuple[tuple[int, int, int], list[str], list[str], list[str]]:
    """The cases per class (train, val, test) and the three splits, class by class in sorted order."""
    by_class: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for c in labels:
        by_class[str(labels[c])].append((c, (attributes.get(c) or {}).get(stratify) if stratify else None))
    sizes = split_sizes({k: len(v) for k, v in by_class.items()}, split)
    train, val, test = [], [], []
    for k in classes:
        tr, va, te = split_class(by_class[k], *sizes, seed=seed)
        train += tr
        val += va
        test += te
    return sizes, train, val, test


def _check_embeddings(embeddings: Mapping[str, np.ndarray | None], cases: list[str], fitted: list[str]) -> None:
    """Every train/validation case has an embedding, and all embeddings are 1-D of one length."""
    missing = sorted(c for c in fitted if embeddings.get(c) is None)
    if missing:
        raise ValueError(f"{len(missing)} train/validation cases have no usable embedding: {missing[:10]}"
                         + (" ..." if len(missing) > 10 else ""))
    dims = {np.asarray(embeddings[c]).shape for c in cases if embeddings.get(c) is not None}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ValueError(f"embeddings must be 1-D vectors of one length, found shapes {sorted(dims)}")


def _score_test(out: dict[str, Any], notes: list[str], predict: Callable, stack: Callable, test: list[str],
                y_te: list[int], embeddings: Mapping[str, np.ndarray | None]) -> dict[str, Any]:
    """Score the test split into `out` (a case without an embedding scored as invalid); returns the
    test scores by case."""
    have = [c for c in test if embeddings.get(c) is not None]
    P = dict(zip(have, predict(stack(have)).tolist())) if have else {}
    scores = [P.get(c) for c in test]
    out["test_missing_embedding"] = sorted(c for c in test if c not in P)
    if out["test_missing_embedding"]:
        notes.append(f"{len(out['test_missing_embedding'])} test cases without a usable embedding scored as "
                     "invalid (worst-case scores)")
    out["metrics"] = {m: fn(y_te, scores) for m, fn in METRICS.items()}
    return P


def _fairness_entries(fairness: Sequence[FairnessVariable], attributes: Mapping[str, Mapping[str, Any]],
                      test: list[str], y_te: list[int], scores: list[Any]) -> dict[str, Any]:
    """The fairness variables and their report (`fairness_report`) on the test split."""
    groups = {v.name: [v.group_of((attributes.get(c) or {}).get(v.column)) for c in test] for v in fairness}
    return {"fairness_variables": {v.name: {"column": v.column, "bins": list(v.bounds) if v.bounds else None}
                                   for v in fairness},
            **fairness_report(y_te, scores, groups)}


def linear_probe(embeddings: Mapping[str, np.ndarray | None], labels: Mapping[str, Any],
                 attributes: Mapping[str, Mapping[str, Any]] | None = None,
                 fairness: Sequence[FairnessVariable] = (), stratify: str | None = None,
                 protocol: str = "fomo-lp", seed: int = SEED, split: str | Sequence[int] = "auto",
                 epochs: int = EPOCHS, learning_rates: Sequence[float] = LEARNING_RATES,
                 batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Split, fit and score a linear probe; returns a JSON-ready dict (NaN as None).

    labels: case -> class, in table order (the split depends on it). embeddings: case -> 1-D vector,
    or None for a case without a usable embedding (allowed in the test split only, where it is scored
    as invalid). attributes: case -> {column: value} for `stratify` (the continuous column whose
    decades stratify the split) and the fairness variables.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    attributes = attributes or {}
    cases = [c for c in labels]
    classes = sorted({str(labels[c]) for c in cases})
    if len(classes) < 2:
        raise ValueError(f"the probe needs at least two classes, found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    y_of = {c: index[str(labels[c])] for c in cases}
    sizes, train, val, test = _split_cases(labels, classes, attributes, stratify, split, seed)
    _check_embeddings(embeddings, cases, train + val)
    stack = lambda ids: np.stack([np.asarray(embeddings[c], dtype=np.float64) for c in ids])
    y_tr, y_va = np.array([y_of[c] for c in train]), np.array([y_of[c] for c in val])
    notes: list[str] = []
    out: dict[str, Any] = {"protocol": protocol, "seed": int(seed), "classes": classes,
                           "split_per_class": list(sizes), "n_cases": len(cases), "n_train": len(train),
                           "n_val": len(val), "n_test": len(test), "stratify": stratify}
    if protocol == "fomo-lp":
        predict, info = train_sgd_heads(stack(train), y_tr, stack(val), y_va, len(classes), learning_rates,
                                        epochs, batch_size, seed)
        out.update({"source": SOURCE, "epochs": int(epochs), "batch_size": int(batch_size),
                    "learning_rates": [float(v) for v in learning_rates]})
    else:
        predict, info = fit_logistic(stack(train), y_tr, stack(val), y_va, len(classes))
        notes += info.pop("notes")
    out.update(info)
    y_te = [y_of[c] for c in test]
    P = _score_test(out, notes, predict, stack, test, y_te, embeddings)
    if fairness:
        out.update(_fairness_entries(fairness, attributes, test, y_te, [P.get(c) for c in test]))
    out["predictions"] = {c: {"label": classes[y_of[c]], "scores": P.get(c)} for c in test}
    out["notes"] = notes
    return nan_to_none(out)


def nan_to_none(v: Any) -> Any:
    """NaN and infinities -> None, recursively through dicts, lists and tuples, so that a result is strict
    JSON (probe.json, features.json)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [nan_to_none(x) for x in v]
    return v
