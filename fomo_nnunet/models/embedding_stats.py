"""Probe-ready embeddings: the embedding rule and its per-dimension statistics over the pretraining corpus.

The embedding (tasks 6 and 7, `fomo-nnunet embed`) is a global average pool of the encoder over a
centred crop (or zero pad) of a preprocessed scan to the checkpoint's patch (`pooled_embedding`;
fomo_nnunet.challenge.inference.Embedder calls it). Which stages are pooled is the checkpoint's `embedding_pooling`
(fomo_metadata; absent: "deepest"): "deepest" averages the deepest stage (the FOMO26 organisers' rule),
"stages" averages every stage and concatenates them shallow to deep, so that the shallower stages'
features, which a deepest stage ending in normalisation and a nonlinearity may not carry, reach the
probe as well (the stage-wise pooling of a U-Net encoder's skips; cf. the multi-scale features of
Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017). Its dimensions come in whatever scale
the network happened to learn, and the organisers' fomo-lp probe trains SGD heads on the RAW vectors
with one fixed learning-rate sweep (1e-5 .. 0.1; fomo_nnunet.evaluation.probe), so the scale decides which
learning rates work at all. The usual remedy is to standardise each feature with statistics of the
training data, as scikit-learn's `StandardScaler` does
(https://scikit-learn.org/stable/modules/preprocessing.html#standardization-or-mean-removal-and-variance-scaling).
The probe never sees the probing data's statistics here: the mean and standard deviation per dimension
come from the PRETRAINING corpus, are stored in the checkpoint (`fomo_metadata["embedding_stats"]`) and
applied to every vector the checkpoint embeds, so all cases of all tasks are scaled alike.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fomo_nnunet.models.embedding_pooling import (DEFAULT_POOLING, POOLING_KEY, POOLING_MEANING, POOLINGS,  # noqa: F401
                                           check_pooling, pooling_of)
from fomo_nnunet.image_level import crop_or_pad
from fomo_nnunet.io.atomic import replacing
from fomo_nnunet.models.transfer import METADATA_KEY

STATS_KEY = "embedding_stats"  # in a checkpoint's fomo_metadata
WHAT = ("per-dimension mean/std of the embedding (the pooled deepest stage, or every stage pooled: "
        f"fomo_metadata {POOLING_KEY!r}) over the pretraining corpus")
DEFAULT_MAX_CASES = 512
EPS = 1e-6  # apply() divides by max(std, EPS); a dimension with std below it is reported dead


# ---- the embedding rule ------------------------------------------------------------------------
def embedding_length(encoder: torch.nn.Module, pooling: str = DEFAULT_POOLING) -> int:
    """The length of `pooled_embedding(encoder, ..., pooling)`: the deepest stage's width, or the sum of
    every stage's."""
    from fomo_nnunet.models.heads import encoder_stage_widths

    widths = encoder_stage_widths(encoder)
    return widths[-1] if check_pooling(pooling) == "deepest" else sum(widths)


def _stage_average(stage: torch.Tensor) -> torch.Tensor:
    return stage.float().mean(dim=tuple(range(2, stage.ndim)))[0]


def pooled_embedding(encoder: torch.nn.Module, data: np.ndarray, patch_size: Sequence[int],
                     device: torch.device | str = "cpu", pooling: str = DEFAULT_POOLING) -> np.ndarray:
    """A preprocessed scan (C, X, Y, Z) -> the embedding of its centred crop (or zero pad) to `patch_size`:
    1-D float32, `embedding_length(encoder, pooling)` long. "deepest": the global average pool of the
    deepest stage; "stages": that of every stage (the encoder must return them all: return_skips),
    shallow to deep, so that its last block is the "deepest" vector."""
    check_pooling(pooling)
    x = torch.from_numpy(crop_or_pad(np.asarray(data, dtype=np.float32), patch_size)[None]).float().to(device)
    with torch.no_grad():
        out = encoder(x)
    stages = list(out) if isinstance(out, (list, tuple)) else [out]  # return_skips: every stage, deepest last
    if pooling == "stages" and not isinstance(out, (list, tuple)):
        raise ValueError("pooling 'stages' needs an encoder that returns every stage (return_skips = True)")
    if pooling == "deepest":
        pooled = _stage_average(stages[-1])
    else:
        pooled = torch.cat([_stage_average(s) for s in stages])
    vector = pooled.cpu().numpy().astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise ValueError("the embedding is not finite (an image without signal?)")
    return vector


