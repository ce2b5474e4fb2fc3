"""The template every head is made from: the MNI152 2009 atlas shipped inside nilearn.

nilearn includes the ICBM 2009 symmetric template with grey- and white-matter probability maps
(Fonov et al., "Unbiased average age-appropriate atlases for pediatric studies", NeuroImage 2011;
https://nilearn.github.io, load_mni152_template), so nothing is downloaded. From them this module
derives, once per process and resolution, the maps a case is built from: GM, WM and CSF
probabilities, the ventricles (deep CSF), the signed distance to the brain hull (where skull and
scalp go), a venous tree for SWI/T2*, and sample points for lesions (upper brain surface with its
normals, deep white matter, lateral cortex, rough vascular territories).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Rough vascular territories (MNI mm, right hemisphere; the x sign picks the side).
TERRITORIES = {
    "mca": np.array([42.0, -10.0, 15.0]), "aca": np.array([8.0, 20.0, 40.0]),
    "pca": np.array([20.0, -75.0, 5.0]), "lenticulostriate": np.array([24.0, 2.0, 5.0])}


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
    wm_pts: np.ndarray        # (n, 3) deep white-matter points
    cortex_pts: np.ndarray    # (n, 3) lateral cortical points
    territory_pts: dict = field(default_factory=dict)   # name -> world point (right hemisphere)


_ATLAS: dict[int, Atlas] = {}


def atlas_resolution(spacing: float) -> int:
    return 1 if spacing < 1.5 else 2


def get_atlas(resolution: int = 2) -> Atlas:
    """The template maps at 1 or 2 mm, built on first use and kept for the process."""
    if resolution not in _ATLAS:
        _ATLAS[resolution] = _build_atlas(resolution)
    return _ATLAS[resolution]


# --- loading -----------------------------------------------------------------------------------

_TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("gm", "wm", "t1")}


def _nilearn_data_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" if spec else None


def _halve(a: np.ndarray) -> np.ndarray:
    """2x2x2 block average (zero-padded to even sizes): 1 mm -> 2 mm."""
    a = np.pad(a, [(0, s % 2) for s in a.shape])
    return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5))


def _read_template_files(root: Path, resolution: int):
    """GM, WM, T1 in [0, 1] and the affine, read with nibabel from nilearn's data folder."""
    import nibabel as nib

    imgs = {k: nib.load(str(root / n)) for k, n in _TEMPLATE_FILES.items()}
    affine = np.asarray(imgs["gm"].affine, dtype=np.float64)
    arrs = {}
    for k, im in imgs.items():
        a = np.asarray(im.dataobj, dtype=np.float32)
        arrs[k] = a / max(float(a.max()), 1e-6) if k != "t1" else a / 255.0
    if resolution == 2:
        arrs = {k: _halve(a) for k, a in arrs.items()}
        affine = affine.copy()
        affine[:3, 3] += 0.5 * np.diag(affine)[:3]
        affine[:3, :3] *= 2
    return arrs["gm"], arrs["wm"], arrs["t1"], affine


def _load_with_nilearn(resolution: int):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=resolution)
        gm = np.asarray(gm_img.dataobj, dtype=np.float32)
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
        t1 = np.asarray(datasets.load_mni152_template(resolution=resolution).dataobj, dtype=np.float32)
    return gm, wm, t1, np.asarray(gm_img.affine, dtype=np.float64)


def _load_templates(resolution: int):
    """MNI152 2009 GM, WM and T1 (all in [0, 1]) and the affine, from the files inside nilearn.

    The 1 mm files are read with nibabel and block-averaged for 2 mm, which is much faster than
    nilearn's spline resampling (and avoids importing nilearn.datasets); nilearn's loaders
    (load_mni152_*_template) are the fallback when the files are not where expected.
    """
    root = _nilearn_data_dir()
    if root is not None and all((root / n).is_file() for n in _TEMPLATE_FILES.values()):
        return _read_template_files(root, resolution)
    return _load_with_nilearn(resolution)


# --- derived maps --------------------------------------------------------------------------------


