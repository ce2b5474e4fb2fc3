"""How much FOMO-Synth writes: the size presets (voxel size, sources, subjects, cases per task)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SynthPreset:
    name: str
    spacing: float                 # isotropic base spacing in mm (sources may coarsen one axis)
    pretrain_sources: int
    pretrain_subjects: int         # per source
    pretrain_max_sessions: int
    pretrain_seq_range: tuple[int, int]   # sequences per session, inclusive
    n_train: int                   # per task, times the task's synth_train_factor (brain age: 10)
    n_test: int                    # per task
    train_sources: int             # per task
    test_sources: int              # per task (distinct from the train sources)
    previews_per_split: int = 2
    task_train_factors: bool = True   # False once n_train is given: then every task gets exactly n_train

    def train_cases(self, task) -> int:
        """Train cases of a task (fomo_nnunet.tasks.Task)."""
        return self.n_train * (task.synth_train_factor if self.task_train_factors else 1)


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset("tiny", 3.0, 3, 4, 2, (2, 2), 10, 20, 1, 2),
    "small": SynthPreset("small", 2.0, 5, 16, 2, (2, 4), 20, 60, 2, 3),
    "full": SynthPreset("full", 1.0, 12, 45, 2, (2, 4), 30, 200, 2, 4),
}

SPLITS = ("train", "test")


def resolve_preset(name: str, **overrides: int | None) -> SynthPreset:
    """The named preset with some sizes replaced (n_train, n_test, pretrain_sources, pretrain_subjects)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    bad = [f"{k}={v}" for k, v in given.items() if v < (0 if k.startswith("n_") else 1)]
    if bad:
        raise ValueError(f"sizes out of range: {', '.join(bad)} (cases >= 0, sources and subjects >= 1)")
    if "n_train" in given:
        given["task_train_factors"] = False
    preset = PRESETS[name]
    return SynthPreset(**{**asdict(preset), **given}) if given else preset


def preset_from_dict(sizes: dict) -> SynthPreset:
    """A preset back from its `asdict` form (as it travels in a job)."""
    d = dict(sizes)
    d["pretrain_seq_range"] = tuple(d["pretrain_seq_range"])
    return SynthPreset(**d)
