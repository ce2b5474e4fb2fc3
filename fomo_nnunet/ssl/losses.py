"""Losses for self-supervised pretraining: masked reconstruction, and VICReg on pooled features."""
from __future__ import annotations

from typing import NamedTuple

import torch

RECONSTRUCTION_KINDS = ("mse", "l1")
# which voxels the reconstruction loss counts
LOSS_REGIONS = {"masked_brain": "masked voxels inside the brain mask",
                "masked": "masked voxels",
                "all": "every voxel of the patch, masked or visible"}


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               brain_mask: torch.Tensor | None = None, kind: str = "mse",
                               region: str = "masked_brain") -> torch.Tensor:
    """Mean squared (kind="mse") or absolute (kind="l1") error over the voxels that `region` names.

    `pred` and `target` are (B, C, ...); `mask` (True = masked) and `brain_mask` are (B, 1, ...).
    `region` (LOSS_REGIONS): "masked_brain" counts masked voxels inside the brain (`brain_mask > 0`, so
    nnU-Net's -1 outside the cropped nonzero region counts as outside; without a brain mask, every masked
    voxel); "masked" every masked voxel; "all" every voxel of the patch, as a plain mean over the whole
    tensor (the AMAES recipe's reconstruction loss). Every counted voxel of the batch weighs the same,
    whatever sample it is in. With no counted voxel the loss is 0, still attached to `pred`'s graph.
    """
    if kind not in RECONSTRUCTION_KINDS:
        raise ValueError(f"kind must be one of {RECONSTRUCTION_KINDS}, got {kind!r}")
    if region not in LOSS_REGIONS:
        raise ValueError(f"region must be one of {', '.join(LOSS_REGIONS)}, got {region!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape {expected}, got {tuple(mask.shape)}")
    weight = mask.bool() if region != "all" else torch.ones_like(mask, dtype=torch.bool)
    if brain_mask is not None:
        if tuple(brain_mask.shape) != expected:
            raise ValueError(f"brain_mask must have shape {expected}, got {tuple(brain_mask.shape)}")
        if region == "masked_brain":
            weight = weight & (brain_mask > 0)

    # Reduce in float32: under autocast pred may be half precision and its sums overflow.
    diff = pred.float() - target.float()
    error = diff.square() if kind == "mse" else diff.abs()
    per_voxel = error.sum(dim=1, keepdim=True)
    count = weight.sum() * pred.shape[1]
    return torch.where(weight, per_voxel, 0.0).sum() / count.clamp(min=1)


