"""Checks on a NIfTI file from its header alone, before a voxel is read or memory allocated.

Shared by the challenge entry (`challenge/entry_io`) and the converters (`data/convert`), which wrap a
`NiftiProblem` (a one-line reason) into their own errors. What the header promises bounds the
memory a read can take: the voxel count is capped (`MAX_VOXELS`), and a header that promises more
voxel data than the file can hold is refused without decompressing anything (an uncompressed file
must hold it all; deflate never compresses better than about 1032:1, RFC 1951).
"""
from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass, field

import numpy as np

MAX_VOXELS = 2 ** 28            # 268 M voxels (1 GiB as float32; 1024 x 1024 x 256), far above any brain MRI
DEFLATE_MAX_RATIO = 1032        # the best compression ratio deflate can reach
GZIP_SLACK = 64 * 1024          # header, gzip framing: bytes a tiny file may hold beyond the ratio
MAX_ABS_INTENSITY = 1e15        # beyond this, squares summed over MAX_VOXELS overflow float32 statistics
SHEAR_TOL = 1e-3                # |cos| between normalised voxel axes above this is a shear, not rounding
NIFTI_HEADER_SIZES = (348, 540)  # NIfTI-1 and NIfTI-2 `sizeof_hdr`, either byte order


class NiftiProblem(ValueError):
    """Why a file cannot be used; str() is a one-line reason without the file name."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """'TypeName: first line of the message' (just the type name when the message is empty)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:.3g} GiB" if n_bytes >= 2 ** 30 else f"{n_bytes / 2 ** 20:.3g} MiB"


# ------------------------------------------------------------------------------------ the file
def check_path(path: str | os.PathLike) -> os.stat_result:
    """A regular, non-empty, readable file whose first bytes match its name (.nii.gz: gzip; .nii: NIfTI)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NiftiProblem("symlink loop (following the links never reaches a file)") from None
        if os.path.islink(path):
            raise NiftiProblem(f"broken symlink (points to {os.readlink(path)}, which does not exist)") from None
        if e.errno == errno.ENOENT:
            raise NiftiProblem("file does not exist") from None
        raise NiftiProblem(f"cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NiftiProblem("is a folder, expected a NIfTI file")
    if not stat.S_ISREG(st.st_mode):
        raise NiftiProblem("not a regular file")
    if st.st_size == 0:
        raise NiftiProblem("empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise NiftiProblem(f"cannot read: {e.strerror}") from None
    if path.endswith(".gz") and head[:2] != b"\x1f\x8b":
        raise NiftiProblem("named .nii.gz but not gzip-compressed (wrong extension or not an image)")
    if path.endswith(".nii") and (len(head) < 4 or {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
                                  .isdisjoint(NIFTI_HEADER_SIZES)):
        raise NiftiProblem("named .nii but not a NIfTI file")
    return st


# ---------------------------------------------------------------------------------- the header
@dataclass
class Header:
    img: object                      # the nibabel image; its voxels are not read yet
    shape: tuple[int, int, int]      # the 3-D volume that will be read
    volumes: int                     # volumes along the 4th axis (1 for a 3-D image)
    dtype: np.dtype
    affine: np.ndarray
    shear: float                     # largest |cos| between voxel axes (0 for an orthogonal grid)
    notes: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def affine_shear(affine: np.ndarray) -> float:
    """The largest |cos| of the angles between the voxel axes in world space (0: orthogonal)."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    gram = cols.T @ cols
    return float(np.abs(gram - np.diag(np.diag(gram))).max())


