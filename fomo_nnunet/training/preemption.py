"""Training that survives preemption: a signal becomes a checkpoint, checkpoints are written atomically
and carry every random stream, so a resumed run ends with the weights of an uninterrupted one.

nnU-Net's `run_training` loops over epochs and steps and writes checkpoint_latest every `save_every`
epochs with `torch.save` straight onto the file; nothing stops it cleanly on a scheduler's signal, and
`--c` resumes at an epoch boundary with whatever random state the new process has.
`PreemptibleRun` (a mixin placed before nnU-Net's trainer) keeps nnU-Net's loop and hooks and adds:

- a stop signal (`FOMO_STOP_SIGNALS`, default SIGTERM and SIGUSR1) ends the run after the current
  training step (or, during a validation, at the end of that epoch): checkpoint_latest is written
  with the step reached and the step outputs of the unfinished epoch, and the process exits with
  `exit_codes.PREEMPTED` (75), leaving `preempted.json` in the fold folder (removed when the run goes
  on); under DDP the ranks agree on the step (one all-reduce per step);
- every checkpoint is written to a temporary file, fsync'ed, renamed over the old one and the folder
  fsync'ed; checkpoint_latest keeps its predecessor as checkpoint_latest.prev.pth;
- every checkpoint carries the random streams (`fomo_streams`): the position of the batch streams
  (fomo_nnunet.seeding: a batch is a function of its number), the trainer's generators (MAE masks,
  skip drops) and the global torch / numpy / Python states, of every rank;
- `--c` on a checkpoint that cannot be read (as data only) or lacks nnU-Net's keys says so and falls back to
  checkpoint_latest.prev.pth, then checkpoint_best.pth (both carry the full state);
- a console that goes away (nothing reads stdout any more: a job's `| tee` killed by the same signal) is
  pointed at /dev/null instead of ending the run with BrokenPipeError; the log file goes on.
"""
from __future__ import annotations

import atexit
import functools
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import distributed as dist

from fomo_nnunet.distributed import from_all_ranks
from fomo_nnunet.exit_codes import PREEMPTED
from fomo_nnunet.io.atomic import write_json
from fomo_nnunet.training.loop import end_epoch
from fomo_nnunet.models.transfer import CheckpointError, load_torch_file_safely, unwrap

STOP_SIGNALS_ENV = "FOMO_STOP_SIGNALS"
DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
STREAMS_KEY = "fomo_streams"
LATEST = "checkpoint_latest.pth"
PREEMPTED_FILE = "preempted.json"  # in the fold folder while a preempted run waits for its --c
PREVIOUS_SUFFIX = ".prev.pth"
# what nnU-Net's load_checkpoint reads; a file without them is not a checkpoint to continue from
REQUIRED_KEYS = ("network_weights", "optimizer_state", "logging", "current_epoch", "init_args")


# ---- signals ---------------------------------------------------------------------------------------
def stop_signals(environ: dict | None = None) -> tuple[int, ...]:
    """The signals that stop a training with a checkpoint: `FOMO_STOP_SIGNALS` (names or numbers, comma
    separated; "none" for none), default SIGTERM and SIGUSR1."""
    env = os.environ if environ is None else environ
    raw = env.get(STOP_SIGNALS_ENV, "").strip()
    if raw.lower() == "none":
        return ()
    names = [n.strip() for n in raw.split(",") if n.strip()] if raw else list(DEFAULT_STOP_SIGNALS)
    found = []
    for name in names:
        try:
            sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[name.upper() if name.upper()
                                                                                   .startswith("SIG") else
                                                                                   "SIG" + name.upper()]
        except (KeyError, ValueError):
            raise ValueError(f"{STOP_SIGNALS_ENV}={raw!r}: {name!r} is not a signal (expected names such as "
                             f"SIGTERM,SIGUSR1, numbers, or 'none')") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"{STOP_SIGNALS_ENV}={raw!r}: {sig.name} cannot be caught")
        found.append(int(sig))
    return tuple(dict.fromkeys(found))


