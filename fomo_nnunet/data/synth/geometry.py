"""Geometry shared by anatomy, lesions and acquisition: grids, rotations, smooth random fields,
trilinear sampling, and the two soft shapes lesions are drawn with (lobulated blobs and tubes).

Everything here is deterministic given its random generator; nothing reads the template itself
(shapes take the template's affine and shape from the atlas passed in).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix, each Euler angle uniform in +-max_deg."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], ctrl: int = 4) -> np.ndarray:
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


def _box_points(atlas, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """World coordinates (n, 3) of the template voxels in the index box [lo, hi)."""
    idx = np.indices(hi - lo).reshape(3, -1).T + lo
    return idx @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]


def _paste_max(out: np.ndarray, lo: np.ndarray, hi: np.ndarray, v: np.ndarray) -> None:
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[sl] = np.maximum(out[sl], v.astype(np.float32))


def blob(atlas, rng: np.random.Generator, center: np.ndarray, radii, lobulation: float = 0.15,
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
    w = _box_points(atlas, lo, hi) - center
    R = rotation(rng, rot_deg)
    q = np.sqrt((((w @ R) / radii) ** 2).sum(1)).reshape(hi - lo)
    if lobulation:
        noise = ndi.gaussian_filter(rng.normal(size=q.shape).astype(np.float32), max(1.0, radii.min() / (2 * atlas.vs)))
        noise /= noise.std() + 1e-6
        q = q * (1 + lobulation * noise)
    _paste_max(out, lo, hi, 1.0 / (1.0 + np.exp((q - 1.0) / 0.07)))
    return out


def tube(atlas, pts: np.ndarray, radius: float, out: np.ndarray | None = None) -> np.ndarray:
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
    d, _ = cKDTree(dense).query(_box_points(atlas, lo, hi))
    _paste_max(out, lo, hi, np.clip((radius + 0.5 * atlas.vs - d) / atlas.vs, 0, 1).reshape(hi - lo))
    return out
