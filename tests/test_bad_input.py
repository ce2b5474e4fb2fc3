"""Bad input never wins: the challenge entry (`fomo-nnunet fomo26`) and the converters
(`fomo-nnunet convert`) fail cleanly with the documented exit code, lose nothing and leave nothing
behind, for every kind of bad input in the tables below.

The entry runs in process through the CLI's main(); its bundle is tiny (the embedding checkpoint of
tasks 6/7, and a model folder for task 3 that is only ever refused), so no model is trained here.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import badfiles as B
from helpers import run_cli
from fomo_nnunet import exit_codes as X
from fomo_nnunet.cli import main
from fomo_nnunet.data import convert as C
from fomo_nnunet.io import atomic as A
from fomo_nnunet.tasks import get_task

ENTRY_INPUTS = {"task2": ("flair", "dwi", "swi"), "task3": ("t1",), "task6": ("input",)}
SUFFIX = {"task2": ".nii.gz", "task3": ".txt", "task6": ".npy"}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*")
                  if p.is_file() and (p.name.startswith(".fomo_") or p.name.endswith(".tmp")))


# ================================================================================ the entry
@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """An embedding-only bundle (tasks 6/7 work) plus a task3 entry that the tests break in copies."""
    from helpers import save_fake_pretraining

    root = tmp_path_factory.mktemp("tiny_bundle")
    b = root / "bundle"
    (b / "embedding").mkdir(parents=True)
    save_fake_pretraining(b / "embedding" / "pretrained.pth")
    (b / "task3" / "fold_0").mkdir(parents=True)
    (b / "task3" / "plans.json").write_text(json.dumps({"plans_name": "fomoPlans", "fomo": {"task": "task3"}}))
    (b / "task3" / "dataset.json").write_text(json.dumps({"channel_names": {"0": "t1"}}))
    (b / "task3" / "fold_0" / "checkpoint_final.pth").write_bytes(b"PK\x03\x04 not really a torch checkpoint")
    manifest = {"format": 1, "pretrained_sha256": "0" * 64,
                "tasks": {"task3": {"kind": "regression", "path": "task3", "folds": ["0"]}},
                "embedding": {"path": "embedding/pretrained.pth", "sha256": "0" * 64}}
    (b / "manifest.json").write_text(json.dumps(manifest))
    return b


# kind: (task, {argument: maker}, expected exit code, the argument the message names, a fragment of it)
INPUT_KINDS = {
    "missing file": ("task6", {"input": None}, X.BAD_INPUT, "--input", "does not exist"),
    "a folder": ("task6", {"input": B.folder}, X.BAD_INPUT, "--input", "is a folder"),
    "a fifo": ("task6", {"input": B.fifo}, X.BAD_INPUT, "--input", "not a regular file"),
    "symlink loop": ("task6", {"input": B.symlink_loop}, X.BAD_INPUT, "--input", "symlink loop"),
    "broken symlink": ("task6", {"input": B.broken_symlink}, X.BAD_INPUT, "--input", "broken symlink"),
    "empty file": ("task6", {"input": B.empty_file}, X.BAD_INPUT, "--input", "0 bytes"),
    "text named .nii.gz": ("task6", {"input": B.text_named_gz}, X.BAD_INPUT, "--input", "not gzip"),
    "gzip of text": ("task6", {"input": B.gzip_of_text}, X.BAD_INPUT, "--input", "not a NIfTI header"),
    "truncated gzip": ("task6", {"input": B.truncated_gzip}, X.BAD_INPUT, "--input", "truncated or corrupt"),
    "truncated .nii": ("task6", {"input": B.truncated_nii}, X.BAD_INPUT, "--input", "truncated"),
    ".nii that is no NIfTI": ("task6", {"input": B.not_nifti_nii}, X.BAD_INPUT, "--input", "not a NIfTI"),
    "2D": ("task6", {"input": B.flat_2d}, X.BAD_INPUT, "--input", "2D image"),
    "real 4D": ("task6", {"input": B.real_4d}, X.BAD_INPUT, "--input", "4D image"),
    "5D": ("task6", {"input": B.five_d}, X.BAD_INPUT, "--input", "5D image"),
    "zero-size axis": ("task6", {"input": B.zero_size_axis}, X.BAD_INPUT, "--input", "axis of size 0"),
    "one slice": ("task6", {"input": B.one_slice}, X.BAD_INPUT, "--input", "too few slices"),
    "complex64": ("task6", {"input": B.complex64}, X.BAD_INPUT, "--input", "complex-valued"),        # item 12
    "complex128": ("task3", {"t1": B.complex128}, X.BAD_INPUT, "--t1", "complex-valued"),
    "RGB": ("task6", {"input": B.rgb24}, X.BAD_INPUT, "--input", "not a real number"),
    "header claims 256 GB": ("task6", {"input": B.claims_256gb}, X.BAD_INPUT, "--input", "256 GiB"),  # item 1
    "header claims 4 GB": ("task3", {"t1": B.claims_4gb}, X.BAD_INPUT, "--t1", "4 GiB"),             # item 14
    "header claims more than the gzip holds": ("task6", {"input": B.claims_860mb_in_small_gzip}, X.BAD_INPUT,
                                               "--input", "more than a"),
    "all NaN": ("task6", {"input": B.all_nan}, X.BAD_INPUT, "--input", "NaN or Inf"),
    "all zero": ("task6", {"input": B.all_zero}, X.BAD_INPUT, "--input", "empty"),
    "constant": ("task6", {"input": B.constant}, X.BAD_INPUT, "--input", "every voxel is 5"),
    "degenerate affine": ("task6", {"input": B.degenerate_affine}, X.BAD_INPUT, "--input", "degenerate"),
    "NaN affine": ("task6", {"input": B.nan_affine}, X.BAD_INPUT, "--input", "non-finite affine"),
    "most voxels 3e38": ("task6", {"input": B.extreme_majority}, X.BAD_INPUT, "--input", "rescale"),
    "channel outside the reference's field of view": (                                               # item 3
        "task2", {"flair": B.good, "dwi": B.far_away, "swi": B.good}, X.BAD_INPUT, "--dwi", "does not overlap"),
    "bad second channel": ("task2", {"flair": B.good, "dwi": B.good, "swi": B.complex64}, X.BAD_INPUT, "--swi",
                           "complex"),
    "required argument missing": ("task2", {"flair": B.good, "swi": B.good}, X.BAD_INPUT, "--dwi", "required"),
    "both t2s and swi": ("task2", {"flair": B.good, "dwi": B.good, "swi": B.good, "t2s": B.good}, X.BAD_INPUT,
                         "--t2s", "exactly one"),
    "neither t2s nor swi": ("task2", {"flair": B.good, "dwi": B.good}, X.BAD_INPUT, "--t2s", "neither"),
}


def _inputs(tmp_path: Path, makers: dict) -> dict[str, str]:
    out = {}
    for arg, make in makers.items():
        p = tmp_path / "in" / f"{arg}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        out[arg] = str(p if make is None else make(p))
    return out


def _args(inputs: dict[str, str]) -> list[str]:
    return [x for a, p in inputs.items() for x in (f"--{a}", p)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_entry_bad_input_is_one_line_and_writes_nothing(kind, tiny_bundle, tmp_path, capsys):
    task, makers, code, named, fragment = INPUT_KINDS[kind]
    inputs = _inputs(tmp_path, makers)
    output = tmp_path / "out" / f"sub_1{SUFFIX[task]}"
    got, _, err = run_cli(["fomo26", task, *_args(inputs), "--output", output, "--bundle", tiny_bundle], capsys)
    assert got == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last and fragment in last, last
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# kind: (how --output is given, exit code, fragment); the inputs are good
OUTPUT_KINDS = {
    "wrong suffix": (lambda t, i: t / "out.csv", X.BAD_INPUT, "writes .npy"),
    "an existing folder": (lambda t, i: _mkdir(t / "sub_1.npy"), X.BAD_INPUT, "existing folder"),                           # item 18
    "the input itself": (lambda t, i: i, X.BAD_INPUT, "is the input --input"),                        # item 7
    "a link to the input": (lambda t, i: _link(t / "alias.npy", i), X.BAD_INPUT, "is the input --input"),
    "under a file": (lambda t, i: _touch(t / "file") / "sub_1.npy", X.BAD_INPUT, "cannot be created"),  # item 4
}


def _link(path: Path, target: str) -> Path:
    os.symlink(target, path)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_entry_bad_output_is_refused_before_inference(kind, tiny_bundle, tmp_path, capsys, monkeypatch):
    make, code, fragment = OUTPUT_KINDS[kind]
    inp = str(B.good(tmp_path / "t.npy.nii.gz"))
    output = make(tmp_path, inp)
    before = sorted(os.listdir(tmp_path))
    import fomo_nnunet.challenge.inference as inference

    monkeypatch.setattr(inference.Embedder, "load", lambda *a, **k: pytest.fail("inference started"))
    got, _, err = run_cli(["fomo26", "task6", "--input", inp, "--output", output, "--bundle", tiny_bundle], capsys)
    assert got == code and fragment in err.strip().splitlines()[-1], err
    assert sorted(os.listdir(tmp_path)) == before and leftovers(tmp_path) == []
    assert nib.load(inp).shape == B.SHAPE  # the input is intact


def _break(bundle: Path, tmp_path: Path, how) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(bundle, b, symlinks=True)
    how(b)
    return b


def _edit_manifest(b: Path, fn) -> None:
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


# kind: (task, how the bundle is broken, the file or folder the message names)           # item 6
BUNDLE_KINDS = {
    "no bundle folder": ("task6", lambda b: shutil.rmtree(b), "not a model bundle"),
    "manifest not JSON": ("task6", lambda b: (b / "manifest.json").write_text("{oops"), "manifest.json"),
    "manifest a list": ("task6", lambda b: (b / "manifest.json").write_text("[]"), "manifest.json"),
    "manifest without tasks": ("task6", lambda b: (b / "manifest.json").write_text("{}"), "manifest.json"),
    "no model for the task": ("task2", lambda b: None, "no model for task2"),
    "entry without folds": ("task3", lambda b: _edit_manifest(b, lambda m: m["tasks"]["task3"].pop("folds")),
                            "manifest.json"),
    "embedding entry without path": ("task6", lambda b: _edit_manifest(b, lambda m: m["embedding"].pop("path")),
                                     "manifest.json"),
    "plans.json missing": ("task3", lambda b: (b / "task3" / "plans.json").unlink(), "plans.json"),
    "plans.json broken": ("task3", lambda b: (b / "task3" / "plans.json").write_text("{"), "plans.json"),
    "dataset.json broken": ("task3", lambda b: (b / "task3" / "dataset.json").write_bytes(b"\xff\xfe"),
                            "dataset.json"),
    "checkpoint missing": ("task3", lambda b: (b / "task3" / "fold_0" / "checkpoint_final.pth").unlink(),
                           "checkpoint_final.pth"),
    "checkpoint empty": ("task3", lambda b: (b / "task3" / "fold_0" / "checkpoint_final.pth").write_bytes(b""),
                         "checkpoint_final.pth"),
    "checkpoint not a checkpoint": ("task3", lambda b: None, "checkpoint_final.pth"),
    "embedding checkpoint missing": ("task6", lambda b: (b / "embedding" / "pretrained.pth").unlink(),
                                     "pretrained.pth"),
    "embedding checkpoint truncated": ("task6", lambda b: _truncate(b / "embedding" / "pretrained.pth"),
                                       "pretrained.pth"),
}


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:5000])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUNDLE_KINDS))
def test_entry_broken_bundle_exits_3_naming_the_file(kind, tiny_bundle, tmp_path, capsys):
    task, how, named = BUNDLE_KINDS[kind]
    b = _break(tiny_bundle, tmp_path, how)
    inputs = _inputs(tmp_path, {a: B.good for a in ENTRY_INPUTS[task]})
    output = tmp_path / "out" / f"sub_1{SUFFIX[task]}"
    got, _, err = run_cli(["fomo26", task, *_args(inputs), "--output", output, "--bundle", b], capsys)
    last = err.strip().splitlines()[-1]
    assert got == X.BAD_BUNDLE, err
    assert named in last and "Traceback" not in err, last
    if kind != "no bundle folder" and named != "no model for task2":
        assert "fomo-nnunet bundle" in last  # how to fix it
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("argv", [["fomo26", "task9", "--output", "x.txt"], ["fomo26", "task3", "--t1", "x"]],
                         ids=["unknown task", "no --output"])
def test_entry_usage_errors_exit_2(argv, capsys):
    assert run_cli(argv, capsys)[0] == X.BAD_INPUT


# ------------------------------------------------------------------------- runs that succeed
def _embed(tiny_bundle, tmp_path, capsys, maker, name="x") -> tuple[np.ndarray, str, Path]:
    inp = maker(tmp_path / f"{name}.nii.gz")
    output = tmp_path / "out" / name / "deeper" / "e.npy"   # missing folders are made
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, _, err = run_cli(["fomo26", "task6", "--input", inp, "--output", output, "--bundle", tiny_bundle],
                              capsys)
    assert got == X.OK, err
    assert not [w for w in caught if issubclass(w.category, (RuntimeWarning, FutureWarning))], \
        [str(w.message) for w in caught]
    return np.load(output, allow_pickle=False), err, output


SUCCESS_KINDS = {  # kind: (maker, a fragment of the note on stderr, or None)
    "sheared affine": (B.sheared, "sheared affine"),                                                  # item 2
    "one voxel 3e38": (B.one_extreme_voxel, "set to 0"),                                              # item 19
    "partial NaN": (B.partial_nan, "NaN/Inf voxels"),
    "singleton 4th axis": (B.singleton_4d, "singleton"),
    "uncompressed .nii": (B.uncompressed, None),
    "oblique affine": (B.oblique, "oblique"),
    "int16 with scaling": (B.int16_scaled, None),
    "LPS orientation": (B.lps, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SUCCESS_KINDS))
def test_entry_recoverable_input_runs_and_says_what_it_did(kind, tiny_bundle, tmp_path, capsys):
    maker, note = SUCCESS_KINDS[kind]
    vector, err, output = _embed(tiny_bundle, tmp_path, capsys, maker)
    assert vector.ndim == 1 and np.all(np.isfinite(vector))
    if note:
        assert note in err, err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_extreme_voxel_does_not_change_the_result(tiny_bundle, tmp_path, capsys):
    """One 3e38 voxel is treated as a corrupt voxel (set to 0), not allowed to overflow the z-score."""
    extreme, _, _ = _embed(tiny_bundle, tmp_path, capsys, B.one_extreme_voxel, "a")

    def zeroed(p):
        d = B.brain()
        d[10, 10, 10] = 0
        return B.save(p, d)

    clean, _, _ = _embed(tiny_bundle, tmp_path, capsys, zeroed, "b")
    assert np.allclose(extreme, clean, atol=1e-5)


@pytest.mark.slow
def test_output_gets_the_umask_mode(tiny_bundle, tmp_path, capsys):                                 # item 5
    old = os.umask(0o022)
    try:
        _, _, output = _embed(tiny_bundle, tmp_path, capsys, B.good)
    finally:
        os.umask(old)
    assert (output.stat().st_mode & 0o777) == 0o644


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGTERM", X.TERMINATED), ("SIGINT", X.INTERRUPTED)])
def test_entry_signal_during_inference_leaves_nothing(sig, code, tiny_bundle, tmp_path, capsys, monkeypatch):
    import signal
    import time

    import fomo_nnunet.challenge.inference as inference

    def killed(*a, **k):
        os.kill(os.getpid(), getattr(signal, sig))
        time.sleep(5)
        pytest.fail("the signal did not stop the run")

    monkeypatch.setattr(inference, "embed_array", killed)
    # a shell starts background jobs (CI's among them) with SIGINT ignored: give this process the
    # disposition an interactive user's Ctrl-C meets (Python's KeyboardInterrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    inp = B.good(tmp_path / "x.nii.gz")
    output = tmp_path / "out" / "e.npy"
    try:
        got, _, err = run_cli(["fomo26", "task6", "--input", inp, "--output", output, "--bundle", tiny_bundle],
                              capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == code and f"interrupted ({sig})" in err, err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_grid_note_says_what_differs(tmp_path):
    """Only the affine differs: the note says so instead of 'grid (20, 20, 20) differs from (20, 20, 20)'."""
    from fomo_nnunet.challenge.entry_io import read_input, resample_onto

    ref = read_input("flair", str(B.good(tmp_path / "f.nii.gz")))
    other = resample_onto(read_input("dwi", str(B.shifted(tmp_path / "d.nii.gz"))), ref)
    note = other.notes[-1]
    assert "same shape (20, 20, 20)" in note and "origin shifted by 1 mm" in note, note


@pytest.mark.subprocess
def test_help_does_not_import_torch():                                                               # item 17
    import subprocess
    import sys

    code = ("import sys\nfrom fomo_nnunet.cli import main\ntry:\n    main(['fomo26', '--help'])\nexcept SystemExit:"
            "\n    pass\nprint('torch' in sys.modules, 'nnunetv2' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "False False", p.stdout[-500:] + p.stderr[-2000:]
    assert "Exit codes" in p.stdout or "exit codes" in p.stdout


# ============================================================================ the converters
# kind: (maker, the fragment of the reason in conversion_report.json)
FILE_KINDS = {
    "truncated gzip": (B.truncated_gzip, "truncated or corrupt"),
    "text named .nii.gz": (B.text_named_gz, "not gzip"),
    "gzip of text": (B.gzip_of_text, "not a NIfTI header"),
    "empty file": (B.empty_file, "0 bytes"),
    "2D": (B.flat_2d, "2D image"),
    "5D": (B.five_d, "5D image"),
    "zero-size axis": (B.zero_size_axis, "axis of size 0"),
    "one slice": (B.one_slice, "too few slices"),
    "all NaN": (B.all_nan, "NaN or Inf"),
    "all zero": (B.all_zero, "all voxels zero"),
    "symlink loop": (B.symlink_loop, "symlink loop"),
    "broken symlink": (B.broken_symlink, "broken symlink"),
    "a folder named .nii.gz": (B.folder, "is a folder"),
    "a fifo": (B.fifo, "not a regular file"),
    "complex64": (B.complex64, "complex-valued"),                                                     # item 12
    "complex128": (B.complex128, "complex-valued"),
    "RGB": (B.rgb24, "not a real number"),
    "header claims 256 GB": (B.claims_256gb, "256 GiB"),
    "header claims 4 GB": (B.claims_4gb, "4 GiB"),                                                    # item 14
    "header claims more than the gzip holds": (B.claims_860mb_in_small_gzip, "more than a"),
    "truncated .nii": (B.truncated_nii, "truncated"),
    ".nii that is no NIfTI": (B.not_nifti_nii, "not a NIfTI"),
    "degenerate affine": (B.degenerate_affine, "degenerate"),
    "NaN affine": (B.nan_affine, "non-finite affine"),
    "sheared affine": (B.sheared, "sheared affine"),
    "most voxels 3e38": (B.extreme_majority, "rescale"),
}
NOTE_KINDS = {  # kind: (maker, a fragment of the case's note, or None): converted, with the note
    "real 4D": (B.real_4d, "kept the first"),
    "singleton 4D": (B.singleton_4d, None),
    "partial NaN": (B.partial_nan, "NaN/Inf voxels"),
    "one voxel 3e38": (B.one_extreme_voxel, "set to 0"),
    "LPS orientation": (B.lps, "reoriented to RAS"),
    "oblique affine": (B.oblique, None),
    "int16 with scaling": (B.int16_scaled, None),
    "uncompressed .nii": (B.uncompressed, None),
}


def _stem(kind: str) -> str:
    return "k" + "".join(c for c in kind if c.isalnum())[:40]


@pytest.fixture(scope="module")
def converted_corpus(tmp_path_factory):
    """One FOMO60K tree holding every bad kind (sub_1/ses_1/<kind>.nii.gz) plus odd folders, converted
    with two workers and --copy; the tests below read its report."""
    root = tmp_path_factory.mktemp("corpus")
    src = root / "fomo60k"
    ses = src / "sub_1" / "ses_1"
    ses.mkdir(parents=True)
    for kind, (make, _) in {**FILE_KINDS, **NOTE_KINDS}.items():
        make(ses / f"{_stem(kind)}.nii.gz")
    B.good(ses / "t1.nii.gz")
    B.good(ses / "t1.nii")                                     # the same scan twice: one case
    B.good(src / "sub_2" / "ses_1" / "t1.nii.gz")
    os.symlink("ses_loop", src / "sub_2" / "ses_loop")         # a session folder that is a link loop
    (src / "sub_3" / "ses_1").mkdir(parents=True)              # a session folder that cannot be listed
    B.good(src / "sub_3" / "ses_1" / "t1.nii.gz")
    raw = root / "raw"
    raw.mkdir()
    unreadable = str(src / "sub_3" / "ses_1")
    real_scandir = os.scandir

    def scandir(path="."):  # root reads any folder; a permission error is simulated for one
        if os.fspath(path) == unreadable:
            raise PermissionError(13, "Permission denied", unreadable)
        return real_scandir(path)

    mp = pytest.MonkeyPatch()
    mp.setenv("nnUNet_raw", str(raw))
    mp.setattr(os, "scandir", scandir)
    old = os.umask(0o022)
    try:
        res = C.convert_pretrain(src, num_processes=2, progress=False, copy=True)
    finally:
        os.umask(old)
        mp.undo()
    report = json.loads((res.folder / "conversion_report.json").read_text())
    return res, report, src


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_converter_skips_bad_file_with_its_reason(kind, converted_corpus):
    res, report, _ = converted_corpus
    _, fragment = FILE_KINDS[kind]
    stem = _stem(kind)
    reasons = [s["reason"] for s in report["skipped"] if Path(s["path"]).name.split(".")[0] == stem]
    assert reasons and all(fragment in r for r in reasons), (kind, reasons)
    assert not list(res.folder.rglob(f"*{stem}*.nii.gz"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NOTE_KINDS))
def test_converter_converts_recoverable_file_with_a_note(kind, converted_corpus):
    res, report, _ = converted_corpus
    _, note = NOTE_KINDS[kind]
    case = f"sub_1_ses_1_{_stem(kind)}"
    img = nib.load(res.folder / "imagesTr" / f"{case}_0000.nii.gz")
    data = np.asanyarray(img.dataobj)
    assert img.shape == B.SHAPE and img.get_data_dtype() == np.float32 and np.abs(data).max() < 1e6
    if note:
        assert any(note in n for n in report["notes"].get(case, [])), report["notes"].get(case)


@pytest.mark.slow
def test_converter_reports_folders_and_duplicates(converted_corpus):                                # item 11
    res, report, src = converted_corpus
    by_path = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "cannot list folder: Permission denied" in by_path[str(src / "sub_3" / "ses_1")]
    assert "cannot open folder link" in by_path[str(src / "sub_2" / "ses_loop")]
    assert "the same scan as t1.nii.gz" in by_path[str(src / "sub_1" / "ses_1" / "t1.nii")]
    assert (res.folder / "imagesTr" / "sub_1_ses_1_t1_0000.nii.gz").is_file()
    assert not list(res.folder.rglob("*t1_*_0000.nii.gz"))  # no second case from t1.nii


@pytest.mark.slow
def test_converter_outputs_get_the_umask_mode(converted_corpus):                                   # item 15
    res, _, _ = converted_corpus
    files = [res.folder / "dataset.json", *res.folder.glob("imagesTr/*"), *res.folder.glob("labelsTr/*")]
    assert files and {oct(f.stat().st_mode & 0o777) for f in files} == {"0o644"}
    assert leftovers(res.folder) == []


# --------------------------------------------------------------------------- task folders
def _task_tree(root: Path, task: str, label_text: dict[str, bytes] | None = None, seg=None,
               channels: dict[str, object] | None = None) -> Path:
    t = get_task(task)
    for sub in (label_text or {"sub_1": None}):
        ses = root / "preprocessed" / sub / "ses_1"
        ses.mkdir(parents=True, exist_ok=True)
        for ch in t.channels:
            make = (channels or {}).get(ch.name, B.good)
            if make is not None:
                make(ses / f"{ch.file_stems[0]}.nii.gz")
        lab = root / "labels" / sub / "ses_1"
        lab.mkdir(parents=True, exist_ok=True)
        if label_text and label_text[sub] is not None:
            (lab / "label.txt").write_bytes(label_text[sub])
        if seg is not None:
            seg(lab / "seg.nii.gz")
    return root


def _seg(values=(1,), affine=None, dtype=np.uint8, shape=B.SHAPE):
    def make(p):
        s = np.zeros(shape, dtype)
        for k, v in enumerate(values):
            s[5 + k, 5:8, 5:8] = v
        return B.save(p, s, affine)
    return make


def _shifted_affine(mm=1.0):
    a = np.eye(4)
    a[0, 3] = mm
    return a


# kind: (task, tree arguments, expected: "ok" or a fragment of the skip reason)
TASK_KINDS = {
    "label.txt with a UTF-8 BOM": ("task5", {"label_text": {"sub_1": b"\xef\xbb\xbf1\n"}}, "ok"),          # item 13
    "label.txt empty": ("task5", {"label_text": {"sub_1": b""}}, "0 bytes"),
    "label.txt not a number": ("task3", {"label_text": {"sub_1": b"old\n"}}, "not a number"),
    "label.txt two values": ("task3", {"label_text": {"sub_1": b"1 2\n"}}, "one value"),
    "label.txt NaN": ("task3", {"label_text": {"sub_1": b"nan"}}, "not finite"),
    "label.txt not UTF-8": ("task3", {"label_text": {"sub_1": b"\xff\xfe4\x00"}}, "cannot read label.txt"),
    "class out of range": ("task5", {"label_text": {"sub_1": b"3"}}, "outside"),
    "class not an integer": ("task5", {"label_text": {"sub_1": b"0.5"}}, "not a class index"),
    "label missing": ("task3", {"label_text": {"sub_1": None}}, "missing label"),
    "channel missing": ("task2", {"seg": _seg(), "channels": {"dwi": None}}, "missing channel"),
    "channel unreadable": ("task2", {"seg": _seg(), "channels": {"dwi": B.truncated_gzip}}, "truncated"),
    "channel outside the field of view": ("task2", {"seg": _seg(), "channels": {"dwi": B.far_away}}, "no overlap"),
    "segmentation shifted": ("task4", {"seg": _seg(affine=_shifted_affine())}, "origin shifted by 1 mm"),
    "segmentation other label": ("task2", {"seg": _seg(values=(3,))}, "not in task labels"),
    "segmentation non-integer": ("task2", {"seg": _seg(values=(0.5,), dtype=np.float32)}, "non-integer"),
    "segmentation 4D": ("task4", {"seg": lambda p: B.save(p, np.zeros((20, 20, 20, 2), np.uint8))}, "4D image"),
    "segmentation complex": ("task4", {"seg": B.complex64}, "complex-valued"),
}


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_task_converter_bad_item_is_reported(kind, tmp_path, raw):
    task, tree, expected = TASK_KINDS[kind]
    src = _task_tree(tmp_path / "src", task, **tree)
    res = C.convert_task(task, src, progress=False)
    report = res.report
    if expected == "ok":
        assert report["converted"] == 1 and not report["skipped"], report
        assert json.loads((res.folder / "targets.json").read_text()) == {"sub_1_ses_1": 1}
    else:
        assert report["converted"] == 0 and len(report["skipped"]) == 1, report
        assert expected in report["skipped"][0]["reason"], report["skipped"][0]


def test_task_channel_grid_note_says_what_differs(tmp_path, raw):
    src = _task_tree(tmp_path / "src", "task2", seg=_seg(), channels={"dwi": B.shifted})
    res = C.convert_task("task2", src, progress=False)
    notes = res.report["notes"]["sub_1_ses_1"]
    assert any("same shape (20, 20, 20)" in n and "origin shifted by 1 mm" in n for n in notes), notes


@pytest.mark.parametrize("shift_mm, same", [(5e-4, True), (5e-3, False)])
def test_conversion_and_entry_agree_whether_two_channels_share_a_grid(shift_mm, same, tmp_path, raw):
    # 5e-4 mm lies between the tolerances the two used before they shared one (entry 1e-4, conversion 1e-3)
    from fomo_nnunet.challenge.entry_io import read_input, resample_onto

    src = _task_tree(tmp_path / "src", "task2", seg=_seg(),
                     channels={"dwi": lambda p: B.save(p, B.brain(seed=3), _shifted_affine(shift_mm))})
    notes = C.convert_task("task2", src, progress=False).report["notes"].get("sub_1_ses_1", [])
    converted_as_same = not any("resampled" in n for n in notes)
    ses = src / "preprocessed" / "sub_1" / "ses_1"
    first, dwi_channel = get_task("task2").channels[:2]
    assert dwi_channel.name == "dwi"
    ref, dwi = (read_input(ch.cli_args[0], str(ses / f"{ch.file_stems[0]}.nii.gz")) for ch in (first, dwi_channel))
    entry_as_same = resample_onto(dwi, ref) is dwi
    assert converted_as_same == entry_as_same == same, (notes, shift_mm)


def test_task_unreadable_session_folder_is_reported(tmp_path, raw, monkeypatch):                  # item 11
    src = _task_tree(tmp_path / "src", "task3", label_text={"sub_1": b"40", "sub_2": b"50"})
    locked = str(src / "preprocessed" / "sub_2" / "ses_1")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if os.fspath(p) == locked else real(p))
    res = C.convert_task("task3", src, progress=False)
    assert res.report["converted"] == 1
    (skip,) = res.report["skipped"]
    assert skip["case"] == "sub_2_ses_1" and "Permission denied" in skip["reason"], skip


# ------------------------------------------------------------------------------ run level
RUN_KINDS = {  # kind: (argv after `convert`, environment change, exit code, fragment of stderr)
    "nnUNet_raw unset": (["pretrain", "{src}"], {"nnUNet_raw": None}, X.BAD_INPUT, "nnUNet_raw"),
    "source missing": (["pretrain", "{tmp}/nowhere"], {}, X.BAD_INPUT, "no such folder"),
    "source not a corpus": (["pretrain", "{tmp}/empty"], {}, X.BAD_INPUT, "cannot tell the layout"),
    "task source not a task folder": (["task", "task3", "{tmp}/empty"], {}, X.BAD_INPUT, "not a FOMO task folder"),
    "bad shard": (["pretrain", "{src}", "--shard", "3/2"], {}, X.BAD_INPUT, "--shard"),
    "no workers": (["pretrain", "{src}", "-np", "0"], {}, X.BAD_INPUT, "-np"),
    "dataset id out of range": (["pretrain", "{src}", "-d", "1000"], {}, X.BAD_INPUT, "1..999"),
    "bad dataset name": (["pretrain", "{src}", "--name", "a/b"], {}, X.BAD_INPUT, "dataset name"),
    "dataset id used by another": (["pretrain", "{src}", "-d", "77"], {}, X.BAD_INPUT, "already used"),
    "unknown task": (["task", "task9", "{src}"], {}, X.BAD_INPUT, "invalid choice"),
    "a good corpus": (["pretrain", "{src}", "--no-progress"], {}, X.OK, ""),
}


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_converter_exit_codes(kind, tmp_path, raw, monkeypatch, capsys):
    argv, env, code, fragment = RUN_KINDS[kind]
    src = tmp_path / "src"
    B.good(src / "sub_1" / "ses_1" / "t1.nii.gz")
    (tmp_path / "empty").mkdir()
    (raw / "Dataset077_Other").mkdir()
    for k, v in env.items():
        monkeypatch.delenv(k) if v is None else monkeypatch.setenv(k, v)
    got, _, err = run_cli(["convert", *[a.format(src=src, tmp=tmp_path) for a in argv]], capsys)
    assert got == code, err
    if fragment:
        assert fragment in err and "Traceback" not in err, err


# ------------------------------------------------------------------ interruptions and reruns
# --copy: a conversion by reference writes only masks and takes well under a second for the whole busy
# corpus, which could end before the signal is sent; copies (compressed) keep the workers busy for seconds
CONVERT = ("import sys\nfrom fomo_nnunet.cli import main\n"
           "sys.exit(main(['convert', 'pretrain', sys.argv[1], '-np', '2', '--copy', '--no-progress']))")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    import time

    end = time.time() + seconds
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def busy_corpus(tmp_path_factory) -> Path:
    """Enough 64^3 scans (uncompressed, quick to write) to keep two workers busy for a few seconds."""
    src = tmp_path_factory.mktemp("busy") / "fomo60k"
    data = B.brain((64, 64, 64))
    for i in range(60):
        B.save(src / f"sub_{i:02d}" / "ses_1" / "t1.nii", data + i)
    return src


def _start_and_wait_for_output(src: Path, raw: Path):
    import subprocess
    import sys
    import time

    import signal

    env = dict(os.environ, nnUNet_raw=str(raw))
    # a shell starts background jobs (CI's among them) with SIGINT ignored, and Python keeps it ignored:
    # give the command the disposition an interactive user's Ctrl-C meets
    p = subprocess.Popen([sys.executable, "-c", CONVERT, str(src)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    masks = raw / "Dataset900_FOMOPretrain" / "labelsTr"       # written with or without --copy
    end = time.time() + 60
    while time.time() < end and not (masks.is_dir() and any(masks.glob("*.nii.gz"))):
        assert p.poll() is None, p.communicate()
        time.sleep(0.01)
    workers = _children(p.pid)
    assert len(workers) >= 2, "the workers should be running now"
    return p, workers


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [("SIGINT", X.INTERRUPTED), ("SIGTERM", X.TERMINATED)])
def test_signal_to_the_main_process_stops_workers_and_leaves_no_temp_files(sig, code, busy_corpus, tmp_path):
    import signal                                                                                    # items 8, 16

    raw = tmp_path / "raw"
    raw.mkdir()
    p, workers = _start_and_wait_for_output(busy_corpus, raw)
    os.kill(p.pid, getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err[-2000:]
    assert f"interrupted ({sig})" in err and "Traceback" not in err, err[-2000:]
    assert _wait_gone(workers, 5) == []
    assert leftovers(raw) == []


HALF_BUILT = """
import argparse, os, signal, sys, time
import fomo_nnunet.cli as cli

