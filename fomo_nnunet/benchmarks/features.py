"""The feature benchmark: do a pretraining checkpoint's frozen embeddings probe better than random ones?

`fomo-nnunet benchmark features --work DIR` is the fast inner loop for pretraining work. It needs no
finetuning: it embeds the cases of every image-level task (classification, regression and the
embedding tasks of the task table) with each pretraining checkpoint of a benchmark work folder,
exactly as the container writes embeddings (fomo_nnunet.challenge.inference.Embedder, one vector per scan;
a multi-channel case is the concatenation of its channels' vectors), fits a linear probe per task on
a train split and scores an out-of-domain test split. Beside each checkpoint the same architecture
with random weights (several init seeds) is probed the same way.

The few-shot task splits (10 training cases in the tiny preset) are too small to tell features
apart, so the benchmark synthesises its own, larger probe sets with FOMO-Synth (default 100 train
and 100 test cases per task from other sources, with a data seed of its own) and keeps them in
DIR/features/data.

Probes (hyper-parameters chosen on the train split only, never on the test split):
- classification: the organisers' fomo-lp protocol (fomo_nnunet.evaluation.probe.train_sgd_heads: SGD heads
  on the raw embeddings, learning-rate sweep, the head selected on held-out cases) in K-fold
  cross-validation on the train split; the test scores are the mean of the K fold probes' softmax.
  Metric: one-vs-rest macro AUROC (fomo26/fomo-metrics).
- regression: ridge regression on the raw embeddings, its penalty chosen by K-fold cross-validation
  on the train split. Metric: mean absolute error.
- beside each, a scale-free reference on standardised features (logistic regression / ridge with
  cross-validated strength), so that a bad embedding scale can be told from bad content.
Each score carries a bootstrap 95 % confidence interval over the test cases. Beside it, `train_cv`: the same
probe's score by nested cross-validation on the train split alone (features.md's second table), the measure
to choose poolings or objectives on without the test split taking part.

Pooling: each checkpoint is embedded with its own pooling (fomo_metadata "embedding_pooling": the
deepest stage's global average, or every stage's, concatenated), or every encoder with the one given
(`pooling`, --pooling), so that poolings can be compared on the same checkpoints. Results are kept
per pooling and never mixed.

Diagnostics per encoder: per-dimension spread (dimensions with near-zero spread are "dead") and the
effective rank RankMe (Garrido et al., "RankMe: assessing the downstream performance of pretrained
self-supervised representations by their rank", ICML 2023): exp of the entropy of the normalised
singular values of the embedding matrix.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from fomo_nnunet.evaluation.probe import nan_to_none
from fomo_nnunet.io.atomic import write_json
from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, PRETRAIN_DATASET_ID, REGRESSION, TASKS, Task

N_TRAIN = 100
N_TEST = 100
DATA_SEED_OFFSET = 1000        # the probe sets' data seed = the benchmark's data seed + this
INIT_SEEDS = (0, 1, 2)
FOLDS = 5
BOOTSTRAP = 1000
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))
LOGISTIC_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEAD_RELATIVE_SPREAD = 1e-3    # a dimension whose sd is below this fraction of the median sd is dead
PRETRAIN_PLANS = "fomoPretrainPlans"
# part of every kept result's fingerprint: raise it when the embedding or the probes change, so that
# results computed the old way are recomputed rather than mixed with new ones
RESULT_VERSION = 3  # 2: embeddings standardised with the checkpoint's statistics (twins: their own); 3: train_cv
# Step 2 of the rule that chooses the default pretraining objective (docs/pretraining-recipes.md, "How the
# default objective is chosen"), stated before its runs: with RULE_SEEDS pretraining seeds, the mean probe AUROC
# at least random init's + the margin on each AUROC task, a task-3 probe MAE no higher, no dead dimension
RULE_AUROC_MARGINS = {"task1": 0.05, "task5": 0.05, "task6": 0.10}
RULE_MAE_TASK = "task3"
RULE_SEEDS = 3


def feature_tasks() -> tuple[Task, ...]:
    """The tasks with one target per image: classification, regression and embedding tasks."""
    return tuple(t for t in TASKS if t.kind in (CLASSIFICATION, REGRESSION, EMBEDDING))


def metric_of(task: Task) -> tuple[str, bool]:
    """(metric name, higher is better) of a task's probe."""
    return ("mae", False) if task.kind == REGRESSION else ("auroc", True)


# ---------------------------------------------------------------------------------- probe sets

@dataclass
class ProbeSet:
    """One task's probe cases: per split the channel files of each case and its target."""
    task: Task
    files: dict[str, list[list[str]]] = field(default_factory=dict)   # split -> cases -> channel files
    targets: dict[str, np.ndarray] = field(default_factory=dict)      # split -> targets
    skipped: list[str] = field(default_factory=list)                  # "file: reason"


