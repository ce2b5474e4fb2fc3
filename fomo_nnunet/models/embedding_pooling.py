"""The embedding's pooling rule: its names and the fomo_metadata key that records it.

Kept apart from fomo_nnunet.models.embedding_stats (which needs torch) so that command-line parsers can list
the choices without importing torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

POOLING_KEY = "embedding_pooling"  # in a checkpoint's fomo_metadata; absent: DEFAULT_POOLING
POOLINGS = ("deepest", "stages")
DEFAULT_POOLING = "deepest"
POOLING_MEANING = {"deepest": "global average pool of the deepest encoder stage",
                   "stages": "global average pool of every encoder stage, concatenated shallow to deep"}


def check_pooling(pooling: object, what: str = "embedding pooling") -> str:
    """`pooling` if it is one of POOLINGS, else a ValueError naming the allowed ones."""
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise ValueError(f"{what} {pooling!r} is not one of {', '.join(repr(p) for p in POOLINGS)} ("
                         + "; ".join(f"{p}: {POOLING_MEANING[p]}" for p in POOLINGS) + ")")
    return pooling


def pooling_of(metadata: Mapping[str, Any] | None, source: str = "the checkpoint") -> str:
    """The embedding pooling a checkpoint's fomo_metadata records (absent: DEFAULT_POOLING)."""
    return check_pooling((metadata or {}).get(POOLING_KEY, DEFAULT_POOLING),
                         f"{source}: fomo_metadata[{POOLING_KEY!r}] =")