class StopRequest:
    """The stop signals' handler: it only records the signal; the training loop acts on it between steps."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self, signums: tuple[int, ...]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only: a training run in a thread has no stop signal
        for s in signums:
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# ---- the console -------------------------------------------------------------------------------------

def detach_console() -> None:
    """Point stdout at os.devnull because its reader is gone (a killed `| tee`, a closed terminal): every later
    print, and the interpreter's last flush (which turns the exit code into 120), would raise BrokenPipeError
    (Python ignores SIGPIPE). What a trainer logs still reaches its log file."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def flush_console() -> bool:
    """Flush stdout, detaching it if its reader is gone; True if it was detached. Without a stdout (None, as
    under pythonw or after a library closed it) there is nothing to flush."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        return False
    try:
        sys.stdout.flush()
        return False
    except BrokenPipeError:
        detach_console()
        return True


@functools.cache  # once per process
def flush_console_at_exit() -> None:
    """Flush (or detach) stdout from an exit handler, which runs before the interpreter's own last flush: a
    console lost after the last print then no longer changes the exit code (75 after a stop, 0 or an error's)."""
    atexit.register(flush_console)


# ---- atomic checkpoint files -------------------------------------------------------------------------
def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network file systems): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(checkpoint: dict, filename: str, keep_previous: bool = False) -> None:
    """`torch.save` to a temporary file, fsync, rename over `filename`, fsync the folder: at every moment
    `filename` is the old or the new checkpoint, whole. `keep_previous`: the old one stays readable as
    `<name>.prev.pth` (a hard link where the file system allows, else a copy) before it is replaced."""
    folder = os.path.dirname(os.path.abspath(filename))
    tmp = filename + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and os.path.isfile(filename):
        previous = previous_of(filename)
        staged = previous + ".tmp"
        if os.path.exists(staged):
            os.remove(staged)
        try:
            os.link(filename, staged)
        except OSError:
            shutil.copyfile(filename, staged)
        os.replace(staged, previous)
    os.replace(tmp, filename)
    _fsync_folder(folder)


def previous_of(filename: str) -> str:
    stem = filename[:-4] if filename.endswith(".pth") else filename
    return stem + PREVIOUS_SUFFIX


def read_checkpoint(filename: str) -> dict:
    """A checkpoint to continue from, loaded as data only (fomo_nnunet.models.transfer.load_torch_file_safely),
    or CheckpointError saying what is wrong with the file."""
    if not os.path.isfile(filename):
        raise CheckpointError(f"{filename} does not exist")
    checkpoint = load_torch_file_safely(filename)  # CheckpointError: truncated, corrupt, or not data
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{filename} holds a {type(checkpoint).__name__}, not a training checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{filename} is not a training checkpoint to continue from: no {', '.join(missing)}")
    return checkpoint


def fallbacks_for(filename: str) -> list[str]:
    """Where to continue from when `filename` is unreadable: its predecessor, then checkpoint_best."""
    folder = os.path.dirname(os.path.abspath(filename))
    candidates = [previous_of(filename), os.path.join(folder, "checkpoint_best.pth")]
    return [c for c in candidates if os.path.abspath(c) != os.path.abspath(filename) and os.path.isfile(c)]


def read_checkpoint_or_fallback(filename: str, warn) -> tuple[dict, str]:
    """(checkpoint, the file it came from): `filename`, or the first readable fallback, each refusal
    reported through `warn`; CheckpointError when none is readable."""
    problems = []
    for candidate in [filename, *fallbacks_for(filename)]:
        try:
            checkpoint = read_checkpoint(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            warn(f"WARNING: {e}")
            continue
        if candidate != filename:
            warn(f"WARNING: continuing from {candidate} instead (epoch {checkpoint['current_epoch']}); "
                 f"the steps after it are trained again")
        return checkpoint, candidate
    raise CheckpointError("no readable checkpoint to continue from: " + "; ".join(problems)
                          + ". Remove the broken files to start afresh (without --c)")


# ---- random streams ----------------------------------------------------------------------------------
def capture_random_state(generators: dict[str, torch.Generator]) -> dict:
    """This process's global random states and the named generators' states, as tensors and plain Python
    values (a checkpoint loads with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
             "generators": {name: g.get_state() for name, g in generators.items() if g is not None}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    for name, g in generators.items():
        if g is not None and name in state["generators"]:
            g.set_state(state["generators"][name])


def _as_tuples(value):
    """Python's random state with its tuples back (a checkpoint may hand them over as lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def outputs_to_tensors(outputs: list[dict]) -> list[dict]:
    """Training step outputs (numpy arrays) as tensors, bit for bit, for a data-only checkpoint."""
    return [{k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
             for k, v in o.items()} for o in outputs]


def outputs_from_tensors(outputs: list[dict]) -> list[dict]:
    return [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in o.items()} for o in outputs]


