"""Acquisition: one sequence of one case, as the source's scanner would record it.

`render` goes step by step, on the work grid and then on the acquired grid:
  1. contrast: sum over classes of (class probability x the source's class mean), so partial
     volume comes from the soft class maps (contrast.py has the means)
  2. veins darken SWI and T2*; a fine multiplicative texture
  3. scanner blur, then thick slices along one axis (`out_grid`: Gaussian slice profile, resampled)
  4. a smooth multiplicative bias field (as corrected by N3: Sled, Zijdenbos and Evans, IEEE TMI 1998)
  5. Rician noise: the magnitude of the signal plus complex Gaussian noise (Gudbjartsson and Patz,
     "The Rician distribution of noisy MRI data", MRM 1995)
  6. skull stripping (the case's brain mask), then the scanner's gain
Random contrast, resolution, bias and noise per scanner follow the idea of training on synthetic
scans of any contrast and resolution (Billot et al., "SynthSeg", Medical Image Analysis 2023).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .contrast import BRIGHT_VESSEL_SEQS, SEQ_GAIN, SEQ_MEANS, VEIN_DARKENING
from .geometry import Grid, smooth_field
from .sources import Source


def out_grid(grid: Grid, src: Source) -> tuple[Grid, Callable]:
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


def class_means(src: Source, seq: str, vessel_bright: bool | None) -> dict[str, float]:
    """The source's class means for `seq`; `vessel_bright` (if not None) overrides the source's vessels."""
    mu = src.contrast(seq)
    if vessel_bright is not None and seq in BRIGHT_VESSEL_SEQS:
        mu["vessel"] = 1.5 * mu["csf"] if vessel_bright else SEQ_MEANS[seq]["vessel"]
    return mu


def _mix_classes(P: dict[str, np.ndarray], mu: dict[str, float]) -> np.ndarray:
    img = np.zeros(next(iter(P.values())).shape, np.float32)
    for k, p in P.items():
        img += np.float32(mu[k]) * p
    return img


def _rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n1 = rng.normal(0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2 ** 2)


def render(P: dict[str, np.ndarray], extra: dict, seq: str, src: Source, rng: np.random.Generator,
           resample, strip: bool, vessel_bright: bool | None = None) -> np.ndarray:
    """One sequence (a rendering key of contrast.SEQ_MEANS) on the acquired grid, float32."""
    from scipy import ndimage as ndi

    mu = class_means(src, seq, vessel_bright)
    img = _mix_classes(P, mu)
    if seq in VEIN_DARKENING:
        img *= 1 - VEIN_DARKENING[seq] * extra["veins"]
    tex = ndi.gaussian_filter(rng.normal(size=img.shape).astype(np.float32), 0.7)
    img *= 1 + src.texture * tex / (tex.std() + 1e-6)
    if src.blur > 0.05:
        img = ndi.gaussian_filter(img, src.blur)
    img = resample(img, 1)
    is_adc = seq == "adc"  # a computed map: no bias field, half the noise, absolute units
    bias = np.exp(src.bias * smooth_field(rng, img.shape, 3)) if not is_adc else 1.0
    sigma = src.noise * (mu["wm"] if not is_adc else 1.0) * (0.5 if is_adc else 1.0)
    img = _rician(img * bias, sigma, rng)
    if strip:
        img = img * resample(extra["brain"].astype(np.uint8), 0)
    gain = src.gain * SEQ_GAIN.get(seq, 1.0)
    return (img * np.float32(gain)).astype(np.float32)