# ---- the statistics ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingStats:
    """Per-dimension mean and (population) standard deviation of embeddings over `n_cases` scans."""

    mean: np.ndarray
    std: np.ndarray
    n_cases: int

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if mean.shape != std.shape or mean.size == 0:
            raise ValueError(f"embedding statistics: mean ({mean.size}) and std ({std.size}) must be equally long, "
                             f"and not empty")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise ValueError("embedding statistics: mean and std must be finite, std >= 0")
        if int(self.n_cases) < 1:
            raise ValueError(f"embedding statistics over {self.n_cases} cases")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "n_cases", int(self.n_cases))

    @property
    def length(self) -> int:
        return int(self.mean.size)

    @property
    def dead(self) -> np.ndarray:
        """Indices of the dimensions that did not vary over the corpus (std < EPS)."""
        return np.flatnonzero(self.std < EPS)

    def apply(self, vector: np.ndarray) -> np.ndarray:
        """(v - mean) / std, as float32; a dimension that did not vary over the corpus (std < EPS) is 0,
        so that a tiny wobble on a new scan is not multiplied a million times."""
        v = np.asarray(vector, dtype=np.float64)
        if v.shape[-1] != self.length:
            raise ValueError(f"an embedding of length {v.shape[-1]} cannot be normalised with statistics of "
                             f"length {self.length}")
        alive = self.std >= EPS
        return np.where(alive, (v - self.mean) / np.where(alive, self.std, 1.0), 0.0).astype(np.float32)

    def summary(self) -> str:
        return (f"embedding statistics over {self.n_cases} cases: median std {np.median(self.std):.4g}, "
                f"{self.dead.size} of {self.length} dimensions dead (std < {EPS:g})")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "n_cases": self.n_cases, "what": WHAT}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingStats:
        missing = [k for k in ("mean", "std", "n_cases") if k not in data]
        if missing:
            raise ValueError(f"embedding statistics lack {missing} (found {sorted(data)})")
        return cls(data["mean"], data["std"], data["n_cases"])

    @classmethod
    def from_vectors(cls, vectors: Sequence[np.ndarray]) -> EmbeddingStats:
        stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
        return cls(stacked.mean(axis=0), stacked.std(axis=0), len(stacked))

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> EmbeddingStats | None:
        """The statistics a loaded checkpoint dict carries, or None (older and imported checkpoints)."""
        stored = (checkpoint.get(METADATA_KEY) or {}).get(STATS_KEY)
        if stored is None:
            return None
        try:
            return cls.from_dict(stored)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {METADATA_KEY}[{STATS_KEY!r}] is unusable: {e}") from e


def compute_embedding_stats(encoder: torch.nn.Module, arrays: Iterable[np.ndarray], patch_size: Sequence[int],
                            device: torch.device | str = "cpu", progress: bool | None = None,
                            total: int | None = None, pooling: str = DEFAULT_POOLING) -> EmbeddingStats:
    """Statistics of `pooled_embedding` (with `pooling`) over preprocessed arrays (C, X, Y, Z), the encoder
    in eval mode. `progress`: a progress bar (None: only on a terminal)."""
    from tqdm import tqdm

    was_training = encoder.training
    encoder.eval()
    try:
        vectors = [pooled_embedding(encoder, a, patch_size, device, pooling)
                   for a in tqdm(arrays, total=total, desc="embedding statistics",
                                 disable=None if progress is None else not progress)]
    finally:
        encoder.train(was_training)
    if not vectors:
        raise ValueError("no scans to compute embedding statistics over")
    return EmbeddingStats.from_vectors(vectors)


# ---- over nnU-Net's preprocessed pretraining data ------------------------------------------------
def select_cases(identifiers: Iterable[str], max_cases: int = DEFAULT_MAX_CASES) -> list[str]:
    """At most `max_cases` identifiers, evenly spaced over the sorted list (every source of a corpus
    whose names group by source is represented); the same list for the same input."""
    ids = sorted(set(identifiers))
    if len(ids) <= max_cases:
        return ids
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, max_cases).round()]


def preprocessed_cases(folder: str | os.PathLike, identifiers: Sequence[str]) -> Iterator[np.ndarray]:
    """The data arrays (C, X, Y, Z) of nnU-Net preprocessed cases (blosc2 or numpy), one at a time."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset_class = infer_dataset_class(str(folder))
    dataset = dataset_class(str(folder), list(identifiers))
    for identifier in identifiers:
        data = dataset.load_case(identifier)[0]
        yield np.asarray(data[:], dtype=np.float32)


def corpus_embedding_stats(encoder: torch.nn.Module, folder: str | os.PathLike, patch_size: Sequence[int],
                           identifiers: Iterable[str] | None = None, max_cases: int = DEFAULT_MAX_CASES,
                           device: torch.device | str = "cpu", progress: bool | None = None,
                           pooling: str = DEFAULT_POOLING) -> EmbeddingStats:
    """Statistics over the preprocessed cases in `folder` (nnUNet_preprocessed/DatasetXXX/<data identifier>):
    `identifiers` (default: all of the folder's), at most `max_cases` of them (`select_cases`)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if identifiers is None:
        identifiers = infer_dataset_class(str(folder)).get_identifiers(str(folder))
    chosen = select_cases(identifiers, max_cases)
    return compute_embedding_stats(encoder, preprocessed_cases(folder, chosen), patch_size, device, progress,
                                   total=len(chosen), pooling=pooling)


def save_with_stats(checkpoint: str | os.PathLike, stats: EmbeddingStats, out: str | os.PathLike,
                    pooling: str | None = None) -> Path:
    """Write a copy of `checkpoint` whose fomo_metadata carries `stats` and the pooling they were computed
    with (`pooling`; None: the checkpoint's own), so that the two always agree (atomically; `out` may be
    the input)."""
    from fomo_nnunet.models.transfer import load_checkpoint_safely, read_metadata

    ckpt = load_checkpoint_safely(checkpoint)
    read_metadata(ckpt, str(checkpoint))  # a clear error for a checkpoint without fomo_metadata
    pooling = pooling_of(ckpt[METADATA_KEY], str(checkpoint)) if pooling is None else check_pooling(pooling)
    ckpt[METADATA_KEY] = {**ckpt[METADATA_KEY], STATS_KEY: stats.to_dict(), POOLING_KEY: pooling}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        torch.save(ckpt, tmp)
    return out
