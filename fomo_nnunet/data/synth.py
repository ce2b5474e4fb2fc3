"""FOMO-Synth: embedded synthetic brain MRI in the real FOMO folder layouts.

Everything is made from the MNI152 2009 template and tissue maps that nilearn ships inside its
package (no download). Each subject gets a smooth random deformation and head-size scaling of the
tissue probability maps; pathologies are drawn in template space and deformed with the subject, so
every ground truth (masks, labels, ages) follows from how the case was made. Each "source" behaves
like a scanner/site: contrast tweaks, gain, Rician noise, bias field, resolution (blur and
anisotropic voxels), field of view, skull-stripped or not.

Layouts written (see `generate`):
  OUT/pretrain/PT001_SynthA/sub-01/ses-01/<seq>.nii.gz   FOMO300K (seq in t1w t2w flair dwi adc swi t2s)
  OUT/pretrain/{participants,mri_info}.tsv
  OUT/finetune/task{N}/{train,test}/preprocessed/sub_{i}/ses_1/<stem>.nii.gz   FOMO25
  OUT/finetune/task{N}/{train,test}/labels/sub_{i}/ses_1/{label.txt|seg.nii.gz}
  OUT/finetune/task{N}/{train,test}/participants.tsv
  OUT/previews/*.png, OUT/synth.json

Determinism: every case draws from np.random.default_rng([seed, task, split, case]) (pretraining:
[seed, 0, source, subject]), so the output depends on the seed only, never on the process count.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fomo_nnunet.tasks import TASKS_BY_NUMBER

# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthPreset:
    name: str
    spacing: float                 # isotropic base spacing in mm (sources may coarsen one axis)
    pretrain_sources: int
    pretrain_subjects: int         # per source
    pretrain_max_sessions: int
    pretrain_seq_range: tuple[int, int]   # sequences per session, inclusive
    n_train: int                   # per task
    n_test: int                    # per task
    train_sources: int             # per task
    test_sources: int              # per task (distinct from the train sources)
    previews_per_split: int = 2


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset("tiny", 3.0, 3, 4, 2, (2, 2), 10, 20, 1, 2),
    "small": SynthPreset("small", 2.0, 5, 16, 2, (2, 4), 20, 60, 2, 3),
    "full": SynthPreset("full", 1.0, 12, 45, 2, (2, 4), 30, 200, 2, 4),
}

SPLITS = ("train", "test")
ALL_TASKS = (1, 2, 3, 4, 5, 6, 7)

# Which sources keep the skull, per task, following the organisers' test preprocessing
# (True: skull-stripped, False: head kept, None: the source decides).
TASK_SKULL_STRIP = {1: True, 2: False, 3: True, 4: False, 5: False, 6: None, 7: None}

# Tissue/pathology classes and their mean intensity per sequence (relative units).
CLASSES = ("csf", "xcsf", "gm", "wm", "bone", "marrow", "fat", "infarct", "wmh", "mening",
           "tumor", "edema", "nerve", "vessel")
SEQ_MEANS: dict[str, dict[str, float]] = {
    "t1":    dict(csf=.22, xcsf=.22, gm=.58, wm=.88, bone=.04, marrow=.75, fat=1.0, infarct=.42, wmh=.70,
                  mening=.55, tumor=.45, edema=.55, nerve=.55, vessel=.25),
    "t2":    dict(csf=1.0, xcsf=1.0, gm=.55, wm=.40, bone=.04, marrow=.50, fat=.80, infarct=.85, wmh=.80,
                  mening=.62, tumor=.72, edema=.90, nerve=.30, vessel=.08),
    "flair": dict(csf=.08, xcsf=.08, gm=.75, wm=.55, bone=.04, marrow=.50, fat=.75, infarct=.95, wmh=1.15,
                  mening=1.25, tumor=1.0, edema=1.15, nerve=.40, vessel=.15),
    "dwi":   dict(csf=.15, xcsf=.15, gm=.62, wm=.52, bone=.02, marrow=.10, fat=.08, infarct=1.7, wmh=.58,
                  mening=.80, tumor=.72, edema=.50, nerve=.5, vessel=.1),
    "adc":   dict(csf=3.0, xcsf=3.0, gm=.85, wm=.75, bone=.05, marrow=.30, fat=.10, infarct=.38, wmh=1.05,
                  mening=.80, tumor=1.10, edema=1.40, nerve=.9, vessel=.5),
    "swi":   dict(csf=.90, xcsf=.90, gm=.62, wm=.70, bone=.04, marrow=.30, fat=.60, infarct=.55, wmh=.72,
                  mening=.50, tumor=.55, edema=.75, nerve=.6, vessel=.1),
    "t2s":   dict(csf=1.0, xcsf=1.0, gm=.62, wm=.50, bone=.04, marrow=.35, fat=.55, infarct=.70, wmh=.70,
                  mening=.55, tumor=.65, edema=.80, nerve=.5, vessel=.15),
}
# Veins / blood products darken these sequences multiplicatively.
VEIN_DARKENING = {"swi": 0.75, "t2s": 0.5}
SEQ_GAIN = {"adc": 1000.0}  # ADC in 1e-6 mm^2/s like clinical maps
# FOMO300K name -> our rendering key; finetune stems -> rendering key.
PRETRAIN_RENDER = {"t1w": "t1", "t2w": "t2", "flair": "flair", "dwi": "dwi", "adc": "adc", "swi": "swi",
                   "t2s": "t2s"}
STEM_RENDER = {"t1": "t1", "t2": "t2", "flair": "flair", "dwi_b1000": "dwi", "adc": "adc", "swi": "swi",
               "t2s": "t2s"}
TE_TR = {  # sequence -> (TE ms, TR ms) at 3T; 1.5T tweaks below
    "t1w": (2.5, 2000.0), "t2w": (90.0, 4000.0), "flair": (120.0, 9000.0), "dwi": (70.0, 5000.0),
    "adc": (70.0, 5000.0), "swi": (20.0, 28.0), "t2s": (20.0, 600.0)}

MANUFACTURERS = ("Siemens", "GE", "Philips", "Canon")


def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


# --------------------------------------------------------------------------------------------
# Sources ("scanners")
# --------------------------------------------------------------------------------------------


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
        if seq in ("t2", "t2s") and self.vessel_bright:
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


def pretrain_sources(preset: SynthPreset, seed: int) -> list[Source]:
    return [make_source(seed, 0, i, f"PT{i + 1:03d}_Synth{_letters(i)}") for i in range(preset.pretrain_sources)]


def task_sources(preset: SynthPreset, seed: int, task: int) -> dict[str, list[Source]]:
    """Train and test sources of a task: disjoint, so the test split is out-of-domain."""
    n_tr, n_te = preset.train_sources, preset.test_sources
    mk = lambda j: make_source(seed, task, j, f"Site{task}{_letters(j)}")  # noqa: E731
    return {"train": [mk(j) for j in range(n_tr)], "test": [mk(n_tr + j) for j in range(n_te)]}


# --------------------------------------------------------------------------------------------
# Template ("atlas") and its derived maps, loaded once per process
# --------------------------------------------------------------------------------------------


@dataclass
class Atlas:
    affine: np.ndarray
    inv: np.ndarray
    shape: tuple[int, int, int]
    vs: float
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    vent: np.ndarray          # deep (ventricular) CSF
    hull_dist: np.ndarray     # signed distance to the brain hull in mm (negative inside)
    veins: np.ndarray         # venous tree for SWI/T2*
    brain_lo: np.ndarray      # brain bounding box, world mm
    brain_hi: np.ndarray
    surface_pts: np.ndarray   # (n, 3) world points on the upper brain hull
    surface_nrm: np.ndarray   # (n, 3) outward normals
    wm_pts: np.ndarray        # (n, 3) deep white-matter points (periventricular first)
    cortex_pts: np.ndarray    # (n, 3) lateral cortical points
    territory_pts: dict = field(default_factory=dict)
    _stack: np.ndarray | None = None

    STACK = ("gm", "wm", "csf", "vent", "veins", "hull_dist")

    @property
    def stack(self) -> np.ndarray:
        """The maps of STACK as one (voxels, channels) array, for one gather per corner."""
        if self._stack is None:
            self._stack = np.ascontiguousarray(
                np.stack([getattr(self, k).ravel() for k in self.STACK], 1).astype(np.float32))
        return self._stack

    def world(self, ijk: np.ndarray) -> np.ndarray:
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]


_ATLAS: dict[int, Atlas] = {}


def atlas_resolution(spacing: float) -> int:
    return 1 if spacing < 1.5 else 2


def get_atlas(resolution: int = 2) -> Atlas:
    if resolution not in _ATLAS:
        _ATLAS[resolution] = _build_atlas(resolution)
    return _ATLAS[resolution]


def _load_templates(resolution: int):
    """MNI152 2009 GM, WM and T1 (all in [0, 1]) and the affine, from the files inside nilearn.

    The 1 mm files are read with nibabel and block-averaged for 2 mm, which is much faster than
    nilearn's spline resampling (and avoids importing nilearn.datasets); nilearn's loaders
    (load_mni152_*_template) are the fallback when the files are not where expected.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    names = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("gm", "wm", "t1")}
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" if spec else None
    if root is not None and all((root / n).is_file() for n in names.values()):
        imgs = {k: nib.load(str(root / n)) for k, n in names.items()}
        affine = np.asarray(imgs["gm"].affine, dtype=np.float64)
        arrs = {}
        for k, im in imgs.items():
            a = np.asarray(im.dataobj, dtype=np.float32)
            arrs[k] = a / max(float(a.max()), 1e-6) if k != "t1" else a / 255.0
        if resolution == 2:
            for k, a in arrs.items():
                pad = [(0, s % 2) for s in a.shape]
                a = np.pad(a, pad)
                arrs[k] = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5))
            affine = affine.copy()
            affine[:3, 3] += 0.5 * np.diag(affine)[:3]
            affine[:3, :3] *= 2
        return arrs["gm"], arrs["wm"], arrs["t1"], affine
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=resolution)
        gm = np.asarray(gm_img.dataobj, dtype=np.float32)
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
        t1 = np.asarray(datasets.load_mni152_template(resolution=resolution).dataobj, dtype=np.float32)
    return gm, wm, t1, np.asarray(gm_img.affine, dtype=np.float64)


