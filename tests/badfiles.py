"""Small generated files for the bad-input matrix: every way a NIfTI file or folder can be wrong.

Each maker takes a target path (its folder exists) and writes there, returning the path to pass on.
"""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (20, 20, 20)
SHEAR = np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def brain(shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = np.sqrt((grid ** 2).sum(0)) < 0.8
    return np.where(inside, 100 + rng.normal(0, 5, shape), 0).astype(np.float32)


def save(path: Path, data, affine=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def header_bytes(shape, dtype=np.float32, affine=None, code: int | None = None) -> bytes:
    """A single-file NIfTI-1 header (and its 4-byte extension flag) that claims `shape` and `dtype`."""
    hdr = nib.Nifti1Header()
    if code is None:
        hdr.set_data_dtype(dtype)
    else:
        hdr["datatype"] = code
        hdr["bitpix"] = 24
    hdr.set_data_shape(shape)
    aff = np.eye(4) if affine is None else affine
    hdr.set_sform(aff, code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_data_offset(352)
    return hdr.binaryblock + b"\0" * 4


def claim(path: Path, shape, dtype=np.float32, payload: int = 4096) -> Path:
    """A file whose header claims `shape` but that holds only `payload` bytes of voxel data."""
    blob = header_bytes(shape, dtype) + b"\0" * payload
    Path(path).write_bytes(gzip.compress(blob) if str(path).endswith(".gz") else blob)
    return Path(path)


# --- makers: path -> path ---------------------------------------------------------------------
def good(p):
    return save(p, brain())


def truncated_gzip(p):
    blob = gzip.compress(header_bytes(SHAPE) + brain().tobytes())
    Path(p).write_bytes(blob[: len(blob) // 2])
    return p


def text_named_gz(p):
    Path(p).write_text("this is not an image\n")
    return p


def gzip_of_text(p):
    Path(p).write_bytes(gzip.compress(b"not a nifti at all" * 40))
    return p


def empty_file(p):
    Path(p).write_bytes(b"")
    return p


def flat_2d(p):
    return save(p, np.ones((20, 20), np.float32))


def real_4d(p):
    return save(p, np.stack([brain(seed=s) for s in range(3)], -1))


def five_d(p):
    return save(p, np.ones((20, 20, 20, 2, 2), np.float32))


def zero_size_axis(p):
    Path(p).write_bytes(gzip.compress(header_bytes((20, 0, 20))))
    return p


def one_slice(p):
    return save(p, brain((20, 20, 1)) + 1)


def all_nan(p):
    return save(p, np.full(SHAPE, np.nan, np.float32))


def all_zero(p):
    return save(p, np.zeros(SHAPE, np.float32))


def constant(p):
    return save(p, np.full(SHAPE, 5, np.float32))


def symlink_loop(p):
    other = Path(str(p) + ".other.nii.gz")
    os.symlink(other.name, p)
    os.symlink(Path(p).name, other)
    return p


def broken_symlink(p):
    os.symlink("gone.nii.gz", p)
    return p


def folder(p):
    Path(p).mkdir()
    return p


def fifo(p):
    os.mkfifo(p)
    return p


def complex64(p):
    return save(p, brain().astype(np.complex64) * (1 + 1j))


def complex128(p):
    return save(p, brain().astype(np.complex128) * (1 + 1j))


def rgb24(p):
    blob = header_bytes(SHAPE, code=128) + np.zeros(np.prod(SHAPE) * 3, np.uint8).tobytes()
    Path(p).write_bytes(gzip.compress(blob))
    return p


def claims_256gb(p):
    return claim(p, (4096, 4096, 4096))      # 4096^3 float32 = 256 GiB


def claims_4gb(p):
    return claim(p, (1024, 1024, 1024))      # 1024^3 float32 = 4 GiB


def claims_860mb_in_small_gzip(p):
    return claim(p, (600, 600, 600))         # under the voxel cap, more than 5 kB of gzip can hold


def truncated_nii(p):
    p = Path(str(p).replace(".nii.gz", ".nii"))
    p.write_bytes(header_bytes(SHAPE) + brain().tobytes()[:1000])
    return p


def not_nifti_nii(p):
    p = Path(str(p).replace(".nii.gz", ".nii"))
    p.write_bytes(b"\x00\x01\x02\x03" * 200)
    return p


def _with_sform(p, srow_x) -> Path:
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(header_bytes(SHAPE)))
    hdr["srow_x"] = srow_x
    hdr["qform_code"] = 0                     # the broken sform is the only affine
    Path(p).write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + brain().tobytes()))
    return Path(p)


def degenerate_affine(p):
    return _with_sform(p, [0, 0, 0, 0])      # x axis collapsed: zero spacing


def nan_affine(p):
    return _with_sform(p, [np.nan, 0, 0, 0])


def sheared(p):
    return save(p, brain(), SHEAR)


def extreme_majority(p):
    d = brain()
    d[d != 0] = 3e38
    return save(p, d)


def one_extreme_voxel(p):
    d = brain()
    d[10, 10, 10] = 3e38
    return save(p, d)


def partial_nan(p):
    d = brain()
    d[10, 10, 10] = np.nan
    return save(p, d)


def singleton_4d(p):
    return save(p, brain()[..., None])


def uncompressed(p):
    return save(Path(str(p).replace(".nii.gz", ".nii")), brain())


def lps(p):
    return save(p, brain(), np.diag([-1.0, -1.0, 1.0, 1.0]))


def oblique(p):
    c, s = np.cos(0.3), np.sin(0.3)
    return save(p, brain(), np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))


def int16_scaled(p):
    img = nib.Nifti1Image((brain() * 10).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.1, 0)
    nib.save(img, p)
    return p


def far_away(p):
    a = np.eye(4)
    a[:3, 3] = 500                            # 500 mm off: no overlap with a grid at the origin
    return save(p, brain(), a)


def shifted(p):
    a = np.eye(4)
    a[0, 3] = 1.0
    return save(p, brain(seed=3), a)
