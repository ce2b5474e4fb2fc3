"""A resumable chain of steps, each a command a user could type, with its output shown live.

Every step that finishes writes a marker (`steps/<name>.json` with its seconds and results), so a
rerun skips it; a step killed halfway leaves no marker and runs again. Commands run as
subprocesses with the nnU-Net variables of the work folder, exactly as a user's shell would.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fomo_nnunet.paths import nnunet_defaults, trainers_dir
from fomo_nnunet.io.atomic import write_text


class StepFailed(RuntimeError):
    pass


class Pipeline:
    def __init__(self, work: str | os.PathLike, log=print, threads: int | None = None,
                 in_process: Callable[[list[str]], int] | None = None):
        self.work = Path(work).resolve()
        self.steps_dir = self.work / "steps"
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.env = dict(os.environ)
        self.env.update(nnunet_defaults(self.work))
        self.env["nnUNet_extTrainer"] = str(trainers_dir())
        # small machines: nnU-Net's default pools (8 export workers, 12 augmentation workers) only thrash
        ncpu = threads or os.cpu_count() or 2
        self.env.setdefault("nnUNet_def_n_proc", str(max(1, min(ncpu, 4))))
        self.env.setdefault("nnUNet_n_proc_DA", str(max(1, min(ncpu, 4))))
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            Path(self.env[k]).mkdir(parents=True, exist_ok=True)
        self.bin = Path(sys.executable).parent
        self.in_process = in_process

    # ---- markers --------------------------------------------------------------------------------
    def _marker(self, name: str) -> Path:
        return self.steps_dir / f"{name}.json"

    def done(self, name: str) -> dict | None:
        m = self._marker(name)
        return json.loads(m.read_text()) if m.is_file() else None

    def forget(self, *names: str) -> None:
        """Drop the markers of finished steps (those that exist), so the next run does them again."""
        for name in names:
            self._marker(name).unlink(missing_ok=True)

    def step(self, name: str, fn: Callable[[], dict | None]) -> dict:
        """Run `fn` unless a previous run finished this step; returns the step's record."""
        previous = self.done(name)
        if previous is not None:
            self.log(f"[skip] {name} (done in an earlier run, {previous['seconds']:.0f} s)")
            return previous
        self.log(f"[step] {name}")
        t0 = time.time()
        result = fn() or {}
        record = {"name": name, "seconds": time.time() - t0, "result": result}
        write_text(json.dumps(record, indent=1, default=str), self._marker(name))
        self.log(f"[done] {name} in {record['seconds']:.0f} s")
        return record

    def seconds(self) -> dict[str, float]:
        """Seconds of every finished step, by name."""
        return {m.stem: json.loads(m.read_text())["seconds"] for m in sorted(self.steps_dir.glob("*.json"))}

    # ---- commands -------------------------------------------------------------------------------
    # Our own light commands (no worker processes) can run inside this process through the CLI entry
    # the caller hands in (`in_process`, the command layer's `fomo_nnunet.cli.main`: the pipeline sits
    # below the commands and does not import them): the same arguments and code path, without a Python
    # start and torch import per call (docs/results/cpu-speed.md).
    # nnU-Net's commands, training, planning and the container entry always run as subprocesses.
    IN_PROCESS = frozenset({"evaluate", "probe", "embed", "predict", "bundle"})

    def run(self, cmd: list[str], quiet_patterns: tuple[str, ...] = ("Inspecting module",)) -> str:
        """Run a command with the work folder's environment, streaming its output; returns the output
        (the empty string for a command run in process, whose output goes straight to the console)."""
        if self.in_process and cmd[0] == "fomo-nnunet" and len(cmd) > 1 and cmd[1] in self.IN_PROCESS:
            return self._run_in_process(cmd)
        exe = cmd[0] if os.path.isabs(cmd[0]) else str(self.bin / cmd[0]) if (self.bin / cmd[0]).exists() else cmd[0]
        self.log(f"  $ {shlex.join(cmd)}")
        proc = subprocess.Popen([exe, *cmd[1:]], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        lines = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                self._echo(line, quiet_patterns)
            rc = proc.wait()
        except BaseException:  # a stop signal (the CLI raises it: Ctrl-C, SIGTERM) or an error in the reading
            self._stop(proc, cmd, quiet_patterns)
            raise
        if rc != 0:
            tail = "".join(lines[-40:])
            raise StepFailed(f"`{shlex.join(cmd)}` exited with {rc}; last output:\n{tail}")
        return "".join(lines)

    # how long a stopped command may take to end before SIGKILL: a fomo trainer ends within one training step
    # (a validation: at the epoch's end) after writing checkpoint_latest.pth (docs/preemption.md)
    STOP_GRACE_S = 300.0

    def _echo(self, line: str, quiet_patterns: tuple[str, ...]) -> None:
        """One line of a command's output into the log, indented, unless it holds a quiet pattern."""
        if not any(p in line for p in quiet_patterns):
            self.log("    " + line.rstrip("\n"))

    def _stop(self, proc: subprocess.Popen, cmd: list[str], quiet_patterns: tuple[str, ...]) -> None:
        """When the benchmark stops, its running command stops with it, never left behind writing into the work
        folder (where a rerun would start a second training on the same files): SIGTERM, which a fomo trainer
        turns into checkpoint_latest.pth and exit code 75 (the rerun continues it with --c) and which ends
        nnU-Net's other commands; its output is read on meanwhile (a full pipe would block it), and after
        STOP_GRACE_S seconds, or at a second interrupt, SIGKILL (checkpoints are written atomically)."""
        if proc.poll() is None:
            self.log(f"  stopping `{shlex.join(cmd[:2])} ...` (pid {proc.pid}): SIGTERM, waiting up to "
                     f"{self.STOP_GRACE_S:.0f} s for it to end")
            proc.terminate()

        def drain():
            for line in proc.stdout:
                self._echo(line, quiet_patterns)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=self.STOP_GRACE_S)
        except BaseException:  # the grace ran out, or a second interrupt
            proc.kill()
            rc = proc.wait()
        reader.join(timeout=5)
        self.log(f"  `{shlex.join(cmd[:2])} ...` ended with exit code {rc}")

    def _run_in_process(self, cmd: list[str]) -> str:
        self.log(f"  $ {shlex.join(cmd)}")
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            rc = self.in_process(cmd[1:])
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:
            raise StepFailed(f"`{shlex.join(cmd)}` failed: {type(e).__name__}: {e}") from e
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if rc != 0:
            raise StepFailed(f"`{shlex.join(cmd)}` exited with {rc}")
        return ""