def _build_atlas(resolution: int) -> Atlas:
    from scipy import ndimage as ndi

    gm, wm, t1, affine = _load_templates(resolution)
    mask = t1 > 0.2  # nilearn's load_mni152_brain_mask: template > 0.2
    vs = float(abs(affine[0, 0]))
    gm = np.clip(gm, 0, 1) / max(float(gm.max()), 1e-6)
    wm = np.clip(wm, 0, 1) / max(float(wm.max()), 1e-6)
    soft = ndi.gaussian_filter(mask.astype(np.float32), 1.0 / vs)
    gm, wm = gm * soft, wm * soft
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(soft - gm - wm, 0, 1).astype(np.float32)

    hull = ndi.gaussian_filter(mask.astype(np.float32), 3.0 / vs) > 0.45
    hull = ndi.binary_fill_holes(hull)
    d_out = ndi.distance_transform_edt(~hull) * vs
    d_in = ndi.distance_transform_edt(hull) * vs
    hull_dist = (d_out - d_in).astype(np.float32)
    vent = (csf * np.clip((d_in - 14.0) / 6.0, 0, 1)).astype(np.float32)

    ijk = np.indices(mask.shape).reshape(3, -1).T
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    wmask = world.reshape(mask.shape + (3,))
    brain_lo, brain_hi = world[mask.ravel()].min(0), world[mask.ravel()].max(0)

    # upper convexity surface with outward normals
    surf = hull & ~ndi.binary_erosion(hull)
    surf &= wmask[..., 2] > -20
    g = np.stack(np.gradient(ndi.gaussian_filter(hull.astype(np.float32), 2.0 / vs)), -1)
    pts_idx = np.argwhere(surf)
    nrm = -g[surf]
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-8
    surface_pts = wmask[surf]

    deep_wm = (wm > 0.85) & (d_in > 12)
    wm_pts = wmask[deep_wm]
    cortex = (gm > 0.55) & (np.abs(wmask[..., 0]) > 35) & (wmask[..., 2] > -10) & (d_in < 8)
    cortex_pts = wmask[cortex]
    del pts_idx

    # venous tree: intersection of two zero-level sets of smooth noise, near the surface and ventricles
    rng = np.random.default_rng(12345)
    n1 = ndi.gaussian_filter(rng.normal(size=mask.shape).astype(np.float32), 3.0 / vs)
    n2 = ndi.gaussian_filter(rng.normal(size=mask.shape).astype(np.float32), 3.0 / vs)
    s1, s2 = n1.std(), n2.std()
    tubes = np.exp(-((n1 / s1) ** 2 + (n2 / s2) ** 2) / 0.02)
    where = np.clip(1 - np.abs(hull_dist + 3) / 6, 0, 1) + vent
    sinus = np.exp(-(wmask[..., 0] / 4.0) ** 2) * np.clip(1 - np.abs(hull_dist - 1.5) / 3, 0, 1)
    veins = np.clip(tubes * where * 1.5 + sinus, 0, 1).astype(np.float32)

    territories = {  # rough vascular territories (MNI mm), per hemisphere sign on x
        "mca": np.array([42.0, -10.0, 15.0]), "aca": np.array([8.0, 20.0, 40.0]),
        "pca": np.array([20.0, -75.0, 5.0]), "lenticulostriate": np.array([24.0, 2.0, 5.0])}
    return Atlas(affine=affine, inv=np.linalg.inv(affine), shape=mask.shape, vs=vs, gm=gm.astype(np.float32),
                 wm=wm.astype(np.float32), csf=csf, vent=vent, hull_dist=hull_dist, veins=veins,
                 brain_lo=brain_lo, brain_hi=brain_hi, surface_pts=surface_pts, surface_nrm=nrm,
                 wm_pts=wm_pts, cortex_pts=cortex_pts, territory_pts=territories)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], ctrl: int = 4) -> np.ndarray:
    """A unit-std low-frequency random field: `ctrl`^3 random control values, separable Gaussian interpolation."""
    coarse = rng.normal(size=(ctrl,) * len(shape)).astype(np.float32)
    ws = []
    for n in shape:
        u = (np.arange(n) + 0.5) / n * ctrl - 0.5
        w = np.exp(-((u[:, None] - np.arange(ctrl)[None]) / 0.8) ** 2)
        ws.append((w / w.sum(1, keepdims=True)).astype(np.float32))
    f = np.einsum("abc,ia->ibc", coarse, ws[0])
    f = np.einsum("ibc,jb->ijc", f, ws[1])
    f = np.einsum("ijc,kc->ijk", f, ws[2])
    return ((f - f.mean()) / (f.std() + 1e-6)).astype(np.float32)