class HalfBuilt:                       # like nibabel's OrderedSet: __del__ needs what __init__ sets last
    def __init__(self):
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))   # the handler raises here, before self.map exists
        time.sleep(5)
        self.map = {}
    def __del__(self):
        len(self.map)

def run(args):
    HalfBuilt()

def build_parser():
    p = argparse.ArgumentParser()
    p.set_defaults(func=run)
    return p

cli.build_parser = build_parser
sys.exit(cli.main([]))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("sig,code", [("SIGTERM", X.TERMINATED), ("SIGINT", X.INTERRUPTED)])
def test_signal_inside_a_half_built_object_prints_one_line(sig, code):
    """CI once printed nibabel's `OrderedSet.__del__` traceback above "interrupted (SIGTERM)"."""
    import signal
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HALF_BUILT, sig], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert out.returncode == code, out.stderr
    assert out.stderr.strip() == f"interrupted ({sig})", out.stderr


def test_unraisable_hook_passes_on_and_comes_back_with_nested_commands(monkeypatch):
    """The benchmark runs commands in-process through `main`: an unraisable exception before any interrupt
    reaches the hook in place before the outer command, and that hook is back afterwards."""
    import argparse
    import sys

    import fomo_nnunet.cli as cli

    seen, depth = [], []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    outer = sys.unraisablehook

    def run(args):
        depth.append(1)
        if len(depth) == 1:
            assert cli.main([]) == 0
        sys.unraisablehook("unraisable")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=run)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 0
    assert seen == ["unraisable", "unraisable"] and sys.unraisablehook is outer


