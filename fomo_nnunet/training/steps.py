"""The training step of nnU-Net's trainer around a trainer's own loss.

nnUNetTrainer.train_step computes the segmentation loss, then: mixed precision on CUDA only (autocast
and a GradScaler; on a CPU autocast is slow and on MPS unsupported), gradient-norm clipping at 12,
one optimiser step. `AmpStep` keeps that sequence and asks the trainer for the loss of a batch
(`training_loss`), with the clipping norm as a class attribute.
"""
from __future__ import annotations

import contextlib

import torch

from fomo_nnunet.models.transfer import unwrap

__all__ = ["AmpStep", "unwrap"]


class AmpStep:
    """Mixin: `train_step` as nnU-Net's, with `training_loss(batch)` from the trainer."""

    grad_clip: float = 12.0  # max gradient norm (nnU-Net's)

    def training_loss(self, batch: dict) -> torch.Tensor:
        """The loss of one training batch, computed under `self.autocast()` where it should be."""
        raise NotImplementedError

    def autocast(self):
        """Mixed precision on CUDA, nothing elsewhere (as nnU-Net's train and validation steps)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=True)

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.training_loss(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}
