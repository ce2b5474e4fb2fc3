"""The training step's speed settings as class attributes: precision, torch.compile, memory layout.

`StepSettings` goes first in a trainer's bases and works around nnU-Net's own `nnUNetTrainer` as well as
around the fomo trainers (`AmpStep`), so the campaign (fomo_nnunet.benchmarks.campaign) times nnU-Net's trainer and
ours with the same settings:

- `autocast_dtype`: "float16" (nnU-Net's mixed precision on CUDA, with its GradScaler) or "bfloat16"
  (autocast to bf16 and no GradScaler: bf16 has float32's exponent range). An enclosing
  `torch.autocast(dtype=...)` sets the dtype that nnU-Net's `autocast(device, enabled=True)` inside the
  step picks up, so nnU-Net's step runs unchanged. On a CPU nnU-Net runs float32; bfloat16 there
  autocasts the CPU step (slow, but the numbers are bf16's).
- `compile_network`: None keeps nnU-Net's choice (compiled on CUDA unless nnUNet_compile says no), True or
  False decide (True on a CPU too: nnU-Net refuses that for 2-D networks only).
- `channels_last`: the network's weights and each batch in the channels-last 3-D layout (NDHWC), which
  cuDNN's tensor-core convolutions read without a transpose.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from fomo_nnunet.models.transfer import unwrap

PRECISIONS = ("float16", "bfloat16")


@dataclass(frozen=True)
class Settings:
    """One combination of the step's speed settings (what a campaign row names)."""

    autocast_dtype: str = "float16"
    compile_network: bool | None = None
    channels_last: bool = False

    def __post_init__(self):
        check_settings(self.autocast_dtype, self.compile_network, self.channels_last)

    @property
    def label(self) -> str:
        parts = ["bf16" if self.autocast_dtype == "bfloat16" else "fp16"]
        parts.append({None: "default compile", True: "compiled", False: "eager"}[self.compile_network])
        if self.channels_last:
            parts.append("channels-last")
        return " ".join(parts)


def check_settings(autocast_dtype, compile_network, channels_last) -> None:
    if autocast_dtype not in PRECISIONS:
        raise ValueError(f"autocast_dtype must be one of {', '.join(PRECISIONS)}, got {autocast_dtype!r}")
    if compile_network not in (None, True, False):
        raise ValueError(f"compile_network must be None (nnU-Net's choice), True or False, got {compile_network!r}")
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}")


def step_precision(device: torch.device, autocast_dtype: str) -> str:
    """What the step actually computes in: nnU-Net autocasts on CUDA only."""
    if autocast_dtype == "bfloat16":
        return "bfloat16 autocast"
    return "float16 autocast + GradScaler" if device.type == "cuda" else "float32 (nnU-Net: no autocast on CPU)"


def outer_autocast(device: torch.device, autocast_dtype: str):
    """The context around a whole step: bf16 autocast, or nothing (nnU-Net's own fp16 autocast inside)."""
    if autocast_dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_step_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


class StepSettings:
    """Mixin (first in the bases): the step's speed settings as class attributes (see the module)."""

    autocast_dtype: str = "float16"
    compile_network: bool | None = None
    channels_last: bool = False

    def _do_i_compile(self) -> bool:
        if self.compile_network is None:
            return super()._do_i_compile()
        return bool(self.compile_network) and self.device.type != "mps"

    def configure_optimizers(self):
        check_settings(self.autocast_dtype, self.compile_network, self.channels_last)
        if self.channels_last:  # in place, before the optimiser holds the parameters and before DDP wraps them
            unwrap(self.network).to(memory_format=torch.channels_last_3d)
        if self.autocast_dtype == "bfloat16":
            self.grad_scaler = None
        return super().configure_optimizers()

    def _in_step_layout(self, batch: dict) -> dict:
        if not self.channels_last:
            return batch
        return {**batch, "data": to_step_layout(batch["data"], True)}

    def train_step(self, batch: dict) -> dict:
        with outer_autocast(self.device, self.autocast_dtype):
            return super().train_step(self._in_step_layout(batch))

    def validation_step(self, batch: dict) -> dict:
        with outer_autocast(self.device, self.autocast_dtype):
            return super().validation_step(self._in_step_layout(batch))