class VICRegTerms(NamedTuple):
    """The weighted VICReg loss and its three unweighted terms (both branches summed), for logging."""

    loss: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def _variance_term(z: torch.Tensor, target_std: float, eps: float) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)  # unbiased variance over the batch, per dimension
    return torch.relu(target_std - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.square().sum() / d


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, target_std: float = 1.0, eps: float = 1e-4) -> VICRegTerms:
    """VICReg (Bardes, Ponce & LeCun, ICLR 2022) on two batches of embeddings (N, D) of the same N samples.

    - invariance s(Z, Z'): mean squared difference of the paired embeddings (over samples and dimensions);
    - variance v(Z): mean over dimensions of relu(target_std - sqrt(Var(z_j) + eps)), per branch;
    - covariance c(Z): sum of the squared off-diagonal entries of the covariance matrix, / D, per branch;
    loss = invariance_weight * s(Z, Z') + variance_weight * (v(Z) + v(Z')) + covariance_weight * (c(Z) + c(Z')),
    the paper's formula with its default coefficients 25 / 25 / 1. Computed in float32. N >= 2 (a variance).
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D) with the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"VICReg needs at least 2 samples per batch (a variance over the batch), got {z1.shape[0]}")
    with torch.autocast(z1.device.type, enabled=False):  # the covariance matmul in float32 under AMP too
        return _vicreg_terms(z1.float(), z2.float(), invariance_weight, variance_weight, covariance_weight,
                             target_std, eps)


def _vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float, variance_weight: float,
                  covariance_weight: float, target_std: float, eps: float) -> VICRegTerms:
    invariance = torch.nn.functional.mse_loss(z1, z2)
    variance = _variance_term(z1, target_std, eps) + _variance_term(z2, target_std, eps)
    covariance = _covariance_term(z1) + _covariance_term(z2)
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return VICRegTerms(loss, invariance, variance, covariance)


def vicreg_hinge_floor(dims: int, batch: int, variance_weight: float = 25.0, covariance_weight: float = 1.0,
                       target_std: float = 1.0) -> float:
    """The lowest variance hinge (both branches summed, 0 to 2 x target_std) that VICReg's own loss can prefer for
    `dims`-dimensional features at `batch` samples per branch, whatever the network.

    N samples centred have rank at most N - 1, so a covariance matrix with every variance s^2 has a squared
    Frobenius norm of at least (D s^2)^2 / (N - 1) (the squared trace over the rank): its off-diagonal part, the
    covariance term, is at least s^4 (D / (N - 1) - 1). Per branch the loss is then at least
    variance_weight (target_std - s) + covariance_weight s^4 (D / (N - 1) - 1), smallest at
    s = (variance_weight / (4 covariance_weight (D / (N - 1) - 1)))^(1/3). With the paper's batch of 2048
    and 8192 dimensions the floor is 0; with a batch of 2 and 512 dimensions it is 1.5 of 2: the
    covariance term, not the network, keeps the features from spreading. Raise the batch or narrow the
    features (an expander's last width) until the floor is well below 1.
    """
    if dims < 1 or batch < 2:
        raise ValueError(f"need dims >= 1 and a batch of at least 2 per branch, got dims={dims}, batch={batch}")
    excess = dims / (batch - 1) - 1
    if excess <= 0 or covariance_weight <= 0:
        return 0.0
    s = (variance_weight / (4 * covariance_weight * excess)) ** (1 / 3)
    return 2.0 * max(0.0, target_std - s)


VICREG_TERM_NAMES = ("loss", "invariance", "variance", "covariance")
# the variance hinge of the pooled encoder features themselves, before an expander (with none: `variance`)
FEATURE_VARIANCE = "feature_variance"


def variance_hinge(z1: torch.Tensor, z2: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term of two branches (N, D), summed, without a gradient: 0 when every dimension's batch
    standard deviation is at least `target_std`, 2 x target_std when both branches are constant."""
    with torch.no_grad(), torch.autocast(z1.device.type, enabled=False):
        return _variance_term(z1.float(), target_std, eps) + _variance_term(z2.float(), target_std, eps)


def vicreg_history(per_epoch: dict[str, list[float]], target_std: float = 1.0) -> dict:
    """The per-epoch means of the VICReg terms as JSON (checkpoint metadata), so a study can see collapse.

    `per_epoch` maps each of VICREG_TERM_NAMES to its per-epoch means (one value per epoch trained); the
    lists are cut to the epochs all four have. `variance` is the hinge summed over both branches: 0 when
    every pooled dimension has a batch standard deviation >= `target_std`, `variance_max` (2 x target_std)
    when the features are constant over the batch (collapsed). `feature_variance` (FEATURE_VARIANCE), when
    given, is the same hinge on the pooled encoder features before an expander.
    """
    missing = [name for name in VICREG_TERM_NAMES if name not in per_epoch]
    if missing:
        raise ValueError(f"per_epoch lacks the VICReg terms {', '.join(missing)}")
    names = VICREG_TERM_NAMES + ((FEATURE_VARIANCE,) if FEATURE_VARIANCE in per_epoch else ())
    epochs = min(len(per_epoch[name]) for name in names)
    history = {name: [float(v) for v in per_epoch[name][:epochs]] for name in names}
    return {"per_epoch": history, "epochs": epochs, "variance_max": 2.0 * float(target_std)}