@pytest.mark.slow
def test_killed_parent_leaves_no_living_worker(busy_corpus, tmp_path, monkeypatch):                # item 9
    import signal

    raw = tmp_path / "raw"
    raw.mkdir()
    p, workers = _start_and_wait_for_output(busy_corpus, raw)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert _wait_gone(workers, 2 + 4 * C.PARENT_POLL_SECONDS) == []
    assert leftovers(raw) == []  # the workers removed their temporary files on their way out
    # a rerun finishes the dataset
    monkeypatch.setenv("nnUNet_raw", str(raw))
    res = C.convert_pretrain(busy_corpus, progress=False)
    assert res.report["converted"] == 60 and res.already_done + res.converted == 60


@pytest.mark.subprocess
def test_rerun_removes_leftovers_of_dead_runs_only(tmp_path, raw):                                 # items 8, 16
    import subprocess
    import sys
    import time

    src = tmp_path / "src"
    B.good(src / "sub_1" / "ses_1" / "t1.nii.gz")
    folder = C.convert_pretrain(src, progress=False).folder
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead_file = folder / "imagesTr" / f".x_0000.nii.gz.{A.process_tag(int(dead))}.abc123{A.TMP_SUFFIX}"
    live_file = folder / "labelsTr" / f".x.nii.gz.{A.process_tag()}.def456{A.TMP_SUFFIX}"
    old_file = folder / f".dataset.json.q1w2e3{A.TMP_SUFFIX}"              # an older run's name, hours old
    young_foreign = folder / "imagesTr" / f".y_0000.nii.gz.otherhost-1.zz{A.TMP_SUFFIX}"
    for f in (dead_file, live_file, old_file, young_foreign):
        f.write_bytes(b"half a file")
    os.utime(old_file, (time.time() - 2 * C.STALE_TMP_SECONDS,) * 2)
    res = C.convert_pretrain(src, progress=False)
    assert sorted(res.leftovers) == sorted(map(str, (dead_file, old_file)))
    assert live_file.exists() and young_foreign.exists()  # a live run's (or another node's, recent) file stays


