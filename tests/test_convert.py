"""`fomo-nnunet convert`: FOMO60K / FOMO300K / task folders -> nnU-Net raw datasets."""
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fomo_nnunet.data import convert as C
from fomo_nnunet.data import fomo_layout as L
from fomo_nnunet.tasks import get_task

from helpers import nnunet_env, run

SHAPE = (20, 20, 20)


def vol(shape=SHAPE, seed=0, spacing=1.0, value=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape[:3]], indexing="ij"))
    brain = np.sqrt((grid ** 2).sum(0)) < 0.8
    img = np.where(brain, 100 + rng.normal(0, 5, shape[:3]), 0).astype(np.float32)
    if value is not None:
        img[brain] = value
    return img


def save(path: Path, data: np.ndarray, spacing=1.0, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([spacing, spacing, spacing, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def write_tsv(path: Path, rows: list[dict]) -> None:
    cols = list(rows[0])
    path.write_text("\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in rows))


def dataset_jsons(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.json"))}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and RECORDS not in p.parts)


def assert_same_dataset(expected: Path, got: Path) -> None:
    """The same files with the same bytes (dataset-level JSON files up to the dataset's folder name)."""
    assert listing(got) == listing(expected)
    for rel in listing(expected):
        x, y = (expected / rel).read_bytes(), (got / rel).read_bytes()
        if rel.endswith(".json"):
            x, y = x.decode(), y.decode().replace(got.name, expected.name)
        assert x == y, rel


RECORDS = C.RECORDS


# ------------------------------------------------------------------------------ fixture trees
def make_fomo60k(root: Path) -> Path:
    save(root / "sub_1/ses_1/t1.nii.gz", vol(seed=1))
    save(root / "sub_1/ses_1/t1_2.nii.gz", vol(seed=2))
    save(root / "sub_1/ses_1/flair.nii.gz", vol(seed=3))
    save(root / "sub_2/ses_1/dwi_b1000.nii.gz", vol(seed=4))
    # an image stored in LPS-ish orientation: reoriented to RAS
    save(root / "sub_2/ses_2/t2.nii.gz", vol(seed=5), affine=np.diag([-2.0, -2.0, 2.0, 1.0]))
    return root


def make_corrupt(root: Path) -> dict[str, str]:
    """Broken files beside two usable odd ones; returns {file name: expected reason fragment}."""
    ses = root / "sub_9/ses_1"
    good = save(ses / "t1.nii.gz", vol(seed=9))
    blob = good.read_bytes()
    (ses / "t2.nii.gz").write_bytes(blob[: len(blob) // 2])                        # truncated gzip
    (ses / "flair.nii.gz").write_text("this is not an image\n")                     # wrong extension
    save(ses / "adc.nii.gz", np.zeros((20, 20), np.float32))                        # 2D
    save(ses / "swi.nii.gz", np.full(SHAPE, np.nan, np.float32))                    # all NaN
    save(ses / "t2s.nii.gz", np.zeros(SHAPE, np.float32))                           # all zero
    save(ses / "dwi.nii.gz", vol((20, 20, 10)))                                     # < 15 slices
    os.symlink("loop_b.nii.gz", ses / "loop_a.nii.gz")                              # symlink loop
    os.symlink("loop_a.nii.gz", ses / "loop_b.nii.gz")
    os.symlink("gone.nii.gz", ses / "broken.nii.gz")                                # broken link
    four = np.stack([vol(seed=s) for s in range(3)], -1)
    save(ses / "t1_2.nii.gz", four)                                                 # real 4D: first volume
    save(ses / "t1_3.nii.gz", vol(seed=7)[..., None])                               # singleton 4D
    part = vol(seed=8)
    part[10, 10, 10] = np.nan
    save(ses / "t1_4.nii.gz", part)                                                 # partial NaN
    return {"t2": "unreadable", "flair": "not gzip", "adc": "2D", "swi": "NaN", "t2s": "all voxels zero",
            "dwi": "too few slices", "loop_a": "symlink loop", "loop_b": "symlink loop", "broken": "broken symlink"}


def make_fomo300k(root: Path) -> Path:
    save(root / "PT001_SynthA/sub-01/ses-01/t1w.nii.gz", vol(seed=11))
    save(root / "PT001_SynthA/sub-01/ses-01/dwi_b1000.nii.gz", vol(seed=12))
    save(root / "PT001_SynthA/sub-01/ses-01/scan.nii.gz", vol(seed=13))
    save(root / "PT001_SynthA/sub-02/ses-01/flair.nii.gz", vol(seed=14))
    save(root / "PT002_SynthB/sub-01/ses-01/t2w.nii.gz", vol(seed=15))
    write_tsv(root / "participants.tsv", [
        {"dataset": "PT001_SynthA", "participant_id": "sub-01", "session_id": "ses-01", "sex": "F", "age": "34",
         "handedness": "R", "group": "control"},
        {"dataset": "PT002_SynthB", "participant_id": "sub-01", "session_id": "ses-01", "sex": "M", "age": "n/a",
         "handedness": "", "group": "patient"}])
    return root


def make_task2(root: Path) -> Path:
    """Segmentation, train/test, swi in one case and t2s in another, odd cases skipped."""
    def case(split, sub, alt="swi", seg=True, seg_shape=SHAPE, seg_value=1, dwi_affine=None, seed=0):
        ses = root / split / "preprocessed" / sub / "ses_1"
        save(ses / "flair.nii.gz", vol(seed=seed, value=10.0))
        save(ses / "dwi_b1000.nii.gz", vol(seed=seed + 1, value=20.0), affine=dwi_affine)
        save(ses / f"{alt}.nii.gz", vol(seed=seed + 2, value=30.0))
        if seg:
            s = np.zeros(seg_shape, np.uint8)
            s[8:12, 8:12, 8:12] = seg_value
            save(root / split / "labels" / sub / "ses_1" / "seg.nii.gz", s)

    case("train", "sub_1", "swi", seed=0)
    case("train", "sub_2", "t2s", seed=10, dwi_affine=np.diag([1.0, 1.0, 1.0, 1.0]) @ _shift(1.0))
    case("train", "sub_3", seg_shape=(20, 20, 18))            # seg on another grid -> skip
    case("train", "sub_4", seg=False)                          # missing label -> skip
    case("train", "sub_5", seg_value=2)                        # label value outside the task's
    case("test", "sub_10", "t2s", seed=20)
    write_tsv(root / "train" / "participants.tsv", [
        {"participant_id": "sub_1", "session_id": "ses_1", "sex": "F", "age": 61, "source": "siteA"},
        {"participant_id": "sub_2", "session_id": "ses_1", "sex": "M", "age": 70.5, "source": "siteB"}])
    write_tsv(root / "test" / "participants.tsv", [
        {"participant_id": "sub_10", "session_id": "ses_1", "sex": "M", "age": 50, "source": "siteC"}])
    return root


def _shift(mm: float) -> np.ndarray:
    a = np.eye(4)
    a[0, 3] = mm
    return a


def make_labelled(root: Path, stems: tuple[str, ...], labels: dict[str, str], split_layout: bool = False,
                  shape=SHAPE, spacing=1.0) -> Path:
    """A classification/regression/embedding tree: {subject: label.txt text}."""
    for i, (sub, text) in enumerate(sorted(labels.items())):
        split = ("test" if i % 3 == 2 else "train") if split_layout else ""
        base = root / split if split else root
        for k, stem in enumerate(stems):
            save(base / "preprocessed" / sub / "ses_1" / f"{stem}.nii.gz", vol(shape, seed=i * 10 + k), spacing)
        lab = base / "labels" / sub / "ses_1"
        lab.mkdir(parents=True, exist_ok=True)
        (lab / "label.txt").write_text(text)
    return root


# ----------------------------------------------------------------------------------- tests
def test_case_ids_are_safe_and_unique():
    raw_ids = ["sub_1_ses_1", "sub_..%2f.._ses_1", "sub_1;rm -rf_ses_1", "sub_1 rm -rf_ses_1", "../../etc_ses_1",
               "a" * 300]
    ids = L.unique_case_ids(raw_ids)
    assert ids[0] == "sub_1_ses_1"
    assert len(set(ids)) == len(ids)
    for i in ids:
        assert all(c.isalnum() or c in "_-" for c in i) and not i.startswith("-") and len(i) <= L.MAX_CASE_ID
    assert L.unique_case_ids(raw_ids) == ids  # deterministic
    assert L.pretrain_sequence("t1_2", L.FOMO60K) == "t1w"
    assert L.pretrain_sequence("dwi_b1000", L.FOMO60K) == "dwi"
    assert L.pretrain_sequence("scan", L.FOMO300K) == "scan"


def test_nnunet_raw_unset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(SystemExit, match="nnUNet_raw"):
        C.convert_pretrain(make_fomo60k(tmp_path / "fomo60k"), progress=False)


def test_fomo60k_with_corrupt_files(tmp_path, raw):
    """--copy: every scan copied into imagesTr (float32, RAS), bad files skipped with their reason."""
    src = make_fomo60k(tmp_path / "fomo60k")
    expected = make_corrupt(src)
    res = C.convert_pretrain(src, progress=False, copy=True)
    folder = raw / "Dataset900_FOMOPretrain"
    assert res.folder == folder
    ds = json.loads((folder / "dataset.json").read_text())
    good = ["sub_1_ses_1_flair", "sub_1_ses_1_t1", "sub_1_ses_1_t1_2", "sub_2_ses_1_dwi_b1000", "sub_2_ses_2_t2",
            "sub_9_ses_1_t1", "sub_9_ses_1_t1_2", "sub_9_ses_1_t1_3", "sub_9_ses_1_t1_4"]
    assert ds["channel_names"] == {"0": "MRI"} and ds["labels"] == {"background": 0, "brain": 1}
    assert ds["numTraining"] == len(good) and ds["file_ending"] == ".nii.gz" and ds["fomo_role"] == "pretrain"
    assert listing(folder) == sorted(
        ["conversion_report.json", "dataset.json", "subjects.json"]
        + [f"imagesTr/{c}_0000.nii.gz" for c in good] + [f"labelsTr/{c}.nii.gz" for c in good])
    subjects = json.loads((folder / "subjects.json").read_text())
    assert subjects["FOMO60K/sub_1/ses_1"]["scans"] == {"sub_1_ses_1_flair": "flair", "sub_1_ses_1_t1": "t1w",
                                                        "sub_1_ses_1_t1_2": "t1w"}
    assert subjects["FOMO60K/sub_2/ses_1"]["scans"] == {"sub_2_ses_1_dwi_b1000": "dwi"}
    # images float32 RAS with spacing kept; label = brain mask
    img = nib.load(folder / "imagesTr/sub_2_ses_2_t2_0000.nii.gz")
    assert img.get_data_dtype() == np.float32 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), (2, 2, 2))
    src_data = vol(seed=5)
    assert np.allclose(img.get_fdata(), src_data[::-1, ::-1, :])
    lab = nib.load(folder / "labelsTr/sub_2_ses_2_t2.nii.gz")
    assert lab.get_data_dtype() == np.uint8 and np.array_equal(lab.get_fdata() > 0, src_data[::-1, ::-1] != 0)
    assert nib.load(folder / "imagesTr/sub_9_ses_1_t1_2_0000.nii.gz").shape == SHAPE
    assert nib.load(folder / "imagesTr/sub_9_ses_1_t1_3_0000.nii.gz").shape == SHAPE
    assert np.isfinite(nib.load(folder / "imagesTr/sub_9_ses_1_t1_4_0000.nii.gz").get_fdata()).all()
    report = json.loads((folder / "conversion_report.json").read_text())
    reasons = {Path(s["path"]).name.split(".")[0]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expected)
    for stem, frag in expected.items():
        assert frag in reasons[stem], (stem, reasons[stem])
    assert any("first" in n for n in report["notes"]["sub_9_ses_1_t1_2"])
    assert any("NaN" in n for n in report["notes"]["sub_9_ses_1_t1_4"])
    assert not list(folder.rglob("*.tmp"))
    # resume: nothing new, identical JSON
    before = dataset_jsons(folder)
    again = C.convert_pretrain(src, progress=False, copy=True)
    assert again.converted == 0 and again.already_done == len(good)
    assert dataset_jsons(folder) == before


def test_pretrain_references_scans_and_copies_only_those_it_must(tmp_path, raw):
    """The default: dataset.json's `dataset` entry points at the scans where they are; only the masks
    are written, plus a fixed copy (named in the report with its reason) of each scan nnU-Net could not
    read as the checks accepted it; the bad files are skipped exactly as with --copy."""
    src = make_fomo60k(tmp_path / "fomo60k")
    expected = make_corrupt(src)
    res = C.convert_pretrain(src, progress=False)
    folder = res.folder
    ds = json.loads((folder / "dataset.json").read_text())
    fixed = {"sub_2_ses_2_t2": "not RAS", "sub_9_ses_1_t1_2": "4D", "sub_9_ses_1_t1_3": "singleton",
             "sub_9_ses_1_t1_4": "NaN"}
    referenced = ["sub_1_ses_1_flair", "sub_1_ses_1_t1", "sub_1_ses_1_t1_2", "sub_2_ses_1_dwi_b1000", "sub_9_ses_1_t1"]
    assert ds["fomo_storage"] == "reference" and ds["numTraining"] == len(ds["dataset"]) == 9
    assert listing(folder) == sorted(["conversion_report.json", "dataset.json", "subjects.json"]
                                     + [f"imagesTr/{c}_0000.nii.gz" for c in fixed]
                                     + [f"labelsTr/{c}.nii.gz" for c in [*fixed, *referenced]])
    for c in referenced:
        (image,) = ds["dataset"][c]["images"]
        assert Path(image).is_absolute() and Path(image).parent.parent.parent == src, image
        assert ds["dataset"][c]["label"] == f"labelsTr/{c}.nii.gz"
    assert ds["dataset"]["sub_2_ses_2_t2"]["images"] == ["imagesTr/sub_2_ses_2_t2_0000.nii.gz"]
    # the mask of a referenced scan is in the scan's own grid, as nnU-Net's reader sees both
    import SimpleITK as sitk
    scan = sitk.ReadImage(ds["dataset"]["sub_1_ses_1_t1"]["images"][0])
    mask = sitk.ReadImage(str(folder / "labelsTr/sub_1_ses_1_t1.nii.gz"))
    assert (scan.GetSize(), scan.GetSpacing(), scan.GetOrigin(), scan.GetDirection()) == \
        (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(scan) != 0)
    report = res.report
    assert {c: next(r for r in fixed.values() if r in " ".join(v)) for c, v in report["fixed_copies"].items()} == fixed
    assert {Path(s["path"]).name.split(".")[0] for s in report["skipped"]} == set(expected)
    # rerun: nothing to do; a scan changed in place is converted again
    assert C.convert_pretrain(src, progress=False).already_done == 9
    t1 = src / "sub_1/ses_1/t1.nii.gz"
    save(t1, vol(seed=42, shape=(24, 20, 20)))
    again = C.convert_pretrain(src, progress=False)
    assert again.redone == ["sub_1_ses_1_t1"] and again.converted == 1
    assert nib.load(folder / "labelsTr/sub_1_ses_1_t1.nii.gz").shape == (24, 20, 20)


def test_fomo300k_with_participants(tmp_path, raw):
    src = make_fomo300k(tmp_path / "fomo300k")
    assert L.detect_layout(src) == L.FOMO300K
    C.convert_pretrain(src, 950, "Corpus", progress=False)
    folder = raw / "Dataset950_Corpus"
    subjects = json.loads((folder / "subjects.json").read_text())
    a = subjects["PT001_SynthA/sub-01/ses-01"]
    assert a["scans"] == {"PT001_SynthA_sub-01_ses-01_dwi_b1000": "dwi_b1000",
                          "PT001_SynthA_sub-01_ses-01_scan": "scan", "PT001_SynthA_sub-01_ses-01_t1w": "t1w"}
    assert (a["source"], a["subject"], a["session"]) == ("PT001_SynthA", "sub-01", "ses-01")
    assert a["sex"] == "F" and a["age"] == 34 and a["group"] == "control"
    b = subjects["PT002_SynthB/sub-01/ses-01"]
    assert b["sex"] == "M" and b["age"] is None
    assert "sex" not in subjects["PT001_SynthA/sub-02/ses-01"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 5
    ds = json.loads((folder / "dataset.json").read_text())
    for c in ("PT001_SynthA_sub-01_ses-01_t1w", "PT002_SynthB_sub-01_ses-01_t2w"):
        assert Path(ds["dataset"][c]["images"][0]).is_file() and (folder / "labelsTr" / f"{c}.nii.gz").is_file()
    with pytest.raises(ValueError, match="already used"):
        C.convert_pretrain(src, 950, "Other", progress=False)


def test_pretrain_shards_of_a_job_array_merge_into_one_dataset(tmp_path, raw):
    """Cluster conversion: each array task converts its shard into the SAME dataset folder (a shared
    filesystem); the per-case records are the merge, and the dataset-level files after the last shard
    are those of one run over everything."""
    src = make_fomo300k(tmp_path / "fomo300k")
    C.convert_pretrain(src, 950, "Whole", progress=False)
    whole = raw / "Dataset950_Whole"
    counts = []
    for i in range(3):
        r = C.convert_pretrain(src, 951, "Sharded", shard=f"{i}/3", num_processes=2 if i == 0 else 1, progress=False)
        counts.append(json.loads((raw / "Dataset951_Sharded" / "dataset.json").read_text())["numTraining"])
        assert r.in_shard == len(range(i, 5, 3)) and r.converted == r.in_shard
    assert counts == [2, 4, 5]  # each shard's run rebuilds dataset.json from every record so far
    assert_same_dataset(whole, raw / "Dataset951_Sharded")


def test_task2_segmentation_train_test(tmp_path, raw):
    task = get_task("task2")
    src = make_task2(tmp_path / "task2")
    C.convert_task(task, src, progress=False)
    folder = raw / task.dataset_name
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "flair", "1": "dwi", "2": "t2s_or_swi"}
    assert ds["labels"] == task.labels and ds["numTraining"] == 2
    assert ds["fomo_task"] == 2 and ds["fomo_kind"] == "segmentation"
    assert listing(folder) == sorted(
        ["attributes.json", "conversion_report.json", "dataset.json", "subjects.json"]
        + [f"imagesTr/sub_{i}_ses_1_{k:04d}.nii.gz" for i in (1, 2) for k in range(3)]
        + [f"labelsTr/sub_{i}_ses_1.nii.gz" for i in (1, 2)]
        + [f"imagesTs/test_sub_10_ses_1_{k:04d}.nii.gz" for k in range(3)] + ["labelsTs/test_sub_10_ses_1.nii.gz"])
    # channel order: flair=10, dwi=20, swi/t2s=30 inside the brain
    for k, v in enumerate((10.0, 20.0, 30.0)):
        d = nib.load(folder / f"imagesTr/sub_1_ses_1_{k:04d}.nii.gz").get_fdata()
        assert d[10, 10, 10] == pytest.approx(v)
    # sub_2's dwi was shifted by 1 mm: resampled onto flair's grid, noted
    d = nib.load(folder / "imagesTr/sub_2_ses_1_0001.nii.gz")
    assert d.shape == SHAPE and np.allclose(d.affine, np.eye(4))
    seg = nib.load(folder / "labelsTr/sub_1_ses_1.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.get_fdata())) == {0, 1}
    subjects = json.loads((folder / "subjects.json").read_text())
    assert subjects["sub_1_ses_1"]["files"]["t2s_or_swi"].endswith("swi.nii.gz")
    assert subjects["sub_2_ses_1"]["files"]["t2s_or_swi"].endswith("t2s.nii.gz")
    assert subjects["test_sub_10_ses_1"]["split"] == "test"
    attrs = json.loads((folder / "attributes.json").read_text())
    assert attrs["sub_1_ses_1"] == {"sex": "F", "age": 61, "source": "siteA", "split": "train"}
    assert attrs["sub_2_ses_1"]["age"] == 70.5
    assert attrs["test_sub_10_ses_1"] == {"sex": "M", "age": 50, "source": "siteC", "split": "test"}
    report = json.loads((folder / "conversion_report.json").read_text())
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"sub_3_ses_1", "sub_4_ses_1", "sub_5_ses_1"}
    assert "grid" in reasons["sub_3_ses_1"] and "missing label" in reasons["sub_4_ses_1"]
    assert "not in task labels" in reasons["sub_5_ses_1"]
    assert any("resampled" in n for n in report["notes"]["sub_2_ses_1"])
    assert not (folder / "targets.json").exists()


def test_classification_regression_embedding(tmp_path, raw):
    t1 = get_task("task1")
    src1 = make_labelled(tmp_path / "task1", ("flair", "dwi_b1000", "adc", "swi"),
                         {"sub_1": "1\n", "sub_2": "0", "sub_3": "5", "sub_4": "yes"})
    C.convert_task(t1, src1, progress=False)
    f1 = raw / t1.dataset_name
    assert json.loads((f1 / "targets.json").read_text()) == {"sub_1_ses_1": 1, "sub_2_ses_1": 0}
    ds = json.loads((f1 / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "flair", "1": "dwi", "2": "adc", "3": "t2s_or_swi"}
    assert ds["labels"] == {"background": 0, "brain": 1} and ds["fomo_kind"] == "classification"
    lab = nib.load(f1 / "labelsTr/sub_1_ses_1.nii.gz").get_fdata()
    first = nib.load(f1 / "imagesTr/sub_1_ses_1_0000.nii.gz").get_fdata()
    assert np.array_equal(lab > 0, first != 0)
    reasons = {s["case"]: s["reason"] for s in json.loads((f1 / "conversion_report.json").read_text())["skipped"]}
    assert "class 5" in reasons["sub_3_ses_1"] and "not a number" in reasons["sub_4_ses_1"]

    t3 = get_task("brainage")
    src3 = make_labelled(tmp_path / "task3", ("t1",), {f"sub_{i}": f"{40 + i}.5" for i in range(1, 7)},
                         split_layout=True)
    C.convert_task(t3, src3, progress=False)
    f3 = raw / t3.dataset_name
    tr = json.loads((f3 / "targets.json").read_text())
    ts = json.loads((f3 / "targetsTs.json").read_text())
    # sorted subjects sub_1..sub_6, every third goes to test
    assert tr == {"sub_1_ses_1": 41.5, "sub_2_ses_1": 42.5, "sub_4_ses_1": 44.5, "sub_5_ses_1": 45.5}
    assert ts == {"test_sub_3_ses_1": 43.5, "test_sub_6_ses_1": 46.5}
    assert (f3 / "imagesTs/test_sub_3_ses_1_0000.nii.gz").is_file() and (f3 / "labelsTs/test_sub_3_ses_1.nii.gz").is_file()
    assert json.loads((f3 / "dataset.json").read_text())["numTraining"] == 4

    t6 = get_task(6)
    src6 = tmp_path / "task6"
    make_labelled(src6, ("flair",), {"sub_1": "2"})
    make_labelled(src6, ("t2",), {"sub_2": "0"})
    C.convert_task(t6, src6, progress=False)
    f6 = raw / t6.dataset_name
    assert json.loads((f6 / "targets.json").read_text()) == {"sub_1_ses_1": 2, "sub_2_ses_1": 0}
    subjects = json.loads((f6 / "subjects.json").read_text())
    assert subjects["sub_1_ses_1"]["files"]["input"].endswith("flair.nii.gz")
    assert subjects["sub_2_ses_1"]["files"]["input"].endswith("t2.nii.gz")


def test_malicious_names_resume_and_shards(tmp_path, raw):
    task = get_task("task5")
    subs = {"sub_1": "1", "sub_..%2f..": "0", "sub_1;rm -rf": "1", "sub_2": "0", "sub_3": "1"}
    src = make_labelled(tmp_path / "task5", ("t1",), subs)
    full = C.convert_task(task, src, 940, "Full", progress=False)
    assert full.converted == 5
    folder = raw / "Dataset940_Full"
    ids = list(json.loads((folder / "targets.json").read_text()))
    assert len(ids) == 5
    for i in ids:
        assert all(c.isalnum() or c in "_-" for c in i)
    assert {p.parent for p in folder.rglob("*.nii.gz")} == {folder / "imagesTr", folder / "labelsTr"}
    assert not (tmp_path / "etc").exists() and len(list(raw.iterdir())) == 1
    before = dataset_jsons(folder)
    again = C.convert_task(task, src, 940, "Full", progress=False)
    assert again.converted == 0 and again.already_done == 5
    assert dataset_jsons(folder) == before
    # shards, one of them with two worker processes, give the same dataset as a full run
    a = C.convert_task(task, src, 941, "Full", shard="0/2", num_processes=2, progress=False)
    b = C.convert_task(task, src, 941, "Full", shard=(1, 2), progress=False)
    assert (a.in_shard, b.in_shard) == (3, 2) and a.converted + b.converted == 5
    assert_same_dataset(folder, raw / "Dataset941_Full")
    with pytest.raises(ValueError, match="shard"):
        C.parse_shard("2/2")


def test_cli_help_and_run(tmp_path, raw, capsys):
    from fomo_nnunet.cli import main

    with pytest.raises(SystemExit):
        main(["convert", "pretrain", "--help"])
    assert "fomo60k" in capsys.readouterr().out
    src = make_fomo60k(tmp_path / "fomo60k")
    assert main(["convert", "pretrain", str(src), "-d", "960", "--layout", "fomo60k", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "5 converted" in out and (raw / "Dataset960_FOMOPretrain" / "dataset.json").is_file()


@pytest.mark.slow
def test_nnunet_plan_and_preprocess_on_converted(tmp_path):
    env = nnunet_env(tmp_path / "nn")
    shape = (32, 32, 32)
    task_src = make_labelled(tmp_path / "task3", ("t1",), {f"sub_{i}": f"{30 + i}" for i in range(3)},
                             shape=shape, spacing=4.0)
    pre_src = tmp_path / "fomo60k"
    for i in range(2):
        save(pre_src / f"sub_{i}/ses_1/t1.nii.gz", vol(shape, seed=i), spacing=4.0)
    save(pre_src / "sub_0/ses_1/flair.nii.gz", vol(shape, seed=10), spacing=4.0)
    run(["fomo-nnunet", "convert", "task", "task3", str(task_src), "-d", "903", "--no-progress"], env)
    run(["fomo-nnunet", "convert", "pretrain", str(pre_src), "-d", "900", "--no-progress"], env)
    # a task dataset goes through nnU-Net's own pipeline (a plain nnU-Net baseline), the corpus through the
    # pretraining planner and nnU-Net's preprocessing, each with nnU-Net's integrity check of the raw dataset
    run(["nnUNetv2_plan_and_preprocess", "-d", "903", "-c", "3d_fullres", "-np", "1", "--verify_dataset_integrity"],
        env, timeout=600)
    run(["fomo-nnunet", "plan", "pretrain", "-d", "900", "--arch", "tiny", "-np", "1", "--verify_dataset_integrity"],
        env)
    run(["nnUNetv2_preprocess", "-d", "900", "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres", "-np", "1"], env)
    for name, plans in (("Dataset903_FOMO3Brainage", "nnUNetPlans"), ("Dataset900_FOMOPretrain", "fomoPretrainPlans")):
        pre = tmp_path / "nn" / "preprocessed" / name
        assert (pre / f"{plans}.json").is_file()
        assert any((pre / f"{plans}_3d_fullres").iterdir())
