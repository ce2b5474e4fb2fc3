"""Small builders shared by the tests: nnU-Net folders, tiny raw datasets, running commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fomo_nnunet.paths import trainers_dir

BIN = Path(sys.executable).parent


def nnunet_env(root: Path) -> dict[str, str]:
    """A subprocess environment with nnU-Net folders under `root` and our trainers visible."""
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": str(trainers_dir()),
        # two cores: keep nnU-Net's worker pools small
        "nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "2",
    })
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir(parents=True, exist_ok=True)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail with the tail of its output."""
    exe = cmd[0] if os.path.isabs(cmd[0]) else str(BIN / cmd[0])
    p = subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        out = (p.stdout + "\n" + p.stderr)[-6000:]
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{out}")
    return p


def _brain(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid 'brain' with smooth internal structure (so reconstruction has something to learn)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radii = np.array([0.8, 0.9, 0.8]) * rng.uniform(0.9, 1.05)
    r = np.sqrt(((grid / radii[:, None, None, None]) ** 2).sum(0))
    brain = r < 0.85
    phase = rng.uniform(0, np.pi, 3)
    tissue = 100 + 40 * np.sin(7 * grid[0] + phase[0]) * np.cos(5 * grid[1] + phase[1]) + 20 * np.cos(6 * grid[2] + phase[2])
    img = np.where(brain, tissue + rng.normal(0, 4, shape), 0)
    return img.astype(np.float32), brain


def _blob(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return np.sqrt(((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0)) < radius


def make_raw_dataset(raw: Path, dataset_id: int, name: str, n_cases: int, n_channels: int = 1,
                     labels: dict[str, int] | None = None, shape=(40, 44, 40), spacing: float = 4.0,
                     seed: int = 0, test_cases: int = 0, extra: dict | None = None) -> Path:
    """A tiny nnU-Net raw dataset. With labels beyond background, each case gets bright blobs (one
    per foreground label, the image shows them); without, the label map is the brain mask."""
    rng = np.random.default_rng(seed)
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    affine = np.diag([spacing, spacing, spacing, 1.0])
    seg_labels = labels or {"background": 0, "brain": 1}
    foreground = [v for v in seg_labels.values() if v > 0]
    for split, count in (("Tr", n_cases), ("Ts", test_cases)):
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            case = f"case{split.lower()}{i:03d}"
            img, brain = _brain(shape, rng)
            seg = brain.astype(np.uint8)
            if labels:
                seg = np.zeros(shape, np.uint8)
                for v in foreground:
                    c = [int(rng.integers(s // 3, 2 * s // 3)) for s in shape]
                    blob = _blob(shape, c, rng.uniform(3, 5)) & brain
                    seg[blob] = v
                    img[blob] += 80 * v
            for ch in range(n_channels):
                scaled = img * (1 + 0.2 * ch) + (ch * 5 * brain)
                nib.save(nib.Nifti1Image(scaled.astype(np.float32), affine),
                         folder / f"images{split}" / f"{case}_{ch:04d}.nii.gz")
            nib.save(nib.Nifti1Image(seg, affine), folder / f"labels{split}" / f"{case}.nii.gz")
    dataset = {"channel_names": {str(c): f"mri{c}" for c in range(n_channels)}, "labels": seg_labels,
               "numTraining": n_cases, "file_ending": ".nii.gz", **(extra or {})}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def save_fake_pretraining(path, features=None, seed=0):
    """A pretraining checkpoint as nnUNetTrainerFomoMAE writes it (random weights: only shapes matter here)."""
    from fomo_nnunet.models.checkpoints import metadata_from_preset
    from fomo_nnunet.models.transfer import PretrainMetadata

    meta = metadata_from_preset("tiny")
    meta["objective"] = "mae"
    if features:
        meta["network_kwargs"]["features_per_stage"] = features
    torch.manual_seed(seed)
    net = PretrainMetadata.from_dict(meta).build_network(num_outputs=1)
    torch.save({"network_weights": net.state_dict(), "fomo_metadata": meta, "current_epoch": 1}, path)
    return path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`fomo-nnunet ARGV` in this process: (exit code, stdout, stderr); argparse's exits included."""
    from fomo_nnunet.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
