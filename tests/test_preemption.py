"""Training that survives preemption: a stop signal becomes a checkpoint within one step and exit code 75,
`--c` resumes mid-epoch to the weights and losses of an uninterrupted run bit for bit, ten SIGKILLs in a
row change nothing, and an unreadable checkpoint_latest falls back to its predecessor with a message.

The runs (tests/preempt_runner.py) are a tiny MAE pretraining with skip drops, 3 epochs of 3 steps, on a
CPU, with 0 and 2 augmentation workers; one process imports nnU-Net once and forks every run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PRETRAIN_DATASET
from fomo_nnunet.exit_codes import PREEMPTED
from fomo_nnunet.training.preemption import (STOP_SIGNALS_ENV, read_checkpoint, read_checkpoint_or_fallback,
                                             stop_signals, write_checkpoint)
from fomo_nnunet.models.transfer import CheckpointError, load_checkpoint_safely

RUNNER = str(Path(__file__).with_name("preempt_runner.py"))
TRAINER = "nnUNetTrainerFomoMAE_tiny_smoke"
KILLS = 10


# ---- the pieces ------------------------------------------------------------------------------------
def test_stop_signals_default_to_sigterm_and_sigusr1_and_reject_nonsense():
    assert stop_signals({}) == (signal.SIGTERM, signal.SIGUSR1)
    assert stop_signals({STOP_SIGNALS_ENV: "usr2, SIGTERM,15"}) == (signal.SIGUSR2, signal.SIGTERM)
    assert stop_signals({STOP_SIGNALS_ENV: "none"}) == ()
    for bad in ("SIGNOPE", "SIGKILL", "term;usr1"):
        with pytest.raises(ValueError, match=STOP_SIGNALS_ENV):
            stop_signals({STOP_SIGNALS_ENV: bad})


def _checkpoint(epoch: int) -> dict:
    return {"network_weights": {"w": torch.full((2,), float(epoch))}, "optimizer_state": {}, "logging": {},
            "current_epoch": epoch, "init_args": {}}


def test_checkpoint_latest_is_replaced_whole_and_keeps_its_predecessor(tmp_path):
    latest = tmp_path / "checkpoint_latest.pth"
    write_checkpoint(_checkpoint(1), str(latest), keep_previous=True)
    assert not (tmp_path / "checkpoint_latest.prev.pth").exists()
    write_checkpoint(_checkpoint(2), str(latest), keep_previous=True)
    assert read_checkpoint(str(latest))["current_epoch"] == 2
    assert read_checkpoint(str(tmp_path / "checkpoint_latest.prev.pth"))["current_epoch"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint_latest.pth", "checkpoint_latest.prev.pth"}  # no .tmp
    best = tmp_path / "checkpoint_best.pth"
    write_checkpoint(_checkpoint(1), str(best))
    write_checkpoint(_checkpoint(2), str(best))
    assert not (tmp_path / "checkpoint_best.prev.pth").exists()


def test_unreadable_checkpoint_is_refused_by_name_and_the_next_readable_one_is_used(tmp_path):
    latest = tmp_path / "checkpoint_latest.pth"
    write_checkpoint(_checkpoint(1), str(latest), keep_previous=True)
    write_checkpoint(_checkpoint(2), str(latest), keep_previous=True)
    write_checkpoint(_checkpoint(0), str(tmp_path / "checkpoint_best.pth"))
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint_latest\.pth is not a readable torch checkpoint \(truncated"):
        read_checkpoint(str(latest))
    said = []
    checkpoint, source = read_checkpoint_or_fallback(str(latest), said.append)
    assert checkpoint["current_epoch"] == 1 and source.endswith("checkpoint_latest.prev.pth")
    assert "not a readable torch checkpoint" in said[0] and "continuing from" in said[1] and "prev.pth" in said[1]
    (tmp_path / "checkpoint_latest.prev.pth").write_bytes(b"")
    checkpoint, source = read_checkpoint_or_fallback(str(latest), said.append)
    assert checkpoint["current_epoch"] == 0 and source.endswith("checkpoint_best.pth")
    torch.save({"network_weights": {}}, tmp_path / "checkpoint_best.pth")  # readable, but not a training state
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*no optimizer_state"):
        read_checkpoint_or_fallback(str(latest), said.append)


# ---- whole runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[0, 2], ids=["0workers", "2workers"])
def runs(request, pretrain_corpus, tmp_path_factory):
    """The runner's report and checkpoints for one worker count: an uninterrupted run, a SIGTERM stop and
    its resume, the same stop with a truncated checkpoint_latest resumed, and ten SIGKILLs then the end."""
    _, env = pretrain_corpus
    work = tmp_path_factory.mktemp(f"preempt{request.param}")
    env = {**env, "nnUNet_n_proc_DA": str(request.param), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, RUNNER, str(PRETRAIN_DATASET), TRAINER, str(work), str(KILLS), "1"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["reference_rc"] == 0
    # data only, as every reader of our checkpoints loads them (the random streams included)
    final = {k: load_checkpoint_safely(Path(report[k]) / "checkpoint_final.pth")
             for k in ("reference_fold", "sigterm_fold", "corrupt_fold", "sigkill_fold")}
    return report, final


def _assert_identical(run: dict, reference: dict) -> None:
    for key in ("train_losses", "val_losses"):
        assert run["logging"][key] == reference["logging"][key], key
    different = [k for k in reference["network_weights"]
                 if not torch.equal(run["network_weights"][k], reference["network_weights"][k])]
    assert not different, f"weights differ in {different[:5]}"
    assert run["current_epoch"] == reference["current_epoch"] == 3


@pytest.mark.slow
def test_sigterm_during_an_epoch_checkpoints_within_one_step_and_exits_75(runs):
    report, _ = runs
    assert report["sigterm_rc"] == PREEMPTED == 75
    # the signal came during step 4 of the run (the 2nd of epoch 1): that step finished, no other began
    assert report["sigterm_steps_done"] == report["sigterm_signal_step"] + 1
    assert report["sigterm_checkpoint"] == {"current_epoch": 1, "step": 2, "outputs": 2}
    assert "SIGTERM received: stopping at epoch 1, after 2 of 3 training steps" in report["sigterm_log"]
    assert "exit code 75" in report["sigterm_log"] and "--c" in report["sigterm_log"]
    marker = report["sigterm_marker"]  # what a job script checks to requeue
    assert (marker["signal"], marker["epoch"], marker["step"], marker["exit_code"]) == ("SIGTERM", 1, 2, 75)


@pytest.mark.slow
def test_resume_after_sigterm_gives_the_weights_and_losses_of_an_uninterrupted_run(runs):
    report, final = runs
    assert report["sigterm_resume_rc"] == 0 and not report["sigterm_marker_after_resume"]
    _assert_identical(final["sigterm_fold"], final["reference_fold"])


@pytest.mark.slow
def test_ten_sigkills_in_a_row_end_with_the_weights_of_an_uninterrupted_run(runs):
    report, final = runs
    kills = report["kills"]
    assert len(kills) == KILLS and all(k["rc"] == -signal.SIGKILL for k in kills), kills
    assert report["sigkill_final_rc"] == 0
    _assert_identical(final["sigkill_fold"], final["reference_fold"])


@pytest.mark.slow
def test_corrupt_checkpoint_latest_resumes_from_the_previous_one_with_a_message(runs):
    report, final = runs
    err = report["corrupt_stderr"]
    assert "checkpoint_latest.pth is not a readable torch checkpoint (truncated" in err
    assert "continuing from" in err and "checkpoint_latest.prev.pth" in err
    assert report["corrupt_resume_rc"] == 0
    # the predecessor (written after epoch 0) carries the whole state too: the run still ends bit for bit the same
    _assert_identical(final["corrupt_fold"], final["reference_fold"])


# the smoke trainer as nnUNetv2_train builds it (get_trainer_from_args), its train_step wrapped by the script
# that follows
_SMOKE_TRAINING = """
import os, signal, sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
torch.set_num_threads(1)
t = get_trainer_from_args(sys.argv[1], "3d_fullres", "all", sys.argv[2], "fomoPretrainPlans", device=torch.device("cpu"))
t.write_pictures = lambda epoch: None
t.embedding_stats_cases = 0
inner, steps = t.train_step, []
"""
# a training whose third step fails, exiting normally (atexit handlers run, as after any uncaught error)
_FAILING_RUN = _SMOKE_TRAINING + """
def train_step(batch):
    steps.append(1)
    if len(steps) == 3:
        raise RuntimeError("the third step failed")
    return inner(batch)
