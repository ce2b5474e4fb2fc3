"""Lesions: each kind is drawn in template space and then painted over the tissue classes.

A lesion kind is one entry of `LESIONS` (name -> Lesion); the task table names them
(`Task.synth_lesions`), pretraining draws some at random. Every kind has three steps:

  plan   parameters drawn while the case is planned (an infarct's territory and side);
  draw   soft maps in template space (deformed with the subject afterwards), sometimes moving
         the surrounding tissue (mass effect, folding);
  paint  after sampling onto the case's grid: the lesion replaces the tissue under it and, where
         it is a target, writes its label into the mask.

The kinds and what they imitate:
  infarct     a lobulated lesion in a vascular territory (MCA, ACA, PCA, lenticulostriate), often
              with a satellite; DWI-bright, ADC-dark (see contrast.py)
  meningioma  an extra-axial, dural-based mass on the upper convexity, flattened against the inner
              table, pushing the brain away
  tumor       an intra-axial mass in deep white matter with surrounding oedema, pushing tissue away
  trigeminal  both trigeminal nerves from the pons to Meckel's cave in their CSF cisterns, the
              basilar artery and a superior cerebellar artery loop touching one nerve, as in
              neurovascular compression (Love and Coakham, "Trigeminal neuralgia: pathology and
              pathogenesis", Brain 2001)
  pmg         polymicrogyria: an over-folded, thickened patch of lateral cortex (Barkovich,
              "Current concepts of polymicrogyria", Neuroradiology 2010)
  wmh         a heavy load of white-matter hyperintensities; lighter, age-related loads come with
              most cases (draw_wmh)
  none        no lesion
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .geometry import blob, tube
from .sources import Source
from .template import TERRITORIES, Atlas


@dataclass
class LesionSpace:
    """Where lesions are drawn: the template and the template coordinates of the case's voxels."""
    atlas: Atlas
    spacing: float
    src: Source
    xa: np.ndarray                      # (3, voxels) template coordinates of the work grid
    xt: np.ndarray                      # the same, moved by mass effect or folding (where tissue is sampled)
    maps: dict[str, np.ndarray] = field(default_factory=dict)   # template-space lesion maps
    fold_window: np.ndarray | None = None                       # pmg: where the cortex is refolded


@dataclass(frozen=True)
class Lesion:
    plan: Callable[[np.random.Generator], dict]
    draw: Callable[[LesionSpace, np.random.Generator, dict], None]
    displaces_tissue: bool = False      # tissue sampled at moved coordinates (xt), the rest at xa
    in_place_maps: tuple[str, ...] = ()  # maps sampled where they were drawn, not moved with the tissue
    keeps_skull_base: bool = False      # the field of view is not trimmed at the bottom
    makes_mask: bool = False            # paints labels into the case's mask


def _no_params(rng: np.random.Generator) -> dict:
    return {}