def read_probe_set(task: Task, folder: str | os.PathLike) -> ProbeSet:
    """A task folder in the FOMO layout (train/ and test/) -> a ProbeSet; unusable cases are skipped
    and named in `skipped`."""
    from fomo_nnunet.data.convert import parse_target
    from fomo_nnunet.data.fomo_layout import list_task_cases

    out = ProbeSet(task)
    problems: list = []
    for case in list_task_cases(task, Path(folder), problems):
        if case.problem:
            out.skipped.append(f"{case.image_dir}: {case.problem}")
            continue
        try:
            target = parse_target(task, case.label)
        except Exception as e:  # one bad label must not stop the benchmark
            out.skipped.append(f"{case.label}: {e}")
            continue
        out.files.setdefault(case.split, []).append([str(case.files[ch.name]) for ch in task.channels])
        out.targets.setdefault(case.split, []).append(target)
    out.skipped += [str(p) for p in problems]
    out.targets = {s: np.asarray(v, dtype=np.float64 if task.kind == REGRESSION else np.int64)
                   for s, v in out.targets.items()}
    for split in ("train", "test"):
        if len(out.targets.get(split, ())) < FOLDS:
            raise ValueError(f"{folder}: {task.key} has {len(out.targets.get(split, ()))} usable {split} cases; "
                             f"the feature benchmark needs at least {FOLDS}")
    return out


def probe_set_identity(tasks: Sequence[Task], n_train: int, n_test: int, seed: int) -> dict:
    """What probe sets are made from: the stamp of their folder, and part of every kept result's fingerprint."""
    return {"seed": seed, "n_train": n_train, "n_test": n_test, "tasks": sorted(t.number for t in tasks)}


def make_probe_sets(folder: str | os.PathLike, tasks: Sequence[Task], n_train: int = N_TRAIN,
                    n_test: int = N_TEST, seed: int = DATA_SEED_OFFSET, num_processes: int = 2,
                    log: Callable = print) -> dict[str, ProbeSet]:
    """Synthesise the probe sets once (FOMO-Synth, tiny preset's 3 mm) into `folder`, then read them.
    A folder written with other sizes or another seed is refused, not silently reused."""
    from fomo_nnunet.data.synth import generate

    folder = Path(folder)
    want = probe_set_identity(tasks, n_train, n_test, seed)
    stamp = folder / "probe_sets.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if have != want:
            raise ValueError(f"{folder} holds probe sets made with {have}, not {want}: "
                             f"delete it or use the same settings")
    else:
        log(f"synthesising probe sets: {n_train} train + {n_test} test cases per task, tasks "
            f"{', '.join(t.key for t in tasks)}, data seed {seed} (a few minutes, once)")
        generate(folder, preset="tiny", seed=seed, num_processes=num_processes, tasks=[t.number for t in tasks],
                 pretrain=False, n_train=n_train, n_test=n_test, previews=False)
        stamp.write_text(json.dumps(want) + "\n")
    return {t.key: read_probe_set(t, folder / "finetune" / t.key) for t in tasks}


# ---------------------------------------------------------------------------------- embedding

class PreprocessedCache:
    """Each file preprocessed once per (spacing, normalisation, patch): every encoder with the same
    preprocessing embeds the same arrays."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, dict[str, np.ndarray]] = {}

    @staticmethod
    def key(embedder) -> tuple:
        m = embedder.metadata
        return (tuple(m.spacing), tuple(m.normalization), tuple(m.patch_size),
                bool(m.objective_settings.get("use_mask_for_norm", [True])[0]))

    def get(self, embedder, file: str) -> np.ndarray:
        from fomo_nnunet.image_level import crop_or_pad

        arrays = self._arrays.setdefault(self.key(embedder), {})
        if file not in arrays:
            arrays[file] = crop_or_pad(embedder.preprocess_file(file), embedder.metadata.patch_size)
        return arrays[file]


def embed_probe_set(embedder, probe_set: ProbeSet, cache: PreprocessedCache) -> dict[str, np.ndarray]:
    """split -> (cases, channels * length) embeddings, each channel's vector as the container writes it."""
    out = {}
    for split, cases in probe_set.files.items():
        rows = [np.concatenate([embedder.embed_preprocessed(cache.get(embedder, f)) for f in files])
                for files in cases]
        out[split] = np.stack(rows).astype(np.float64)
    return out


def random_init_embedder(checkpoint: str, seed: int, corpus: Callable[[], Iterable[np.ndarray]],
                         device: str = "cpu", pooling: str | None = None):
    """The checkpoint's architecture with random weights (torch.manual_seed(seed)), as an Embedder pooled
    as the checkpoint is (or with `pooling`).

    Scaled as the checkpoint is: when it carries embedding statistics, the twin gets its own over
    `corpus()` (preprocessed scans: the pretraining corpus where there is one), never the pretrained ones."""
    import torch

    from fomo_nnunet.models.embedding_stats import compute_embedding_stats
    from fomo_nnunet.challenge.inference import Embedder

    pretrained = Embedder.load(checkpoint, device)
    meta = pretrained.metadata
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = meta.build_network(num_outputs=meta.num_input_channels).encoder
    encoder.return_skips = True
    twin = Embedder(encoder.to(torch.device(device)).eval(), meta, torch.device(device),
                    pooling=pooling or pretrained.pooling)
    if pretrained.stats is not None:
        twin.stats = compute_embedding_stats(twin.encoder, corpus(), meta.patch_size, device, progress=False,
                                             pooling=twin.pooling)
    return twin