t.train_step = train_step
t.run_training()
"""


@pytest.mark.slow
def test_a_training_that_fails_exits_with_its_error_and_leaves_no_worker(pretrain_corpus, tmp_path):
    """The augmentation workers ignore the stop signals (they serve batches until the stop checkpoint), so an
    error that ended the training used to leave multiprocessing's exit handler waiting for ever on workers its
    SIGTERM does not stop: the failed training never exited. Now it exits at once with the error."""
    import os
    import time

    _, env = pretrain_corpus
    env = {**env, "nnUNet_results": str(tmp_path), "nnUNet_n_proc_DA": "2", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", _FAILING_RUN, str(PRETRAIN_DATASET), TRAINER], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the run and its workers
        p.communicate()
        pytest.fail("the failed training did not exit within 120 s")
    assert p.returncode == 1 and "RuntimeError: the third step failed" in err, err[-3000:]
    assert time.monotonic() - t0 < 120
    with pytest.raises(ProcessLookupError):  # nothing of the process group is left
        os.killpg(p.pid, 0)


@pytest.mark.parametrize("stdout", ["None", "closed"])
def test_the_exit_flush_of_the_console_keeps_quiet_without_a_stdout(stdout):
    """A process without a stdout (None under pythonw, or one a library closed) has nothing to flush: the exit
    handler must not add an "Exception ignored in atexit callback" traceback to a run's last lines."""
    script = ("import sys\n"
              "from fomo_nnunet.training.preemption import flush_console_at_exit\n"
              "flush_console_at_exit()\n"
              + ("sys.stdout = None\n" if stdout == "None" else "sys.stdout.close()\n")
              + "raise SystemExit(75)\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 75 and p.stderr == "", (p.returncode, p.stderr)


# a training whose console goes away (the reader of its stdout pipe is gone, as when the `| tee` of a job step
# is killed by the same SIGTERM): "stop": in its third step, which also receives SIGTERM; "end": after the
# training, before nnUNetv2_train's last prints
_CONSOLE_LOST_RUN = _SMOKE_TRAINING + """
def lose_console():
    r, w = os.pipe()
    os.dup2(w, sys.stdout.fileno())  # stdout: a pipe nobody reads any more
    os.close(w)
    os.close(r)
def train_step(batch):
    steps.append(1)
    if len(steps) == 3 and sys.argv[3] == "stop":
        lose_console()
        os.kill(os.getpid(), signal.SIGTERM)
    return inner(batch)
t.train_step = train_step
t.run_training()
lose_console()
print("validation done")  # as nnUNetv2_train goes on printing after the training
"""


@pytest.mark.slow
@pytest.mark.parametrize("when, buffered", [("stop", False), ("stop", True), ("end", True)],
                         ids=["stop-unbuffered", "stop-buffered", "end-buffered"])
def test_a_training_whose_console_went_away_still_checkpoints_and_exits_with_its_code(
        pretrain_corpus, tmp_path, when, buffered):
    """A print into a pipe whose reader is gone raises BrokenPipeError (Python ignores SIGPIPE): before, the
    stop's first log line raised it after reaching the log file, so no checkpoint was written (unbuffered
    output), or the interpreter's last flush turned exit code 75 (or 0, after a finished training) into 120
    (buffered output). Either way a scheduler's requeue or a job script's check lost the run."""
    _, env = pretrain_corpus
    env = {**env, "nnUNet_results": str(tmp_path), "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.run([sys.executable, "-c", _CONSOLE_LOST_RUN, str(PRETRAIN_DATASET), TRAINER, when], env=env,
                       capture_output=True, text=True, timeout=300)
    assert "BrokenPipeError" not in p.stderr, p.stderr[-3000:]
    fold = next(tmp_path.glob(f"*/{TRAINER}__fomoPretrainPlans__3d_fullres/fold_all"))
    if when == "end":
        assert p.returncode == 0 and (fold / "checkpoint_final.pth").is_file()
        return
    assert p.returncode == PREEMPTED, (p.returncode, p.stderr[-3000:])
    assert read_checkpoint(str(fold / "checkpoint_latest.pth"))["current_epoch"] == 0
    marker = json.loads((fold / "preempted.json").read_text())
    assert (marker["signal"], marker["step"], marker["exit_code"]) == ("SIGTERM", 3, 75)
    log = "".join(f.read_text() for f in fold.glob("training_log_*.txt"))
    assert "SIGTERM received" in log and "preempted:" in log and "the console went away" in log