class Trilinear:
    """Trilinear interpolation at fixed points (edge values outside), reused for many maps.

    Same result as map_coordinates(order=1, mode="nearest") but the indices and weights are
    computed once, and a (voxels, channels) stack is gathered in one pass per corner."""

    def __init__(self, ijk: np.ndarray, shape: tuple[int, int, int]):
        n = np.asarray(shape)
        c = np.clip(ijk, 0, (n - 1)[:, None]).astype(np.float32)
        i0 = np.minimum(np.floor(c).astype(np.int64), (n - 2)[:, None])
        f = c - i0
        strides = np.array([shape[1] * shape[2], shape[2], 1], np.int64)
        base = (i0 * strides[:, None]).sum(0)
        self.idx, self.w = [], []
        for dx in (0, 1):
            wx = f[0] if dx else 1 - f[0]
            for dy in (0, 1):
                wy = f[1] if dy else 1 - f[1]
                for dz in (0, 1):
                    wz = f[2] if dz else 1 - f[2]
                    self.idx.append(base + dx * strides[0] + dy * strides[1] + dz)
                    self.w.append((wx * wy * wz).astype(np.float32))

    def __call__(self, flat: np.ndarray) -> np.ndarray:
        """flat: (voxels,) or (voxels, channels) -> (points,) or (points, channels)."""
        out = None
        for i, w in zip(self.idx, self.w):
            v = flat[i]
            v = v * (w[:, None] if v.ndim == 2 else w)
            out = v if out is None else out + v
        return out


def _blob(atlas: Atlas, rng: np.random.Generator, center: np.ndarray, radii, lobulation: float = 0.15,
          out: np.ndarray | None = None, rot_deg: float = 90.0) -> np.ndarray:
    """Add a soft lobulated ellipsoid (world center/radii in mm) into an atlas-space map (max-combined)."""
    from scipy import ndimage as ndi

    out = np.zeros(atlas.shape, np.float32) if out is None else out
    radii = np.asarray(radii, float)
    c_ijk = atlas.inv[:3, :3] @ center + atlas.inv[:3, 3]
    r_vox = radii.max() * 1.6 / atlas.vs + 2
    lo = np.maximum(np.floor(c_ijk - r_vox).astype(int), 0)
    hi = np.minimum(np.ceil(c_ijk + r_vox).astype(int) + 1, atlas.shape)
    if np.any(hi <= lo):
        return out
    idx = np.indices(hi - lo).reshape(3, -1).T + lo
    w = idx @ atlas.affine[:3, :3].T + atlas.affine[:3, 3] - center
    R = _rotation(rng, rot_deg)
    q = np.sqrt((((w @ R) / radii) ** 2).sum(1)).reshape(hi - lo)
    if lobulation:
        noise = ndi.gaussian_filter(rng.normal(size=q.shape).astype(np.float32), max(1.0, radii.min() / (2 * atlas.vs)))
        noise /= noise.std() + 1e-6
        q = q * (1 + lobulation * noise)
    v = 1.0 / (1.0 + np.exp((q - 1.0) / 0.07))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[sl] = np.maximum(out[sl], v.astype(np.float32))
    return out


def _tube(atlas: Atlas, pts: np.ndarray, radius: float, out: np.ndarray | None = None) -> np.ndarray:
    """Add a soft tube of `radius` mm along the polyline `pts` (n, 3 world mm) into an atlas-space map."""
    from scipy.spatial import cKDTree

    out = np.zeros(atlas.shape, np.float32) if out is None else out
    seg = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:]):  # densify to 0.25 mm steps
        n = max(2, int(np.linalg.norm(b - a) / 0.25))
        seg.extend(a + (b - a) * t for t in np.linspace(0, 1, n)[1:])
    dense = np.asarray(seg)
    lo_w, hi_w = dense.min(0) - radius - 2 * atlas.vs, dense.max(0) + radius + 2 * atlas.vs
    lo = np.maximum(np.floor(atlas.inv[:3, :3] @ lo_w + atlas.inv[:3, 3]).astype(int), 0)
    hi = np.minimum(np.ceil(atlas.inv[:3, :3] @ hi_w + atlas.inv[:3, 3]).astype(int) + 1, atlas.shape)
    if np.any(hi <= lo):
        return out
    idx = np.indices(hi - lo).reshape(3, -1).T + lo
    w = idx @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    d, _ = cKDTree(dense).query(w)
    v = np.clip((radius + 0.5 * atlas.vs - d) / atlas.vs, 0, 1).reshape(hi - lo)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[sl] = np.maximum(out[sl], v.astype(np.float32))
    return out


@dataclass
class Grid:
    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        a = np.eye(4)
        a[:3, :3] = np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a


# --------------------------------------------------------------------------------------------
# One case: anatomy + pathology -> class probability maps on a work grid
# --------------------------------------------------------------------------------------------


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