def pooled_embedder(checkpoint: str, pooling: str | None, corpus: Callable[[], Iterable[np.ndarray]],
                    device: str = "cpu"):
    """The checkpoint's Embedder with `pooling` (None: its own). Statistics it carries were computed for its
    own pooling: with another, it gets fresh ones over `corpus()` (the twins' corpus, so that both arms are
    scaled alike); without statistics it stays raw, as its twins do."""
    from fomo_nnunet.models.embedding_stats import compute_embedding_stats
    from fomo_nnunet.challenge.inference import Embedder

    embedder = Embedder.load(checkpoint, device)
    if pooling is None or pooling == embedder.pooling:
        return embedder
    had_stats = embedder.stats is not None
    embedder = embedder.with_pooling(pooling)
    if had_stats:
        embedder.stats = compute_embedding_stats(embedder.encoder, corpus(), embedder.metadata.patch_size, device,
                                                 progress=False, pooling=pooling)
    return embedder


def checkpoint_pooling(checkpoint: str) -> str:
    """The embedding pooling a checkpoint records (fomo_metadata; absent: "deepest")."""
    from fomo_nnunet.models.embedding_stats import pooling_of
    from fomo_nnunet.models.transfer import METADATA_KEY, load_checkpoint_safely

    return pooling_of(load_checkpoint_safely(checkpoint).get(METADATA_KEY), checkpoint)


def pretraining_record(checkpoint: str) -> dict:
    """What a checkpoint records of its own pretraining, the measures that choose among objectives without a
    probe (docs/pretraining-recipes.md): objective and weights, epochs, the last epoch's validation loss (the
    reconstruction loss over `loss_region`), the batch size of its plans, and with a VICReg term the last epoch's variance hinge of the
    features the term sees (`variance_hinge`, after an expander) and of the encoder's pools themselves
    (`pools_variance_hinge`); each hinge in [0, 2], 2 when the features are the same for every sample."""
    from fomo_nnunet.models.transfer import METADATA_KEY, load_checkpoint_safely

    ckpt = load_checkpoint_safely(checkpoint)
    meta = ckpt.get(METADATA_KEY) or {}
    settings = meta.get("objective_settings") or {}
    val = (ckpt.get("logging") or {}).get("val_losses") or []
    history = ((settings.get("vicreg") or {}).get("history") or {}).get("per_epoch") or {}

    def last(name: str) -> float | None:
        return float(history[name][-1]) if history.get(name) else None

    init = ckpt.get("init_args") or {}
    configuration = ((init.get("plans") or {}).get("configurations") or {}).get(init.get("configuration")) or {}
    return {"objective": meta.get("objective"), "mae_weight": float(settings.get("mae_weight", 1.0)),
            "vicreg_weight": float(settings.get("vicreg_weight", 0.0)), "loss_region": settings.get("loss_region"),
            "batch_size": configuration.get("batch_size"),
            "epochs": len(val), "val_loss": float(val[-1]) if val else None,
            "variance_hinge": last("variance"), "pools_variance_hinge": last("feature_variance")}


# ---------------------------------------------------------------------------------- diagnostics

def rankme(X: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): exp(-sum p_k log p_k), p_k = s_k / sum(s) + eps, over the
    singular values s of the (cases x dimensions) embedding matrix as it is (not centred)."""
    s = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_diagnostics(X: np.ndarray) -> dict:
    """Spread and rank of a (cases x dimensions) embedding matrix."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    median = float(np.median(sd))
    dead = int((sd <= DEAD_RELATIVE_SPREAD * median).sum()) if median > 0 else int(X.shape[1])
    return {"cases": int(X.shape[0]), "dimensions": int(X.shape[1]), "dead_dimensions": dead,
            "rankme": round(rankme(X), 2), "rankme_centred": round(rankme(X - X.mean(axis=0)), 2),
            "median_sd": median, "min_sd": float(sd.min()), "max_sd": float(sd.max()),
            "mean_abs": float(np.abs(X).mean())}


# ---------------------------------------------------------------------------------- probes

