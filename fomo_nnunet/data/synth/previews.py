"""Preview PNGs: for each task a few cases (three planes of the first input, the other inputs, the
mask outlined), and a strip of pretraining scans. For a quick look, not used by anything else."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fomo_nnunet.tasks import TASKS_BY_NUMBER

from .presets import SPLITS


def _preview_cases(results: list[dict], per_split: int) -> dict[int, list[dict]]:
    """The first `per_split` cases of each split, per task."""
    by_task: dict[int, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["task"], SPLITS.index(r["split"]), r["index"])):
        by_task.setdefault(r["task"], [])
        if sum(1 for x in by_task[r["task"]] if x["split"] == r["split"]) < per_split:
            by_task[r["task"]].append(r)
    return by_task


def _draw_case_row(axes, r: dict) -> None:
    """One case: three planes through the lesion (or the centre) of the first input, then the others."""
    import nibabel as nib

    vols = [np.asarray(nib.load(f).dataobj, np.float32) for f in r["files"]]
    seg = np.asarray(nib.load(r["seg"]).dataobj) if r["seg"] else None
    if seg is not None and seg.any():
        c = np.round(np.argwhere(seg > 0).mean(0)).astype(int)
    else:
        c = np.array(vols[0].shape) // 2
    panels = [(vols[0], a) for a in (2, 1, 0)] + [(v, 2) for v in vols[1:]]
    for ci, ax in enumerate(axes):
        ax.axis("off")
        if ci >= len(panels):
            continue
        v, a = panels[ci]
        ax.imshow(np.take(v, c[a], axis=a).T, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(v, 99.5) or 1)
        if seg is not None:
            s = np.take(seg, c[a], axis=a).T
            if s.any():
                ax.contour(s, levels=[0.5, 1.5], colors=["yellow", "red"], linewidths=0.7)
        name = Path(r["files"][0 if ci < 3 else ci - 2]).name.replace(".nii.gz", "")
        title = f"{r['split']} {r['row']['participant_id']} {name}" if ci == 0 else name
        if ci == 0 and r["label"] is not None:
            title += f" y={r['label']}"
        ax.set_title(title, fontsize=6)


def _task_figure(prev: Path, task: int, rows: list[dict]) -> str:
    import matplotlib.pyplot as plt

    ncol = 3 + max(len(r["files"]) for r in rows) - 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 2.3 * len(rows)), squeeze=False)
    for ri, r in enumerate(rows):
        _draw_case_row(axes[ri], r)
    name = TASKS_BY_NUMBER[task].name
    fig.suptitle(f"task{task} {name}", fontsize=8)
    fig.tight_layout()
    p = prev / f"task{task}_{name}.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return str(p)


def _pretrain_figure(prev: Path, scans: list[Path]) -> str:
    import matplotlib.pyplot as plt
    import nibabel as nib

    n = len(scans)
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(2.2 * ((n + 1) // 2), 4.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, s in zip(axes.ravel(), scans):
        v = np.asarray(nib.load(s).dataobj, np.float32)
        ax.imshow(v[:, :, v.shape[2] // 2].T, cmap="gray", origin="lower", vmin=0,
                  vmax=np.percentile(v, 99.5) or 1)
        ax.set_title(f"{s.parts[-4]}\n{s.parts[-3]}/{s.parts[-2]}/{s.name[:-7]}", fontsize=6)
    fig.tight_layout()
    p = prev / "pretrain.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return str(p)


def make_previews(out: Path, results: list[dict], pretrain: list[dict], per_split: int = 2) -> list[str]:
    """Write OUT/previews/task{N}_{name}.png and pretrain.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    prev = out / "previews"
    prev.mkdir(parents=True, exist_ok=True)
    written = [_task_figure(prev, task, rows) for task, rows in _preview_cases(results, per_split).items()]
    scans = [out / "pretrain" / info["dataset"] / info["participant_id"] / info["session_id"]
             / f"{info['sequence']}.nii.gz" for rec in pretrain for info in rec["mri_info"]]
    scans = scans[:: max(1, len(scans) // 12)][:12]
    if scans:
        written.append(_pretrain_figure(prev, scans))
    return written