def _push(xa: np.ndarray, center: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Mass effect: sample template tissue from nearer the center, so tissue appears pushed outward."""
    d = xa - center[:, None]
    r = np.sqrt((d ** 2).sum(0)) + 1e-6
    delta = strength * radius * np.exp(-(r / (1.6 * radius)) ** 2)
    f = np.clip(1 - delta / r, 0.0, 1.0)
    return center[:, None] + d * f


def build_case(atlas: Atlas, subj: Subject, rng: np.random.Generator, src: Source, spacing: float,
               strip: bool, path: dict) -> tuple[Grid, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Class probability maps on an isotropic work grid.

    `path` describes the pathology: {"kind": one of none/infarct/meningioma/trigeminal/pmg/wmh/tumor,
    ...parameters}. Returns (work grid, {class: prob map}, {"seg": label map, "veins": map}).
    """
    from scipy import ndimage as ndi

    scale = subj.scale
    # output box: brain box (scaled) plus skull/scalp margin, bottom/front trimmed by the FOV
    margin = 4.0 if strip else 16.0
    lo = atlas.brain_lo * scale - margin
    hi = atlas.brain_hi * scale + margin
    shift = rng.normal(0, 3.0, 3)
    lo, hi = lo + shift, hi + shift
    ext = hi - lo
    trim = src.fov_trim * rng.uniform(0.3, 1.0)
    if path.get("kind") != "trigeminal":
        lo[2] += trim * ext[2]
    shape = tuple(int(np.ceil(e / spacing)) for e in (hi - lo))
    grid = Grid(shape=shape, spacing=np.full(3, spacing), origin=lo)

    # output world -> template world: rotation, scaling, smooth warp
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x = idx * np.float32(spacing) + lo[:, None].astype(np.float32)
    R = _rotation(rng, 4.0)
    xa = (R.T @ (x - shift[:, None])) / scale[:, None]
    wrng = np.random.default_rng(subj.warp_seed)
    for k in range(3):
        xa[k] += subj.warp_amp * _smooth_field(wrng, shape, 4).ravel()
    xa = xa.astype(np.float32)
    del x, idx

    def to_ijk(p):
        return (atlas.inv[:3, :3] @ p + atlas.inv[:3, 3][:, None]).astype(np.float32)

    kind = path.get("kind", "none")
    maps: dict[str, np.ndarray] = {}   # atlas-space pathology maps (sampled with unpushed coords)
    xt = xa.copy()                      # coords for tissue (mass effect applied)
    extra: dict[str, np.ndarray] = {}
    age_g = np.clip((subj.bio_age - 20.0) / 70.0, 0, 1.2)

    # --- pathologies drawn in template space -------------------------------------------------
    if kind == "infarct":
        terr = path["territory"]
        c = atlas.territory_pts[terr].copy()
        c[0] *= path["side"]
        c = c + rng.normal(0, 6.0, 3)
        r = rng.uniform(6, 18) * np.array([1.0, rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.2)])
        r = np.maximum(r, 1.6 * spacing)
        m = _blob(atlas, rng, c, r, lobulation=0.3)
        if rng.random() < 0.5:  # satellite lesion
            _blob(atlas, rng, c + rng.normal(0, 10, 3), np.maximum(r * 0.5, 1.4 * spacing), 0.3, out=m)
        maps["infarct"] = m * np.clip((atlas.gm + atlas.wm) * 1.5, 0, 1)
    elif kind == "meningioma":
        i = int(rng.integers(len(atlas.surface_pts)))
        p, n = atlas.surface_pts[i], atlas.surface_nrm[i]
        rad = max(rng.uniform(9, 22), 2.2 * spacing)
        c = p + n * 0.25 * rad
        r = rad * np.array([1.0, rng.uniform(0.75, 1.1), rng.uniform(0.75, 1.1)])
        m = _blob(atlas, rng, c, r, lobulation=0.12)
        # extra-axial: flattened against the inner table (cannot cross the skull)
        m *= np.clip((3.0 - atlas.hull_dist) / 1.5, 0, 1)
        maps["mening"] = m
        xt = _push(xt, c.astype(np.float32), rad, 0.7)
    elif kind == "tumor":
        if len(atlas.wm_pts):
            c = atlas.wm_pts[int(rng.integers(len(atlas.wm_pts)))] + rng.normal(0, 5, 3)
        else:
            c = np.array([30.0, 0.0, 20.0])
        rad = max(rng.uniform(7, 18), 2.0 * spacing)
        maps["tumor"] = _blob(atlas, rng, c, rad * rng.uniform(0.8, 1.2, 3), lobulation=0.25)
        maps["edema"] = _blob(atlas, rng, c, rad * 2.0 * rng.uniform(0.8, 1.2, 3), lobulation=0.35) * atlas.wm
        xt = _push(xt, c.astype(np.float32), rad, 0.5)
    elif kind == "trigeminal":
        # nerves from the lateral mid-pons to Meckel's cave; vessels: basilar + a loop onto the nerve
        r_n = max(2.0, 1.25 * spacing * src.aniso)
        nerve = np.zeros(atlas.shape, np.float32)
        cist = np.zeros(atlas.shape, np.float32)
        side = float(rng.choice([-1.0, 1.0]))
        rez = {}
        for s in (-1.0, 1.0):
            a = np.array([s * 13.0, -24.0, -32.0]) + rng.normal(0, 1.0, 3)
            b = np.array([s * 25.0, -8.0, -28.0]) + rng.normal(0, 1.5, 3)
            mid = (a + b) / 2 + np.array([s * 2.0, 0, 2.0])
            pts = np.array([a, mid, b])
            _tube(atlas, pts, r_n, out=nerve)
            _tube(atlas, pts, r_n + 3.0 + spacing, out=cist)
            rez[s] = (a, b)
        r_v = max(1.5, 0.8 * r_n)
        vessel = np.zeros(atlas.shape, np.float32)
        basilar = np.array([[0, -14.0, -48.0], [0, -15.0, -36.0], [0, -16.0, -24.0]]) + rng.normal(0, 1.0, 3)
        _tube(atlas, basilar, r_v, out=vessel)
        a, b = rez[side]
        t = np.linspace(0, 2 * np.pi, 24)
        loop_c = a + (b - a) * rng.uniform(0.15, 0.4) + np.array([0, 0, r_n + r_v + 1.0])
        rl = rng.uniform(3.0, 5.0) + r_v
        loop = loop_c + np.stack([side * rl * np.cos(t) * 0.8, rl * np.sin(t), 0.5 * rl * np.cos(t)], 1)
        sca = np.vstack([basilar[-1], (basilar[-1] + loop[0]) / 2 + np.array([0, 0, 2.0]), loop])
        _tube(atlas, sca, r_v, out=vessel)
        if rng.random() < 0.5:  # AICA on the other side
            a2, b2 = rez[-side]
            aica = np.array([basilar[0] + [0, 0, 4], a2 + [0, 2, -r_n - r_v - 2], a2 + (b2 - a2) * 0.5 + [0, 0, -r_n - r_v]])
            _tube(atlas, aica, r_v, out=vessel)
        maps["nerve"], maps["vessel"], maps["cistern"] = nerve, vessel, cist
    elif kind == "pmg":
        c = atlas.cortex_pts[int(rng.integers(len(atlas.cortex_pts)))]
        rad = max(rng.uniform(12, 22), 4 * spacing)
        lam = max(5.0, 2.6 * spacing)
        d = xa - c[:, None].astype(np.float32)
        win = np.exp(-((d ** 2).sum(0)) / (2 * (rad / 1.5) ** 2)).astype(np.float32)
        amp = max(2.0, 0.9 * spacing)
        for _ in range(3):
            kv = rng.normal(size=3)
            kv /= np.linalg.norm(kv)
            ph = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (kv @ d) / lam + ph).astype(np.float32)
            ax = rng.normal(size=3)
            ax /= np.linalg.norm(ax)
            xt += (amp * win * wave)[None] * ax[:, None].astype(np.float32)
        extra["pmg_window"] = win
    if kind in ("wmh",) or path.get("wmh", 0) > 0:
        load = path.get("wmh", 1.0)
        m = np.zeros(atlas.shape, np.float32)
        n_blobs = int(round(load * rng.uniform(10, 30)))
        if len(atlas.wm_pts):
            for _ in range(n_blobs):
                c = atlas.wm_pts[int(rng.integers(len(atlas.wm_pts)))] + rng.normal(0, 3, 3)
                _blob(atlas, rng, c, np.maximum(rng.uniform(2, 4 + 6 * min(load, 1.5), 3), 1.2 * spacing), 0.2, out=m)
        maps["wmh"] = m * np.clip(atlas.wm * 1.3, 0, 1)

    # --- sample ------------------------------------------------------------------------------
    ijk_t = to_ijk(xt)
    ijk_a = to_ijk(xa) if kind in ("meningioma", "tumor", "pmg") else ijk_t
    samp_t = Trilinear(ijk_t, atlas.shape)
    samp_a = Trilinear(ijk_a, atlas.shape) if ijk_a is not ijk_t else samp_t
    gm, wm, csf, vent, veins = (samp_t(getattr(atlas, k).ravel()).reshape(shape)
                                for k in ("gm", "wm", "csf", "vent", "veins"))
    hd = samp_a(atlas.hull_dist.ravel()).reshape(shape)
    path_maps = {k: np.clip((samp_a if k in ("mening", "tumor", "edema") else samp_t)(v.ravel()).reshape(shape), 0, 1)
                 for k, v in maps.items()}
    del samp_t, samp_a
    del ijk_t, ijk_a, xa, xt

    # --- ageing: cortical thinning, ventricle growth -----------------------------------------
    if kind == "pmg":
        win = extra.pop("pmg_window").reshape(shape)
        # over-folded, thickened cortex: WM eroded under the patch, GM takes its place
        wm_new = wm * (1 - 0.5 * win * np.clip(1 - wm, 0, 1) * 2)
        gm = gm + (wm - wm_new)
        wm = wm_new
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

    P: dict[str, np.ndarray] = {"csf": csf, "gm": gm, "wm": wm}

    def replace(name, m):
        for k in P:
            P[k] = P[k] * (1 - m)
        P[name] = P.get(name, 0) + m

    # head shell (un-pushed coordinates: the skull does not move)
    if not strip:
        ramp = lambda a, b, w=1.0: np.clip((hd - a) / w, 0, 1) * np.clip((b - hd) / w, 0, 1)  # noqa: E731
        thick = 1.0 + 0.15 * age_g
        P["xcsf"] = ramp(0.0, 2.5 * thick) * (1 - np.clip(csf + gm + wm, 0, 1))
        P["bone"] = ramp(2.5 * thick, 9.0 * thick) * (1 - 0.7 * ramp(4.0 * thick, 7.0 * thick))
        P["marrow"] = 0.7 * ramp(4.0 * thick, 7.0 * thick)
        P["fat"] = ramp(9.0 * thick, 15.0)
    seg = np.zeros(shape, np.uint8)
    if "infarct" in path_maps:
        replace("infarct", path_maps["infarct"] * np.clip(gm + wm, 0, 1) / max(1e-6, 1.0))
        seg[P["infarct"] > 0.4] = 1
    if "wmh" in path_maps:
        replace("wmh", path_maps["wmh"] * np.clip(wm * 1.5, 0, 1))
    if "edema" in path_maps:
        replace("edema", path_maps["edema"] * np.clip(wm * 1.5, 0, 1))
    if "tumor" in path_maps:
        replace("tumor", path_maps["tumor"])
    if "mening" in path_maps:
        replace("mening", path_maps["mening"])
        seg[P["mening"] > 0.5] = 1
    if "nerve" in path_maps:
        cist = path_maps.pop("cistern") * (hd < 2.0)
        # the cisterns: CSF around the nerves and vessels
        move = cist * np.clip(gm + wm, 0, 1)
        P["csf"] = P["csf"] + move
        P["gm"], P["wm"] = P["gm"] * (1 - cist), P["wm"] * (1 - cist)
        replace("nerve", path_maps["nerve"])
        replace("vessel", path_maps["vessel"])
        seg[P["nerve"] > 0.5] = 1
        seg[P["vessel"] > 0.5] = 2
    extra["seg"] = seg
    extra["veins"] = veins * np.clip(csf + gm + wm, 0, 1)
    brain = sum(P[k] for k in ("csf", "gm", "wm", "infarct", "wmh", "edema", "tumor", "nerve", "vessel") if k in P)
    if "mening" in P and strip:
        brain = brain + P["mening"]
    extra["brain"] = (ndi.gaussian_filter(np.asarray(brain, np.float32), 1.0) > 0.35)
    return grid, P, extra


