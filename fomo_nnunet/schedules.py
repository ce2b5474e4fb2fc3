"""Learning-rate schedules stepped the way nnU-Net steps them: `scheduler.step(epoch)` per epoch."""
from __future__ import annotations

import math

from torch.optim import Optimizer


def warmup_cosine_factor(epoch: int, num_epochs: int, warmup_epochs: int, final_factor: float = 0.0) -> float:
    """Linear warmup from 1/(warmup+1) to 1 over `warmup_epochs`, then cosine decay to `final_factor`."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(1, num_epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineLR:
    """Per-epoch warmup then cosine; each param group keeps its own base lr (`initial_lr` key)."""

    def __init__(self, optimizer: Optimizer, num_epochs: int, warmup_epochs: int, final_factor: float = 0.0):
        self.optimizer = optimizer
        self.num_epochs = num_epochs
        self.warmup_epochs = warmup_epochs
        self.final_factor = final_factor
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def step(self, epoch: int) -> None:
        f = warmup_cosine_factor(epoch, self.num_epochs, self.warmup_epochs, self.final_factor)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
