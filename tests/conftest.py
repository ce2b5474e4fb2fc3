"""One workspace of tiny task datasets, planned and preprocessed once for the whole session.

Planning and preprocessing start nnU-Net in subprocesses, which costs seconds each on two cores;
the segmentation, classification/regression and container tests share this one. Under pytest-xdist
(`make test`) the first worker that needs a workspace builds it under a lock and every worker works on
its own copy, so the two workers do not build it twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers import make_raw_dataset, nnunet_env, run, save_fake_pretraining

# dataset id -> (name, cases, channels, segmentation labels or None, test cases, seed)
TASK_DATASETS = {
    901: ("FOMO1Infarct", 8, 4, None, 3, 4),
    902: ("FOMO2Meningioma", 6, 3, {"background": 0, "meningioma": 1}, 2, 2),
    903: ("FOMO3Brainage", 8, 1, None, 3, 5),
    904: ("FOMO4Trigeminal", 6, 1, {"background": 0, "nerve": 1, "vessel": 2}, 2, 3),
    905: ("FOMO5Polymicrogyria", 4, 1, None, 0, 6),
}
# image-level targets: infarct unbalanced 6 positive / 2 negative, ages 20..76
TARGETS = {
    901: ({f"casetr{i:03d}": int(i < 6) for i in range(8)}, {f"casets{i:03d}": i % 2 for i in range(3)}),
    903: ({f"casetr{i:03d}": 20.0 + 8 * i for i in range(8)}, {}),
    905: ({f"casetr{i:03d}": i % 2 for i in range(4)}, {}),
}
PREPROCESSED = (901, 902, 903, 904)
PRETRAIN_DATASET = 990

# Each test says its tier with a marker (registered in pyproject.toml): `slow` (plans, preprocesses, trains or
# synthesises, or builds a full-size or compiled network), `subprocess` (starts fomo-nnunet, nnU-Net or Python
# in child processes) and `stress` (signals, worker pools and deadlines, sensitive to a loaded machine).
# `make test-fast` runs the unmarked tier; `make test` runs all. The fixtures below build workspaces through
# nnU-Net's commands (tens of seconds to minutes on two cores): a test that uses one, directly or through another
# fixture, and is not marked `slow` stops the collection with its name, so the marker cannot drift from what the
# test does.
HEAVY_FIXTURES = {"pretrain_corpus", "tasks_ws", "synth", "tiny_bundle", "busy_corpus", "converted_corpus"}


# The longest test files, collected first: `make test` runs xdist with --no-loadscope-reorder, so its two workers
# take whole files in this order (xdist's default orders files by their number of tests, which started the longest,
# test_benchmark.py, last and left one worker idle at the end).
LONGEST_FIRST = ("test_benchmark.py", "test_quick_path.py", "test_campaign.py", "test_distributed.py",
                 "test_container.py", "test_pretrain.py", "test_features.py", "test_preemption.py", "test_seeding.py",
                 "test_image_level.py", "test_convert.py", "test_checkpoint_formats.py", "test_preprocess.py",
                 "test_checkpoint_import.py", "test_finetune_seg.py")


def unmarked_heavy_tests(items) -> list[str]:
    """The tests that use a HEAVY_FIXTURES workspace without saying `slow`."""
    return [item.nodeid for item in items
            if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]


def pytest_collection_modifyitems(config, items):
    unmarked = unmarked_heavy_tests(items)
    if unmarked:
        raise pytest.UsageError("these tests build a workspace through nnU-Net's commands "
                                f"({', '.join(sorted(HEAVY_FIXTURES))}); mark them @pytest.mark.slow:\n  "
                                + "\n  ".join(unmarked))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A workspace made by `build(root)`: built here, or under pytest-xdist built once for all workers (the
    first to ask builds it under a lock, the others wait) and copied into a folder of this worker's own, so
    that what a test writes there stays its own. The plans' absolute paths are rewritten to the copy."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    shared = tmp_path_factory.getbasetemp().parent / f"shared_{name}"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / ".built").is_file():
            shutil.rmtree(shared, ignore_errors=True)  # a build that failed half-way
            build(shared)
            (shared / ".built").touch()
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, root, dirs_exist_ok=True)
    for f in (root / "preprocessed").rglob("*.json"):
        text = f.read_text()
        if str(shared) in text:
            f.write_text(text.replace(str(shared), str(root)))
    return root


def _build_pretrain_corpus(root: Path) -> None:
    env = nnunet_env(root)
    make_raw_dataset(root / "raw", PRETRAIN_DATASET, "Corpus", n_cases=6, seed=1)
    run(["fomo-nnunet", "plan", "pretrain", "-d", str(PRETRAIN_DATASET), "--arch", "tiny", "-np", "1"], env)
    run(["nnUNetv2_preprocess", "-d", str(PRETRAIN_DATASET), "-plans_name", "fomoPretrainPlans", "-c", "3d_fullres",
         "-np", "1"], env)


@pytest.fixture(scope="session")
def pretrain_corpus(tmp_path_factory):
    """A tiny pretraining corpus (dataset 990), planned with the tiny preset and preprocessed; no results."""
    root = built_once(tmp_path_factory, "pretrain", _build_pretrain_corpus)
    return root, nnunet_env(root)


@pytest.fixture(scope="session")
def tasks_ws(tmp_path_factory):
    root = built_once(tmp_path_factory, "tasks", _build_tasks)
    return root, nnunet_env(root), root / "pretrained.pth"


def _build_tasks(root: Path) -> None:
    env = nnunet_env(root)
    ckpt = save_fake_pretraining(root / "pretrained.pth")
    for d, (name, n, channels, labels, n_test, seed) in TASK_DATASETS.items():
        folder = make_raw_dataset(root / "raw", d, name, n_cases=n, n_channels=channels, labels=labels, seed=seed,
                                  test_cases=n_test, extra={"fomo_task": d - 900})
        if d in TARGETS:
            tr, ts = TARGETS[d]
            (folder / "targets.json").write_text(json.dumps(tr))
            if ts:
                (folder / "targetsTs.json").write_text(json.dumps(ts))
    # `fomo-nnunet plan transfer` for all five in one process (the command is a thin wrapper of this)
    run([sys.executable, "-c", "import sys; from fomo_nnunet.plans.transfer_planner import plan_transfer; "
         "[plan_transfer(int(d), sys.argv[1], num_processes=1) for d in sys.argv[2:]]",
         str(ckpt), *map(str, TASK_DATASETS)], env)
    run(["nnUNetv2_preprocess", "-d", *map(str, PREPROCESSED), "-plans_name", "fomoPlans", "-c", "3d_fullres",
         "-np", "1"], env)


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    """An empty $nnUNet_raw for converter tests."""
    r = tmp_path / "nnUNet_raw"
    r.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(r))
    return r
