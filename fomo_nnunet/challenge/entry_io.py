"""The challenge container's input and output rules, independent of any model.

Inputs: NIfTI files named by the container's arguments (`--flair`, `--dwi`, ...). Each is checked
where it enters, and an error names the argument and the problem in one line. Recoverable oddities
(a singleton 4th axis, NaNs in part of a volume, an oblique affine) are handled and noted.

Outputs, as the official validator checks them (the FOMO26 challenge page and its validator,
github.com/fomo26): a `.txt` with one finite float token (probabilities within [0, 1]); an integer
NIfTI in the geometry of an input; a 1-D finite float32 `.npy`. Every output is written to a temporary file beside it and renamed, so a killed run
leaves no half-written output.
"""
from __future__ import annotations

import contextlib
import math
import os
import secrets
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from fomo_nnunet.io.grids import describe_grid_difference, fov_overlap, resample_linear, same_grid
from fomo_nnunet.io.nifti_checks import SHEAR_TOL, Header, NiftiProblem, clean_intensities, read_header, read_voxels
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


def read_input_header(arg: str, path: str) -> Header:
    """Check one input from its header alone (nothing read, nothing allocated); FomoInputError naming `--arg`."""
    try:
        header = read_header(path, MIN_SLICES, allow_4d=False)
    except NiftiProblem as e:
        raise FomoInputError(f"--{arg} {path}: {e}") from None
    if header.shear > SHEAR_TOL:
        header.notes.append(f"sheared affine (voxel axes up to {shear_degrees(header.shear):.2g} deg from "
                            f"orthogonal): the model sees the nearest orthogonal grid, outputs keep this affine")
    elif is_oblique(header.affine):
        header.notes.append("oblique affine, resampled through the world coordinates")
    return header


def read_input(arg: str, path: str, header: Header | None = None) -> InputImage:
    """Load and check one input image; raise FomoInputError naming `--arg` on anything unusable."""
    header = header or read_input_header(arg, path)
    where = f"--{arg} {path}"
    try:
        data, notes = clean_intensities(read_voxels(header))
    except NiftiProblem as e:
        raise FomoInputError(f"{where}: {e}") from None
    if float(data.max()) == float(data.min()):
        raise FomoInputError(f"{where}: image is empty (every voxel is {float(data.max()):g})")
    notes = [f"--{arg}: {n}" for n in header.notes + notes]
    return InputImage(arg, path, data, header.affine, header.img.header, notes)


def check_fields_of_view(headers: list[tuple[str, Header]]) -> list[str]:
    """Every channel must overlap the reference (first) channel's field of view; notes for partial cover."""
    (ref_arg, ref), notes = headers[0], []
    for arg, h in headers[1:]:
        if same_grid(h.shape, h.affine, ref.shape, ref.affine):
            continue
        cover = fov_overlap(h.shape, h.affine, ref.shape, ref.affine)
        if cover <= 0:
            raise FomoInputError(f"--{arg} {h.img.get_filename()}: its field of view does not overlap --{ref_arg}'s "
                                 f"({describe_grid_difference(h.shape, h.affine, ref.shape, ref.affine)}); "
                                 f"the images are not co-registered")
        if cover < 0.5:
            notes.append(f"--{arg}: covers only {100 * cover:.0f}% of --{ref_arg}'s field of view")
    return notes


def shear_degrees(shear: float) -> float:
    return 90 - math.degrees(math.acos(min(1.0, shear)))


def orthogonal_affine(affine: np.ndarray) -> np.ndarray:
    """The nearest affine with orthogonal voxel axes (same spacing and origin): what SimpleITK can read."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    u, _, vt = np.linalg.svd(affine[:3, :3] / spacing)
    out = np.array(affine, dtype=np.float64)
    out[:3, :3] = (u @ vt) * spacing
    return out


def is_oblique(affine: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the voxel axes are not aligned with the world axes."""
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.any(np.abs(np.abs(rot).max(axis=0) - 1) > tol))


def resample_onto(image: InputImage, reference: InputImage) -> InputImage:
    """`image` resampled (linear) onto the reference's voxel grid through world coordinates."""
    if same_grid(image.shape, image.affine, reference.shape, reference.affine):
        return image
    data = resample_linear(nib.Nifti1Image(image.data, image.affine), reference.shape, reference.affine)
    if not np.any(data):
        raise FomoInputError(f"--{image.arg} {image.path}: nothing of it lies in --{reference.arg}'s field of view "
                             f"after resampling; the images are not co-registered")
    notes = image.notes + [f"--{image.arg}: grid differs from --{reference.arg} ("
                           f"{describe_grid_difference(image.shape, image.affine, reference.shape, reference.affine)})"
                           f", resampled onto it"]
    return InputImage(image.arg, image.path, data, reference.affine, reference.header, notes)


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
def output_suffix(path: str) -> str:
    return ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]


