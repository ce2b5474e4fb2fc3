"""Mirroring test-time augmentation: one default for `fomo-nnunet predict` and the challenge entry
(`fomo-nnunet fomo26`), and the line both print to say what they did. Imports nothing heavy (--help)."""
from __future__ import annotations

# chosen by the measurement on docs/results/mirroring.md
MIRRORING_DEFAULT = False


def mirroring_note(requested: bool, axes) -> str:
    """The line both commands print: whether the model's predictions are mirrored, and why not."""
    axes = tuple(axes or ())
    if not requested:
        return "mirroring test-time augmentation: off"
    if not axes:
        return ("mirroring test-time augmentation: off (asked for, but the checkpoint allows no mirroring axes: "
                "trained with test_time_mirroring = False)")
    return (f"mirroring test-time augmentation: on, every subset of axes {', '.join(map(str, axes))} "
            f"({2 ** len(axes)}x the forwards)")


def on_off(mirror: bool) -> str:
    return "on" if mirror else "off"
