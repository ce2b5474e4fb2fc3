"""Training under torchrun with two CPU processes (Gloo), through `fomo-nnunet train`'s distributed path:
the ranks stay identical, rank 0 alone writes, losses are gathered once per epoch, a killed run resumes
from its checkpoint, and a checkpoint of a 2-process pretraining finetunes in one process and in two."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PRETRAIN_DATASET
from helpers import run

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
PROBE = str(Path(__file__).with_name("ddp_probe.py"))
MAE = "nnUNetTrainerFomoMAE_tiny_smoke"   # 3 epochs, a checkpoint after every epoch
SEG = "nnUNetTrainerFomoSeg_tiny_smoke"   # 2 epochs
SEG_DATASET = "Dataset902_FOMO2Meningioma"


def _ddp_env(env: dict, results: Path) -> dict:
    # one thread per rank: two ranks on two cores
    return {**env, "nnUNet_results": str(results), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1"}


def _epochs_in(log: str) -> list[int]:
    return [int(e) for e in re.findall(r"Epoch (\d+) *\n", log)]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _probe_ranks(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", map_location="cpu", weights_only=False) for r in (0, 1)]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"ranks differ in {different[:5]}"


@pytest.fixture(scope="module")
def mae_run(pretrain_corpus, tmp_path_factory):
    """A 2-process MAE run killed after its first checkpoint, then resumed to the end with --c."""
    root, env = pretrain_corpus
    tmp = tmp_path_factory.mktemp("ddp_mae")
    env = _ddp_env(env, tmp / "results")
    fold = tmp / "results" / root.joinpath("raw").glob("Dataset990_*").__next__().name / \
        f"{MAE}__fomoPretrainPlans__3d_fullres" / "fold_all"
    latest = fold / "checkpoint_latest.pth"
    killed = subprocess.Popen(TORCHRUN + ["-m", "fomo_nnunet.cli", "train", str(PRETRAIN_DATASET), "3d_fullres", "all",
                                          "-p", "fomoPretrainPlans", "-tr", MAE, "-device", "cpu"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not latest.is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill_tree(killed.pid)  # the launcher, both ranks and their augmentation workers
    killed.wait()
    assert latest.is_file(), "no checkpoint_latest.pth before the run ended or timed out"
    killed_at = torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"]
    logs_before = {p.name for p in fold.glob("training_log_*.txt")}
    probe = tmp / "probe"
    probe.mkdir()
    time.sleep(1)  # nnU-Net names logs by the second; the resumed run's log is a new file
    run(TORCHRUN + [PROBE, str(probe), str(PRETRAIN_DATASET), "3d_fullres", "all", MAE, "fomoPretrainPlans", "--c"],
        env)
    return fold, killed_at, logs_before, _probe_ranks(probe)


@pytest.mark.slow
def test_two_ranks_end_with_identical_weights_on_their_share_of_the_batch(mae_run):
    fold, _, _, ranks = mae_run
    r0, r1 = ranks
    assert r0["is_ddp"] and r0["wrapped"] and r0["device"] == r1["device"] == "cpu"
    _assert_same_weights(r0["weights"], r1["weights"])
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    _assert_same_weights(final["network_weights"], r0["weights"])
    assert final["fomo_metadata"]["embedding_stats"]["n_cases"] == 6  # rank 0 alone computed them, none hung
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert r0["batch_size"] + r1["batch_size"] == plans["configurations"]["3d_fullres"]["batch_size"]
    # each rank draws its own masks (and, from the same derivation, its own augmentation seeds)
    assert not torch.equal(r0["mask_stream"], r1["mask_stream"])


@pytest.mark.slow
def test_losses_are_gathered_once_per_epoch_and_rank_0_alone_writes(mae_run):
    fold, _, logs_before, ranks = mae_run
    r0, r1 = ranks
    for key in ("train_losses", "val_losses"):
        assert r0["logging"][key] == r1["logging"][key]  # the gathered mean, the same on every rank
        assert len(r0["logging"][key]) == 3  # one value per epoch, not one per rank
    logs = sorted(fold.glob("training_log_*.txt"))
    assert len(logs) == 2 and len(logs_before) == 1  # one log per launch, none per rank
    for log in logs:
        text = log.read_text()
        epochs = _epochs_in(text)
        assert len(set(epochs)) == len(epochs)
        assert text.count("train_loss") == text.count("val_loss (masked") == len(epochs)
    assert sorted(p.name for p in fold.glob("*.pth*")) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    assert json.loads((fold / "seed.json").read_text())["seed"] == 0


@pytest.mark.slow
def test_killed_run_continues_from_its_checkpoint(mae_run):
    fold, killed_at, logs_before, _ = mae_run
    assert killed_at in (1, 2)
    resumed = next(p for p in fold.glob("training_log_*.txt") if p.name not in logs_before).read_text()
    assert _epochs_in(resumed) == list(range(killed_at, 3))
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3


@pytest.fixture(scope="module")
def seg_from_ddp_pretraining(mae_run, tasks_ws, tmp_path_factory):
    """Dataset 902 (tiny meningioma) with plans transferred from the 2-process MAE checkpoint."""
    fold = mae_run[0]
    root, env, _ = tasks_ws
    tmp = tmp_path_factory.mktemp("ddp_seg")
    for sub in ("raw", "preprocessed"):
        shutil.copytree(root / sub / SEG_DATASET, tmp / sub / SEG_DATASET)
    env = {**_ddp_env(env, tmp / "results"), "nnUNet_raw": str(tmp / "raw"), "nnUNet_preprocessed": str(tmp / "preprocessed")}
    # the same preprocessed arrays (same spacing and normalisation), plans linked to the new checkpoint
    run([sys.executable, "-c", "import sys; from fomo_nnunet.plans.transfer_planner import plan_transfer; "
         "plan_transfer(902, sys.argv[1], plans_name='fomoPlansDDP', data_identifier='fomoPlans_3d_fullres', "
         "batch_size=2, num_processes=1)", str(fold / "checkpoint_final.pth")], env)  # global batch >= 2 ranks
    return tmp, env


def _transfer_loaded(fold: Path) -> int:
    return len(json.loads((fold / "transfer_report.json").read_text())["loaded"])


@pytest.mark.slow
def test_two_process_pretraining_loads_into_one_process_finetune(seg_from_ddp_pretraining):
    tmp, env = seg_from_ddp_pretraining
    run(["nnUNetv2_train", "902", "3d_fullres", "all", "-p", "fomoPlansDDP", "-tr", SEG, "-device", "cpu"],
        {**env, "nnUNet_results": str(tmp / "results_1proc")})
    fold = tmp / "results_1proc" / SEG_DATASET / f"{SEG}__fomoPlansDDP__3d_fullres" / "fold_all"
    assert _transfer_loaded(fold) > 0 and (fold / "checkpoint_final.pth").is_file()


@pytest.mark.slow
def test_two_process_finetune_keeps_ranks_identical_and_writes_once(seg_from_ddp_pretraining):
    tmp, env = seg_from_ddp_pretraining
    probe = tmp / "probe"
    probe.mkdir()
    run(TORCHRUN + [PROBE, str(probe), "902", "3d_fullres", "all", SEG, "fomoPlansDDP"], env)
    r0, r1 = _probe_ranks(probe)
    _assert_same_weights(r0["weights"], r1["weights"])
    for key in ("train_losses", "val_losses", "ema_fg_dice"):
        assert r0["logging"][key] == r1["logging"][key] and len(r0["logging"][key]) == 2
    fold = tmp / "results" / SEG_DATASET / f"{SEG}__fomoPlansDDP__3d_fullres" / "fold_all"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    _assert_same_weights(final["network_weights"], r0["weights"])
    assert _transfer_loaded(fold) > 0
    assert len(list(fold.glob("training_log_*.txt"))) == 1 and not list(fold.glob("*.tmp"))


@pytest.mark.slow
def test_torchrun_refuses_nnunets_own_trainer_on_cpu(pretrain_corpus, tmp_path):
    _, env = pretrain_corpus
    p = subprocess.run(TORCHRUN[:-1] + ["1", "-m", "fomo_nnunet.cli", "train", str(PRETRAIN_DATASET), "3d_fullres",
                                        "all", "-p", "fomoPretrainPlans", "-tr", "nnUNetTrainer", "-device", "cpu"],
                       env=_ddp_env(env, tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "not a fomo trainer" in p.stderr


def test_torchrun_place_and_backend_come_from_the_launchers_environment():
    from fomo_nnunet.distributed import LaunchError, backend_for, torchrun_place

    assert torchrun_place({}) is None  # not started by torchrun: nnUNetv2_train's own path
    env = {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "head",
           "MASTER_PORT": "29500"}
    place = torchrun_place(env)
    assert (place.rank, place.local_rank, place.world_size, place.multi_node) == (9, 1, 16, True)
    with pytest.raises(LaunchError, match="LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"):
        torchrun_place({"RANK": "0"})
    with pytest.raises(LaunchError, match="inconsistent"):
        torchrun_place({**env, "RANK": "16"})
    with pytest.raises(LaunchError, match="must be integers"):
        torchrun_place({**env, "RANK": "x"})
    assert backend_for("cuda") == "nccl" and backend_for("cpu") == "gloo"