def _folds(y: np.ndarray, classification: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    k = min(FOLDS, int(np.bincount(y).min())) if classification else FOLDS
    if k < 2:
        raise ValueError(f"a class has {int(np.bincount(y).min())} training case(s): cross-validation needs 2+")
    splitter = (StratifiedKFold if classification else KFold)(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def sgd_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int,
              seed: int = 0) -> tuple[np.ndarray, dict]:
    """fomo-lp SGD heads in K-fold cross-validation on the train split (each fold's head selected on
    its held-out cases); test scores = mean of the fold probes' softmax."""
    from fomo_nnunet.evaluation.probe import train_sgd_heads

    scores, lrs = [], []
    for fit, held in _folds(y_train, True, seed):
        predict, info = train_sgd_heads(X_train[fit], y_train[fit], X_train[held], y_train[held], n_classes,
                                        seed=seed)
        scores.append(predict(X_test))
        lrs.append(info["best_lr"])
    return np.mean(scores, axis=0), {"fold_learning_rates": lrs}


def logistic_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int,
                   seed: int = 0) -> tuple[np.ndarray, dict]:
    """Scale-free reference: standardised features, logistic regression with C by cross-validation."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at large C on separable data
        m = LogisticRegressionCV(Cs=list(LOGISTIC_CS), cv=_folds(y_train, True, seed), max_iter=2000,
                                 scoring="roc_auc_ovr" if n_classes > 2 else "roc_auc")
        m.fit(scaler.transform(X_train), y_train)
    P = np.zeros((len(X_test), n_classes))
    P[:, m.classes_] = m.predict_proba(scaler.transform(X_test))
    return P, {"C": float(np.ravel(m.C_)[0])}


def ridge_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, seed: int = 0,
                standardise: bool = False) -> tuple[np.ndarray, dict]:
    """Ridge regression, its penalty chosen by K-fold cross-validation on the train split, scored by the
    task's metric (mean absolute error): R^2, RidgeCV's default, is undefined on a held-out fold of one case
    and noisy on folds of two or three, the fold sizes of a few-shot split."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    if standardise:
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    m = RidgeCV(alphas=RIDGE_ALPHAS, cv=_folds(y_train, False, seed), scoring="neg_mean_absolute_error")
    m.fit(X_train, y_train)
    return m.predict(X_test), {"alpha": float(m.alpha_)}


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    from fomo_nnunet.evaluation.metrics import ovr_auroc

    if metric == "mae":
        return float(np.mean(np.abs(np.asarray(pred) - np.asarray(y))))
    return ovr_auroc(y, list(pred))


def rank_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic with mid-ranks for ties: the value sklearn's roc_auc_score gives
    (NaN without both classes), much faster (docs/results/cpu-speed.md), for the thousand resamples of a bootstrap."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def resample_score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    """`score` for probe outputs (finite rows of class probabilities, or values), through rank_auroc: the
    one-vs-rest AUROC of column 1 for two classes, else the mean over the classes that have both positives
    and negatives (NaN if none), as metrics.ovr_auroc scores valid rows."""
    if metric == "mae":
        return score(metric, y, pred)
    pred = np.asarray(pred, dtype=float)
    y = np.asarray(y, dtype=int)
    if pred.shape[1] == 2:
        return rank_auroc(y == 1, pred[:, 1])
    values = [rank_auroc(y == c, pred[:, c]) for c in range(pred.shape[1]) if 0 < int((y == c).sum()) < len(y)]
    return float(np.mean(values)) if values else float("nan")


def bootstrap_ci(metric: str, y: np.ndarray, pred: np.ndarray, n: int = BOOTSTRAP, seed: int = 0
                 ) -> tuple[float, float]:
    """95 % percentile interval of the metric over test cases resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        v = resample_score(metric, y[idx], pred[idx])
        if math.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def train_cv_score(metric: str, probe: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                   X: np.ndarray, y: np.ndarray, classification: bool, seed: int = 0) -> float | None:
    """The probe's score by cross-validation on the TRAIN split alone, nested: each of FOLDS outer folds is
    predicted by the whole probe procedure (its own inner cross-validation included) fitted on the other
    folds, and the metric is taken over the pooled out-of-fold predictions. A measure that never sees a test
    case, so choices between poolings or objectives can be made on it; None where the train split is too
    small for the nesting (a class with too few cases for the inner folds)."""
    try:
        outer = _folds(y, classification, seed + 1)   # other fold assignments than the inner ones
        pred: np.ndarray | None = None
        for fit, held in outer:
            p = np.asarray(probe(X[fit], y[fit], X[held]))
            if pred is None:
                pred = np.zeros((len(y), *p.shape[1:]))
            pred[held] = p
    except ValueError:
        return None
    return score(metric, y, pred)


