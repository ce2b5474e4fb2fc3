"""Positive pairs from one imaging session, for the hybrid objective's invariance term.

A session of the pretraining corpus holds one scan per sequence (T1w, FLAIR, T2, ...) of one subject on
one day; `fomo-nnunet convert pretrain` lists them in the dataset's `subjects.json`
(`{"<source>/<subject>/<session>": {"scans": {"<case id>": "<sequence>", ...}, ...}}`). Pulling the
pooled features of two sequences of one session together asks the encoder for what the sequences share
(anatomy, age, disease) rather than for the contrast; the FOMO25 method-track winner's positive pairs
were such sequences (FOMO25 challenge, MICCAI 2025). A scan whose session has no other sequence in the
training split pairs with itself: a second crop with its own augmentation.

`SessionPairLoader` wraps nnU-Net's training data loader: each batch is the loader's n cases followed by
one partner per case, each partner cropped and augmented on its own (sequences of a session are
co-registered in FOMO60K/FOMO300K, but the two crops need not cover the same region: the term compares
globally pooled features). The partner is drawn from the loader's own random stream, so a seeded
run's pairs are reproducible, per augmentation worker, like the rest of its batches.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from fomo_nnunet.seeding import LoaderProxy

SUBJECTS_FILE = "subjects.json"


def session_partners(subjects: Mapping[str, Mapping], identifiers: Iterable[str]) -> dict[str, list[str]]:
    """For each case in `identifiers`: the other cases of its session that are in `identifiers` too
    (sorted; an empty list when it is its session's only scan there, or not in `subjects` at all)."""
    ids = set(identifiers)
    partners = {k: [] for k in sorted(ids)}
    for session, record in subjects.items():
        scans = record.get("scans") if isinstance(record, Mapping) else None
        if not isinstance(scans, Mapping):
            raise ValueError(f"{SUBJECTS_FILE}: session {session!r} has no 'scans' mapping")
        members = sorted(k for k in scans if k in ids)
        for k in members:
            partners[k] = [m for m in members if m != k]
    return partners


def read_subjects(*dataset_folders: str | os.PathLike) -> dict:
    """`subjects.json` from the first of `dataset_folders` that has one (the preprocessed dataset folder,
    where `fomo-nnunet plan pretrain` copies it, then the raw one), with an error that says where it looked."""
    tried = [Path(folder) / SUBJECTS_FILE for folder in dataset_folders]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{' and '.join(map(str, tried))}: missing; session pairs need the session list that "
                                f"`fomo-nnunet convert pretrain` writes beside dataset.json")
    try:
        subjects = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(subjects, dict):
        raise ValueError(f"{path}: expected an object of sessions, got {type(subjects).__name__}")
    return subjects


def draw_partner(case: str, partners: Mapping[str, list[str]], p_other: float) -> str:
    """With probability `p_other` another sequence of `case`'s session (uniformly), else `case` itself;
    always `case` when its session has no other. Draws from numpy's global stream (the loader's)."""
    others = partners.get(case, [])
    if not others or np.random.uniform() >= p_other:
        return case
    return others[np.random.randint(len(others))]


class SessionPairLoader(LoaderProxy):
    """A batchgenerators data loader (nnU-Net's) whose batches are n cases and then n session partners.

    `batch["keys"]` lists all 2n cases; `batch["fomo_other_sequence"]` (bool, n) says which partner is
    another sequence rather than the case itself.
    """

    def __init__(self, loader, partners: Mapping[str, list[str]], p_other: float = 0.5):
        if not 0.0 <= p_other <= 1.0:
            raise ValueError(f"p_other must be in [0, 1], got {p_other!r}")
        super().__init__(loader)
        self._partners = dict(partners)
        self._p_other = float(p_other)

    def generate_train_batch(self) -> dict:
        loader = self._loader
        first = loader.generate_train_batch()
        cases = list(first["keys"])
        second_keys = [draw_partner(k, self._partners, self._p_other) for k in cases]
        loader.get_indices = lambda: second_keys  # one call: the partners' crops, through the same pipeline
        try:
            second = loader.generate_train_batch()
        finally:
            del loader.get_indices
        return {"data": torch.cat([first["data"], second["data"]]),
                "target": concat_targets(first["target"], second["target"]),
                "keys": cases + list(second["keys"]),
                "fomo_other_sequence": torch.tensor([a != b for a, b in zip(cases, second_keys)])}

    def __next__(self) -> dict:
        return self.generate_train_batch()


def concat_targets(a, b):
    """nnU-Net batch targets (one tensor, or a list of them as the MAE's [brain mask, clean image]) end to end."""
    if isinstance(a, (list, tuple)):
        return [torch.cat([x, y]) for x, y in zip(a, b)]
    return torch.cat([a, b])
