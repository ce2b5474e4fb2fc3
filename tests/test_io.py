"""fomo_nnunet.io: atomic writes and the one grid tolerance (no torch, no nnU-Net)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from fomo_nnunet.io import atomic as A
from fomo_nnunet.io import grids as G


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "summary.json"
    A.write_json({"v": 1}, out)
    with pytest.raises(RuntimeError):
        with A.replacing(out) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("killed mid-write")
    assert json.loads(out.read_text()) == {"v": 1}
    assert _hidden(tmp_path) == []


def test_a_finished_write_replaces_the_file_whole(tmp_path):
    out = tmp_path / "sub" / "record.json"
    out.parent.mkdir()
    A.write_json({"v": 1}, out)
    A.write_json({"v": [2, 3]}, out, indent=None)
    assert out.read_text() == '{"v": [2, 3]}\n'
    A.write_text("plain", out)
    assert out.read_text() == "plain" and _hidden(out.parent) == []


def test_temporary_names_are_hidden_keep_a_needed_suffix_and_name_their_owner(tmp_path):
    plain = A.temporary_path(tmp_path / "case_0000.nii.gz")
    png = A.temporary_path(tmp_path / "loss.png", suffix=".tmp.png")
    assert plain.name.startswith(".") and plain.name.endswith(A.TMP_SUFFIX) and not plain.name.endswith(".nii.gz")
    assert png.name.endswith(".tmp.png")
    assert A.tag_of_temporary(plain.name) == A.process_tag()
    assert A.tag_of_temporary("dataset.json") == ""


def test_a_leftover_is_a_dead_process_of_this_host_or_an_old_file_of_another():
    dead = os.fork()
    if dead == 0:  # the child leaves at once: its pid is then one of a process that is gone
        os._exit(0)
    os.waitpid(dead, 0)
    now = time.time()
    assert not A.is_leftover(A.process_tag(), now - 10 ** 6, 3600, now)          # this very process: alive
    assert A.is_leftover(A.process_tag(dead), now, 3600, now)                    # gone: at once
    assert not A.is_leftover(f"otherhost-{os.getpid()}", now - 60, 3600, now)    # another node, recent
    assert A.is_leftover(f"otherhost-{os.getpid()}", now - 7200, 3600, now)      # another node, old
    assert A.is_leftover("", now - 7200, 3600, now) and not A.is_leftover("", now, 3600, now)


def _affine(shift=0.0, cosine=0.0):
    a = np.eye(4)
    a[0, 3] += shift
    a[0, 1] += cosine
    return a


@pytest.mark.parametrize("shift, cosine, same", [
    (0.0, 0.0, True), (5e-4, 0.0, True), (0.0, 5e-4, True),          # float32 rounding and tool noise
    (2e-3, 0.0, False), (0.0, 2e-3, False)])
def test_one_tolerance_in_millimetres_on_every_affine_entry(shift, cosine, same):
    assert G.same_grid((8, 8, 8), _affine(shift, cosine), (8, 8, 8), np.eye(4)) is same
    assert G.same_affine(_affine(shift, cosine), np.eye(4)) is same


def test_the_tolerance_has_no_relative_part_far_from_the_origin():
    far = np.eye(4)
    far[:3, 3] = 150.0
    near_miss = far.copy()
    near_miss[0, 3] += 2e-3  # numpy's default rtol (1e-5 of 150 mm = 1.5e-3) would have let this pass
    assert not G.same_grid((8, 8, 8), near_miss, (8, 8, 8), far)
    assert not G.same_grid((8, 8, 9), far, (8, 8, 8), far)


def test_resampling_onto_a_shifted_grid_moves_the_voxels():
    import nibabel as nib

    data = np.zeros((6, 6, 6), np.float32)
    data[2, 3, 3] = 1.0
    img = nib.Nifti1Image(data, np.eye(4))
    out = G.resample_linear(img, (6, 6, 6), _affine(shift=1.0))  # the reference grid starts 1 mm further
    assert out.dtype == np.float32 and out[1, 3, 3] == 1.0 and out[2, 3, 3] == 0.0
    assert out[5].sum() == 0  # beyond img's field of view: 0
