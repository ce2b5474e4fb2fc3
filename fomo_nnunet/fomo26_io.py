"""The challenge container's input and output rules, independent of any model.

Inputs: NIfTI files named by the container's arguments (`--flair`, `--dwi`, ...). Each is checked
where it enters, and an error names the argument and the problem in one line. Recoverable oddities
(a singleton 4th axis, NaNs in part of a volume, an oblique affine) are handled and noted.

Outputs, as the official validator checks them (FOMO.md, "Output rules"): a `.txt` with one finite
float token (probabilities within [0, 1]); an integer NIfTI in the geometry of an input; a 1-D finite
float32 `.npy`. Every output is written to a temporary file beside it and renamed, so a killed run
leaves no half-written output.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from fomo_nnunet.tasks import Task

MIN_SLICES = 2


class FomoInputError(ValueError):
    """A problem with one input argument; str() is the one-line message for stderr."""


@dataclass
class InputImage:
    arg: str                 # the container argument, e.g. "flair"
    path: str
    data: np.ndarray         # float32, 3-D, finite
    affine: np.ndarray
    header: nib.Nifti1Header
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)


def read_input(arg: str, path: str) -> InputImage:
    """Load and check one input image; raise FomoInputError naming `--arg` on anything unusable."""
    where = f"--{arg} {path}"
    if not os.path.exists(path):
        raise FomoInputError(f"{where}: file does not exist")
    if os.path.isdir(path):
        raise FomoInputError(f"{where}: is a folder, expected a NIfTI file")
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises many types for broken files
        raise FomoInputError(f"{where}: cannot read as NIfTI ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    notes: list[str] = []
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        notes.append(f"--{arg}: 4-D image with a singleton 4th axis, used as 3-D")
    if data.ndim != 3:
        raise FomoInputError(f"{where}: image has {data.ndim} dimensions {tuple(data.shape)}, expected a 3-D image")
    if min(data.shape) < MIN_SLICES:
        raise FomoInputError(f"{where}: image shape {tuple(data.shape)} has fewer than {MIN_SLICES} slices on an axis")
    finite = np.isfinite(data)
    if not finite.any():
        raise FomoInputError(f"{where}: every voxel is NaN or Inf")
    if not finite.all():
        notes.append(f"--{arg}: {int((~finite).sum())} NaN/Inf voxels of {data.size} set to 0")
        data = np.where(finite, data, 0).astype(np.float32)
    if float(data.max()) == float(data.min()):
        raise FomoInputError(f"{where}: image is empty (every voxel is {float(data.max()):g})")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-8:
        raise FomoInputError(f"{where}: affine is missing or degenerate")
    if is_oblique(affine):
        notes.append(f"--{arg}: oblique affine, resampled through the world coordinates")
    return InputImage(arg, path, data, affine, img.header, notes)


def is_oblique(affine: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the voxel axes are not aligned with the world axes."""
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.any(np.abs(np.abs(rot).max(axis=0) - 1) > tol))


def same_grid(a: InputImage, b: InputImage, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=tol)


def resample_onto(image: InputImage, reference: InputImage) -> InputImage:
    """`image` resampled (linear) onto the reference's voxel grid through world coordinates."""
    if same_grid(image, reference):
        return image
    from nibabel.processing import resample_from_to

    src = nib.Nifti1Image(image.data, image.affine)
    out = resample_from_to(src, (reference.shape, reference.affine), order=1, mode="constant", cval=0.0)
    notes = image.notes + [f"--{image.arg}: grid {image.shape} differs from --{reference.arg} {reference.shape}, "
                           f"resampled onto it"]
    return InputImage(image.arg, image.path, np.asarray(out.dataobj, dtype=np.float32), reference.affine,
                      reference.header, notes)