# --------------------------------------------------------------------------------------------
# Acquisition: render one sequence with the source's scanner properties
# --------------------------------------------------------------------------------------------


def out_grid(grid: Grid, src: Source) -> tuple[Grid, callable]:
    """The acquired grid (thick slices along the source's axis) and a resampler work -> acquired."""
    from scipy import ndimage as ndi

    f = src.aniso
    ax = src.aniso_axis
    if f <= 1.0:
        return grid, lambda v, order=1: v
    n_out = max(2, int(np.floor(grid.shape[ax] / f)))
    shape = list(grid.shape)
    shape[ax] = n_out
    spacing = grid.spacing.copy()
    spacing[ax] *= f
    origin = grid.origin.copy()
    origin[ax] += (f - 1) / 2 * grid.spacing[ax]
    g2 = Grid(shape=tuple(shape), spacing=spacing, origin=origin)
    mat = np.ones(3)
    mat[ax] = f
    off = np.zeros(3)
    off[ax] = (f - 1) / 2

    def resample(v, order=1):
        if order > 0:
            sig = [0.0, 0.0, 0.0]
            sig[ax] = np.sqrt(f ** 2 - 1) / 2.355 * 1.5
            v = ndi.gaussian_filter(v, sig)
        return ndi.affine_transform(v, mat, offset=off, output_shape=tuple(shape), order=order, mode="nearest")

    return g2, resample


