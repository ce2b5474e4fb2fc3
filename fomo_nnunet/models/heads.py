"""Pooling heads on a U-Net encoder, for classification, regression and embeddings.

The encoders are dynamic_network_architectures' `PlainConvEncoder` and `ResidualEncoder`: built with
`return_skips=True` they return one feature map per stage, shallowest first. The embedding of tasks
6 and 7 is the global average pool of the deepest stage, the FOMO26 organisers' rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def encoder_stage_widths(encoder: nn.Module) -> list[int]:
    """Output channels of each encoder stage, shallowest first (an encoder, or a U-Net holding one)."""
    widths = getattr(encoder, "output_channels", None)
    if widths is None and hasattr(encoder, "encoder"):
        widths = getattr(encoder.encoder, "output_channels", None)
    if widths is None:
        raise TypeError(f"{type(encoder).__name__} has no 'output_channels'; expected a "
                        f"dynamic_network_architectures encoder (PlainConvEncoder, ResidualEncoder)")
    return [int(w) for w in widths]


def global_average_pool(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C)."""
    return features.mean(dim=tuple(range(2, features.ndim)))


def global_max_pool(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C)."""
    return features.amax(dim=tuple(range(2, features.ndim)))


# "avg": the global average (what the embedding uses); "avgmax": average and maximum concatenated, so a
# focal finding (a small infarct, a cortical patch) is not averaged away over the whole brain
POOLINGS = ("avg", "avgmax")


class PoolingHead(nn.Module):
    """Global pool (average, or average and maximum) of chosen encoder stages, concatenated, then dropout
    and a small MLP."""

    def __init__(self, in_features_per_stage: Sequence[int], num_outputs: int, stages: tuple[int, ...] = (-1,),
                 hidden: int = 256, dropout: float = 0.2, pooling: str = "avg") -> None:
        super().__init__()
        n_stages = len(in_features_per_stage)
        if not stages:
            raise ValueError("stages must name at least one encoder stage")
        for s in stages:
            if not -n_stages <= s < n_stages:
                raise ValueError(f"stages {stages} name a stage outside the encoder's {n_stages} stages")
        normalised = tuple(s % n_stages for s in stages)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f"stages {stages} name a stage twice")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
        if hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {hidden}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.stages = normalised
        self.in_features_per_stage = [int(w) for w in in_features_per_stage]
        self.n_stages = n_stages
        self.in_features = sum(int(in_features_per_stage[s]) for s in normalised) * (2 if pooling == "avgmax" else 1)
        # the pooled features are standardised by these before the MLP: identity (0, 1) unless a trainer
        # sets them from training cases (`set_input_statistics`); saved with the weights
        self.register_buffer("input_shift", torch.zeros(self.in_features))
        self.register_buffer("input_scale", torch.ones(self.in_features))
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(self.in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_outputs))

    def pool(self, stage_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, in_features): the pooled chosen stages, concatenated."""
        if len(stage_features) != self.n_stages:
            raise ValueError(f"expected {self.n_stages} stage feature maps, got {len(stage_features)}")
        pools = [global_average_pool] + ([global_max_pool] if self.pooling == "avgmax" else [])
        return torch.cat([pool(stage_features[s]) for s in self.stages for pool in pools], dim=1)

    def forward(self, stage_features: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = (self.pool(stage_features) - self.input_shift) / self.input_scale
        return self.mlp(self.dropout(pooled))

    @torch.no_grad()
    def set_input_statistics(self, pooled: torch.Tensor, floor_fraction: float = 0.01) -> dict:
        """Standardise the head's input by the mean and sd over cases of `pooled` (N, in_features), the
        pooled features of training cases. An sd below `floor_fraction` of the median sd is raised to
        it, so a nearly constant feature is not blown up. Returns a summary for the log."""
        if pooled.ndim != 2 or pooled.shape[1] != self.in_features or pooled.shape[0] < 2:
            raise ValueError(f"need pooled features of shape (N >= 2, {self.in_features}), got {tuple(pooled.shape)}")
        pooled = pooled.double()
        std = pooled.std(0)
        floor = max(float(std.median()) * floor_fraction, 1e-8)
        self.input_shift.copy_(pooled.mean(0))
        self.input_scale.copy_(std.clamp_min(floor))
        return {"cases": int(pooled.shape[0]), "median_sd": float(std.median()), "floored": int((std < floor).sum())}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # weights saved before the standardisation existed load as the identity
        state_dict.setdefault(prefix + "input_shift", torch.zeros_like(self.input_shift))
        state_dict.setdefault(prefix + "input_scale", torch.ones_like(self.input_scale))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class EncoderClassifier(nn.Module):
    """An encoder followed by a `PoolingHead`: (B, C, X, Y, Z) -> (B, num_outputs).

    The encoder is registered as `encoder`, as in nnU-Net's U-Nets, so `transfer.transfer_weights`
    loads a pretrained U-Net's encoder into it by name; the head (`head.*`) always starts fresh.
    """

    def __init__(self, encoder: nn.Module, head: PoolingHead) -> None:
        super().__init__()
        widths = encoder_stage_widths(encoder)
        if widths != head.in_features_per_stage:
            raise ValueError(f"the head expects stage widths {head.in_features_per_stage}, "
                             f"the encoder has {widths}")
        # The head may pool any stage, so the encoder must hand back all of them.
        encoder.return_skips = True
        self.encoder = encoder
        self.head = head

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, deepest width): the global average pool of the deepest stage, without the MLP."""
        return global_average_pool(self.stage_features(x)[-1])