def read_header(path: str | os.PathLike, min_slices: int, allow_4d: bool, label: bool = False,
                max_voxels: int = MAX_VOXELS) -> Header:
    """Open `path` lazily and check what its header promises; raise NiftiProblem on anything unusable.

    Checked, in order: the file (`check_path`), a loadable header, the shape (no zero-size axis, 3-D
    or, with `allow_4d`, 4-D whose first volume is used), at least `min_slices` voxels per axis, a
    real numeric data type (complex and RGB are refused), the voxel count against `max_voxels`, the
    bytes promised against the file's size, and a finite, non-degenerate affine (its shear measured).
    """
    import nibabel as nib

    st = check_path(path)
    try:
        img = nib.load(os.fspath(path))
        hdr = img.header
        full = tuple(int(s) for s in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        affine = img.affine
    except Exception as e:  # nibabel raises many types for a broken header
        raise NiftiProblem(f"unreadable, not a NIfTI header ({first_line(e)})") from None
    if any(s == 0 for s in full):
        raise NiftiProblem(f"the header gives an axis of size 0 (shape {full}): the image holds no voxels")
    shape = full
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    notes: list[str] = []
    if len(shape) < 3:
        raise NiftiProblem(f"{len(shape)}D image of shape {full}, expected a 3D image")
    volumes = 1
    if len(shape) == 4 and allow_4d and not label:
        volumes = shape[3]
        notes.append(f"4D with {volumes} volumes: kept the first")
    elif len(shape) > 3:
        raise NiftiProblem(f"{len(shape)}D image of shape {full}, expected a 3D image")
    shape3 = shape[:3]
    if full != shape:
        notes.append(f"shape {full} with singleton axes read as {shape}")
    if min(shape3) < min_slices:
        raise NiftiProblem(f"too few slices: shape {shape3}, need >= {min_slices} along every axis")
    if dtype.kind == "c":
        raise NiftiProblem(f"complex-valued data ({dtype}): give a real image (e.g. the magnitude), "
                           f"the imaginary part would be lost")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise NiftiProblem(f"data type {dtype} is not a real number per voxel (RGB or structured data)")
    n3 = math.prod(shape3)
    if n3 > max_voxels:
        raise NiftiProblem(f"the header claims shape {shape3} = {n3:,} voxels ({gib(n3 * 4)} as float32), more "
                           f"than the {max_voxels:,} accepted: a corrupt header or not a brain MRI")
    promised = math.prod(full) * dtype.itemsize
    compressed = os.fspath(path).endswith(".gz")
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    if compressed and promised > DEFLATE_MAX_RATIO * st.st_size + GZIP_SLACK:
        raise NiftiProblem(f"the header claims {gib(promised)} of voxel data (shape {full}, {dtype}), more than a "
                           f"{st.st_size:,}-byte gzip file can hold: a corrupt header or a truncated file")
    if not compressed and hasattr(img, "dataobj") and offset + promised > st.st_size:
        raise NiftiProblem(f"truncated: the header claims {promised:,} bytes of voxel data from byte {offset}, "
                           f"the file has {st.st_size:,} bytes")
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-8:
        raise NiftiProblem("degenerate or non-finite affine (zero spacing, NaN or collapsed axes)")
    return Header(img, shape3, volumes, dtype, np.asarray(affine, dtype=np.float64), affine_shear(affine), notes)


def read_voxels(header: Header, dtype=np.float32) -> np.ndarray:
    """The 3-D volume the header promised (the first one of a 4-D series), scaled, as `dtype`."""
    img = header.img
    ndim = len(img.header.get_data_shape())
    index = (slice(None),) * 3 + (0,) * (ndim - 3)
    try:
        data = img.dataobj[index] if ndim > 3 else img.dataobj
        data = np.asarray(data, dtype=dtype) if dtype is not None else np.asanyarray(data)
    except MemoryError:
        raise NiftiProblem(f"not enough memory to read shape {header.shape}") from None
    except Exception as e:  # truncated gzip (EOFError, zlib.error), short file...
        raise NiftiProblem(f"unreadable voxel data, truncated or corrupt ({first_line(e)})") from None
    return data.reshape(header.shape)


def clean_intensities(data: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """float32 data with NaN/Inf and values beyond +-MAX_ABS_INTENSITY set to 0 (noted).

    A value beyond MAX_ABS_INTENSITY (3e38, say) is no MRI intensity; left in, it overflows the
    float32 mean and standard deviation of z-score normalisation and the prediction is meaningless.
    Refused when no finite voxel remains or when most non-zero voxels are that extreme (a scale
    problem, not a few corrupt voxels).
    """
    notes: list[str] = []
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        raise NiftiProblem("every voxel is NaN or Inf")
    if n_bad:
        data = np.where(finite, data, np.float32(0)).astype(np.float32)
        notes.append(f"{n_bad} NaN/Inf voxels of {data.size} set to 0")
    extreme = np.abs(data) > MAX_ABS_INTENSITY
    n_ext = int(np.count_nonzero(extreme))
    if n_ext:
        peak = float(np.abs(data[extreme]).max())
        if 2 * n_ext > np.count_nonzero(data):
            raise NiftiProblem(f"intensities reach {peak:.3g}: {n_ext} of {np.count_nonzero(data)} non-zero voxels "
                               f"exceed {MAX_ABS_INTENSITY:g} and would overflow the normalisation; rescale the image")
        data = np.where(extreme, np.float32(0), data).astype(np.float32)
        notes.append(f"{n_ext} voxels with |value| > {MAX_ABS_INTENSITY:g} (up to {peak:.3g}) set to 0, they would "
                     f"overflow the normalisation")
    return data, notes
