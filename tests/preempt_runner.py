"""Runs of a tiny MAE pretraining that are stopped and resumed, for tests/test_preemption.py.

One process imports torch and nnU-Net once and forks a child per run (a new process group each, as a
scheduler's job step), so ten kills cost ten trainings, not ten interpreter starts. A child does what
`nnUNetv2_train ... [--c]` does: get_trainer_from_args, maybe_load_checkpoint, run_training, on a run
shortened to 3 epochs of 3 steps (and one validation step) with a checkpoint after every epoch.
Pictures are switched off (they cost time and draw no random numbers). Skip drops are on, so the skip
stream is exercised beside the mask and batch streams.

usage: preempt_runner.py DATASET TRAINER WORK KILLS SEED  (nnUNet_* variables set; prints a JSON report)
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

STEP_LOG = "steps.txt"  # one line per finished training step: time, epoch, step (the test's own bookkeeping)


def _train(dataset: str, trainer_name: str, results: Path, resume: bool, sigterm_at_step: int | None) -> None:
    os.environ["nnUNet_results"] = str(results)  # nnU-Net reads it when it is used: a folder per child
    torch.set_num_threads(1)
    t = get_trainer_from_args(dataset, "3d_fullres", "all", trainer_name, "fomoPretrainPlans", resume,
                              device=torch.device("cpu"))
    t.decoder_skips = "drop"
    t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 3, 1  # 3 epochs of 3 steps: 9 steps
    t.write_pictures = lambda epoch: None
    t.embedding_stats_cases = 0
    maybe_load_checkpoint(t, resume, False)
    step_file = Path(t.output_folder) / STEP_LOG
    inner = t.train_step
    counter = {"n": 0}

    def train_step(batch):
        if sigterm_at_step is not None and counter["n"] == sigterm_at_step:
            os.killpg(0, signal.SIGTERM)  # the whole group, workers included, during this step
        out = inner(batch)
        counter["n"] += 1
        with open(step_file, "a") as f:
            f.write(f"{time.time()} {t.current_epoch}\n")
        return out

    t.train_step = train_step
    t.run_training()


def child(dataset, trainer_name, results, resume=False, sigterm_at_step=None) -> int:
    """Fork a training; returns its pid."""
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        code = 0
        try:
            _train(dataset, trainer_name, results, resume, sigterm_at_step)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fold_of(results: Path, trainer_name: str) -> Path:
    return next(results.glob(f"Dataset*/{trainer_name}__fomoPretrainPlans__3d_fullres/fold_all"))


def main() -> None:
    dataset, trainer_name, work, kills, seed = sys.argv[1:6]
    work, kills = Path(work), int(kills)
    # imported once here, before any fork: nnU-Net's trainer search imports every trainer module (seconds);
    # nothing here runs a torch operation (a forked child must not inherit a started OpenMP pool)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    recursive_find_trainer_class_by_name(trainer_name)
    import fomo_nnunet.models.transfer  # noqa: F401
    report = {}
    # 1. uninterrupted
    t0 = time.time()
    report["reference_rc"] = wait(child(dataset, trainer_name, work / "reference"))
    report["reference_seconds"] = time.time() - t0
    ref_fold = fold_of(work / "reference", trainer_name)
    steps = [line.split() for line in (ref_fold / STEP_LOG).read_text().splitlines()]
    first_step = float(steps[0][0]) - t0

    # 2. SIGTERM (to the process group) during the 2nd step of the 2nd epoch, then --c
    per_epoch = sum(1 for s in steps if s[1] == "0")
    signal_step = per_epoch + 1  # counted over the run: the 2nd step of epoch 1
    stopped = work / "sigterm"
    report["sigterm_rc"] = wait(child(dataset, trainer_name, stopped, sigterm_at_step=signal_step))
    fold = fold_of(stopped, trainer_name)
    report["sigterm_steps_done"] = len((fold / STEP_LOG).read_text().splitlines())
    report["sigterm_signal_step"] = signal_step
    report["sigterm_fold"] = str(fold)
    from fomo_nnunet.models.transfer import load_checkpoint_safely
    latest = load_checkpoint_safely(fold / "checkpoint_latest.pth")  # mid-epoch, loaded as data only
    report["sigterm_checkpoint"] = {"current_epoch": latest["current_epoch"], "step": latest["fomo_streams"]["step"],
                                    "outputs": len(latest["fomo_streams"]["ranks"][0]["train_outputs"])}
    report["sigterm_log"] = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    report["sigterm_marker"] = json.loads((fold / "preempted.json").read_text())
    corrupt = work / "corrupt"
    shutil.copytree(stopped, corrupt)
    report["sigterm_resume_rc"] = wait(child(dataset, trainer_name, stopped, resume=True))
    report["sigterm_marker_after_resume"] = (fold / "preempted.json").exists()

    # 3. the same stop, checkpoint_latest truncated, then --c: falls back to checkpoint_latest.prev.pth
    cfold = fold_of(corrupt, trainer_name)
    latest = cfold / "checkpoint_latest.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the resumed child's stderr, for the message
        os.close(r)
        os.dup2(w, 2)
        os._exit(wait(child(dataset, trainer_name, corrupt, resume=True)))
    os.close(w)
    with os.fdopen(r) as f:
        report["corrupt_stderr"] = f.read()
    report["corrupt_resume_rc"] = wait(pid)
    report["corrupt_fold"] = str(cfold)

    # 4. SIGKILL at `kills` random moments in a row, resuming each time, then to the end. A moment is drawn
    # in the run's own progress (the machine's load changes its speed): during the start-up, or a random
    # time into the step after a random number of finished steps, never so late that the run could end first
    rng = random.Random(int(seed))
    killed = work / "sigkill"
    times = [float(s[0]) for s in steps]
    step_seconds = (times[-1] - times[0]) / (len(times) - 1)
    moments = []

    def steps_now() -> int:
        files = list(killed.glob(f"Dataset*/{trainer_name}__*/fold_all/{STEP_LOG}"))
        return len(files[0].read_text().splitlines()) if files else 0

    for i in range(kills):
        done = 0
        latest = list(killed.glob(f"Dataset*/{trainer_name}__*/fold_all/checkpoint_latest.pth"))
        if latest:
            c = torch.load(latest[0], map_location="cpu", weights_only=False)
            done = c["current_epoch"] * per_epoch + c.get("fomo_streams", {}).get("step", 0)
        left = len(steps) - done

        before = steps_now()
        after_steps = rng.randint(-1, max(-1, left - 2))  # -1: during the start-up
        delay = rng.uniform(0.0, first_step if after_steps < 0 else step_seconds)
        t_fork = time.time()
        pid = child(dataset, trainer_name, killed, resume=i > 0)
        while steps_now() - before < max(0, after_steps) and time.time() - t_fork < 300:
            time.sleep(0.005)
        # then the delay, cut short when the run is one step from its end (the machine's speed changes)
        deadline, last = time.time() + delay, (1 if after_steps < 0 else left - 1)
        while time.time() < deadline and steps_now() - before < last:
            time.sleep(0.005)
        ended_before = False
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            ended_before = True
        rc = wait(pid)
        moments.append({"after_steps": after_steps, "delay": round(delay, 3), "rc": rc,
                        "ended_before_the_kill": ended_before or rc == 0, "resumed_from_step": done})
    report["kills"] = moments
    report["sigkill_final_rc"] = wait(child(dataset, trainer_name, killed, resume=True))
    report["sigkill_fold"] = str(fold_of(killed, trainer_name))
    report["reference_fold"] = str(ref_fold)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
