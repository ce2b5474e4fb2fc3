"""One subject's head as tissue-class probability maps: the template, placed, deformed, aged, with
its lesion painted in and, unless skull-stripped, a skull and scalp around it.

`build_case` goes step by step:
  1. place the head in a work grid (head size, position, field of view)       place_head
  2. map every work voxel to the template: rotation, scaling, smooth warp      template_coords
  3. draw the lesion in template space (pathology.py)                          draw_lesions
  4. sample template tissue and lesion maps at those coordinates               sample_case
     (a polymicrogyria patch then refolds the cortex: pathology.refold_cortex)
  5. age the brain: cortical thinning and ventricle growth with the brain age  age_brain
     (the changes brain-age models pick up: Cole and Franke, "Predicting age using neuroimaging:
     innovative brain ageing biomarkers", Trends in Neurosciences 2017)
  6. add cerebrospinal fluid outside the brain, skull, marrow and scalp fat    head_shell
  7. paint the lesion over the tissue; its mask is the ground truth            paint_lesions
A subject (head size, warp, brain age) is drawn once and shared by all its sessions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid, Trilinear, rotation, smooth_field
from .pathology import LESIONS, LesionSpace, draw_lesions, paint_lesions, refold_cortex
from .sources import Source
from .template import Atlas

TISSUE = ("gm", "wm", "csf", "vent", "veins")
# Classes inside the brain (for the skull-stripping mask).
BRAIN_CLASSES = ("csf", "gm", "wm", "infarct", "wmh", "edema", "tumor", "nerve", "vessel")


@dataclass
class Subject:
    """Per-subject anatomy drawn once (shared by all sessions of a pretraining subject)."""
    scale: np.ndarray
    warp_seed: int
    warp_amp: float
    bio_age: float


def make_subject(rng: np.random.Generator, sex: str, age: float) -> Subject:
    base = 1.03 if sex == "M" else 0.97
    scale = base * rng.normal(1.0, 0.03) * rng.normal(1.0, 0.02, 3)
    return Subject(scale=scale, warp_seed=int(rng.integers(2**31)), warp_amp=float(rng.uniform(1.5, 4.0)),
                   bio_age=float(np.clip(age + rng.normal(0, 4.0), 18, 100)))


def place_head(atlas: Atlas, subj: Subject, rng: np.random.Generator, src: Source, spacing: float,
               strip: bool, trim_fov: bool) -> tuple[Grid, np.ndarray]:
    """The work grid: brain box (scaled) plus skull/scalp margin, shifted, bottom trimmed by the FOV.

    Returns the grid and the head's shift (mm)."""
    scale = subj.scale
    margin = 4.0 if strip else 16.0
    lo = atlas.brain_lo * scale - margin
    hi = atlas.brain_hi * scale + margin
    shift = rng.normal(0, 3.0, 3)
    lo, hi = lo + shift, hi + shift
    ext = hi - lo
    trim = src.fov_trim * rng.uniform(0.3, 1.0)
    if trim_fov:
        lo[2] += trim * ext[2]
    shape = tuple(int(np.ceil(e / spacing)) for e in (hi - lo))
    return Grid(shape=shape, spacing=np.full(3, spacing), origin=lo), shift


def template_coords(grid: Grid, subj: Subject, rng: np.random.Generator, shift: np.ndarray) -> np.ndarray:
    """(3, voxels) template world coordinates of the work grid: rotation, scaling, smooth warp."""
    idx = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
    x = idx * np.float32(grid.spacing[0]) + grid.origin[:, None].astype(np.float32)
    R = rotation(rng, 4.0)
    xa = (R.T @ (x - shift[:, None])) / subj.scale[:, None]
    wrng = np.random.default_rng(subj.warp_seed)
    for k in range(3):
        xa[k] += subj.warp_amp * smooth_field(wrng, grid.shape, 4).ravel()
    return xa.astype(np.float32)


def _to_ijk(atlas: Atlas, p: np.ndarray) -> np.ndarray:
    return (atlas.inv[:3, :3] @ p + atlas.inv[:3, 3][:, None]).astype(np.float32)


def sample_case(space: LesionSpace, shape: tuple[int, int, int], displaced: bool, in_place: tuple[str, ...]):
    """Template tissue at the (moved) tissue coordinates; the hull distance and lesion maps that stay in
    place at the unmoved ones. Returns ({tissue: map}, hull distance, {lesion map: map})."""
    atlas = space.atlas
    samp_t = Trilinear(_to_ijk(atlas, space.xt), atlas.shape)
    samp_a = Trilinear(_to_ijk(atlas, space.xa), atlas.shape) if displaced else samp_t
    tissue = {k: samp_t(getattr(atlas, k).ravel()).reshape(shape) for k in TISSUE}
    hd = samp_a(atlas.hull_dist.ravel()).reshape(shape)
    lesion_maps = {k: np.clip((samp_a if k in in_place else samp_t)(v.ravel()).reshape(shape), 0, 1)
                   for k, v in space.maps.items()}
    return tissue, hd, lesion_maps


