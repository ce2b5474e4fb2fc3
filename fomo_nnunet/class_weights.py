"""Cross-entropy class weights from the label frequencies of a segmentation task's training cases.

Few-shot segmentation targets are often a few dozen voxels in a volume of 10^5 (a trigeminal nerve at
4 mm): an unweighted cross-entropy is then minimised by predicting background everywhere, and a small
network stays there for hundreds of steps. Weighting class c by the square root of its inverse frequency
relative to background, w_c = sqrt(n_background / n_c), sits between no weighting and full
inverse-frequency weighting (which over-segments small structures).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SQRT_INVERSE_FREQUENCY = "sqrt_inverse_frequency"
WEIGHTINGS = (SQRT_INVERSE_FREQUENCY,)


def label_voxel_counts(segmentations: Iterable[np.ndarray], num_classes: int,
                       ignore_label: int | None = None) -> np.ndarray:
    """Voxels per label 0..num_classes-1 over all `segmentations`.

    Negative values (nnU-Net marks voxels outside the nonzero mask with -1) and `ignore_label` are not
    counted; a label outside 0..num_classes-1 is an error, since the weights would not cover it.
    """
    counts = np.zeros(num_classes, np.int64)
    for seg in segmentations:
        values = np.asarray(seg).astype(np.int64, copy=False).ravel()
        values = values[values >= 0]
        if ignore_label is not None:
            values = values[values != ignore_label]
        found = np.bincount(values)
        if len(found) > num_classes:
            raise ValueError(f"label {len(found) - 1} found, but the task has only labels 0..{num_classes - 1}")
        counts[:len(found)] += found
    return counts


def sqrt_inverse_frequency(counts: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """Weights w_0 = 1 (background) and w_c = min(cap, sqrt(n_0 / n_c)) for the other classes.

    A class with no voxels in the counts gets the cap: it is the rarest there is.
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError("need the voxel counts of background and at least one class")
    if counts[0] <= 0:
        raise ValueError("no background voxels counted")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    weights = np.full(len(counts), float(cap))
    present = counts > 0
    weights[present] = np.sqrt(counts[0] / counts[present])
    weights = np.minimum(weights, cap)
    weights[0] = 1.0
    return weights