def render(P: dict[str, np.ndarray], extra: dict, seq: str, src: Source, rng: np.random.Generator,
           resample, strip: bool, vessel_bright: bool | None = None) -> np.ndarray:
    from scipy import ndimage as ndi

    mu = src.contrast(seq)
    if vessel_bright is not None and seq in ("t2", "t2s"):
        mu["vessel"] = 1.5 * mu["csf"] if vessel_bright else SEQ_MEANS[seq]["vessel"]
    img = np.zeros(next(iter(P.values())).shape, np.float32)
    for k, p in P.items():
        img += np.float32(mu[k]) * p
    if seq in VEIN_DARKENING:
        img *= 1 - VEIN_DARKENING[seq] * extra["veins"]
    shape = img.shape
    tex = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 0.7)
    img *= 1 + src.texture * tex / (tex.std() + 1e-6)
    if src.blur > 0.05:
        img = ndi.gaussian_filter(img, src.blur)
    img = resample(img, 1)
    bias = np.exp(src.bias * _smooth_field(rng, img.shape, 3)) if seq != "adc" else 1.0
    ref = mu["wm"] if seq != "adc" else 1.0
    sigma = src.noise * ref * (0.5 if seq == "adc" else 1.0)
    gain = src.gain * SEQ_GAIN.get(seq, 1.0) / (1.0 if seq == "adc" else 1.0)
    img = img * bias
    n1 = rng.normal(0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, img.shape).astype(np.float32)
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    if strip:
        img = img * resample(extra["brain"].astype(np.uint8), 0)
    return (img * np.float32(gain)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Writing (atomic)
# --------------------------------------------------------------------------------------------


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name[:-7]}.tmp{os.getpid()}.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "n/a")) for c in columns) for r in rows]
    _write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Jobs (top-level functions: spawn-safe)
# --------------------------------------------------------------------------------------------


def _pretrain_job(job: dict) -> dict:
    preset = _preset_of(job)
    seed, si, j = job["seed"], job["source_index"], job["subject_index"]
    src = pretrain_sources(preset, seed)[si]
    atlas = get_atlas(atlas_resolution(preset.spacing))
    rng = np.random.default_rng([seed, 0, si, j])
    sex = str(rng.choice(["F", "M"]))
    age = float(rng.uniform(18, 88))
    subj = make_subject(rng, sex, age)
    hand = "L" if rng.random() < 0.1 else "R"
    r = rng.random()
    group, path = "control", {"kind": "none", "wmh": float(np.clip((age - 45) / 40, 0, 1)) * rng.uniform(0, 1)}
    if r < 0.08:
        group, path = "tumor", {"kind": "tumor"}
    elif r < 0.16:
        group, path = "stroke", {"kind": "infarct", "territory": str(rng.choice(list(atlas.territory_pts))),
                                 "side": float(rng.choice([-1, 1]))}
    elif r < 0.22:
        group, path = "meningioma", {"kind": "meningioma"}
    n_ses = 1 + int(rng.random() < 0.3) * (preset.pretrain_max_sessions - 1)
    lo, hi = preset.pretrain_seq_range
    out = Path(job["out"]) / "pretrain" / src.name / f"sub-{j + 1:02d}"
    parts, infos = [], []
    for s in range(n_ses):
        srng = np.random.default_rng([seed, 0, si, j, s + 1])
        ses_age = age + 1.5 * s
        k = int(srng.integers(lo, hi + 1))
        cand = ["t1w", "t2w", "flair", "dwi", "swi" if srng.random() < 0.5 else "t2s"]
        w = np.array([0.95, 0.6, 0.6, 0.4, 0.3])
        seqs = list(srng.choice(cand, size=min(k, len(cand)), replace=False, p=w / w.sum()))
        if "dwi" in seqs and srng.random() < 0.7:
            seqs.append("adc")
        seqs = [q for q in ("t1w", "t2w", "flair", "dwi", "adc", "swi", "t2s") if q in seqs]
        strip = src.skull_stripped
        grid, P, extra = build_case(atlas, subj, srng, src, preset.spacing, strip, path)
        g2, resample = out_grid(grid, src)
        ses = f"ses-{s + 1:02d}"
        for q in seqs:
            img = render(P, extra, PRETRAIN_RENDER[q], src, srng, resample, strip)
            _save_nifti(out / ses / f"{q}.nii.gz", img, g2.affine)
            te, tr = TE_TR[q]
            if src.field_strength < 2:
                te, tr = te * 1.1, tr * 1.05
            infos.append(dict(dataset=src.name, participant_id=f"sub-{j + 1:02d}", session_id=ses, sequence=q,
                              field_strength=src.field_strength, manufacturer=src.manufacturer,
                              TE=round(te, 1), TR=round(tr, 1)))
        parts.append(dict(dataset=src.name, participant_id=f"sub-{j + 1:02d}", session_id=ses, sex=sex,
                          age=round(ses_age, 1), handedness=hand, group=group))
    return {"kind": "pretrain", "participants": parts, "mri_info": infos, "n_scans": len(infos)}