def brain_age_factor(subj: Subject) -> float:
    """0 at a brain age of 20, 1 at 90 (1.2 at most)."""
    return np.clip((subj.bio_age - 20.0) / 70.0, 0, 1.2)


def age_brain(gm, wm, csf, vent, age_g, spacing):
    """Cortical thinning (GM -> CSF) and ventricles grown into GM and WM, both with `age_g`."""
    from scipy import ndimage as ndi

    thin = 1.0 + 1.8 * age_g
    gm_new = gm ** thin
    csf = csf + (gm - gm_new)
    gm = gm_new
    g = ndi.gaussian_filter(vent, 4.0 / spacing)
    grown = np.clip(g * (1.0 + 3.0 * age_g) / (g.max() + 1e-6) * 1.2, 0, 1) * (g > 0.02)
    add = np.clip(grown - csf, 0, None) * np.clip(gm + wm, 0, 1)
    take = np.clip(add / (gm + wm + 1e-6), 0, 1)
    gm, wm = gm * (1 - take), wm * (1 - take)
    csf = csf + add
    return gm, wm, csf


def head_shell(P: dict[str, np.ndarray], hd: np.ndarray, age_g) -> None:
    """Outer CSF, skull (bone with marrow) and scalp fat by distance to the brain hull; thicker with age.

    Uses the unmoved hull distance: the skull does not move with a mass."""
    ramp = lambda a, b, w=1.0: np.clip((hd - a) / w, 0, 1) * np.clip((b - hd) / w, 0, 1)  # noqa: E731
    thick = 1.0 + 0.15 * age_g
    P["xcsf"] = ramp(0.0, 2.5 * thick) * (1 - np.clip(P["csf"] + P["gm"] + P["wm"], 0, 1))
    P["bone"] = ramp(2.5 * thick, 9.0 * thick) * (1 - 0.7 * ramp(4.0 * thick, 7.0 * thick))
    P["marrow"] = 0.7 * ramp(4.0 * thick, 7.0 * thick)
    P["fat"] = ramp(9.0 * thick, 15.0)


def brain_mask(P: dict[str, np.ndarray], strip: bool) -> np.ndarray:
    """What skull stripping keeps: the brain classes (and a meningioma, if stripped), smoothed."""
    from scipy import ndimage as ndi

    brain = sum(P[k] for k in BRAIN_CLASSES if k in P)
    if "mening" in P and strip:
        brain = brain + P["mening"]
    return ndi.gaussian_filter(np.asarray(brain, np.float32), 1.0) > 0.35


def build_case(atlas: Atlas, subj: Subject, rng: np.random.Generator, src: Source, spacing: float,
               strip: bool, path: dict) -> tuple[Grid, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Class probability maps on an isotropic work grid.

    `path` describes the pathology: {"kind": a name in pathology.LESIONS, ...its parameters, "wmh": load}.
    Returns (work grid, {class: prob map}, {"seg": label map, "veins": map, "brain": mask}).
    """
    lesion = LESIONS[path.get("kind", "none")]
    grid, shift = place_head(atlas, subj, rng, src, spacing, strip, trim_fov=not lesion.keeps_skull_base)
    xa = template_coords(grid, subj, rng, shift)
    space = LesionSpace(atlas, spacing, src, xa=xa, xt=xa.copy())
    draw_lesions(space, rng, path)
    t, hd, lesion_maps = sample_case(space, grid.shape, lesion.displaces_tissue, lesion.in_place_maps)
    fold_window = space.fold_window
    del space, xa  # the coordinates are the largest arrays; free them before the class maps

    gm, wm, csf = t["gm"], t["wm"], t["csf"]
    if fold_window is not None:
        gm, wm = refold_cortex(gm, wm, fold_window.reshape(grid.shape))
    age_g = brain_age_factor(subj)
    gm, wm, csf = age_brain(gm, wm, csf, t["vent"], age_g, spacing)
    P: dict[str, np.ndarray] = {"csf": csf, "gm": gm, "wm": wm}
    if not strip:
        head_shell(P, hd, age_g)
    seg = paint_lesions(P, lesion_maps, gm, wm, hd)
    veins = t["veins"] * np.clip(csf + gm + wm, 0, 1)
    return grid, P, {"seg": seg, "veins": veins, "brain": brain_mask(P, strip)}