def _tissue_maps(gm, wm, mask, vs):
    """GM, WM and CSF probabilities inside the softened brain mask (summing to at most 1)."""
    from scipy import ndimage as ndi

    gm = np.clip(gm, 0, 1) / max(float(gm.max()), 1e-6)
    wm = np.clip(wm, 0, 1) / max(float(wm.max()), 1e-6)
    soft = ndi.gaussian_filter(mask.astype(np.float32), 1.0 / vs)
    gm, wm = gm * soft, wm * soft
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    csf = np.clip(soft - gm - wm, 0, 1).astype(np.float32)
    return gm, wm, csf


def _hull(mask, vs):
    """The filled, smoothed brain hull and the distances (mm) outside and inside it."""
    from scipy import ndimage as ndi

    hull = ndi.gaussian_filter(mask.astype(np.float32), 3.0 / vs) > 0.45
    hull = ndi.binary_fill_holes(hull)
    d_out = ndi.distance_transform_edt(~hull) * vs
    d_in = ndi.distance_transform_edt(hull) * vs
    return hull, d_out, d_in


def _upper_surface(hull, wmask, vs):
    """Points on the upper convexity of the hull and their outward normals."""
    from scipy import ndimage as ndi

    surf = hull & ~ndi.binary_erosion(hull)
    surf &= wmask[..., 2] > -20
    g = np.stack(np.gradient(ndi.gaussian_filter(hull.astype(np.float32), 2.0 / vs)), -1)
    nrm = -g[surf]
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-8
    return wmask[surf], nrm


def _venous_tree(shape, vs, hull_dist, vent, wmask):
    """Veins: intersection of two zero-level sets of smooth noise, near the surface and ventricles,
    plus the superior sagittal sinus on the midline (one fixed tree shared by all subjects)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(12345)
    n1 = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0 / vs)
    n2 = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0 / vs)
    s1, s2 = n1.std(), n2.std()
    tubes = np.exp(-((n1 / s1) ** 2 + (n2 / s2) ** 2) / 0.02)
    where = np.clip(1 - np.abs(hull_dist + 3) / 6, 0, 1) + vent
    sinus = np.exp(-(wmask[..., 0] / 4.0) ** 2) * np.clip(1 - np.abs(hull_dist - 1.5) / 3, 0, 1)
    return np.clip(tubes * where * 1.5 + sinus, 0, 1).astype(np.float32)


def _build_atlas(resolution: int) -> Atlas:
    gm, wm, t1, affine = _load_templates(resolution)
    mask = t1 > 0.2  # nilearn's load_mni152_brain_mask: template > 0.2
    vs = float(abs(affine[0, 0]))
    gm, wm, csf = _tissue_maps(gm, wm, mask, vs)
    hull, d_out, d_in = _hull(mask, vs)
    hull_dist = (d_out - d_in).astype(np.float32)
    vent = (csf * np.clip((d_in - 14.0) / 6.0, 0, 1)).astype(np.float32)

    world = np.indices(mask.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    wmask = world.reshape(mask.shape + (3,))
    surface_pts, nrm = _upper_surface(hull, wmask, vs)
    wm_pts = wmask[(wm > 0.85) & (d_in > 12)]
    cortex_pts = wmask[(gm > 0.55) & (np.abs(wmask[..., 0]) > 35) & (wmask[..., 2] > -10) & (d_in < 8)]
    veins = _venous_tree(mask.shape, vs, hull_dist, vent, wmask)
    return Atlas(affine=affine, inv=np.linalg.inv(affine), shape=mask.shape, vs=vs, gm=gm.astype(np.float32),
                 wm=wm.astype(np.float32), csf=csf, vent=vent, hull_dist=hull_dist, veins=veins,
                 brain_lo=world[mask.ravel()].min(0), brain_hi=world[mask.ravel()].max(0),
                 surface_pts=surface_pts, surface_nrm=nrm, wm_pts=wm_pts, cortex_pts=cortex_pts,
                 territory_pts=dict(TERRITORIES))