def test_rerun_removes_cases_whose_source_is_gone(tmp_path, raw, capsys):                          # item 10
    src = tmp_path / "src"
    for i in range(3):
        B.save(src / f"sub_{i}" / "ses_1" / "t1.nii.gz", B.brain(seed=i))
    assert main(["convert", "pretrain", str(src), "--no-progress"]) == 0
    folder = raw / "Dataset900_FOMOPretrain"
    gone = src / "sub_1" / "ses_1" / "t1.nii.gz"
    keep = gone.read_bytes()
    gone.unlink()
    assert main(["convert", "pretrain", str(src), "--no-progress"]) == 0
    assert "removed 1 cases whose source is gone: sub_1_ses_1_t1" in capsys.readouterr().out
    report = json.loads((folder / "conversion_report.json").read_text())
    assert [r["case"] for r in report["removed"]] == ["sub_1_ses_1_t1"] and "source is gone" in report["removed"][0][
        "reason"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert not list(folder.rglob("sub_1_ses_1_t1*.nii.gz"))
    assert "sub_1_ses_1_t1" not in json.dumps(json.loads((folder / "subjects.json").read_text()))
    gone.write_bytes(keep)  # the source comes back: so does the case
    assert main(["convert", "pretrain", str(src), "--no-progress"]) == 0
    report = json.loads((folder / "conversion_report.json").read_text())
    assert report["removed"] == [] and report["converted"] == 3


PEAK = ("import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


@pytest.mark.slow
@pytest.mark.parametrize("who", ["fomo26", "convert"])
def test_header_claims_are_refused_without_the_memory_they_claim(who, tmp_path, tiny_bundle):       # items 1, 14
    """Peak memory (max RSS of the process) stays far below the 4 GB and 256 GB the headers claim."""
    import subprocess
    import sys

    src = tmp_path / "src"
    f4, f256 = src / "sub_1" / "ses_1" / "t1.nii.gz", src / "sub_1" / "ses_1" / "t2.nii.gz"
    f4.parent.mkdir(parents=True)
    B.claims_4gb(f4)
    B.claims_256gb(f256)
    cli = [sys.executable, "-m", "fomo_nnunet.cli"]
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"))
    runs = ([[*cli, "fomo26", "task6", "--input", str(f), "--output", str(tmp_path / "e.npy"), "--bundle",
              str(tiny_bundle)] for f in (f4, f256)] if who == "fomo26"
            else [[*cli, "convert", "pretrain", str(src), "-np", "2", "--no-progress"]])
    for argv in runs:
        out = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, env=env,
                             timeout=120).stdout.split()
        code, peak_kb = int(out[0]), int(out[1])
        assert code == X.BAD_INPUT  # fomo26 refuses the file; convert converts nothing: exit 2 (docs/challenge.md)
        assert peak_kb < 600_000, f"{argv[-1]}: peak {peak_kb / 1e6:.2f} GB"
    if who == "convert":
        report = json.loads((tmp_path / "raw" / "Dataset900_FOMOPretrain" / "conversion_report.json").read_text())
        assert sorted(s["reason"].split(" = ")[0] for s in report["skipped"]) == [
            "the header claims shape (1024, 1024, 1024)", "the header claims shape (4096, 4096, 4096)"]


@pytest.mark.stress
def test_forked_pool_workers_die_on_sigterm_without_running_our_handler(tmp_path):
    """nnU-Net's fork pools are terminated with SIGTERM: the workers must not inherit the CLI's handler."""
    import subprocess
    import sys

    script = tmp_path / "pool.py"
    script.write_text(
        "import multiprocessing as mp, os, signal, sys\n"
        "from fomo_nnunet import cli\n"
        "signal.signal(signal.SIGTERM, cli._terminate)   # as main() installs it\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)\n"
        "assert os.waitpid(pid, 0)[1] == 0, 'the forked child kept the handler'\n"
        "assert signal.getsignal(signal.SIGTERM) is cli._terminate  # the parent keeps it\n"
        "def default(_):\n"
        "    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
        "pool = mp.get_context('fork').Pool(4)   # as nnU-Net's pools, which end with terminate(): SIGTERM\n"
        "assert all(pool.map(default, range(16), chunksize=1)), 'a pool worker kept the handler'\n"
        "pool.close()   # close + join, not terminate(): CPython's terminate() can itself hang on a loaded machine\n"
        "pool.join()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Terminated" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]


@pytest.mark.stress
def test_converter_pool_finishes_every_time(tmp_path):
    """The converter's worker pool ends cleanly after its last case, run after run. Before the fix it
    called terminate() after close(): SIGTERM raised in workers already leaving, and one run in 16-65
    hung in the pool's join (the CI hang of `convert pretrain`)."""
    import subprocess
    import sys

    script = tmp_path / "pools.py"
    script.write_text(
        "from fomo_nnunet.data import convert\n"
        "for i in range(150):\n"
        "    assert sorted(convert._run_jobs(abs, list(range(-31, 0)), 2, False, 'x')) == list(range(1, 32))\n")
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("a converter pool hung after its last case")
    assert out.returncode == 0, out.stderr[-3000:]


# ------------------------------------------------- convert: stop time, stale cases, unreadable subjects
STUCK_POOL = ("import os, signal, sys, time\n"
              "from fomo_nnunet.data import workers as W\n"
              "def stuck(job):   # a worker that cannot be stopped by SIGTERM (as in a long C call)\n"
              "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
              "    os.write(1, b'busy\\n')   # one write: the two workers' lines never interleave\n"
              "    end = time.monotonic() + 60\n"
              "    while time.monotonic() < end:   # in Python, not asleep: a SIGTERM taken by any other thread\n"
              "        pass                        # of the worker would run its handler here at once\n"
              "try:\n"
              "    W.run_jobs(stuck, [1, 2, 3], 2, False, 'x', on_killed=lambda pids: print('killed', len(pids)))\n"
              "except W.Interrupted:\n"
              "    sys.exit(130)\n")


@pytest.mark.stress
def test_convert_stop_is_bounded_even_when_a_worker_ignores_sigterm(tmp_path):
    """SIGINT to the parent: workers get SIGTERM, and those still alive after STOP_GRACE_SECONDS are
    killed, so the stop takes the grace period plus a moment, whatever the workers are doing."""
    import signal
    import subprocess
    import sys
    import time

    from fomo_nnunet.data import workers as W

    p = subprocess.Popen([sys.executable, "-c", STUCK_POOL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # both workers inside their job (SIGTERM blocked): then both must be killed
    assert [p.stdout.readline().strip() for _ in range(2)] == ["busy", "busy"]
    workers = _children(p.pid)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 130 and "killed 2" in out, out + err
    assert took < W.STOP_GRACE_SECONDS + 3, f"stopped after {took:.1f} s"
    assert _wait_gone(workers, 2) == []


@pytest.mark.slow
def test_convert_sigint_under_load_stops_within_the_bound(busy_corpus, tmp_path):                   # issue 38
    """Three SIGINTs to `convert -np 2` at random moments while four busy loops load the two cores:
    each run ends within STOP_GRACE_SECONDS plus 4 s, with exit 130, no worker left, no temporary file."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from fomo_nnunet.data import workers as W

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    times = []
    try:
        for trial in range(3):
            raw = tmp_path / f"raw{trial}"
            raw.mkdir()
            p, workers = _start_and_wait_for_output(busy_corpus, raw)
            time.sleep(random.uniform(0, 0.5))
            t0 = time.monotonic()
            os.kill(p.pid, signal.SIGINT)
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                pytest.fail(f"trial {trial}: still running 60 s after SIGINT")
            took = time.monotonic() - t0
            times.append(round(took, 2))
            print("stop times (s):", times)
            assert p.returncode == X.INTERRUPTED and "Traceback" not in err, err[-2000:]
            assert took < W.STOP_GRACE_SECONDS + 4, f"trial {trial}: stopped after {took:.1f} s"
            assert _wait_gone(workers, 2) == [] and leftovers(raw) == []
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_task_rerun_drops_a_case_whose_image_was_deleted(tmp_path, raw, capsys):                   # issue 38
    src = _task_tree(tmp_path / "src", "task3", label_text={"sub_1": b"40", "sub_2": b"50"})
    assert main(["convert", "task", "task3", str(src), "--no-progress"]) == 0
    folder = raw / "Dataset903_FOMO3Brainage"
    (src / "preprocessed" / "sub_2" / "ses_1" / "t1.nii.gz").unlink()
    capsys.readouterr()
    assert main(["convert", "task", "task3", str(src), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 cases had changed or vanished source files" in out and "sub_2_ses_1" in out, out
    assert json.loads((folder / "targets.json").read_text()) == {"sub_1_ses_1": 40.0}
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert not list(folder.rglob("sub_2_ses_1*.nii.gz"))
    (skip,) = json.loads((folder / "conversion_report.json").read_text())["skipped"]
    assert skip["case"] == "sub_2_ses_1" and "missing channel t1" in skip["reason"], skip


@pytest.mark.parametrize("rerun", [False, True], ids=["first run", "after a conversion"])
def test_task_unreadable_subject_folder_is_reported(rerun, tmp_path, raw, monkeypatch):            # issue 38
    """A subject folder that cannot be listed (root reads everything: the error is simulated) and a
    subject entry that is a file are lines of the report; a case converted before from an unreadable
    folder is removed with that reason, not 'the source is gone'."""
    src = _task_tree(tmp_path / "src", "task3", label_text={"sub_1": b"40", "sub_2": b"50"})
    (src / "preprocessed" / "sub_3").write_text("not a folder")
    if rerun:
        C.convert_task("task3", src, progress=False)
    locked = str(src / "preprocessed" / "sub_2")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p=".": (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if os.fspath(p) == locked else real(p))
    res = C.convert_task("task3", src, progress=False)
    report = json.loads((res.folder / "conversion_report.json").read_text())
    by_path = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "cannot list folder: Permission denied" in by_path[locked], report
    assert "not a folder (a subject folder was expected here)" in by_path[str(src / "preprocessed" / "sub_3")]
    assert report["converted"] == 1 and json.loads((res.folder / "targets.json").read_text()) == {"sub_1_ses_1": 40}
    if rerun:
        (gone,) = report["removed"]
        assert gone["case"] == "sub_2_ses_1" and f"its folder {locked} cannot be read now" in gone["reason"], gone
