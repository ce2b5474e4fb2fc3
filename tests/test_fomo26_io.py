"""The container's input checks and output writers (no model involved)."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from fomo_nnunet.challenge.entry_io import (FomoInputError, read_input, resample_onto, select_inputs, write_embedding_npy,
                                   write_label_nifti, write_value_txt)
from fomo_nnunet.tasks import get_task


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), path)
    return str(path)


def _vol(shape=(20, 22, 18)):
    rng = np.random.default_rng(0)
    return rng.normal(100, 10, shape).astype(np.float32)


@pytest.mark.parametrize("make,expect", [
    (lambda p: str(p / "missing.nii.gz"), "does not exist"),
    (lambda p: _save(p / "flat.nii.gz", np.ones((20, 20), np.float32)), "2D image"),
    (lambda p: _save(p / "four.nii.gz", np.ones((10, 10, 10, 3), np.float32)), "4D image"),
    (lambda p: _save(p / "nan.nii.gz", np.full((10, 10, 10), np.nan, np.float32)), "NaN or Inf"),
    (lambda p: _save(p / "zero.nii.gz", np.zeros((10, 10, 10), np.float32)), "empty"),
    (lambda p: _save(p / "slice.nii.gz", np.ones((10, 10, 1), np.float32)), "too few slices"),
])
def test_unusable_input_is_a_one_line_error_naming_the_argument(tmp_path, make, expect):
    path = make(tmp_path)
    with pytest.raises(FomoInputError) as e:
        read_input("flair", path)
    msg = str(e.value)
    assert msg.startswith("--flair ") and expect in msg and "\n" not in msg


def test_truncated_gzip_and_text_file_are_errors(tmp_path):
    good = _save(tmp_path / "good.nii.gz", _vol())
    raw = open(good, "rb").read()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    for name in ("cut.nii.gz", "text.nii.gz"):
        with pytest.raises(FomoInputError, match="--t1 .*unreadable"):
            read_input("t1", str(tmp_path / name))


def test_recoverable_oddities_are_handled_and_noted(tmp_path):
    v = _vol()
    v[0, 0, :5] = np.nan
    img = read_input("dwi", _save(tmp_path / "partnan.nii.gz", v))
    assert np.isfinite(img.data).all() and any("NaN" in n for n in img.notes)
    img = read_input("dwi", _save(tmp_path / "single4d.nii.gz", _vol()[..., None]))
    assert img.shape == (20, 22, 18) and any("singleton" in n for n in img.notes)
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[2 * c, -2 * s, 0, 0], [2 * s, 2 * c, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])
    img = read_input("dwi", _save(tmp_path / "oblique.nii.gz", _vol(), oblique))
    assert any("oblique" in n for n in img.notes)


def test_alternative_and_required_arguments():
    t1 = get_task("task1")
    given = {"flair": "f", "dwi": "d", "adc": "a", "swi": "s"}
    assert select_inputs(t1, given) == [("flair", "f"), ("dwi", "d"), ("adc", "a"), ("swi", "s")]
    assert select_inputs(t1, {**given, "swi": None, "t2s": "t"})[-1] == ("t2s", "t")
    with pytest.raises(FomoInputError, match="--t2s and --swi: task1 takes exactly one"):
        select_inputs(t1, {**given, "t2s": "t"})
    with pytest.raises(FomoInputError, match="--t2s or --swi: task1 needs exactly one of them, neither"):
        select_inputs(t1, {**given, "swi": None})
    with pytest.raises(FomoInputError, match="^--adc: required by task1"):
        select_inputs(t1, {**given, "adc": None})
    assert select_inputs(get_task("task6"), {"input": "x"}) == [("input", "x")]


def test_input_on_another_grid_is_resampled_onto_the_reference(tmp_path):
    ref = read_input("flair", _save(tmp_path / "ref.nii.gz", _vol((20, 22, 18))))
    fine = np.zeros((40, 44, 36), np.float32)
    fine[10:30, 10:30, 10:30] = 1
    other = read_input("dwi", _save(tmp_path / "fine.nii.gz", fine + 0.5, np.diag([1.0, 1.0, 1.0, 1.0])))
    out = resample_onto(other, ref)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    assert out.data[7, 7, 7] > 1.2 and out.data[1, 1, 1] < 0.6  # the cube lands at world 10..30 mm = voxels 5..15
    assert any("resampled" in n for n in out.notes)


def test_outputs_follow_the_validator_rules_and_leave_no_temp_files(tmp_path):
    assert write_value_txt(str(tmp_path / "p.txt"), 1.7, probability=True) == 1.0
    assert (tmp_path / "p.txt").read_text(encoding="utf-8").split() == ["1.000000"]
    write_value_txt(str(tmp_path / "age.txt"), 63.25, probability=False)
    assert float((tmp_path / "age.txt").read_text()) == 63.25
    with pytest.raises(ValueError):
        write_value_txt(str(tmp_path / "bad.txt"), float("nan"), probability=True)
    assert not (tmp_path / "bad.txt").exists()
    ref = read_input("t2", _save(tmp_path / "t2.nii.gz", _vol()))
    labels = np.zeros(ref.shape, np.int64)
    labels[5:8, 5:8, 5:8] = 2
    write_label_nifti(str(tmp_path / "seg.nii.gz"), labels, ref, max_label=2)
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert np.issubdtype(seg.get_data_dtype(), np.integer) and np.asarray(seg.dataobj).max() == 2
    with pytest.raises(ValueError):
        write_label_nifti(str(tmp_path / "bad.nii.gz"), labels + 5, ref, max_label=2)
    write_embedding_npy(str(tmp_path / "e.npy"), np.arange(8, dtype=np.float64))
    e = np.load(tmp_path / "e.npy", allow_pickle=False)
    assert e.dtype == np.float32 and e.ndim == 1 and e.shape == (8,)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".fomo_")]
