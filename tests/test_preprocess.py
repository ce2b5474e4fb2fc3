"""`fomo-nnunet preprocess`: nnU-Net's preprocessing sharded and resumable, byte for byte the same files
as `nnUNetv2_preprocess`, on a corpus converted by reference (the scans stay where they are)."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import BIN, _brain, nnunet_env, run, run_cli
from fomo_nnunet.data import convert as C
from fomo_nnunet.data import preprocess as P

pytestmark = pytest.mark.slow

N_SCANS = 12
OUT = "fomoPretrainPlans_3d_fullres"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but our hidden bookkeeping (the plans stamp, partial cases)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".fomo") and P.PARTIAL not in p.parts}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A FOMO60K tree converted by reference, planned (tiny preset), and preprocessed once by
    nnUNetv2_preprocess: its output is moved aside as the reference."""
    root = tmp_path_factory.mktemp("pp")
    env = nnunet_env(root)
    rng = np.random.default_rng(3)
    src = root / "fomo60k"
    for i in range(N_SCANS):
        img, _ = _brain((36 + 2 * (i % 3), 40, 36), rng)
        f = src / f"sub_{i:02d}" / "ses_1" / "t1.nii.gz"
        f.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(img, np.diag([4.0, 4.0, 4.0, 1.0])), f)
    mp = pytest.MonkeyPatch()
    mp.setenv("nnUNet_raw", env["nnUNet_raw"])
    try:
        assert C.convert_pretrain(src, progress=False).report["converted"] == N_SCANS
    finally:
        mp.undo()
    run(["fomo-nnunet", "plan", "pretrain", "-d", "900", "--arch", "tiny", "-np", "1"], env)
    run(["nnUNetv2_preprocess", "-d", "900", "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres", "-np", "1"], env)
    pre = root / "preprocessed" / "Dataset900_FOMOPretrain"
    os.rename(pre / OUT, root / "reference")
    os.rename(pre / "gt_segmentations", root / "reference_gt")
    return root, env, src, pre


@pytest.fixture
def fresh(planned, monkeypatch):
    """The planned workspace without preprocessed arrays, its folders in this process's environment."""
    root, env, src, pre = planned
    shutil.rmtree(pre / OUT, ignore_errors=True)
    shutil.rmtree(pre / "gt_segmentations", ignore_errors=True)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    return planned


def _assert_same_as_nnunet(root: Path, pre: Path) -> None:
    ref, got = folder_bytes(root / "reference"), folder_bytes(pre / OUT)
    assert sorted(got) == sorted(ref) and len(ref) == 3 * N_SCANS
    assert [k for k in ref if ref[k] != got[k]] == []
    assert folder_bytes(root / "reference_gt") == folder_bytes(pre / "gt_segmentations")
    assert not [p for p in (pre / OUT).rglob("*") if P.PARTIAL in p.parts and p.is_file()]


def test_four_shards_equal_one_nnunet_preprocess_byte_for_byte(fresh, capsys):
    root, env, _, pre = fresh
    for i in range(4):   # four job-array tasks into one folder
        r = P.preprocess(900, "fomoPretrainPlans", "3d_fullres", shard=f"{i}/4", progress=False)
        assert (r.in_shard, r.done) == (3, 3)
    _assert_same_as_nnunet(root, pre)
    # a rerun has nothing to do; --verify finds every case
    r = P.preprocess(900, "fomoPretrainPlans", "3d_fullres", progress=False)
    assert (r.done, r.already_done) == (0, N_SCANS)
    assert P.verify(900, "fomoPretrainPlans") == {"missing": [], "unreadable": []}
    (pre / OUT / "sub_00_ses_1_t1.b2nd").unlink()
    assert P.verify(900, "fomoPretrainPlans", shard="0/4")["missing"] == ["sub_00_ses_1_t1"]
    assert P.verify(900, "fomoPretrainPlans", shard="1/4")["missing"] == []
    P.preprocess(900, "fomoPretrainPlans", "3d_fullres", shard="0/4", progress=False)   # redone
    # a truncated array and a missing case are listed by --verify (exit 1)
    victim = sorted((pre / OUT).glob("*_seg.b2nd"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    (pre / OUT / "sub_11_ses_1_t1.pkl").unlink()
    code, out, err = run_cli(["preprocess", "-d", "900", "--verify", "--no-progress"], capsys)
    assert code == 1 and "1 missing, 1 unreadable" in out, out + err
    assert "missing: sub_11_ses_1_t1" in out and f"unreadable: {victim.name[:-len('_seg.b2nd')]}" in out


def test_shard_killed_with_sigkill_and_rerun_gives_the_same_folder(fresh):
    root, env, _, pre = fresh
    out = pre / OUT
    stop_after = random.Random().randint(1, N_SCANS - 4)   # a random moment within the run
    p = subprocess.Popen([str(BIN / "fomo-nnunet"), "preprocess", "-d", "900", "-c", "3d_fullres", "-np", "2",
                          "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.time() + 120
    while time.time() < end and len(list(out.glob("*.pkl"))) < stop_after:
        assert p.poll() is None, p.communicate()
        time.sleep(0.005)
    p.kill()
    p.wait()
    # its orphaned workers notice within PARENT_POLL_SECONDS and leave; a case in flight may still land whole
    # (renamed into place) meanwhile, so the finished cases are counted after that
    time.sleep(1.5)
    done = len(list(out.glob("*.b2nd"))) - len(list(out.glob("*_seg.b2nd")))
    assert done < N_SCANS, "the run finished before the kill: nothing was tested"
    r = P.preprocess(900, "fomoPretrainPlans", "3d_fullres", progress=False)
    assert (r.done, r.already_done) == (N_SCANS - done, done)
    _assert_same_as_nnunet(root, pre)


def test_moved_source_is_a_clear_error_before_any_work(fresh, capsys):
    root, env, src, pre = fresh
    moved = root / "moved"
    os.rename(src, moved)
    try:
        code, _, err = run_cli(["preprocess", "-d", "900", "--no-progress"], capsys)
        from fomo_nnunet.plans.pretrain_planner import plan_pretrain

        with pytest.raises(ValueError, match=f"{N_SCANS} source files of {N_SCANS} cases are missing"):
            plan_pretrain(900, "tiny")   # planning again says the same, before nnU-Net reads a scan
    finally:
        os.rename(moved, src)
    last = err.strip().splitlines()[-1]
    assert code == 2 and f"{N_SCANS} source files of {N_SCANS} cases are missing" in last and str(src) in last, err
    assert not list((pre / OUT).glob("*.b2nd"))


def test_other_plans_in_the_folder_are_refused(fresh):
    root, env, _, pre = fresh
    P.preprocess(900, "fomoPretrainPlans", "3d_fullres", shard="0/6", progress=False)
    plans_file = pre / "fomoPretrainPlans.json"
    plans = plans_file.read_text()
    changed = json.loads(plans)
    changed["configurations"]["3d_fullres"]["spacing"] = [3.0, 3.0, 3.0]
    plans_file.write_text(json.dumps(changed))
    try:
        with pytest.raises(P.PreprocessError, match="preprocessing made with other plans"):
            P.preprocess(900, "fomoPretrainPlans", "3d_fullres", progress=False)
    finally:
        plans_file.write_text(plans)
