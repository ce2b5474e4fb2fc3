"""Worker processes for per-case jobs (conversion, preprocessing) that stop within a bounded time.

Each worker has its own pipe to the parent and shares no lock with anything: a worker killed at any
moment cannot block the parent or another worker. (multiprocessing.Pool shares one lock per queue
among all workers, and its terminate() takes the task queue's lock, which an idle worker holds
while it waits for a task; `convert -np 2` hung there after SIGINT on a loaded machine.)

Stopping (SIGINT or SIGTERM to the parent, which raises `Interrupted`): every worker gets SIGTERM; a
worker inside a job raises SystemExit there, so the job's cleanup (`except BaseException`) removes
its temporary files, a worker between jobs exits at once. A worker still alive after
STOP_GRACE_SECONDS (a long C call that Python cannot interrupt, or a starved CPU) is killed with
SIGKILL; its temporary files carry its host and process id, so `on_killed` (or the next run)
removes them. The parent's stop therefore takes at most STOP_GRACE_SECONDS plus that cleanup.

A worker whose parent died (SIGKILL, an out-of-memory kill) notices within PARENT_POLL_SECONDS and
stops the same way.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback

PARENT_POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 2.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the parent process; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class InterruptibleRun:
    """SIGINT and SIGTERM stop the jobs: the signal is recorded, and `Interrupted` is raised in the main
    thread so that every `except BaseException` cleanup (temporary files, half-written cases, the
    workers) runs.

    `raise_at_once=True` raises from the handler itself (needed when the jobs run in this process, to
    leave a long job). A signal handler's exception can land anywhere, also in a `__del__` run by the
    garbage collector, where Python prints it and drops it (seen: nibabel's OrderedSet.__del__ under
    load); so the recorded signal is raised again by `check()` between jobs and on leaving the block.
    `raise_at_once=False` only records it and wakes `wakeup_fd`, which the parent's wait includes: the
    interruption is then raised by the parent's own loop, at a place where nothing can swallow it.
    """

    def __init__(self, raise_at_once: bool = True):
        self.raise_at_once = raise_at_once
        self.signum: int | None = None
        self.wakeup_fd: int | None = None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if self._write_fd is not None:
                try:
                    os.write(self._write_fd, b"!")
                except OSError:
                    pass
        if self.raise_at_once:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted if a stop signal arrived (and was not raised or was swallowed)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self):
        self.saved = {}
        self._write_fd = None
        if not self.raise_at_once:
            self.wakeup_fd, self._write_fd = os.pipe()
            os.set_blocking(self._write_fd, False)
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        for fd in (self.wakeup_fd, self._write_fd):
            if fd is not None:
                os.close(fd)
        self.wakeup_fd = self._write_fd = None
        if exc_type is None:
            self.check()      # a signal that arrived during the last step, or was swallowed
        return False


# --------------------------------------------------------------------------------- the worker
_IN_JOB = False   # in a worker: True while a job runs


def _exit_on_signal(signum, frame):
    """SIGTERM in a worker: inside a job it raises, so the job's cleanup removes its temporary files;
    anywhere else the worker ends at once (nothing of it is half-done there)."""
    if _IN_JOB:
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)   # the main thread cleans up and exits
    time.sleep(10)
    os._exit(1)                            # it was stuck where no signal reaches Python


def _worker_main(conn, fn, parent_pid: int) -> None:
    """Receive a job, run fn(job), send ("ok", result) or ("error", text); None ends the worker."""
    global _IN_JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent alone decides on SIGINT
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # The stop signals are still blocked here (the parent blocks them around the fork), and a thread inherits
    # its creator's mask: the watch thread never takes a SIGTERM, so the kernel delivers it to the main thread
    # alone. Were the watch thread to take it, the handler would run in the main thread even where the main
    # thread blocks SIGTERM (a job that must not be interrupted).
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="fomo-parent-watch").start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            os._exit(0)
        if job is None:
            os._exit(0)
        _IN_JOB = True
        try:
            reply = ("ok", fn(job))
        except Exception:
            reply = ("error", traceback.format_exc())
        finally:
            _IN_JOB = False
        conn.send(reply)


# --------------------------------------------------------------------------------- the parent
class WorkerDied(RuntimeError):
    pass


def _start(ctx, fn, n: int) -> list[tuple]:
    """n workers as (process, connection); SIGINT/SIGTERM are blocked while forking, so a child never
    runs the parent's handler before it has its own."""
    workers = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for _ in range(n):
            mine, theirs = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_worker_main, args=(theirs, fn, os.getpid()), daemon=True,
                            name="fomo-worker")
            p.start()
            theirs.close()
            workers.append((p, mine))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return workers