def _nothing(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    pass


def push(xa: np.ndarray, center: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Mass effect: sample template tissue from nearer the center, so tissue appears pushed outward."""
    d = xa - center[:, None]
    r = np.sqrt((d ** 2).sum(0)) + 1e-6
    delta = strength * radius * np.exp(-(r / (1.6 * radius)) ** 2)
    f = np.clip(1 - delta / r, 0.0, 1.0)
    return center[:, None] + d * f


# --- infarct -----------------------------------------------------------------------------------


def _plan_infarct(rng: np.random.Generator) -> dict:
    return {"territory": str(rng.choice(list(TERRITORIES))), "side": float(rng.choice([-1, 1]))}


def _draw_infarct(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    atlas, spacing = space.atlas, space.spacing
    c = atlas.territory_pts[path["territory"]].copy()
    c[0] *= path["side"]
    c = c + rng.normal(0, 6.0, 3)
    r = rng.uniform(6, 18) * np.array([1.0, rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.2)])
    r = np.maximum(r, 1.6 * spacing)
    m = blob(atlas, rng, c, r, lobulation=0.3)
    if rng.random() < 0.5:  # satellite lesion
        blob(atlas, rng, c + rng.normal(0, 10, 3), np.maximum(r * 0.5, 1.4 * spacing), 0.3, out=m)
    space.maps["infarct"] = m * np.clip((atlas.gm + atlas.wm) * 1.5, 0, 1)


# --- meningioma and tumor (masses) -------------------------------------------------------------


def _draw_meningioma(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    atlas = space.atlas
    i = int(rng.integers(len(atlas.surface_pts)))
    p, n = atlas.surface_pts[i], atlas.surface_nrm[i]
    rad = max(rng.uniform(9, 22), 2.2 * space.spacing)
    c = p + n * 0.25 * rad
    r = rad * np.array([1.0, rng.uniform(0.75, 1.1), rng.uniform(0.75, 1.1)])
    m = blob(atlas, rng, c, r, lobulation=0.12)
    # extra-axial: flattened against the inner table (cannot cross the skull)
    m *= np.clip((3.0 - atlas.hull_dist) / 1.5, 0, 1)
    space.maps["mening"] = m
    space.xt = push(space.xt, c.astype(np.float32), rad, 0.7)


def _draw_tumor(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    atlas = space.atlas
    if len(atlas.wm_pts):
        c = atlas.wm_pts[int(rng.integers(len(atlas.wm_pts)))] + rng.normal(0, 5, 3)
    else:
        c = np.array([30.0, 0.0, 20.0])
    rad = max(rng.uniform(7, 18), 2.0 * space.spacing)
    space.maps["tumor"] = blob(atlas, rng, c, rad * rng.uniform(0.8, 1.2, 3), lobulation=0.25)
    space.maps["edema"] = blob(atlas, rng, c, rad * 2.0 * rng.uniform(0.8, 1.2, 3), lobulation=0.35) * atlas.wm
    space.xt = push(space.xt, c.astype(np.float32), rad, 0.5)


# --- trigeminal nerves and vessels -------------------------------------------------------------


def _trigeminal_nerves(space: LesionSpace, rng: np.random.Generator, r_n: float):
    """Both nerves (lateral mid-pons -> Meckel's cave) and their cisterns; the root ends per side."""
    atlas = space.atlas
    nerve = np.zeros(atlas.shape, np.float32)
    cistern = np.zeros(atlas.shape, np.float32)
    ends = {}
    for s in (-1.0, 1.0):
        a = np.array([s * 13.0, -24.0, -32.0]) + rng.normal(0, 1.0, 3)
        b = np.array([s * 25.0, -8.0, -28.0]) + rng.normal(0, 1.5, 3)
        mid = (a + b) / 2 + np.array([s * 2.0, 0, 2.0])
        pts = np.array([a, mid, b])
        tube(atlas, pts, r_n, out=nerve)
        tube(atlas, pts, r_n + 3.0 + space.spacing, out=cistern)
        ends[s] = (a, b)
    return nerve, cistern, ends


def _trigeminal_vessels(space: LesionSpace, rng: np.random.Generator, ends: dict, side: float,
                        r_n: float) -> np.ndarray:
    """The basilar artery, a superior cerebellar artery loop onto the nerve of `side`, and half the
    time an anterior inferior cerebellar artery towards the other nerve."""
    atlas = space.atlas
    r_v = max(1.5, 0.8 * r_n)
    vessel = np.zeros(atlas.shape, np.float32)
    basilar = np.array([[0, -14.0, -48.0], [0, -15.0, -36.0], [0, -16.0, -24.0]]) + rng.normal(0, 1.0, 3)
    tube(atlas, basilar, r_v, out=vessel)
    a, b = ends[side]
    t = np.linspace(0, 2 * np.pi, 24)
    loop_c = a + (b - a) * rng.uniform(0.15, 0.4) + np.array([0, 0, r_n + r_v + 1.0])
    rl = rng.uniform(3.0, 5.0) + r_v
    loop = loop_c + np.stack([side * rl * np.cos(t) * 0.8, rl * np.sin(t), 0.5 * rl * np.cos(t)], 1)
    sca = np.vstack([basilar[-1], (basilar[-1] + loop[0]) / 2 + np.array([0, 0, 2.0]), loop])
    tube(atlas, sca, r_v, out=vessel)
    if rng.random() < 0.5:  # AICA on the other side
        a2, b2 = ends[-side]
        aica = np.array([basilar[0] + [0, 0, 4], a2 + [0, 2, -r_n - r_v - 2],
                         a2 + (b2 - a2) * 0.5 + [0, 0, -r_n - r_v]])
        tube(atlas, aica, r_v, out=vessel)
    return vessel


def _draw_trigeminal(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    r_n = max(2.0, 1.25 * space.spacing * space.src.aniso)
    side = float(rng.choice([-1.0, 1.0]))  # the side of the compressing loop
    nerve, cistern, ends = _trigeminal_nerves(space, rng, r_n)
    vessel = _trigeminal_vessels(space, rng, ends, side, r_n)
    space.maps["nerve"], space.maps["vessel"], space.maps["cistern"] = nerve, vessel, cistern


# --- polymicrogyria ----------------------------------------------------------------------------


def _draw_pmg(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    """Three random plane waves, windowed around a lateral cortical point, fold the tissue coordinates."""
    atlas, spacing = space.atlas, space.spacing
    c = atlas.cortex_pts[int(rng.integers(len(atlas.cortex_pts)))]
    rad = max(rng.uniform(12, 22), 4 * spacing)
    lam = max(5.0, 2.6 * spacing)
    d = space.xa - c[:, None].astype(np.float32)
    win = np.exp(-((d ** 2).sum(0)) / (2 * (rad / 1.5) ** 2)).astype(np.float32)
    amp = max(2.0, 0.9 * spacing)
    for _ in range(3):
        kv = rng.normal(size=3)
        kv /= np.linalg.norm(kv)
        ph = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (kv @ d) / lam + ph).astype(np.float32)
        ax = rng.normal(size=3)
        ax /= np.linalg.norm(ax)
        space.xt += (amp * win * wave)[None] * ax[:, None].astype(np.float32)
    space.fold_window = win


def refold_cortex(gm: np.ndarray, wm: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over-folded, thickened cortex: WM eroded under the patch, GM takes its place."""
    wm_new = wm * (1 - 0.5 * window * np.clip(1 - wm, 0, 1) * 2)
    return gm + (wm - wm_new), wm_new


# --- white-matter hyperintensities -------------------------------------------------------------


def _plan_heavy_wmh(rng: np.random.Generator) -> dict:
    return {"wmh": float(rng.uniform(1.0, 1.6))}


def draw_wmh(space: LesionSpace, rng: np.random.Generator, load: float) -> None:
    """Small periventricular and deep white-matter blobs, more and larger with `load`."""
    atlas = space.atlas
    m = np.zeros(atlas.shape, np.float32)
    n_blobs = int(round(load * rng.uniform(10, 30)))
    if len(atlas.wm_pts):
        for _ in range(n_blobs):
            c = atlas.wm_pts[int(rng.integers(len(atlas.wm_pts)))] + rng.normal(0, 3, 3)
            radii = np.maximum(rng.uniform(2, 4 + 6 * min(load, 1.5), 3), 1.2 * space.spacing)
            blob(atlas, rng, c, radii, 0.2, out=m)
    space.maps["wmh"] = m * np.clip(atlas.wm * 1.3, 0, 1)


# --- the registry ------------------------------------------------------------------------------

LESIONS: dict[str, Lesion] = {
    "none": Lesion(_no_params, _nothing),
    "infarct": Lesion(_plan_infarct, _draw_infarct, makes_mask=True),
    "meningioma": Lesion(_no_params, _draw_meningioma, displaces_tissue=True, in_place_maps=("mening",),
                         makes_mask=True),
    "tumor": Lesion(_no_params, _draw_tumor, displaces_tissue=True, in_place_maps=("tumor", "edema")),
    "trigeminal": Lesion(_no_params, _draw_trigeminal, keeps_skull_base=True, makes_mask=True),
    "pmg": Lesion(_no_params, _draw_pmg, displaces_tissue=True),
    # the heavy load its plan sets is drawn by draw_wmh, like the lighter age-related loads
    "wmh": Lesion(_plan_heavy_wmh, _nothing),
}


def plan_lesion(kind: str, rng: np.random.Generator) -> dict:
    """The lesion description a case carries: {"kind": kind, **parameters drawn now}."""
    return {"kind": kind, **LESIONS[kind].plan(rng)}


def draw_lesions(space: LesionSpace, rng: np.random.Generator, path: dict) -> None:
    """The case's lesion, then its white-matter hyperintensities (path["wmh"]: their load, if any)."""
    LESIONS[path.get("kind", "none")].draw(space, rng, path)
    load = path.get("wmh", 0)
    if load > 0:
        draw_wmh(space, rng, load)


# --- painting onto the case's grid --------------------------------------------------------------


def _replace(P: dict[str, np.ndarray], name: str, m: np.ndarray) -> None:
    """Class `name` takes the fraction `m` of every voxel from the classes there."""
    for k in P:
        P[k] = P[k] * (1 - m)
    P[name] = P.get(name, 0) + m


def _paint_infarct(P, maps, gm, wm, hd, seg) -> None:
    _replace(P, "infarct", maps["infarct"] * np.clip(gm + wm, 0, 1))
    seg[P["infarct"] > 0.4] = 1


def _paint_wmh(P, maps, gm, wm, hd, seg) -> None:
    _replace(P, "wmh", maps["wmh"] * np.clip(wm * 1.5, 0, 1))


def _paint_edema(P, maps, gm, wm, hd, seg) -> None:
    _replace(P, "edema", maps["edema"] * np.clip(wm * 1.5, 0, 1))


def _paint_tumor(P, maps, gm, wm, hd, seg) -> None:
    _replace(P, "tumor", maps["tumor"])


def _paint_meningioma(P, maps, gm, wm, hd, seg) -> None:
    _replace(P, "mening", maps["mening"])
    seg[P["mening"] > 0.5] = 1


def _paint_trigeminal(P, maps, gm, wm, hd, seg) -> None:
    cist = maps["cistern"] * (hd < 2.0)
    # the cisterns: CSF around the nerves and vessels
    P["csf"] = P["csf"] + cist * np.clip(gm + wm, 0, 1)
    P["gm"], P["wm"] = P["gm"] * (1 - cist), P["wm"] * (1 - cist)
    _replace(P, "nerve", maps["nerve"])
    _replace(P, "vessel", maps["vessel"])
    seg[P["nerve"] > 0.5] = 1
    seg[P["vessel"] > 0.5] = 2


# In this order: a later lesion covers an earlier one. Keyed by the map that marks the lesion.
PAINTERS = {"infarct": _paint_infarct, "wmh": _paint_wmh, "edema": _paint_edema, "tumor": _paint_tumor,
            "mening": _paint_meningioma, "nerve": _paint_trigeminal}


def paint_lesions(P: dict[str, np.ndarray], maps: dict[str, np.ndarray], gm: np.ndarray, wm: np.ndarray,
                  hd: np.ndarray) -> np.ndarray:
    """Paint the sampled lesion maps into the class maps `P` (in place); returns the label mask.

    `gm` and `wm` are the aged tissue before any lesion, `hd` the distance to the brain hull."""
    seg = np.zeros(gm.shape, np.uint8)
    for name, paint in PAINTERS.items():
        if name in maps:
            paint(P, maps, gm, wm, hd, seg)
    return seg