def probe_task(task: Task, emb: dict[str, np.ndarray], targets: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Fit the task's probe on the train embeddings, score the test split (with a bootstrap CI) and the
    scale-free reference; `train_cv`: the same probe's nested cross-validated score on the train split."""
    metric, _ = metric_of(task)
    Xtr, Xte, ytr, yte = emb["train"], emb["test"], targets["train"], targets["test"]
    if task.kind == REGRESSION:
        def probe(Xf, yf, Xp):
            return ridge_probe(Xf, yf, Xp, seed)[0]
        pred, info = ridge_probe(Xtr, ytr, Xte, seed)
        ref, ref_info = ridge_probe(Xtr, ytr, Xte, seed, standardise=True)
        info["mean_predictor_mae"] = score("mae", yte, np.full(len(yte), ytr.mean()))
    else:
        n_classes = int(max(ytr.max(), yte.max())) + 1

        def probe(Xf, yf, Xp):
            return sgd_probe(Xf, yf, Xp, n_classes, seed)[0]
        pred, info = sgd_probe(Xtr, ytr, Xte, n_classes, seed)
        ref, ref_info = logistic_probe(Xtr, ytr, Xte, n_classes, seed)
    train_cv = train_cv_score(metric, probe, Xtr, ytr, task.kind != REGRESSION, seed)
    return {"metric": metric, "score": score(metric, yte, pred), "ci95": bootstrap_ci(metric, yte, pred, seed=seed),
            "scale_free": score(metric, yte, ref), "train_cv": train_cv, **info, "scale_free_settings": ref_info}


# ---------------------------------------------------------------------------------- checkpoints

def work_checkpoints(work: str | os.PathLike) -> dict[str, dict[int, str]]:
    """Every finished pretraining checkpoint of a benchmark work folder: trainer -> {seed: checkpoint}."""
    from fomo_nnunet.models.checkpoints import find_checkpoint

    found: dict[str, dict[int, str]] = {}
    for run in sorted(Path(work, "runs").glob("seed*")):
        if not run.name[4:].isdigit():
            continue
        pattern = f"nnUNet_results/Dataset{PRETRAIN_DATASET_ID:03d}_*/*__{PRETRAIN_PLANS}__*"
        for folder in sorted(run.glob(pattern)):
            try:
                ckpt = find_checkpoint(folder)
            except FileNotFoundError:
                continue  # a run that has not written a checkpoint yet
            if os.path.basename(ckpt) == "checkpoint_final.pth":
                found.setdefault(folder.name.split("__")[0], {})[int(run.name[4:])] = ckpt
    return found


# ---------------------------------------------------------------------------------- one encoder

def evaluate_encoder(embedder, probe_sets: dict[str, ProbeSet], cache: PreprocessedCache, seed: int = 0) -> dict:
    """Embed every probe set with one encoder, probe each task, and describe the embedding."""
    t0 = time.time()
    tasks, matrices = {}, []
    for key, ps in probe_sets.items():
        emb = embed_probe_set(embedder, ps, cache)
        tasks[key] = probe_task(ps.task, emb, ps.targets, seed)
        width = embedder.length
        # one row per scan (a multi-channel case holds one vector per channel)
        matrices += [m.reshape(-1, width) for m in emb.values()]
    diagnostics = embedding_diagnostics(np.concatenate(matrices)) | {"pooling": embedder.pooling}
    return {"tasks": tasks, "diagnostics": diagnostics, "seconds": round(time.time() - t0, 1)}


def _fingerprint(path: str, pooling: str, probe: str = "") -> str:
    """What a kept result was computed from: the checkpoint file, the pooling and the probe sets (`probe`:
    their tasks, sizes and data seed), so that a rerun with other probe sets never reuses it."""
    st = os.stat(path)
    return f"v{RESULT_VERSION}:{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}:pooling={pooling}:{probe}"


def cached(folder: Path, name: str, fingerprint: str, compute: Callable[[], dict], log: Callable = print) -> dict:
    """A per-encoder result kept in folder/name.json, recomputed when its fingerprint changes."""
    f = folder / f"{name}.json"
    if f.is_file():
        kept = json.loads(f.read_text())
        if kept.get("fingerprint") == fingerprint:
            log(f"  {name}: kept from {f}")
            return kept
    result = {"fingerprint": fingerprint, **compute()}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(nan_to_none(result), f)
    return result


# ---------------------------------------------------------------------------------- the benchmark

@dataclass
class FeatureBenchmark:
    """Probe every pretraining checkpoint of a work folder (or given checkpoints) and random-init twins."""
    work: Path
    checkpoints: dict[str, dict[int, str]]          # arm (trainer) -> {seed: checkpoint}
    default: str                                    # the arm reported as "pretrained"
    tasks: tuple[Task, ...] = field(default_factory=feature_tasks)
    n_train: int = N_TRAIN
    n_test: int = N_TEST
    data_seed: int = DATA_SEED_OFFSET
    init_seeds: tuple[int, ...] = INIT_SEEDS
    num_processes: int = 2
    log: Callable = print

    pooling: str | None = None                      # every encoder with this pooling (None: each its own)

    @property
    def folder(self) -> Path:
        return Path(self.work) / "features"

    @property
    def probe_identity(self) -> str:
        """The probe sets every kept result depends on (part of its fingerprint)."""
        return json.dumps(probe_set_identity(self.tasks, self.n_train, self.n_test, self.data_seed), sort_keys=True)

    def run(self) -> dict:
        sets = make_probe_sets(self.folder / "data", self.tasks, self.n_train, self.n_test, self.data_seed,
                               self.num_processes, self.log)
        for ps in sets.values():
            for s in ps.skipped:
                self.log(f"  skipped {s}")
        cache = PreprocessedCache()
        twin_of = next(iter(sorted(self.checkpoints[self.default].items())))[1]
        corpus = self.twin_corpus(twin_of, sets, cache)
        arms = self.probe_checkpoints(sets, cache, corpus)
        arms["random_init"] = self.probe_twins(twin_of, sets, cache, corpus)
        summary = summarise(arms, self.default, self.tasks)
        summary["rule_step2"] = rule_step2(summary)
        summary["pretraining"] = {arm: [pretraining_record(ckpt) | {"seed": seed} for seed, ckpt in sorted(by_seed.items())]
                                  for arm, by_seed in self.checkpoints.items()}
        summary["probe_sets"] = {key: {s: int(len(v)) for s, v in ps.targets.items()} | {"skipped": len(ps.skipped)}
                                 for key, ps in sets.items()}
        summary["settings"] = {"n_train": self.n_train, "n_test": self.n_test, "data_seed": self.data_seed,
                               "folds": FOLDS, "bootstrap": BOOTSTRAP, "init_seeds": list(self.init_seeds),
                               "pooling": self.pooling or "own"}
        text, report = json.dumps(nan_to_none(summary), indent=1) + "\n", markdown(summary)
        # the latest run, and one copy per pooling so that poolings can be read side by side
        for stem in ("features", f"features_{self.pooling or 'own'}"):
            (self.folder / f"{stem}.json").write_text(text)
            (self.folder / f"{stem}.md").write_text(report)
        return summary

    def probe_checkpoints(self, sets: dict[str, ProbeSet], cache: PreprocessedCache,
                          corpus: Callable) -> dict[str, dict[int, dict]]:
        """arm -> seed -> result, each kept in results/<arm>_seed<seed>_<pooling>.json."""
        arms: dict[str, dict[int, dict]] = {}
        for arm, by_seed in self.checkpoints.items():
            for seed, ckpt in sorted(by_seed.items()):
                pooling = self.pooling or checkpoint_pooling(ckpt)
                self.log(f"{arm} seed {seed} (pooling {pooling}): {ckpt}")
                arms.setdefault(arm, {})[seed] = cached(
                    self.folder / "results", f"{arm}_seed{seed}_{pooling}",
                    _fingerprint(ckpt, pooling, self.probe_identity),
                    lambda ckpt=ckpt: evaluate_encoder(pooled_embedder(ckpt, self.pooling, corpus), sets, cache),
                    self.log)
        return arms

    def probe_twins(self, twin_of: str, sets: dict[str, ProbeSet], cache: PreprocessedCache,
                    corpus: Callable) -> dict[int, dict]:
        """init seed -> result of a random-init twin of `twin_of`, kept in results/random_init_<k>_<pooling>.json."""
        pooling = self.pooling or checkpoint_pooling(twin_of)
        twins = {}
        for k in self.init_seeds:
            self.log(f"random init {k} (the architecture of {twin_of}; pooling {pooling})")
            twins[k] = cached(
                self.folder / "results", f"random_init_{k}_{pooling}",
                f"{_fingerprint(twin_of, pooling, self.probe_identity)}:init{k}",
                lambda k=k: evaluate_encoder(random_init_embedder(twin_of, k, corpus, pooling=pooling), sets, cache),
                self.log)
        return twins

    def twin_corpus(self, checkpoint: str, sets: dict[str, ProbeSet], cache: PreprocessedCache) -> Callable:
        """The scans random-init twins compute their embedding statistics over (when the pretrained
        checkpoint has statistics): the work folder's preprocessed pretraining corpus, as many cases as the
        checkpoint's statistics used; without one (--checkpoint), the probe sets' training scans."""
        from fomo_nnunet.benchmarks.fomo_synth import pretrain_data
        from fomo_nnunet.models.embedding_stats import preprocessed_cases, select_cases
        from fomo_nnunet.challenge.inference import Embedder

        embedder = Embedder.load(checkpoint)
        try:
            folder = pretrain_data(Path(self.work) / "nnUNet_preprocessed")
        except (StopIteration, FileNotFoundError):
            folder = None
        if folder is not None and folder.is_dir() and embedder.stats is not None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

            chosen = select_cases(infer_dataset_class(str(folder)).get_identifiers(str(folder)), embedder.stats.n_cases)
            return lambda: preprocessed_cases(folder, chosen)
        files = [f for ps in sets.values() for case in ps.files["train"] for f in case]
        return lambda: (cache.get(embedder, f) for f in files)


def _arm_entry(runs: dict[int, dict], key: str) -> dict:
    seeds = sorted(runs)
    return {"seeds": seeds, "scores": [runs[s]["tasks"][key]["score"] for s in seeds],
            "ci95": [runs[s]["tasks"][key]["ci95"] for s in seeds],
            "scale_free": [runs[s]["tasks"][key]["scale_free"] for s in seeds],
            "train_cv": [runs[s]["tasks"][key].get("train_cv") for s in seeds]}


def summarise(arms: dict[str, dict[int, dict]], default: str, tasks: Sequence[Task]) -> dict:
    """features.json: per task the default arm's and random init's scores (one per seed), every arm in
    `variants`, and per arm the embedding diagnostics (one per seed)."""
    out: dict = {"pretrained_arm": default, "tasks": {}, "variants": {}, "diagnostics": {}}
    for t in tasks:
        metric, higher = metric_of(t)
        entry = {"metric": metric, "higher_is_better": higher,
                 "pretrained": _arm_entry(arms[default], t.key)["scores"],
                 "random_init": _arm_entry(arms["random_init"], t.key)["scores"]}
        extra = [arms[default][s]["tasks"][t.key].get("mean_predictor_mae") for s in sorted(arms[default])]
        if t.kind == REGRESSION:
            entry["mean_predictor"] = extra[0]
        out["tasks"][t.key] = entry
    for arm, runs in arms.items():
        out["variants"][arm] = {t.key: _arm_entry(runs, t.key) for t in tasks}
        out["diagnostics"][arm] = [runs[s]["diagnostics"] | {"seed": s, "seconds": runs[s]["seconds"]}
                                   for s in sorted(runs)]
    return out


def rule_step2(summary: dict) -> dict:
    """Per pretrained arm, step 2 of the default-objective rule against random init: each criterion's measured
    difference of the means, its requirement and whether it is met; `misses` names every criterion not met
    (a task the run did not probe, or fewer than RULE_SEEDS seeds, is a miss: the rule cannot pass on it)."""
    out = {}
    random_init = summary["variants"]["random_init"]
    for arm, by_task in summary["variants"].items():
        if arm == "random_init":
            continue
        checks, misses = {}, []
        for key, margin in [*RULE_AUROC_MARGINS.items(), (RULE_MAE_TASK, None)]:
            if key not in by_task:
                misses.append(f"{key} not probed")
                continue
            arm_mean, init_mean = float(np.mean(by_task[key]["scores"])), float(np.mean(random_init[key]["scores"]))
            if margin is None:   # regression: the probe's MAE may not be higher than random init's
                diff = arm_mean / init_mean - 1.0 if init_mean > 0 else float("nan")
                met = bool(diff <= 0.0)
                checks[key] = {"relative_mae_difference": diff, "required": "<= 0", "met": met}
            else:
                diff = arm_mean - init_mean
                met = bool(diff >= margin - 1e-9)   # a difference exactly at the margin meets it
                checks[key] = {"auroc_difference": diff, "required": f">= +{margin:g}", "met": met}
            if not met:
                misses.append(key)
        dead = max((int(d["dead_dimensions"]) for d in summary["diagnostics"].get(arm, [])), default=0)
        checks["dead_dimensions"] = {"most_in_one_seed": dead, "required": "0", "met": dead == 0}
        if dead:
            misses.append("dead dimensions")
        seeds = len(next(iter(by_task.values()))["scores"]) if by_task else 0
        if seeds < RULE_SEEDS:
            misses.append(f"{seeds} of {RULE_SEEDS} seeds")
        out[arm] = {"seeds": seeds, "checks": checks, "qualifies": not misses, "misses": misses}
    return out


def _rule_lines(rule: dict) -> list[str]:
    keys = [*RULE_AUROC_MARGINS, RULE_MAE_TASK]
    head = [f"{k} (AUROC >= +{m:g})" for k, m in RULE_AUROC_MARGINS.items()] + [f"{RULE_MAE_TASK} (MAE not higher)"]
    lines = ["", "Step 2 of the default-objective rule (docs/pretraining-recipes.md): each arm's mean against random "
             f"init's, with {RULE_SEEDS} pretraining seeds:", "",
             "| arm | seeds | " + " | ".join(head) + " | dead | step 2 |", "|---|---|" + "---|" * (len(keys) + 2)]
    for arm, r in rule.items():
        cells = []
        for k in keys:
            c = r["checks"].get(k)
            if c is None:
                cells.append("not probed")
            elif "auroc_difference" in c:
                cells.append(f"{c['auroc_difference']:+.3f}")
            else:
                cells.append(f"{c['relative_mae_difference']:+.1%}")
        verdict = "qualifies" if r["qualifies"] else "misses: " + ", ".join(r["misses"])
        lines.append(f"| {arm} | {r['seeds']} | " + " | ".join(cells) +
                     f" | {r['checks']['dead_dimensions']['most_in_one_seed']} | {verdict} |")
    return lines


def _ms(values: Sequence[float | None]) -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _f(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _pooling_line(summary: dict) -> str:
    from fomo_nnunet.models.embedding_stats import POOLING_MEANING

    pooling = summary["settings"].get("pooling", "own")
    if pooling != "own":
        return f"Embedding pooling: `{pooling}` ({POOLING_MEANING[pooling]}) for every encoder (--pooling)."
    used = {arm: sorted({d.get("pooling", "deepest") for d in ds}) for arm, ds in summary["diagnostics"].items()}
    arms = "; ".join(f"{arm}: {', '.join(p)}" for arm, p in used.items())
    return f"Embedding pooling: each checkpoint's own ({arms})."


def markdown(summary: dict) -> str:
    """features.md: one table of probe scores per arm and task, step 2 of the default-objective rule, the
    embedding diagnostics."""
    tasks = list(summary["tasks"])
    arms = [summary["pretrained_arm"]] + [a for a in summary["variants"] if a != summary["pretrained_arm"]]
    lines = ["# Feature benchmark: linear probes on frozen embeddings", "",
             f"Probe sets: {summary['settings']['n_train']} train / {summary['settings']['n_test']} "
             f"out-of-domain test cases per task (FOMO-Synth, data seed {summary['settings']['data_seed']}). "
             f"Classification: fomo-lp SGD heads on the raw embeddings, {FOLDS}-fold cross-validation on the "
             f"train split, test AUROC (higher is better). Regression: ridge on the raw embeddings, penalty by "
             f"cross-validation, test MAE (lower is better). Mean ± sd over seeds (pretraining seeds; init seeds "
             f"for random_init); in brackets the scale-free reference (standardised features).", "",
             _pooling_line(summary), "",
             "| arm | " + " | ".join(f"{t} ({summary['tasks'][t]['metric']})" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for arm in arms:
        cells = [f"{_ms(summary['variants'][arm][t]['scores'])} ({_ms(summary['variants'][arm][t]['scale_free'])})"
                 for t in tasks]
        lines.append(f"| {arm} (n={len(summary['variants'][arm][tasks[0]]['scores'])}) | " + " | ".join(cells) + " |")
    for t, e in summary["tasks"].items():
        if e.get("mean_predictor") is not None:
            lines += ["", f"{t}: predicting the train split's mean gives MAE {e['mean_predictor']:.3f} (a probe at or "
                      f"above it found nothing in the features)."]
    if any(x is not None for arm in arms for t in tasks for x in summary["variants"][arm][t].get("train_cv", [])):
        lines += ["", f"The same probes by nested {FOLDS}-fold cross-validation on the train split alone (no test case "
                  "takes part: the score to choose a pooling or an objective on), mean ± sd:", "",
                  "| arm | " + " | ".join(f"{t} ({summary['tasks'][t]['metric']})" for t in tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(_ms(summary["variants"][arm][t].get("train_cv", []))
                                                    for t in tasks) + " |")
    if summary.get("rule_step2"):
        lines += _rule_lines(summary["rule_step2"])
    lines += ["", "Per encoder, the test score and its bootstrap 95 % interval:", "",
              "| arm | seed | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for arm in arms:
        v = summary["variants"][arm]
        for i, seed in enumerate(v[tasks[0]]["seeds"]):
            lines.append(f"| {arm} | {seed} | " + " | ".join(
                f"{_f(v[t]['scores'][i])} [{_f(v[t]['ci95'][i][0])}, {_f(v[t]['ci95'][i][1])}]" for t in tasks) + " |")
    lines += ["", "| arm | seed | dimensions | dead | RankMe | RankMe (centred) | median sd | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        for d in summary["diagnostics"][arm]:
            lines.append(f"| {arm} | {d['seed']} | {d['dimensions']} | {d['dead_dimensions']} | {d['rankme']} | "
                         f"{d['rankme_centred']} | {d['median_sd']:.3g} | {d['seconds']} |")
    if summary.get("pretraining"):
        lines += ["", "Pretraining, as each checkpoint records it (last epoch; variance hinges in [0, 2], 2: the same "
                  "features for every sample):", "",
                  "| arm | seed | objective | reconstruction x VICReg weight | batch | epochs | validation loss (region) | "
                  "VICReg variance hinge | the pools' hinge |", "|---|---|---|---|---|---|---|---|---|"]
        for arm in arms:
            for r in summary["pretraining"].get(arm, []):
                lines.append(f"| {arm} | {r['seed']} | {r['objective']} | {r['mae_weight']:g} x {r['vicreg_weight']:g} | "
                             f"{r.get('batch_size') or 'n/a'} | {r['epochs']} | "
                             f"{_f(r['val_loss'])} ({r['loss_region'] or 'n/a'}) | "
                             f"{_f(r['variance_hinge'])} | {_f(r['pools_variance_hinge'])} |")
    return "\n".join(lines) + "\n"
