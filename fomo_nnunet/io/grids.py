"""Voxel grids: whether two images share one, what differs when they do not, and resampling onto one.

Conversion (`fomo-nnunet convert`) and the challenge entry (`fomo-nnunet fomo26`) both take a case's first
channel as the reference and resample every other channel onto its grid; both ask `same_grid`, so a pair
of scans is on one grid for both or for neither.

The tolerance, `GRID_ATOL_MM` = 1e-3 mm on every entry of the 4x4 affine (no relative term). Before it was
shared, conversion used 1e-3 mm and the entry 1e-4 mm plus numpy's default relative term (1e-5 of the
entry, so about 1e-3 mm on an origin 100 mm from the isocentre but 1e-4 on the axes): a pair whose
direction cosines differ by 5e-4 was one grid for conversion and resampled by the entry. 1e-3 mm is kept
because it sits between the two scales that matter:
- above rounding: the NIfTI header stores the affine as float32 (sform rows; qform as a float32 quaternion
  and offsets), whose rounding is about 1e-5 mm on a 200 mm origin and 1e-7 on a direction cosine, and
  tools that rebuild an affine from the quaternion or from SimpleITK's direction and origin add errors of
  the same order; the same grid written by two tools stays well inside 1e-3;
- below anything that changes an image: a shift of 1e-3 mm is a thousandth of a 1 mm voxel, so linear
  resampling would move each intensity by at most 0.1% of its difference to the neighbour while costing a
  full interpolation pass, and a note that the grids differ would be noise.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

GRID_ATOL_MM = 1e-3


def same_affine(affine: np.ndarray, other: np.ndarray) -> bool:
    """Two affines equal within GRID_ATOL_MM, entry by entry (also: whether a qform and an sform agree)."""
    return bool(np.allclose(np.asarray(affine, dtype=np.float64), np.asarray(other, dtype=np.float64),
                            rtol=0, atol=GRID_ATOL_MM))


def same_grid(shape: Sequence[int], affine: np.ndarray, ref_shape: Sequence[int], ref_affine: np.ndarray) -> bool:
    """The same voxel shape (first three axes) and the same affine (same_affine)."""
    return tuple(shape[:3]) == tuple(ref_shape[:3]) and same_affine(affine, ref_affine)


def describe_grid_difference(shape: tuple, affine: np.ndarray, ref_shape: tuple, ref_affine: np.ndarray,
                             atol: float = GRID_ATOL_MM) -> str:
    """What differs between two voxel grids, e.g. 'same shape (40, 44, 40), spacing (6, 6, 6) vs (4, 4, 4) mm'."""
    import nibabel as nib

    parts = [f"shape {tuple(shape)} vs {tuple(ref_shape)}" if tuple(shape) != tuple(ref_shape)
             else f"same shape {tuple(shape)}"]
    sp, ref_sp = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(ref_affine[:3, :3], axis=0)
    if not np.allclose(sp, ref_sp, atol=atol):
        parts.append(f"spacing {_fmt(sp)} vs {_fmt(ref_sp)} mm")
    rot, ref_rot = affine[:3, :3] / sp, ref_affine[:3, :3] / ref_sp
    if not np.allclose(rot, ref_rot, atol=atol):
        codes, ref_codes = "".join(nib.aff2axcodes(affine)), "".join(nib.aff2axcodes(ref_affine))
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rot.T @ ref_rot) - 1) / 2))))
        parts.append(f"orientation {codes} vs {ref_codes}" if codes != ref_codes else f"axes rotated by {angle:.2g} deg")
    shift = float(np.linalg.norm(affine[:3, 3] - ref_affine[:3, 3]))
    if shift > atol:
        parts.append(f"origin shifted by {shift:.3g} mm")
    if len(parts) == 1 and tuple(shape) == tuple(ref_shape):
        parts.append("affines differ by less than the tolerance")
    return ", ".join(parts)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def fov_overlap(shape: tuple, affine: np.ndarray, ref_shape: tuple, ref_affine: np.ndarray) -> float:
    """Fraction of the reference grid's box that the other image's field of view covers.

    The other image's corners are mapped into the reference's voxel coordinates and their bounding
    box intersected with the reference box: exact for grids with parallel axes, an upper bound for
    oblique ones (a zero is always right).
    """
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    inv = np.linalg.inv(ref_affine)
    in_ref = world @ inv[:3, :3].T + inv[:3, 3]
    lo = np.maximum(in_ref.min(axis=0), -0.5)
    hi = np.minimum(in_ref.max(axis=0), np.asarray(ref_shape) - 0.5)
    inter = np.prod(np.clip(hi - lo, 0, None))
    return float(inter / np.prod(np.asarray(ref_shape, dtype=float)))


def resample_linear(img, ref_shape: Sequence[int], ref_affine: np.ndarray) -> np.ndarray:
    """The voxels of `img` (a nibabel image) resampled onto the grid (ref_shape, ref_affine) through world
    coordinates: linear interpolation, 0 outside img's field of view, float32."""
    from nibabel.processing import resample_from_to

    out = resample_from_to(img, (tuple(ref_shape[:3]), ref_affine), order=1, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)
