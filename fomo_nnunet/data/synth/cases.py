"""Who is scanned, and with what: the case tables of the task splits and the pretraining subjects.

Everything per task comes from the task table (`fomo_nnunet.tasks.Task`, its `synth_*` fields and
its kind); nothing here asks for a task by number:
  - the target follows the task's kind: a class split in fixed proportions (classification), the
    brain age spread evenly over the age range (regression), three classes crossed with sex so
    every (class, sex) pair occurs (embedding, for the probing and fairness tasks), none
    (segmentation: the mask is the target);
  - ages, sex ratio, the lesion per class, background white-matter lesions, the sequences.
Random draws happen in a fixed order per case, so a case depends on (seed, task, split, index) only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fomo_nnunet.tasks import CLASSIFICATION, EMBEDDING, REGRESSION, TASKS_BY_NUMBER, Task

from .anatomy import Subject, make_subject
from .pathology import plan_lesion
from .presets import SPLITS, SynthPreset
from .sources import task_sources

ADULT_AGES = (30, 85)  # ages of the cases where the task table gives none


# --- case tables of the task splits -----------------------------------------------------------


def _binary_target(case: dict, task: Task, rank: int, n: int, rng: np.random.Generator) -> None:
    case["label"] = int(rank < round(task.synth_positive_fraction * n))


def _age_target(case: dict, task: Task, rank: int, n: int, rng: np.random.Generator) -> None:
    """Ages stratified over the range (one per 1/n of it), so every split covers all ages."""
    lo, hi = task.synth_age_range
    case["age"] = round(float(lo + (hi - lo) * (rank + rng.uniform(0.05, 0.95)) / n), 1)
    case["label"] = case["age"]


def _class_and_sex_target(case: dict, task: Task, rank: int, n: int, rng: np.random.Generator) -> None:
    """(class, sex) cycles through all pairs: every class has both sexes."""
    case["label"] = int(rank % len(task.synth_lesions))
    case["sex"] = "F" if rank % 2 == 0 else "M"


TARGETS = {CLASSIFICATION: _binary_target, REGRESSION: _age_target, EMBEDDING: _class_and_sex_target}


def _draw_demographics(case: dict, task: Task, rng: np.random.Generator) -> None:
    """The task's own age range and sex ratio, where it has them (drawn after the general ones; a
    brain-age target has placed the ages already)."""
    if task.synth_age_range is not None and task.kind != REGRESSION:
        case["age"] = round(float(rng.uniform(*task.synth_age_range)), 1)
    if task.synth_female_fraction is not None:
        case["sex"] = "F" if rng.random() < task.synth_female_fraction else "M"


def plan_task_cases(preset: SynthPreset, seed: int, task: int, split: str) -> list[dict]:
    """Deterministic case table of a task split (task number `task`): source, sex, age and target."""
    t = TASKS_BY_NUMBER[task]
    n = preset.train_cases(t) if split == "train" else preset.n_test
    srcs = task_sources(preset, seed, task)[split]
    rng = np.random.default_rng([seed, task, SPLITS.index(split), 10**6])
    ranks = rng.permutation(n)
    cases = []
    for i in range(n):
        c = {"task": task, "split": split, "index": i, "source_index": i % len(srcs),
             "source": srcs[i % len(srcs)].name, "sex": "F" if rng.random() < 0.5 else "M",
             "age": round(float(rng.uniform(*ADULT_AGES)), 1)}
        if t.kind in TARGETS:
            TARGETS[t.kind](c, t, ranks[i], n, rng)
        _draw_demographics(c, t, rng)
        cases.append(c)
    return cases


# --- what one task case is made of ------------------------------------------------------------


@dataclass
class CaseRecipe:
    subject: Subject
    stems: list[str]     # the files of the case (FOMO25 stems), in the order they are rendered
    path: dict           # the lesion (see anatomy.build_case)


def draw_stems(task: Task, rng: np.random.Generator) -> list[str]:
    """One file per input channel: the channel's first stem, a fair coin between the two of an
    alternative channel (t2s or swi), or one of the task's synth_sequences for an any-sequence input."""
    if task.synth_sequences:
        return [str(rng.choice(list(task.synth_sequences)))]
    stems = []
    for ch in task.channels:
        if ch.is_alternative:
            first, second = ch.file_stems
            stems.append(second if rng.random() < 0.5 else first)
        else:
            stems.append(ch.file_stems[0])
    return stems