def check_output_target(path: str, suffixes: tuple[str, ...], inputs: list[str], what: str = "") -> None:
    """Refuse an --output that could not be written, before any work: wrong suffix, an existing folder,
    one of the inputs, or a folder that cannot be created or written."""
    where = f"--output {path}"
    if os.path.isdir(path):
        raise FomoInputError(f"{where}: is an existing folder; give a file name (e.g. {os.path.join(path, 'sub_1')}"
                             f"{suffixes[0]})")
    for arg, p in inputs:
        if p and (os.path.abspath(p) == os.path.abspath(path) or _same_file(p, path)):
            raise FomoInputError(f"{where}: is the input --{arg}; writing it would overwrite the input")
    if not path.endswith(suffixes):
        raise FomoInputError(f"{where}: {what + ' ' if what else ''}writes {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise FomoInputError(f"{where}: cannot be created, {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FomoInputError(f"{where}: cannot be created, folder {existing} is not writable")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class OutputFile:
    """The output's temporary file, made in the destination folder (and any missing parent folders)
    before the work starts, with the mode the umask gives (not mkstemp's 0600); `commit` renames it
    into place, `discard` removes it and the folders made for it."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        missing, f = [], folder
        while not os.path.isdir(f):
            missing.append(f)
            f = os.path.dirname(f)
        self._made: list[str] = []
        # the name first, then the file: a signal at any moment leaves nothing that discard() misses
        self.tmp: str | None = os.path.join(folder, f".fomo_{secrets.token_hex(6)}{output_suffix(path)}")
        try:
            for d in reversed(missing):
                os.mkdir(d)
                self._made.append(d)
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as e:
            self.discard()
            raise FomoInputError(f"--output {path}: cannot be written ({e.strerror or e})") from None
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        os.replace(self.tmp, self.path)
        self.tmp = None

    def discard(self) -> None:
        if self.tmp and os.path.lexists(self.tmp):
            os.remove(self.tmp)
        self.tmp = None
        for d in reversed(self._made):
            try:
                os.rmdir(d)
            except OSError:
                break
        self._made = []


@contextlib.contextmanager
def _writing(target: str | OutputFile):
    """The temporary file to write; committed when the block ends, discarded when it raises."""
    slot = target if isinstance(target, OutputFile) else OutputFile(target)
    try:
        yield slot.tmp
        slot.commit()
    except BaseException:
        slot.discard()
        raise


def write_value_txt(path: str | OutputFile, value: float, probability: bool) -> float:
    """One finite float token; probabilities clipped to [0, 1]."""
    with _writing(path) as tmp:
        v = float(value)
        if not np.isfinite(v):
            raise ValueError(f"model produced a non-finite value {v}")
        if probability:
            v = min(1.0, max(0.0, v))
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{v:.6f}\n")
    return v


def write_label_nifti(path: str | OutputFile, labels: np.ndarray, reference: InputImage, max_label: int) -> None:
    """An integer NIfTI with labels in [0, max_label], in the reference input's shape and affine."""
    with _writing(path) as tmp:
        labels = np.asarray(labels)
        if labels.shape != reference.shape:
            raise ValueError(f"segmentation shape {labels.shape} differs from --{reference.arg} {reference.shape}")
        if labels.min() < 0 or labels.max() > max_label:
            raise ValueError(f"segmentation labels {labels.min()}..{labels.max()} outside [0, {max_label}]")
        img = nib.Nifti1Image(labels.astype(np.uint8), reference.affine)
        img.set_qform(orthogonal_affine(reference.affine), code=1)  # a qform cannot hold a shear; the sform does
        img.set_sform(reference.affine, code=1)
        nib.save(img, tmp)


def write_embedding_npy(path: str | OutputFile, vector: np.ndarray) -> None:
    """A 1-D finite float32 vector, loadable with allow_pickle=False."""
    with _writing(path) as tmp:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(v)):
            raise ValueError("the embedding has non-finite values")
        with open(tmp, "wb") as f:
            np.save(f, v, allow_pickle=False)


def check_output_file(task: Task, path: str, inputs: list[str] = ()) -> str:
    """The official validator's rules for one output file (FOMO26 challenge page, github.com/fomo26).

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
