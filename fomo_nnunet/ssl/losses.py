"""Reconstruction losses for masked image modelling."""
from __future__ import annotations

import torch

RECONSTRUCTION_KINDS = ("mse", "l1")


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               brain_mask: torch.Tensor | None = None, kind: str = "mse") -> torch.Tensor:
    """Mean squared (kind="mse") or absolute (kind="l1") error over masked voxels inside the brain.

    `pred` and `target` are (B, C, ...); `mask` (True = masked) and `brain_mask` are (B, 1, ...).
    A voxel is inside the brain where `brain_mask > 0`, so nnU-Net's -1 (outside the cropped
    nonzero region) counts as outside. Every qualifying voxel of the batch weighs the same, whatever
    sample it is in. With no qualifying voxel the loss is 0, still attached to `pred`'s graph.
    """
    if kind not in RECONSTRUCTION_KINDS:
        raise ValueError(f"kind must be one of {RECONSTRUCTION_KINDS}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
    weight = mask.bool()
    if brain_mask is not None:
        if tuple(brain_mask.shape) != expected:
            raise ValueError(f"brain_mask must have shape {expected}, got {tuple(brain_mask.shape)}")
        weight = weight & (brain_mask > 0)

    # Reduce in float32: under autocast pred may be half precision and its sums overflow.
    diff = pred.float() - target.float()
    error = diff.square() if kind == "mse" else diff.abs()
    per_voxel = error.sum(dim=1, keepdim=True)
    count = weight.sum() * pred.shape[1]
    return torch.where(weight, per_voxel, 0.0).sum() / count.clamp(min=1)