def stop_workers(workers: list[tuple], grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """SIGTERM every live worker, wait up to `grace` seconds, SIGKILL the rest. Returns the killed pids."""
    from multiprocessing.connection import wait

    for p, _ in workers:
        if p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace
    while True:
        alive = [p for p, _ in workers if p.exitcode is None]
        left = end - time.monotonic()
        if not alive or left <= 0:
            break
        wait([p.sentinel for p in alive], timeout=left)
    killed = []
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGKILL)
            killed.append(p.pid)
        except ProcessLookupError:
            pass
    for p, conn in workers:
        p.join(1.0)
        conn.close()
    return killed


def run_jobs(fn, jobs: list, num_processes: int, progress: bool, desc: str, on_killed=None,
             on_lost=None) -> list:
    """fn(job) for every job, in `num_processes` workers (in this process when 1); the results in
    the order they finish. `on_killed(pids)` runs after workers had to be killed with SIGKILL.
    A worker that dies in a job (out of memory, a signal) is replaced; `on_lost(job, reason)` gives
    that job's result (without it, WorkerDied is raised)."""
    from tqdm import tqdm

    results: list = []
    if num_processes <= 1 or len(jobs) <= 1:
        with InterruptibleRun(raise_at_once=True) as stop:
            with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True) as bar:
                for j in jobs:
                    stop.check()
                    results.append(fn(j))
                    bar.update()
        return results
    import multiprocessing as mp
    from multiprocessing.connection import wait

    # fork where there is one: workers need nothing but what the parent has loaded, and unlike spawn
    # it does not re-run an unguarded calling script
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with InterruptibleRun(raise_at_once=False) as stop:
        workers = _start(ctx, fn, min(num_processes, len(jobs)))
        todo = list(reversed(jobs))
        busy: dict[int, object] = {}          # index in workers -> its job
        try:
            with tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True) as bar:
                while todo or busy:
                    stop.check()
                    for i, (p, conn) in enumerate(workers):
                        if i not in busy and todo:
                            busy[i] = todo.pop()
                            conn.send(busy[i])
                    ready = wait([conn for i, (_, conn) in enumerate(workers) if i in busy]
                                 + [p.sentinel for i, (p, _) in enumerate(workers) if i in busy]
                                 + [stop.wakeup_fd])
                    stop.check()
                    for i in list(busy):
                        p, conn = workers[i]
                        if conn in ready or (p.sentinel in ready and conn.poll()):
                            try:
                                status, value = conn.recv()
                            except EOFError:
                                status, value = "died", None
                        elif p.sentinel in ready:
                            status, value = "died", None
                        else:
                            continue
                        job = busy.pop(i)
                        if status == "error":
                            raise RuntimeError(f"a worker failed on {job!r}:\n{value}")
                        if status == "died":
                            p.join(1.0)
                            reason = f"the worker process died in this job (exit code {p.exitcode}; out of memory?)"
                            conn.close()
                            workers[i] = _start(ctx, fn, 1)[0]
                            if on_lost is None:
                                raise WorkerDied(f"{reason}: {job!r}")
                            value = on_lost(job, reason)
                        results.append(value)
                        bar.update()
        except BaseException:
            killed = stop_workers(workers)
            if killed and on_killed is not None:
                on_killed(killed)
            raise
        for _, conn in workers:
            try:
                conn.send(None)
            except OSError:
                pass
        killed = stop_workers(workers, grace=STOP_GRACE_SECONDS + 5.0)   # they are leaving on their own
        if killed and on_killed is not None:
            on_killed(killed)
    return results
