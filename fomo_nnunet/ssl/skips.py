"""Which encoder skips reach a U-Net's decoder during pretraining, and what its bottleneck holds.

A U-Net reconstructing a masked scan can pass detail around its deepest stage through the skip
connections, so masked reconstruction alone barely shapes the bottleneck, the stage that pooling
heads and embeddings read. `SkipGate` is a forward pre-hook on the decoder (nnU-Net's `UNetDecoder`
takes the list of encoder outputs, the bottleneck last) that

- `mode="all"`: passes every skip unchanged (the hook returns nothing, the call is untouched);
- `mode="none"`: replaces every skip except the bottleneck by zeros, so the decoder reconstructs
  from the bottleneck alone ("skip connections off in pretraining", as the FOMO25 baseline AMAES,
  Munk et al. 2024, arXiv:2408.00640, and the FOMO26 organisers' ResEnc-B pretraining do);
- `mode="drop"`: zeros each skip of each sample with probability `drop_p`, drawn from `generator`;

and, with `capture` on, keeps the global average pool of the bottleneck (B, C) for a loss on it, or of the
encoder `stages` it is given, concatenated shallow to deep (B, C_1 + ... + C_k), passed through an
`expander` module when it has one (VICReg's expander; the raw pools then stay in `features`, detached).

The network's modules and state dict are untouched: a checkpoint loads downstream as before. The
hook runs inside the network's forward, so it works under DDP and torch.compile alike.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SKIP_MODES = ("all", "none", "drop")


def resolve_stages(stages: tuple[int, ...] | str, n_stages: int) -> list[int]:
    """The encoder output indices `stages` names ("all", or indices, negative from the deepest), as sorted
    non-negative indices (shallow to deep) of an encoder with `n_stages` outputs; a ValueError when one does
    not exist or two name the same stage."""
    if stages == "all":
        return list(range(n_stages))
    bad = [i for i in stages if not -n_stages <= i < n_stages]
    if bad:
        raise ValueError(f"vicreg_stages {tuple(stages)!r}: the encoder has {n_stages} stages (indices 0..{n_stages - 1} "
                         f"or -{n_stages}..-1); {bad} do not exist")
    resolved = sorted({i % n_stages for i in stages})
    if len(resolved) != len(stages):
        raise ValueError(f"vicreg_stages {tuple(stages)!r}: names one stage twice for an encoder with {n_stages} stages")
    return resolved


def check_skip_settings(mode: str, drop_p: float) -> None:
    """Raise ValueError naming the allowed values when `mode` or `drop_p` is not usable."""
    if mode not in SKIP_MODES:
        raise ValueError(f"decoder_skips must be one of {', '.join(map(repr, SKIP_MODES))}, got {mode!r}")
    if isinstance(drop_p, bool) or not isinstance(drop_p, (int, float)) or not 0 <= drop_p <= 1 \
            or not math.isfinite(drop_p):
        raise ValueError(f"skip_drop_p must be a number in [0, 1], got {drop_p!r}")


class SkipGate:
    """Forward pre-hook for a U-Net decoder: gates the skips (see the module docstring), captures the bottleneck."""

    def __init__(self, mode: str = "all", drop_p: float = 0.5, generator: torch.Generator | None = None,
                 capture: bool = False, stages: tuple[int, ...] | str = (-1,), expander: nn.Module | None = None):
        check_skip_settings(mode, drop_p)
        self.mode, self.drop_p, self.generator, self.capture = mode, float(drop_p), generator, capture
        self.stages = stages  # which encoder outputs `capture` pools (resolve_stages)
        self.expander = expander
        # the last captured pools before the expander, detached (None without one: the loss sees the pools)
        self.features: torch.Tensor | None = None
        self.pooled: torch.Tensor | None = None
        self._handle = None

    def attach(self, decoder: nn.Module) -> SkipGate:
        """Install on `decoder` (once); returns self."""
        if self._handle is not None:
            raise RuntimeError("this SkipGate is already attached to a decoder")
        self._handle = decoder.register_forward_pre_hook(self)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def take_pooled(self) -> torch.Tensor:
        """The pooled bottleneck (or stages) of the last forward (B, features), then forgotten."""
        if self.pooled is None:
            raise RuntimeError("no bottleneck captured: set capture=True and run the network first")
        pooled, self.pooled = self.pooled, None
        return pooled

    def __call__(self, module: nn.Module, args: tuple):
        skips = list(args[0])
        bottleneck = skips[-1]
        if self.capture:
            chosen = [skips[i] for i in resolve_stages(self.stages, len(skips))]
            pooled = torch.cat([s.mean(dim=tuple(range(2, s.ndim))) for s in chosen], dim=1)
            self.features = None if self.expander is None else pooled.detach()
            self.pooled = pooled if self.expander is None else self.expander(pooled)
        if self.mode == "all":
            return None
        if self.mode == "none":
            gated = [torch.zeros_like(s) for s in skips[:-1]]
        else:
            gated = self._drop(skips[:-1])
        return (gated + [bottleneck], *args[1:])

    def _drop(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.generator is None:
            raise RuntimeError("decoder_skips='drop' needs a seeded generator (SkipGate.generator); none is set")
        batch = skips[0].shape[0]
        draw = torch.rand(batch, len(skips), generator=self.generator, device=self.generator.device)
        keep = (draw >= self.drop_p).to(skips[0].device)
        shape = (batch,) + (1,) * (skips[0].ndim - 1)
        return [torch.where(keep[:, i].view(shape), s, torch.zeros((), dtype=s.dtype, device=s.device))
                for i, s in enumerate(skips)]