def plan_task_cases(preset: SynthPreset, seed: int, task: int, split: str) -> list[dict]:
    """Deterministic case table of a task split: source, sex, age and target of every case."""
    s_i = SPLITS.index(split)
    n = preset.n_train if split == "train" else preset.n_test
    srcs = task_sources(preset, seed, task)[split]
    rng = np.random.default_rng([seed, task, s_i, 10**6])
    perm = rng.permutation(n)
    cases = []
    for i in range(n):
        c = {"task": task, "split": split, "index": i, "source_index": i % len(srcs),
             "source": srcs[i % len(srcs)].name, "sex": "F" if rng.random() < 0.5 else "M",
             "age": round(float(rng.uniform(30, 85)), 1)}
        if task == 1:
            c["label"] = int(perm[i] < round(0.6 * n))
            c["age"] = round(float(rng.uniform(45, 90)), 1)
        elif task == 2:
            c["sex"] = "F" if rng.random() < 0.67 else "M"
        elif task == 3:
            c["age"] = round(float(20 + 70 * (perm[i] + rng.uniform(0.05, 0.95)) / n), 1)
            c["label"] = c["age"]
        elif task == 5:
            c["label"] = int(perm[i] < round(0.5 * n))
            c["age"] = round(float(rng.uniform(5, 60)), 1)
        elif task in (6, 7):
            c["label"] = int(perm[i] % 3)
            c["sex"] = "F" if perm[i] % 2 == 0 else "M"  # (class, sex) cycles through all 6 pairs
        cases.append(c)
    return cases


def _task_job(job: dict) -> dict:
    preset = _preset_of(job)
    seed, case = job["seed"], job["case"]
    task, split, i = case["task"], case["split"], case["index"]
    s_i = SPLITS.index(split)
    src = task_sources(preset, seed, task)[split][case["source_index"]]
    atlas = get_atlas(atlas_resolution(preset.spacing))
    rng = np.random.default_rng([seed, task, s_i, i])
    subj = make_subject(rng, case["sex"], case["age"])
    strip = TASK_SKULL_STRIP[task]
    strip = src.skull_stripped if strip is None else strip
    wmh_age = float(np.clip((case["age"] - 50) / 40, 0, 1)) * rng.uniform(0.0, 0.6)
    path: dict = {"kind": "none", "wmh": wmh_age}
    label = case.get("label")
    if task == 1:
        stems = ["flair", "dwi_b1000", "adc", "swi" if rng.random() < 0.5 else "t2s"]
        if label:
            path = {"kind": "infarct", "territory": str(rng.choice(list(atlas.territory_pts))),
                    "side": float(rng.choice([-1, 1])), "wmh": wmh_age}
    elif task == 2:
        stems = ["flair", "dwi_b1000", "swi" if rng.random() < 0.5 else "t2s"]
        path = {"kind": "meningioma", "wmh": wmh_age}
    elif task == 3:
        stems = ["t1"]
        path = {"kind": "none", "wmh": float(np.clip((subj.bio_age - 35) / 50, 0, 1.3)) * rng.uniform(0.5, 1.2)}
    elif task == 4:
        stems = ["t2"]
        path = {"kind": "trigeminal", "wmh": wmh_age}
        src = Source(**{**asdict(src), "aniso": min(src.aniso, 1.0)})  # high-resolution T2 (CISS-like)
    elif task == 5:
        stems = ["t1"]
        path = {"kind": "pmg" if label else "none"}
    else:
        stems = [str(rng.choice(["t1", "t2", "flair"]))]
        if label == 1:
            path = {"kind": "wmh", "wmh": float(rng.uniform(1.0, 1.6))}
        elif label == 2:
            path = {"kind": "tumor", "wmh": wmh_age}
    grid, P, extra = build_case(atlas, subj, rng, src, preset.spacing, strip, path)
    g2, resample = out_grid(grid, src)
    base = Path(job["out"]) / "finetune" / f"task{task}" / split
    sub = f"sub_{i + 1}"
    files = []
    vb = bool(rng.random() < 0.3) if task == 4 else None
    for stem in stems:
        img = render(P, extra, STEM_RENDER[stem], src, rng, resample, strip, vessel_bright=vb)
        p = base / "preprocessed" / sub / "ses_1" / f"{stem}.nii.gz"
        _save_nifti(p, img, g2.affine)
        files.append(str(p))
    lab_dir = base / "labels" / sub / "ses_1"
    seg_path = None
    if task in (1, 2, 4):
        seg = resample(extra["seg"], 0).astype(np.uint8)
        if task == 1 and not label:
            seg[:] = 0
        seg_path = lab_dir / "seg.nii.gz"
        _save_nifti(seg_path, seg, g2.affine)
    if task != 2 and task != 4:
        txt = f"{label:.1f}" if task == 3 else f"{int(label)}"
        _write_text(lab_dir / "label.txt", txt + "\n")
    row = dict(participant_id=sub, session_id="ses_1", sex=case["sex"], age=case["age"], source=src.name)
    return {"kind": "task", "task": task, "split": split, "index": i, "row": row, "files": files,
            "seg": str(seg_path) if seg_path else None, "label": label}


def _run_job(job: dict) -> dict:
    return _pretrain_job(job) if job["kind"] == "pretrain" else _task_job(job)


# --------------------------------------------------------------------------------------------
# Previews
# --------------------------------------------------------------------------------------------


