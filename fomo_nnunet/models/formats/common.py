"""What every foreign-format reader shares: the errors, a recognised network, a setting and its source,
and small readers of tensor layouts."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fomo_nnunet.plans.presets import conv_block_kwargs
from fomo_nnunet.models.transfer import CheckpointError


class UnknownArchitectureError(CheckpointError):
    """The checkpoint's tensors are not a network layout this importer knows."""


class InexactArchitectureError(CheckpointError):
    """The organisers' network has parts no target network reproduces exactly."""


# source name and tensor -> (the value to write, how it was changed); for layouts whose weights must be
# rearranged to compute the same function in the target network
Adapter = Callable[[str, torch.Tensor], tuple[torch.Tensor, str]]


@dataclass
class Recognised:
    """A foreign network understood from its tensors, and where each tensor goes."""

    format: str
    architecture: str
    network_class: str
    network_kwargs: dict[str, Any]
    num_input_channels: int
    target_of: Callable[[str], str | None]   # source name -> target name (None: not mapped)
    decoder_prefixes: tuple[str, ...]
    decoder_mapped: bool
    decoder_reason: str                       # why the decoder is left out (when it is)
    exactness: list[str]
    assumptions: list[str] = field(default_factory=list)
    left_out_reasons: dict[str, str] = field(default_factory=dict)  # name prefix -> reason
    encoder_prefixes: tuple[str, ...] = ("encoder.",)         # source tensors that must all find a place
    target_encoder_prefixes: tuple[str, ...] = ("encoder.",)  # target tensors that must all be filled
    adapt: Adapter | None = None
    num_outputs: int | None = None            # output channels of the source's output layer, where known
    patch_multiple: list[int] | None = None   # the patch must be a multiple of this on every axis


@dataclass
class Setting:
    value: Any
    source: str


def cubic_kernel(name: str, w: torch.Tensor) -> int:
    k = tuple(w.shape[2:])
    if w.ndim != 5 or len(set(k)) != 1 or k[0] % 2 == 0:
        raise InexactArchitectureError(f"{name} has kernel {k}: only 3-D cubic odd kernels are understood")
    return int(k[0])


def count(tensors: Mapping[str, torch.Tensor], pattern: str, start: int = 0) -> int:
    """How many consecutive numbers from `start` fill `pattern` with a name present in `tensors`."""
    n = 0
    while pattern.format(n + start) in tensors:
        n += 1
    return n


def conv_kwargs(n_stages: int, kernel: int, stride: int, bias: bool) -> dict[str, Any]:
    return {"n_stages": n_stages, "kernel_sizes": [[kernel] * 3 for _ in range(n_stages)],
            "strides": [[1, 1, 1]] + [[stride] * 3 for _ in range(n_stages - 1)], **conv_block_kwargs(bias)}


def require_affine_norm(tensors: Mapping[str, torch.Tensor], norm_weight: str) -> None:
    if norm_weight not in tensors:
        raise InexactArchitectureError(
            f"no {norm_weight!r}: the organisers' instance norms are affine; a network without them (or with "
            f"another norm) is not a layout this importer can reproduce exactly")


def cubic_patch(value: Any) -> list[int] | None:
    """A recorded patch size as three ints, or None where it is not one."""
    if isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(p, int | float) for p in value):
        return [int(p) for p in value]
    return None


def residual_encoder(t: Mapping[str, torch.Tensor], stem: str, stem_norm: str
                     ) -> tuple[torch.Tensor, int, list[int], list[int]]:
    """A residual encoder's stem weight, kernel, widths and blocks per stage (`encoder.stages.S.blocks.B`,
    the names gardening-tools and dynamic-network-architectures share)."""
    w = t[stem]
    kernel = cubic_kernel(stem, w)
    require_affine_norm(t, stem_norm)
    n_stages = count(t, "encoder.stages.{}.blocks.0.conv1.conv.weight")
    blocks = [count(t, f"encoder.stages.{s}.blocks.{{}}.conv1.conv.weight") for s in range(n_stages)]
    features = [int(t[f"encoder.stages.{s}.blocks.0.conv1.conv.weight"].shape[0]) for s in range(n_stages)]
    if not features or features[0] != w.shape[0]:
        raise InexactArchitectureError(f"stem width {w.shape[0]} differs from stage 0's {features[:1]}: "
                                       f"dynamic-network-architectures' stem has the first stage's width")
    return w, kernel, features, blocks
