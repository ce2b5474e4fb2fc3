"""The scanners ("sources", "sites"): what makes two scans of one head look different.

A source is drawn once from (seed, role, index) and fixes, for every scan it makes: vendor and
field strength (metadata), overall gain, Rician noise level, bias-field strength, blur, slice
thickness along one axis, field of view, skull-stripped or not, a small per-class tweak of the
contrast table, and whether T2 vessels are bright. Pretraining has its own sources; each task has
train sources and, disjoint from them, test sources, so that the test split is out of domain as in
the FOMO25 challenge (https://fomo25.github.io).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .contrast import BRIGHT_VESSEL_SEQS, CLASSES, SEQ_MEANS
from .presets import SynthPreset

MANUFACTURERS = ("Siemens", "GE", "Philips", "Canon")


@dataclass(frozen=True)
class Source:
    name: str
    manufacturer: str
    field_strength: float
    gain: float
    noise: float             # Rician sigma relative to WM-level signal
    bias: float              # std of log bias field
    blur: float              # extra in-plane blur (voxels)
    aniso_axis: int          # axis with thick slices
    aniso: float             # slice thickness factor (1 = isotropic)
    skull_stripped: bool
    fov_trim: float          # fraction of the head box that may be cut at the bottom/front
    contrast_seed: int
    vessel_bright: bool      # T2 vessels bright instead of flow voids
    texture: float = 0.03

    def contrast(self, seq: str) -> dict[str, float]:
        """This source's class means for a sequence (the global table, tweaked per scanner)."""
        rng = np.random.default_rng([self.contrast_seed, list(SEQ_MEANS).index(seq)])
        tweak = np.exp(rng.normal(0.0, 0.08, len(CLASSES)))
        mu = {k: SEQ_MEANS[seq][k] * float(t) for k, t in zip(CLASSES, tweak)}
        mu["xcsf"] = mu["csf"]
        if seq in BRIGHT_VESSEL_SEQS and self.vessel_bright:
            mu["vessel"] = 1.5 * mu["csf"]
        return mu


def make_source(seed: int, role: int, index: int, name: str) -> Source:
    """A scanner profile drawn from (seed, role, index): role 0 pretrain, 1..7 the task's finetuning pool."""
    rng = np.random.default_rng([seed, 7777, role, index])
    aniso = float(rng.choice([1.0, 1.0, 1.35, 1.67]))
    return Source(
        name=name, manufacturer=str(rng.choice(MANUFACTURERS)), field_strength=float(rng.choice([1.5, 3.0])),
        gain=float(np.exp(rng.uniform(np.log(200.0), np.log(3000.0)))), noise=float(rng.uniform(0.015, 0.06)),
        bias=float(rng.uniform(0.03, 0.25)), blur=float(rng.uniform(0.0, 0.6)),
        aniso_axis=int(rng.choice([2, 2, 1, 0])), aniso=aniso, skull_stripped=bool(rng.random() < 0.5),
        fov_trim=float(rng.uniform(0.0, 0.12)), contrast_seed=int(rng.integers(2**31)),
        vessel_bright=bool(rng.random() < 0.3), texture=float(rng.uniform(0.01, 0.05)))


def isotropic(src: Source) -> Source:
    """The same scanner with a high-resolution 3D sequence: no thick slices."""
    return replace(src, aniso=min(src.aniso, 1.0))


def _letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: the letter part of a source's name."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def pretrain_sources(preset: SynthPreset, seed: int) -> list[Source]:
    return [make_source(seed, 0, i, f"PT{i + 1:03d}_Synth{_letters(i)}") for i in range(preset.pretrain_sources)]


def task_sources(preset: SynthPreset, seed: int, task: int) -> dict[str, list[Source]]:
    """Train and test sources of task number `task`: disjoint, so the test split is out-of-domain."""
    n_tr, n_te = preset.train_sources, preset.test_sources
    mk = lambda j: make_source(seed, task, j, f"Site{task}{_letters(j)}")  # noqa: E731
    return {"train": [mk(j) for j in range(n_tr)], "test": [mk(n_tr + j) for j in range(n_te)]}
