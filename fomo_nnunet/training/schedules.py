"""The one learning-rate schedule of every fomo trainer (the budget is the recipe's: fomo_nnunet.training.recipes).

`EpochSchedule` is a per-epoch factor on each parameter group's base learning rate: a linear warmup,
then either nnU-Net's polynomial decay (`(1 - epoch / epochs) ** 0.9`, nnunetv2's PolyLRScheduler)
or a half cosine to `final_factor` (SGDR, Loshchilov & Hutter 2017, as MAE pretraining uses it, He et
al. 2022). Groups flagged `pretrained` may start late: their factor stays 0 for `fresh_only_epochs`
while the fresh layers learn, and their warmup begins after that. `EpochLR` applies it the way nnU-Net
steps its scheduler: `step(epoch)` once at the start of every epoch (nnUNetTrainer.on_train_epoch_start).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer

POLY = "poly"
COSINE = "cosine"
DECAYS = (POLY, COSINE)


def every_nth_epoch(epoch: int, every: int, num_epochs: int) -> bool:
    """Whether 0-based `epoch` is an `every`-th one or the last of `num_epochs` (when to draw, save, ...)."""
    return (epoch + 1) % every == 0 or epoch >= num_epochs - 1


@dataclass(frozen=True)
class EpochSchedule:
    """Learning-rate factor of an epoch: warmup, then `decay` (POLY or COSINE); pretrained groups may start late."""

    num_epochs: int
    warmup_epochs: int = 0
    decay: str = POLY
    exponent: float = 0.9          # POLY
    final_factor: float = 0.0      # COSINE: the factor at the last epoch
    fresh_only_epochs: int = 0     # pretrained groups held at 0 while only the fresh ones learn

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay {self.decay!r} (choose from {', '.join(DECAYS)})")

    def factor(self, epoch: int, pretrained: bool = False) -> float:
        start = self.fresh_only_epochs if pretrained else 0
        if epoch < start:
            return 0.0
        if epoch < start + self.warmup_epochs:
            return (epoch - start + 1) / (self.warmup_epochs + 1)
        if self.decay == POLY:
            return (1 - epoch / self.num_epochs) ** self.exponent
        decay_start = start + self.warmup_epochs
        progress = min(1.0, (epoch - decay_start) / max(1, self.num_epochs - decay_start))
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class EpochLR:
    """nnU-Net-style scheduler: `step(epoch)` sets each group's lr to its base lr (`initial_lr`) times the
    schedule's factor; a group's `pretrained` flag (default False) selects its start."""

    def __init__(self, optimizer: Optimizer, schedule: EpochSchedule):
        self.optimizer = optimizer
        self.schedule = schedule
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def step(self, epoch: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self.schedule.factor(epoch, g.get("pretrained", False))