def make_previews(out: Path, results: list[dict], pretrain: list[dict], per_split: int = 2) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    prev = out / "previews"
    prev.mkdir(parents=True, exist_ok=True)
    written = []
    by_task: dict[int, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["task"], SPLITS.index(r["split"]), r["index"])):
        by_task.setdefault(r["task"], [])
        if sum(1 for x in by_task[r["task"]] if x["split"] == r["split"]) < per_split:
            by_task[r["task"]].append(r)
    for task, rows in by_task.items():
        ncol = 3 + max(len(r["files"]) for r in rows) - 1
        fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.3 * len(rows)), squeeze=False)
        for ri, r in enumerate(rows):
            vols = [np.asarray(nib.load(f).dataobj, np.float32) for f in r["files"]]
            seg = np.asarray(nib.load(r["seg"]).dataobj) if r["seg"] else None
            if seg is not None and seg.any():
                c = np.round(np.argwhere(seg > 0).mean(0)).astype(int)
            else:
                c = np.array(vols[0].shape) // 2
            panels = [(vols[0], a) for a in (2, 1, 0)] + [(v, 2) for v in vols[1:]]
            for ci, ax in enumerate(axes[ri]):
                ax.axis("off")
                if ci >= len(panels):
                    continue
                v, a = panels[ci]
                sl = np.take(v, c[a], axis=a).T
                vmax = np.percentile(v, 99.5) or 1
                ax.imshow(sl, cmap="gray", origin="lower", vmin=0, vmax=vmax)
                if seg is not None:
                    s = np.take(seg, c[a], axis=a).T
                    if s.any():
                        ax.contour(s, levels=[0.5, 1.5], colors=["yellow", "red"], linewidths=0.7)
                name = Path(r["files"][0 if ci < 3 else ci - 2]).name.replace(".nii.gz", "")
                title = f"{r['split']} {r['row']['participant_id']} {name}" if ci == 0 else name
                if ci == 0 and r["label"] is not None:
                    title += f" y={r['label']}"
                ax.set_title(title, fontsize=6)
        fig.suptitle(f"task{task} {TASKS_BY_NUMBER[task].name}", fontsize=8)
        fig.tight_layout()
        p = prev / f"task{task}_{TASKS_BY_NUMBER[task].name}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(str(p))
    scans = []
    for rec in pretrain:
        for info in rec["mri_info"]:
            scans.append(out / "pretrain" / info["dataset"] / info["participant_id"] / info["session_id"]
                         / f"{info['sequence']}.nii.gz")
    scans = scans[:: max(1, len(scans) // 12)][:12]
    if scans:
        n = len(scans)
        fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(2.2 * ((n + 1) // 2), 4.6), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, s in zip(axes.ravel(), scans):
            v = np.asarray(nib.load(s).dataobj, np.float32)
            ax.imshow(v[:, :, v.shape[2] // 2].T, cmap="gray", origin="lower", vmin=0,
                      vmax=np.percentile(v, 99.5) or 1)
            ax.set_title(f"{s.parts[-4]}\n{s.parts[-3]}/{s.parts[-2]}/{s.name[:-7]}", fontsize=6)
        fig.tight_layout()
        p = prev / "pretrain.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(str(p))
    return written


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def generate(out: str | Path, preset: str = "tiny", seed: int = 0, num_processes: int = 2,
             tasks: tuple[int, ...] | list[int] | None = None, pretrain: bool = True,
             n_train: int | None = None, n_test: int | None = None, previews: bool = True,
             progress: bool = True, n_pretrain_sources: int | None = None,
             n_pretrain_subjects: int | None = None) -> dict:
    """Write FOMO-Synth under `out`; returns the summary also written to OUT/synth.json.

    `n_train`/`n_test` override the preset's per-task sizes (for fast tests); `n_pretrain_sources` and
    `n_pretrain_subjects` (per source) the size of the pretraining corpus (e.g. a few dozen 1 mm scans)."""
    t0 = time.time()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    overrides = {k: v for k, v in (("n_train", n_train), ("n_test", n_test), ("pretrain_sources", n_pretrain_sources),
                                   ("pretrain_subjects", n_pretrain_subjects)) if v is not None}
    bad = [f"{k}={v}" for k, v in overrides.items() if v < (0 if k.startswith("n_") else 1)]
    if bad:
        raise ValueError(f"sizes out of range: {', '.join(bad)} (cases >= 0, sources and subjects >= 1)")
    if overrides:
        p = SynthPreset(**{**asdict(p), **overrides})
    tasks = tuple(sorted(set(tasks))) if tasks else ALL_TASKS
    for t in tasks:
        if t not in TASKS_BY_NUMBER:
            raise ValueError(f"unknown task {t}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    jobs: list[dict] = []
    if pretrain:
        for si in range(p.pretrain_sources):
            for j in range(p.pretrain_subjects):
                jobs.append({"kind": "pretrain", "preset": preset, "seed": seed, "out": str(out),
                             "source_index": si, "subject_index": j, "sizes": asdict(p)})
    case_tables = {(t, s): plan_task_cases(p, seed, t, s) for t in tasks for s in SPLITS}
    for (t, s), cases in case_tables.items():
        for c in cases:
            jobs.append({"kind": "task", "preset": preset, "seed": seed, "out": str(out), "case": c,
                         "sizes": asdict(p)})
    # big jobs first for better load balance
    jobs.sort(key=lambda j: 0 if j["kind"] == "pretrain" else 1)

    get_atlas(atlas_resolution(p.spacing))  # once in the parent; forked workers inherit it
    results = _map_jobs(jobs, num_processes, progress)

    pre = [r for r in results if r["kind"] == "pretrain"]
    tsk = [r for r in results if r["kind"] == "task"]
    summary: dict = {"preset": preset, "seed": seed, "spacing_mm": p.spacing, "sizes": asdict(p),
                     "tasks": list(tasks), "sources": {}, "counts": {}}
    if pretrain:
        parts = [row for r in sorted(pre, key=lambda r: (r["participants"][0]["dataset"], r["participants"][0]["participant_id"])) for row in r["participants"]]
        infos = [row for r in sorted(pre, key=lambda r: (r["participants"][0]["dataset"], r["participants"][0]["participant_id"])) for row in r["mri_info"]]
        _write_tsv(out / "pretrain" / "participants.tsv",
                   ["dataset", "participant_id", "session_id", "sex", "age", "handedness", "group"], parts)
        _write_tsv(out / "pretrain" / "mri_info.tsv",
                   ["dataset", "participant_id", "session_id", "sequence", "field_strength", "manufacturer",
                    "TE", "TR"], infos)
        summary["sources"]["pretrain"] = [asdict(s) for s in pretrain_sources(p, seed)]
        summary["counts"]["pretrain"] = {"subjects": len(pre), "sessions": len(parts), "scans": len(infos)}
    for t in tasks:
        ts = task_sources(p, seed, t)
        summary["sources"][f"task{t}"] = {s: [asdict(x) for x in ts[s]] for s in SPLITS}
        counts = {}
        for s in SPLITS:
            rows = sorted((r for r in tsk if r["task"] == t and r["split"] == s), key=lambda r: r["index"])
            _write_tsv(out / "finetune" / f"task{t}" / s / "participants.tsv",
                       ["participant_id", "session_id", "sex", "age", "source"], [r["row"] for r in rows])
            c = {"cases": len(rows)}
            if TASKS_BY_NUMBER[t].kind in ("classification", "embedding"):
                labs = [int(r["label"]) for r in rows]
                c["per_class"] = {str(k): labs.count(k) for k in sorted(set(labs))}
            counts[s] = c
        summary["counts"][f"task{t}"] = counts
    if previews:
        summary["previews"] = [str(Path(x).relative_to(out)) for x in
                               make_previews(out, tsk, pre, p.previews_per_split)]
    summary["seconds"] = round(time.time() - t0, 1)
    _write_text(out / "synth.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _preset_of(job: dict) -> SynthPreset:
    d = dict(job["sizes"])
    d["pretrain_seq_range"] = tuple(d["pretrain_seq_range"])
    return SynthPreset(**d)


def _map_jobs(jobs: list[dict], num_processes: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="case", disable=not progress)
    results = []
    if num_processes <= 1:
        for j in jobs:
            results.append(_run_job(j))
            bar.update(1)
    else:
        import multiprocessing as mp

        with mp.Pool(num_processes, initializer=_init_worker) as pool:
            for r in pool.imap_unordered(_run_job, jobs, chunksize=1):
                results.append(r)
                bar.update(1)
    bar.close()
    return results


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
