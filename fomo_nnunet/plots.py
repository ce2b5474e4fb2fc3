"""Pictures a person would rather look at than read: loss curves and reconstruction slices."""
from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: str | os.PathLike, curves: dict[str, list[float]], title: str,
                ylabel: str = "loss", secondary: dict[str, list[float]] | None = None,
                secondary_label: str = "") -> None:
    """Line plot of named per-epoch curves (and optional curves on a second axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, values in curves.items():
        ax.plot(np.arange(len(values)), values, label=name, linewidth=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, values in secondary.items():
            ax2.plot(np.arange(len(values)), values, label=name, linestyle=":", color="gray")
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    fig.tight_layout()
    _save(fig, path)


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The three orthogonal mid slices of a 3-D volume."""
    x, y, z = (s // 2 for s in volume.shape)
    return [volume[x, :, :], volume[:, y, :], volume[:, :, z]]


def plot_reconstruction(path: str | os.PathLike, rows: dict[str, np.ndarray], title: str,
                        caption: str = "") -> None:
    """One row per named 3-D volume (input, masked input, reconstruction, target), mid slices as columns, all
    on the grey scale of the last row; `caption` below."""
    plt = _pyplot()
    names = list(rows)
    ref = rows[names[-1]]
    vmin, vmax = np.percentile(ref, 1), np.percentile(ref, 99)
    fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, sl in enumerate(mid_slices(rows[name])):
            ax = axes[r, c]
            ax.imshow(np.rot90(sl), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(title)
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, wrap=True)
        fig.tight_layout(rect=(0, 0.06 * 5 / len(names), 1, 1))
    else:
        fig.tight_layout()
    _save(fig, path)


def mae_caption(loss_on: str = "masked brain voxels only") -> str:
    """What reconstruction.png shows, given what the loss counts (fomo_nnunet.ssl.LOSS_REGIONS' words)."""
    untrained = (" so the network's output on visible voxels is untrained (dark there)"
                 if "visible" not in loss_on else "")
    return (f"The loss counts {loss_on}{',' if untrained else ''}{untrained}. Composite: the visible input with "
            f"the reconstruction pasted into the masked blocks.")


def mae_rows(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rows of the MAE reconstruction picture from one validation case's volumes (input, masked input,
    reconstruction, target, mask: True where masked): the composite (visible input, reconstructed masked
    blocks) beside the raw network output."""
    mask = example["mask"].astype(bool)
    return {"input": example["input"], "masked input": example["masked input"],
            "composite": np.where(mask, example["reconstruction"], example["input"]),
            "network output": example["reconstruction"], "target": example["target"]}


def plot_mae_reconstruction(path: str | os.PathLike, example: dict[str, np.ndarray], title: str,
                            loss_on: str = "masked brain voxels only") -> None:
    """The MAE trainer's reconstruction.png: `mae_rows` with the caption that says what is trained."""
    plot_reconstruction(path, mae_rows(example), title, caption=mae_caption(loss_on))


def _save(fig, path) -> None:
    from fomo_nnunet.io.atomic import replacing

    with replacing(path, suffix=".tmp.png") as tmp:  # a viewer never sees half a PNG; matplotlib reads the suffix
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