@dataclass
class ResumePoint:
    """Where a loaded checkpoint continues: the epoch, the training steps of it already done and their
    outputs, and every rank's random state (None for a checkpoint written before they were recorded)."""

    step: int = 0
    outputs: list = field(default_factory=list)
    ranks: list | None = None


class PreemptibleRun:
    """Mixin for nnU-Net trainers (before nnUNetTrainer in the bases): stop signals, atomic checkpoints
    with every random stream, mid-epoch resume, and a fallback for an unreadable checkpoint_latest."""

    preemption_exit_code: int = PREEMPTED

    def random_generators(self) -> dict[str, torch.Generator]:
        """The trainer's own generators that must continue exactly after a resume (name -> generator)."""
        return {}

    # ---- the training loop: nnU-Net's run_training, with a stop check after every step ----------
    def run_training(self):
        self._stop = StopRequest()
        self._stop.install(stop_signals())
        flush_console_at_exit()
        try:
            self.on_train_start()
            marker = os.path.join(self.output_folder, PREEMPTED_FILE)
            if self.local_rank == 0 and os.path.isfile(marker):
                os.remove(marker)  # this run continues the preempted one
            resume = getattr(self, "resume_point", None) or ResumePoint()
            self._restore_streams(resume)
            for epoch in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                train_outputs = list(resume.outputs)
                for step in range(resume.step, self.num_iterations_per_epoch):
                    train_outputs.append(self.train_step(next(self.dataloader_train)))
                    if self._stop_agreed():
                        self._preempt(epoch, step + 1, train_outputs)
                resume = ResumePoint()
                end_epoch(self, train_outputs)
                if self.current_epoch < self.num_epochs and self._stop_agreed():
                    self._preempt(self.current_epoch, 0, [])
            self.on_train_end()
        except BaseException as error:
            if not isinstance(error, SystemExit):  # _preempt has stopped them already
                self._stop_augmenters_after(error)
            raise
        finally:
            self._stop.uninstall()

    def _stop_augmenters_after(self, error: BaseException) -> None:
        """An error ends the training (a failing step, a full disk, an out-of-memory): the augmentation workers
        ignore the stop signals (they serve batches until the stop checkpoint), so multiprocessing's exit
        handler, which sends daemonic workers SIGTERM and then joins them, would wait for ever and the failed
        training would never exit. They are stopped through their own event here; the error itself goes on."""
        try:
            self._finish_augmenters()
        except Exception as e:  # never hide the error that ended the training
            print(f"stopping the augmentation workers after {type(error).__name__} failed too: {e!r}",
                  file=sys.stderr)

    def _stop_agreed(self) -> bool:
        """Whether any rank received a stop signal (every rank must ask at the same step under DDP)."""
        flag = self._stop.signum is not None
        if not self.is_ddp:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _preempt(self, epoch: int, step: int, train_outputs: list):
        """checkpoint_latest at (epoch, step), the augmenters stopped, then exit with PREEMPTED."""
        name = self._stop.name or "a stop signal on another rank"
        self.print_to_log_file(f"{name} received: stopping at epoch {epoch}, after {step} of "
                               f"{self.num_iterations_per_epoch} training steps")
        self.save_checkpoint(os.path.join(self.output_folder, LATEST), resume_at=(epoch, step, train_outputs))
        self._finish_augmenters()
        where = os.path.join(self.output_folder, LATEST)
        if self.local_rank == 0:  # what a job script checks to requeue (torchrun's own exit code is not ours)
            write_json({
                "signal": self._stop.name or None, "epoch": int(epoch), "step": int(step),
                "steps_per_epoch": int(self.num_iterations_per_epoch), "checkpoint": where,
                "exit_code": int(self.preemption_exit_code), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                os.path.join(self.output_folder, PREEMPTED_FILE), durable=True)
        hint = (f"`scontrol requeue {os.environ['SLURM_JOB_ID']}`, or " if os.environ.get("SLURM_JOB_ID") else "")
        self.print_to_log_file(f"preempted: {where} written; exit code {self.preemption_exit_code}. Continue with "
                               f"{hint}the same command plus --c (it resumes at this step; docs/preemption.md)")
        if flush_console():
            self._say_console_went_away()
        raise SystemExit(self.preemption_exit_code)

    # ---- the console -----------------------------------------------------------------------------
    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        """nnU-Net's: the line goes to the log file, then to the console. A console whose reader is gone
        (BrokenPipeError, raised after the file has the line) is detached instead of ending the run: a stop
        signal that also killed the job's `| tee` still gets its checkpoint and exit code 75."""
        try:
            super().print_to_log_file(*args, also_print_to_console=also_print_to_console,
                                      add_timestamp=add_timestamp)
        except BrokenPipeError:
            detach_console()
            self._say_console_went_away()

    def _say_console_went_away(self) -> None:
        super().print_to_log_file("the console went away (nothing reads its output any more): this run goes on, "
                                  "logging to this file only", also_print_to_console=False)

    def on_train_end(self):
        super().on_train_end()  # nnU-Net: checkpoint_final written, checkpoint_latest removed
        previous = previous_of(os.path.join(self.output_folder, LATEST))
        if self.local_rank == 0 and os.path.isfile(previous):
            os.remove(previous)

    def _finish_augmenters(self) -> None:
        for loader in (self.dataloader_train, self.dataloader_val):
            if loader is not None and hasattr(loader, "_finish"):
                loader._finish()

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint_contents(self) -> dict:
        """nnU-Net's checkpoint keys (what its load_checkpoint and predictor read); mixins add theirs."""
        return {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str, resume_at: tuple[int, int, list] | None = None) -> None:
        """nnU-Net's save_checkpoint, atomic and with the random streams of every rank. Every rank calls it
        (as nnU-Net's epoch end does); rank 0 writes. `resume_at` = (epoch, step, outputs of the steps done):
        a checkpoint in the middle of an epoch (default: after the epoch `current_epoch`)."""
        epoch, step, outputs = resume_at if resume_at is not None else (self.current_epoch + 1, 0, [])
        # every rank's random state and step outputs (the epoch's loss is the mean over all ranks' steps)
        mine = capture_random_state(self.random_generators()) | {"train_outputs": outputs_to_tensors(outputs)}
        ranks = from_all_ranks(mine, self.is_ddp)
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        saved_epoch = self.current_epoch
        self.current_epoch = epoch - 1  # the contents name the epoch to continue at as current_epoch + 1
        try:
            checkpoint = self.checkpoint_contents()
        finally:
            self.current_epoch = saved_epoch
        if step > 0:  # the unfinished epoch's entries are logged again when it runs on
            checkpoint["logging"] = {k: list(v[:epoch]) for k, v in checkpoint["logging"].items()}
        checkpoint[STREAMS_KEY] = {"step": int(step), "ranks": ranks, "world_size": len(ranks)}
        write_checkpoint(checkpoint, filename, keep_previous=os.path.basename(filename) == LATEST)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load_checkpoint; a file that cannot be read falls back to its predecessor or
        checkpoint_best (said in the log), and the random streams and step within the epoch are kept
        for run_training."""
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            def warn(message):  # every rank falls back alike; rank 0 says so
                if self.local_rank == 0:
                    print(message, file=sys.stderr, flush=True)
                    self.print_to_log_file(message, also_print_to_console=False)

            # read once here to check it (nnU-Net's load_checkpoint reads the file it is given again:
            # 2.8.1 cannot take the loaded dict)
            checkpoint, source = read_checkpoint_or_fallback(str(filename_or_checkpoint), warn)
            super().load_checkpoint(source)
        else:
            checkpoint = filename_or_checkpoint
            super().load_checkpoint(checkpoint)
        streams = checkpoint.get(STREAMS_KEY)
        if streams is None:
            self.resume_point = ResumePoint()
            return
        ranks = streams["ranks"]
        world = dist.get_world_size() if self.is_ddp else 1
        if len(ranks) != world:
            self.print_to_log_file(f"WARNING: the checkpoint was written by {len(ranks)} process(es), this run has "
                                   f"{world}: random streams start afresh and the unfinished epoch's loss counts its "
                                   f"remaining steps only; the run continues, but not bit for bit")
            self.resume_point = ResumePoint(int(streams["step"]))
            return
        outputs = outputs_from_tensors(ranks[self.local_rank]["train_outputs"])
        self.resume_point = ResumePoint(int(streams["step"]), outputs, ranks)

    def _restore_streams(self, resume: ResumePoint) -> None:
        """After on_train_start (which starts the trainer's generators): the checkpoint's random states."""
        if resume.ranks is not None:
            restore_random_state(resume.ranks[self.local_rank], self.random_generators())
        if resume.step:
            self.print_to_log_file(f"continuing epoch {self.current_epoch} at training step {resume.step} of "
                                   f"{self.num_iterations_per_epoch}")
