"""The submission: container/predict.py for all seven tasks with the official argument names.

Models here are untrained (weights as initialised, the right architecture and plans): what is
tested is the I/O contract, not the predictions. The bundle is built with `fomo-nnunet bundle`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fomo_nnunet.challenge.entry_io import check_output_file
from fomo_nnunet.tasks import TASKS_BY_NUMBER, get_task
from helpers import run, save_fake_pretraining

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PREDICT = ROOT / "container" / "predict.py"


@pytest.fixture(scope="module")
def bundle(tasks_ws):
    root, env, ckpt = tasks_ws
    from fomo_nnunet.benchmarks.throughput import write_untrained_model

    models = {n: Path(write_untrained_model(root / "preprocessed" / TASKS_BY_NUMBER[n].dataset_name, root / "results"))
              for n in (1, 2, 3, 4, 5)}
    out = root / "bundle"
    args = ["fomo-nnunet", "bundle", "-o", str(out), "--embedding", str(ckpt)]
    for n, m in models.items():
        args += [f"--task{n}", str(m)]
    run(args, env)
    return root, env, out, models, ckpt


def _image(path: Path, shape=(40, 44, 40), spacing=4.0, seed=0, data=None) -> str:
    rng = np.random.default_rng(seed)
    if data is None:
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
        brain = (grid ** 2).sum(0) < 0.7
        data = np.where(brain, rng.normal(100, 15, shape), 0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), path)
    return str(path)


def predict(env: dict, bundle: Path, task: str, args: list[str]) -> subprocess.CompletedProcess:
    e = dict(env, FOMO_TASK=task, FOMO_BUNDLE=str(bundle))
    return subprocess.run([sys.executable, str(PREDICT), *args], env=e, capture_output=True, text=True, timeout=300)


CASES = {  # task -> official arguments (swi and t2s alternatives both exercised)
    "task1": ["flair", "dwi", "adc", "swi"],
    "task2": ["flair", "dwi", "t2s"],
    "task3": ["t1"],
    "task4": ["t2"],
    "task5": ["t1"],
    "task6": ["input"],
    "task7": ["input"],
}
SUFFIX = {"segmentation": ".nii.gz", "embedding": ".npy"}


@pytest.mark.parametrize("task", list(CASES))
def test_every_task_writes_a_valid_output(bundle, tmp_path, task):
    _, env, out, _, _ = bundle
    t = get_task(task)
    inputs = {a: _image(tmp_path / f"{a}.nii.gz", seed=i) for i, a in enumerate(CASES[task])}
    args = [x for a, p in inputs.items() for x in (f"--{a}", p)]
    output = tmp_path / "out" / f"sub_1{SUFFIX.get(t.kind, '.txt')}"
    output.parent.mkdir()
    # mirroring TTA only where it is cheap (one crop); a sliding window with it is 8x the CPU time
    tta = [] if t.kind in ("classification", "regression") else ["--no-mirroring"]
    p = predict(env, out, task, [*args, "--output", str(output), "--verbose", *tta])
    assert p.returncode == 0, p.stderr[-3000:]
    check_output_file(t, str(output), list(inputs.values()))
    assert "timing" in p.stderr  # --verbose: seconds per step
    assert ("note: mirroring test-time augmentation" in p.stderr) == (t.kind != "embedding"), p.stderr
    assert "Warning" not in p.stderr, p.stderr  # e.g. no FutureWarning of a module nobody uses here
    assert sorted(os.listdir(output.parent)) == [output.name]  # nothing else written there
    if task in ("task6", "task7"):
        other = tmp_path / "out" / "sub_2.npy"
        assert predict(env, out, task, ["--input", _image(tmp_path / "b.nii.gz", shape=(36, 40, 44), seed=9),
                                        "--output", str(other)]).returncode == 0
        a, b = np.load(output), np.load(other)
        assert a.shape == b.shape and not np.allclose(a, b)


def test_segmentation_on_inputs_of_different_grids_follows_the_reference(bundle, tmp_path):
    _, env, out, _, _ = bundle
    flair = _image(tmp_path / "flair.nii.gz", shape=(40, 44, 40), spacing=4.0)
    dwi = _image(tmp_path / "dwi.nii.gz", shape=(27, 30, 27), spacing=6.0, seed=1)
    swi = _image(tmp_path / "swi.nii.gz", shape=(54, 58, 54), spacing=3.0, seed=2)
    output = tmp_path / "seg.nii.gz"
    p = predict(env, out, "task2", ["--flair", flair, "--dwi", dwi, "--swi", swi, "--output", str(output),
                                    "--no-mirroring"])
    assert p.returncode == 0, p.stderr[-3000:]
    seg, ref = nib.load(output), nib.load(flair)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)


def test_segmentation_of_a_sheared_image_keeps_its_affine(bundle, tmp_path):
    """SimpleITK refuses non-orthogonal axes: the model sees the nearest orthogonal grid, the output
    keeps the input's (sheared) affine and shape."""
    _, env, out, _, _ = bundle
    shear = np.array([[4.0, 1.2, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1]])
    t2 = tmp_path / "t2.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(100, 15, (40, 44, 40)).astype(np.float32), shear), t2)
    output = tmp_path / "seg.nii.gz"
    p = predict(env, out, "task4", ["--t2", str(t2), "--output", str(output), "--no-mirroring"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sheared affine" in p.stderr
    seg = nib.load(output)
    assert seg.shape == (40, 44, 40) and np.allclose(seg.affine, shear)
    check_output_file(get_task("task4"), str(output), [str(t2)])


BAD = {
    "missing required": (["--flair", "F", "--t2s", "S"], "--dwi"),
    "both t2s and swi": (["--flair", "F", "--dwi", "D", "--t2s", "S", "--swi", "S"], "--t2s"),
    "neither t2s nor swi": (["--flair", "F", "--dwi", "D"], "--t2s"),
    "unreadable": (["--flair", "TEXT", "--dwi", "D", "--swi", "S"], "--flair"),
    "4-D": (["--flair", "F", "--dwi", "FOURD", "--swi", "S"], "--dwi"),
    "all NaN": (["--flair", "F", "--dwi", "D", "--swi", "NAN"], "--swi"),
    "empty": (["--flair", "ZERO", "--dwi", "D", "--swi", "S"], "--flair"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_fail_clearly_and_write_nothing(bundle, tmp_path, name):
    _, env, out, _, _ = bundle
    files = {"F": _image(tmp_path / "f.nii.gz"), "D": _image(tmp_path / "d.nii.gz", seed=1),
             "S": _image(tmp_path / "s.nii.gz", seed=2),
             "FOURD": _image(tmp_path / "4d.nii.gz", data=np.ones((20, 20, 20, 3), np.float32)),
             "NAN": _image(tmp_path / "nan.nii.gz", data=np.full((20, 20, 20), np.nan, np.float32)),
             "ZERO": _image(tmp_path / "zero.nii.gz", data=np.zeros((20, 20, 20), np.float32))}
    (tmp_path / "text.nii.gz").write_text("not an image")
    files["TEXT"] = str(tmp_path / "text.nii.gz")
    args, named = BAD[name]
    args = [files.get(a, a) for a in args]
    output = tmp_path / "out" / "sub_1.nii.gz"
    output.parent.mkdir()
    p = predict(env, out, "task2", [*args, "--output", str(output)])
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert err and named in err[-1] and "Traceback" not in p.stderr
    assert os.listdir(output.parent) == []


def test_bundle_mixing_two_pretrained_checkpoints_is_refused(bundle, tmp_path):
    root, env, _, models, ckpt = bundle
    other = save_fake_pretraining(tmp_path / "other.pth", seed=1)
    p = subprocess.run([sys.executable, "-m", "fomo_nnunet.cli", "bundle", "-o", str(tmp_path / "b"),
                        "--task2", str(models[2]), "--embedding", str(other)],
                       env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "different pretrained checkpoints" in p.stderr
    assert not (tmp_path / "b").exists()


def test_bundle_records_how_each_network_is_built(bundle):
    """The entry rebuilds each network from this record, not through nnU-Net's trainer search."""
    from fomo_nnunet.models.network_record import IMAGE_LEVEL, NETWORK_KEY, PLANS
    from fomo_nnunet.models.transfer import load_checkpoint_safely

    _, _, out, _, _ = bundle
    for n in (1, 2, 3, 4, 5):
        task = TASKS_BY_NUMBER[n]
        for ckpt in (out / task.key).glob("fold_*/checkpoint_final.pth"):
            record = load_checkpoint_safely(ckpt)[NETWORK_KEY]
            assert record["builder"] == (PLANS if task.kind == "segmentation" else IMAGE_LEVEL), (task.key, record)