def select_inputs(task: Task, given: dict[str, str | None]) -> list[tuple[str, str]]:
    """(argument, path) per channel in the task's order; checks required and t2s-or-swi arguments."""
    chosen = []
    for ch in task.channels:
        present = [a for a in ch.cli_args if given.get(a)]
        if ch.is_alternative:
            names = " or ".join(f"--{a}" for a in ch.cli_args)
            if not present:
                raise FomoInputError(f"{names}: {task.key} needs exactly one of them, neither was given")
            if len(present) > 1:
                raise FomoInputError(f"{' and '.join('--' + a for a in present)}: {task.key} takes exactly one of "
                                     f"{names}, both were given")
        elif not present:
            raise FomoInputError(f"--{ch.cli_args[0]}: required by {task.key} ({task.name}) but not given")
        chosen.append((present[0], given[present[0]]))
    return chosen


def unused_arguments(task: Task, given: dict[str, str | None]) -> list[str]:
    return sorted(a for a, v in given.items() if v and a not in task.cli_args)


# ---- outputs ------------------------------------------------------------------------------------
def _atomic_target(path: str, suffix: str) -> tuple[str, str]:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fomo_", suffix=suffix, dir=folder)
    os.close(fd)
    return folder, tmp


def write_value_txt(path: str, value: float, probability: bool) -> float:
    """One finite float token; probabilities clipped to [0, 1]."""
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"model produced a non-finite value {v} for {path}")
    if probability:
        v = min(1.0, max(0.0, v))
    _, tmp = _atomic_target(path, ".txt")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{v:.6f}\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return v


def write_label_nifti(path: str, labels: np.ndarray, reference: InputImage, max_label: int) -> None:
    """An integer NIfTI with labels in [0, max_label], in the reference input's shape and affine."""
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ValueError(f"segmentation shape {labels.shape} differs from --{reference.arg} {reference.shape}")
    if labels.min() < 0 or labels.max() > max_label:
        raise ValueError(f"segmentation labels {labels.min()}..{labels.max()} outside [0, {max_label}]")
    img = nib.Nifti1Image(labels.astype(np.uint8), reference.affine)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    suffix = ".nii.gz" if path.endswith(".gz") else ".nii"
    _, tmp = _atomic_target(path, suffix)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_embedding_npy(path: str, vector: np.ndarray) -> None:
    """A 1-D finite float32 vector, loadable with allow_pickle=False."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"embedding for {path} has non-finite values")
    _, tmp = _atomic_target(path, ".npy")
    try:
        with open(tmp, "wb") as f:
            np.save(f, v, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_output_file(task: Task, path: str, inputs: list[str] = ()) -> str:
    """The official validator's rules for one output file (FOMO.md, "Output rules").

    Raises ValueError naming the broken rule; returns a one-line description of a valid output.
    """
    from fomo_nnunet.tasks import OUT_EMBEDDING_NPY, OUT_LABEL_NIFTI, OUT_PROBABILITY_TXT

    if task.output == OUT_LABEL_NIFTI:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        if data.ndim != 3:
            raise ValueError(f"{path}: {data.ndim}-D, a segmentation must be 3-D")
        if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-8:
            raise ValueError(f"{path}: the affine is not finite or degenerate")
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: labels are not integers")
        if data.min() < 0 or data.max() > task.max_label:
            raise ValueError(f"{path}: labels {data.min()}..{data.max()} outside [0, {task.max_label}]")
        shapes = [tuple(nib.load(f).shape[:3]) for f in inputs]
        if shapes and tuple(data.shape) not in shapes:
            raise ValueError(f"{path}: shape {data.shape} is none of the inputs' shapes {shapes}")
        return f"labels {sorted(int(v) for v in np.unique(data))}, shape {data.shape}"
    if task.output == OUT_EMBEDDING_NPY:
        v = np.load(path, allow_pickle=False)
        if v.ndim != 1 or not np.all(np.isfinite(v)):
            raise ValueError(f"{path}: an embedding must be a 1-D finite vector, got shape {v.shape}")
        return f"embedding of length {v.shape[0]}"
    with open(path, encoding="utf-8") as f:
        tokens = f.read().split()
    if len(tokens) != 1:
        raise ValueError(f"{path}: {len(tokens)} tokens, exactly one float expected")
    value = float(tokens[0])
    if not np.isfinite(value):
        raise ValueError(f"{path}: {value} is not finite")
    if task.output == OUT_PROBABILITY_TXT and not 0 <= value <= 1:
        raise ValueError(f"{path}: probability {value} outside [0, 1]")
    return f"value {value}"
