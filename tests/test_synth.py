"""FOMO-Synth (`fomo-nnunet synth`): layout, determinism, and ground truth that follows the images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from fomo_nnunet.data.synth import generate
from fomo_nnunet.tasks import TASKS_BY_NUMBER

N_TRAIN, N_TEST = 2, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(out, preset="tiny", seed=0, num_processes=2, n_train=N_TRAIN, n_test=N_TEST, progress=False)
    return out


def _load(p: Path) -> np.ndarray:
    return np.asarray(nib.load(str(p)).dataobj)


def _tsv(p: Path) -> list[dict]:
    with open(p, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _stems(task: int, case_dir: Path) -> set[str]:
    return {f.name[:-7] for f in case_dir.glob("*.nii.gz")}


@pytest.mark.slow
def test_layout_every_task(synth: Path):
    summary = json.loads((synth / "synth.json").read_text())
    for t, task in TASKS_BY_NUMBER.items():
        root = synth / "finetune" / f"task{t}"
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            subs = sorted(p.name for p in (root / split / "preprocessed").iterdir())
            assert subs == sorted(f"sub_{i}" for i in range(1, n + 1))
            rows = _tsv(root / split / "participants.tsv")
            assert [r["participant_id"] for r in rows] == [f"sub_{i}" for i in range(1, n + 1)]
            assert {r["session_id"] for r in rows} == {"ses_1"} and {r["sex"] for r in rows} <= {"F", "M"}
            for i in range(1, n + 1):
                case = root / split / "preprocessed" / f"sub_{i}" / "ses_1"
                stems = _stems(t, case)
                assert len(stems) == len(task.channels), (t, split, i, stems)
                for ch in task.channels:  # each channel filled by exactly one of its stems
                    assert len(stems & set(ch.file_stems)) == 1, (t, ch.name, stems)
                imgs = [nib.load(str(f)) for f in sorted(case.glob("*.nii.gz"))]
                for im in imgs:
                    assert im.shape == imgs[0].shape and np.allclose(im.affine, imgs[0].affine)
                    assert im.get_data_dtype() == np.float32
                    assert np.all(np.diag(im.affine)[:3] > 0)  # RAS
                lab = root / split / "labels" / f"sub_{i}" / "ses_1"
                if task.kind == "segmentation" or t == 1:
                    seg = nib.load(str(lab / "seg.nii.gz"))
                    assert seg.shape == imgs[0].shape and np.allclose(seg.affine, imgs[0].affine)
                    assert seg.get_data_dtype() == np.uint8
                    assert set(np.unique(_load(lab / "seg.nii.gz"))) <= set(range(max(1, task.max_label) + 1))
                if task.kind != "segmentation":
                    v = float((lab / "label.txt").read_text().strip())
                    if task.kind in ("classification", "embedding"):
                        assert v == int(v) and 0 <= v < max(2, task.num_classes or 3)
        # test sources are other sources (out-of-domain)
        src = summary["sources"][f"task{t}"]
        tr, te = {s["name"] for s in src["train"]}, {s["name"] for s in src["test"]}
        assert tr and te and not (tr & te)
        assert {r["source"] for r in _tsv(root / "test" / "participants.tsv")} <= te
        assert {r["source"] for r in _tsv(root / "train" / "participants.tsv")} <= tr
    assert summary["counts"]["task1"]["test"]["per_class"] == {"0": 1, "1": 2}
    for t in (6, 7):  # both sexes in both splits (fairness groups)
        for split in ("train", "test"):
            assert {r["sex"] for r in _tsv(synth / "finetune" / f"task{t}" / split / "participants.tsv")} == {"F", "M"}
    assert len(list((synth / "previews").glob("*.png"))) == 8


@pytest.mark.slow
def test_pretrain_layout(synth: Path):
    pre = synth / "pretrain"
    parts = _tsv(pre / "participants.tsv")
    infos = _tsv(pre / "mri_info.tsv")
    assert list(parts[0]) == ["dataset", "participant_id", "session_id", "sex", "age", "handedness", "group"]
    assert list(infos[0]) == ["dataset", "participant_id", "session_id", "sequence", "field_strength",
                              "manufacturer", "TE", "TR"]
    sessions = {p.relative_to(pre).parts for p in pre.glob("PT*/sub-*/ses-*")}
    assert sessions == {(r["dataset"], r["participant_id"], r["session_id"]) for r in parts}
    scans = {p.relative_to(pre).as_posix() for p in pre.glob("PT*/sub-*/ses-*/*.nii.gz")}
    assert scans == {f"{r['dataset']}/{r['participant_id']}/{r['session_id']}/{r['sequence']}.nii.gz" for r in infos}
    assert 25 <= len(scans) <= 60 and len({r["dataset"] for r in parts}) == 3
    assert {r["sequence"] for r in infos} <= {"t1w", "t2w", "flair", "dwi", "adc", "swi", "t2s"}
    for ses in {p.parent for p in pre.glob("PT*/sub-*/ses-*/*.nii.gz")}:  # one grid per session
        ims = [nib.load(str(f)) for f in ses.glob("*.nii.gz")]
        assert all(im.shape == ims[0].shape and np.allclose(im.affine, ims[0].affine) for im in ims)


@pytest.mark.slow
def test_deterministic_for_a_seed(synth: Path, tmp_path: Path):
    b = tmp_path / "b"
    generate(b, preset="tiny", seed=0, num_processes=1, tasks=[2], pretrain=False, n_train=N_TRAIN,
             n_test=N_TEST, previews=False, progress=False)
    files = sorted((b / "finetune" / "task2").rglob("*.nii.gz"))
    assert len(files) == (N_TRAIN + N_TEST) * 4
    for f in files:
        assert np.array_equal(_load(f), _load(synth / f.relative_to(b)))
    assert (b / "finetune/task2/test/participants.tsv").read_text() == \
        (synth / "finetune/task2/test/participants.tsv").read_text()
    c = tmp_path / "c"
    generate(c, preset="tiny", seed=1, num_processes=1, tasks=[2], pretrain=False, n_train=N_TRAIN,
             n_test=N_TEST, previews=False, progress=False)
    f = Path("finetune/task2/train/preprocessed/sub_1/ses_1/flair.nii.gz")
    a1, c1 = _load(synth / f), _load(c / f)
    assert a1.shape != c1.shape or not np.array_equal(a1, c1)


@pytest.mark.slow
def test_meningioma_is_bright_on_flair(synth: Path):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for i in range(1, n + 1):
            base = synth / "finetune" / "task2" / split
            seg = _load(base / "labels" / f"sub_{i}" / "ses_1" / "seg.nii.gz") > 0
            flair = _load(base / "preprocessed" / f"sub_{i}" / "ses_1" / "flair.nii.gz")
            assert seg.sum() >= 8, (split, i)
            shell = ndi.binary_dilation(seg, iterations=2) & ~seg
            assert flair[seg].mean() > 1.1 * flair[shell].mean(), (split, i)


@pytest.mark.slow
def test_trigeminal_labels(synth: Path):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for i in range(1, n + 1):
            seg = _load(synth / "finetune" / "task4" / split / "labels" / f"sub_{i}" / "ses_1" / "seg.nii.gz")
            assert set(np.unique(seg)) == {0, 1, 2}
            assert (seg == 1).sum() >= 10 and (seg == 2).sum() >= 10


@pytest.mark.slow
def test_infarct_masks_follow_labels(synth: Path):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for i in range(1, n + 1):
            base = synth / "finetune" / "task1" / split
            y = int((base / "labels" / f"sub_{i}" / "ses_1" / "label.txt").read_text())
            seg = _load(base / "labels" / f"sub_{i}" / "ses_1" / "seg.nii.gz") > 0
            assert seg.any() == bool(y)
            if y:
                dwi = _load(base / "preprocessed" / f"sub_{i}" / "ses_1" / "dwi_b1000.nii.gz")
                adc = _load(base / "preprocessed" / f"sub_{i}" / "ses_1" / "adc.nii.gz")
                brain = (dwi > 0) & ~seg
                assert dwi[seg].mean() > 1.3 * np.median(dwi[brain])
                assert adc[seg].mean() < np.median(adc[brain])


@pytest.mark.slow
def test_brain_age_follows_atrophy(tmp_path: Path):
    generate(tmp_path, preset="tiny", seed=3, num_processes=2, tasks=[3], pretrain=False, n_train=1, n_test=9,
             previews=False, progress=False)
    ages, csf = [], []
    for split in ("train", "test"):
        for sub in (tmp_path / "finetune" / "task3" / split / "preprocessed").iterdir():
            t1 = _load(sub / "ses_1" / "t1.nii.gz")
            brain = t1 > 0  # skull-stripped
            dark = t1[brain] < 0.5 * np.median(t1[brain])
            csf.append(dark.mean())
            lab = tmp_path / "finetune" / "task3" / split / "labels" / sub.name / "ses_1" / "label.txt"
            ages.append(float(lab.read_text()))
    assert all(18 <= a <= 95 for a in ages)
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    rho = np.corrcoef(rank(ages), rank(csf))[0, 1]
    assert rho > 0.5, (rho, ages, csf)


def test_cli_help():
    from fomo_nnunet.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["synth", "-o", "x", "--preset", "small", "--tasks", "1", "3"])
    assert args.preset == "small" and args.tasks == [1, 3] and args.num_processes == 2


def test_brain_age_gets_ten_times_the_few_shot_train_cases_unless_sizes_are_given():
    """FOMO25's brain-age task had 200 training cases against 21-23 for the few-shot tasks: the presets give
    task 3 ten times their train size; an explicit n_train is every task's exact size."""
    from fomo_nnunet.data.synth.cases import plan_task_cases
    from fomo_nnunet.data.synth.presets import resolve_preset

    tiny = resolve_preset("tiny")
    assert [len(plan_task_cases(tiny, 0, t, "train")) for t in (1, 3, 5)] == [10, 100, 10]
    assert len(plan_task_cases(tiny, 0, 3, "test")) == 20
    ages = [c["age"] for c in plan_task_cases(tiny, 0, 3, "train")]
    assert min(ages) < 21 and max(ages) > 89  # stratified over the task's whole age range
    given = resolve_preset("tiny", n_train=6)
    assert [len(plan_task_cases(given, 0, t, "train")) for t in (1, 3)] == [6, 6]
    assert len(plan_task_cases(resolve_preset("tiny", n_test=4), 0, 3, "train")) == 100
