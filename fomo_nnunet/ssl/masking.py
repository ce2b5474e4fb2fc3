"""Block masks for masked image modelling, and applying them to a batch.

A patch is tiled by cubes of `block_size` voxels (edge blocks cropped to the patch), and a fixed
number of blocks is masked in every sample, so each sample sees the same mask ratio up to the
rounding to whole blocks.
"""
from __future__ import annotations

import math
import numbers
import operator

import torch


def _as_triple(block_size: int | tuple[int, ...]) -> tuple[int, int, int]:
    try:
        sizes = (operator.index(block_size),) * 3 if not hasattr(block_size, "__len__") \
            else tuple(operator.index(b) for b in block_size)
    except TypeError:
        sizes = ()
    if len(sizes) != 3 or any(s < 1 for s in sizes):
        raise ValueError(f"block_size must be a positive int or three positive ints, got {block_size!r}")
    return sizes  # type: ignore[return-value]


def masked_block_count(shape: tuple[int, int, int], block_size: int | tuple[int, ...],
                       mask_ratio: float) -> tuple[int, int]:
    """(masked blocks per sample, blocks per sample) for a patch `shape` tiled by `block_size`."""
    blocks = _as_triple(block_size)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be three positive ints (X, Y, Z), got {shape!r}")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must lie strictly between 0 and 1, got {mask_ratio!r}")
    n_blocks = math.prod(math.ceil(int(s) / b) for s, b in zip(shape, blocks))
    n_masked = round(mask_ratio * n_blocks)
    if not 0 < n_masked < n_blocks:
        raise ValueError(
            f"mask_ratio={mask_ratio} with block_size={block_size!r} on a patch of {tuple(shape)} masks "
            f"{n_masked} of {n_blocks} blocks; at least one block must be masked and one visible "
            f"(use smaller blocks or a ratio further from 0 and 1)")
    return n_masked, n_blocks


def block_mask(shape: tuple[int, int, int], batch_size: int, block_size: int | tuple[int, ...],
               mask_ratio: float, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """A boolean mask of shape (batch_size, 1, X, Y, Z); True marks a masked voxel.

    Exactly round(mask_ratio * n_blocks) blocks are masked in every sample, chosen independently per
    sample. The random draw happens on the generator's device, so a seeded generator gives the same
    mask whatever `device` the mask is returned on.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    blocks = _as_triple(block_size)
    n_masked, n_blocks = masked_block_count(shape, blocks, mask_ratio)
    grid = [math.ceil(int(s) / b) for s, b in zip(shape, blocks)]

    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, n_blocks, generator=generator, device=noise_device)
    chosen = noise.argsort(dim=1)[:, :n_masked]
    flat = torch.zeros(batch_size, n_blocks, dtype=torch.bool, device=noise.device)
    flat.scatter_(1, chosen, True)

    # Move the small block grid, not the voxel mask, to the target device.
    mask = flat.to(device).view(batch_size, *grid)
    for axis, b in enumerate(blocks, start=1):
        mask = mask.repeat_interleave(b, dim=axis)
    x, y, z = (int(s) for s in shape)
    return mask[:, None, :x, :y, :z].contiguous()


def apply_mask(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Replace masked voxels of `x` (B, C, ...) by 0, or by a learned per-channel token of shape (C,).

    `mask` is boolean, (B, 1, ...) or (B, C, ...). Gradients reach `mask_token` through the masked voxels.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if (mask.ndim != x.ndim or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]
            or mask.shape[1] not in (1, x.shape[1])):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit x of shape {tuple(x.shape)}; "
                         f"expected (B, 1, ...) or (B, C, ...) with the same B and spatial size")
    if mask_token is None:
        return x.masked_fill(mask, 0)
    if mask_token.shape != (x.shape[1],):
        raise ValueError(f"mask_token must have shape ({x.shape[1]},) (one value per channel), "
                         f"got {tuple(mask_token.shape)}")
    token = mask_token.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return torch.where(mask, token, x)