def _background_wmh(task: Task, subj: Subject, age_load: float, rng: np.random.Generator) -> dict:
    """White-matter hyperintensities besides the lesion: none, from the age, or from the brain age."""
    if task.synth_wmh == "none":
        return {}
    if task.synth_wmh == "brain_age":
        return {"wmh": float(np.clip((subj.bio_age - 35) / 50, 0, 1.3)) * rng.uniform(0.5, 1.2)}
    return {"wmh": age_load}


def draw_case_recipe(task: Task, case: dict, rng: np.random.Generator) -> CaseRecipe:
    """Subject, files and lesion of one case, drawn from the case's own generator."""
    subj = make_subject(rng, case["sex"], case["age"])
    age_load = float(np.clip((case["age"] - 50) / 40, 0, 1)) * rng.uniform(0.0, 0.6)
    stems = draw_stems(task, rng)
    path = {"kind": "none", **_background_wmh(task, subj, age_load, rng)}
    lesions = task.synth_lesions
    kind = lesions[int(case["label"])] if len(lesions) > 1 else lesions[0]
    path.update(plan_lesion(kind, rng))
    return CaseRecipe(subj, stems, path)


def draw_vessel_brightness(task: Task, rng: np.random.Generator) -> bool | None:
    """Per case, whether vessels are bright on T2 (None: as the source does)."""
    if task.synth_vessel_bright is None:
        return None
    return bool(rng.random() < task.synth_vessel_bright)


# --- pretraining subjects and sessions --------------------------------------------------------

# (upper bound of a uniform draw, group, lesion): the rest are controls.
PRETRAIN_GROUPS = ((0.08, "tumor", "tumor"), (0.16, "stroke", "infarct"), (0.22, "meningioma", "meningioma"))
PRETRAIN_SEQS = ("t1w", "t2w", "flair", "dwi", "adc", "swi", "t2s")


@dataclass
class PretrainSubject:
    sex: str
    age: float
    subject: Subject
    handedness: str
    group: str
    path: dict
    n_sessions: int


def draw_pretrain_subject(rng: np.random.Generator, max_sessions: int) -> PretrainSubject:
    """A pretraining subject: demographics, anatomy, group (control or a lesion), number of sessions."""
    sex = str(rng.choice(["F", "M"]))
    age = float(rng.uniform(18, 88))
    subj = make_subject(rng, sex, age)
    hand = "L" if rng.random() < 0.1 else "R"
    r = rng.random()
    group, path = "control", {"kind": "none", "wmh": float(np.clip((age - 45) / 40, 0, 1)) * rng.uniform(0, 1)}
    for bound, name, kind in PRETRAIN_GROUPS:
        if r < bound:
            group, path = name, plan_lesion(kind, rng)
            break
    n_ses = 1 + int(rng.random() < 0.3) * (max_sessions - 1)
    return PretrainSubject(sex, age, subj, hand, group, path, n_ses)


def draw_session_sequences(srng: np.random.Generator, seq_range: tuple[int, int]) -> list[str]:
    """The FOMO300K sequences of one session: 2-4 of T1w, T2w, FLAIR, DWI, SWI or T2* (T1w most
    often), an ADC map with most DWIs; in a fixed order."""
    lo, hi = seq_range
    k = int(srng.integers(lo, hi + 1))
    cand = ["t1w", "t2w", "flair", "dwi", "swi" if srng.random() < 0.5 else "t2s"]
    w = np.array([0.95, 0.6, 0.6, 0.4, 0.3])
    seqs = list(srng.choice(cand, size=min(k, len(cand)), replace=False, p=w / w.sum()))
    if "dwi" in seqs and srng.random() < 0.7:
        seqs.append("adc")
    return [q for q in PRETRAIN_SEQS if q in seqs]
