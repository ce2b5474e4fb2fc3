"""Atomic writes: a file appears whole under its final name or not at all.

Every writer writes into a fresh temporary file beside the final one and renames it into place with
`os.replace`, which POSIX makes atomic within one file system: a reader (nnU-Net, a validator, a rerun)
never sees half a file, and an interrupted run leaves at most a temporary file, never a truncated output.

Temporary names are hidden (a leading dot) and end in `TMP_SUFFIX`, not in `.nii.gz`, so nnU-Net never
takes a leftover for a case; they carry the host and process id (`process_tag`), so that a rerun can tell
a dead run's leftover from a file another live process (a shard on this or another node) is still writing
(`is_leftover`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"
HOST = socket.gethostname().replace(".", "_").replace("/", "_") or "host"


def process_tag(pid: int | None = None) -> str:
    """`<host>-<pid>`: the owner of a temporary file or folder, as `is_leftover` reads it back."""
    return f"{HOST}-{os.getpid() if pid is None else pid}"


def temporary_path(final: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Path:
    """A fresh hidden name beside `final`: `.<name>.<host>-<pid>.<random><suffix>`. A writer that picks its
    format by the file name (matplotlib, nibabel) passes the suffix it needs (".tmp.png")."""
    final = Path(final)
    return final.parent / f".{final.name}.{process_tag()}.{secrets.token_hex(4)}{suffix}"


@contextlib.contextmanager
def replacing(final: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """`with replacing(path) as tmp: write(tmp)`: the temporary file replaces `path` when the block ends;
    on any exception (a signal's KeyboardInterrupt or SystemExit too) it is removed and `path` is untouched.
    The caller creates the file inside the block, so an interruption at any moment leaves nothing behind."""
    final = Path(final)
    tmp = temporary_path(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, final: str | os.PathLike, durable: bool = False) -> Path:
    """`text` (UTF-8) into `final`, atomically (content first, as in json.dump). `durable`: the content is
    fsynced before the rename, so a machine that goes down right after (a preempted node) keeps it."""
    with replacing(final) as tmp:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    return Path(final)


def write_json(obj: Any, final: str | os.PathLike, indent: int | None = 1, durable: bool = False,
               **dumps: Any) -> Path:
    """`obj` as JSON (one trailing newline; `dumps` go to json.dumps, e.g. default=str), atomically;
    `durable` as in write_text."""
    return write_text(json.dumps(obj, indent=indent, **dumps) + "\n", final, durable=durable)


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_leftover(tag: str, mtime: float, stale_seconds: float, now: float | None = None) -> bool:
    """Whether a temporary file or folder owned by `tag` (`<host>-<pid>`, as process_tag writes it) was left
    by a run that is gone: a process of this host at once when it no longer runs; another host's (or an
    unreadable tag) only once it is older than `stale_seconds`, as that host's process cannot be asked."""
    host, _, pid = tag.rpartition("-")
    if host == HOST and pid.isdigit():
        return not process_alive(int(pid))
    return (time.time() if now is None else now) - mtime > stale_seconds


def tag_of_temporary(name: str) -> str:
    """The `<host>-<pid>` in a name temporary_path made ("" for another kind of name)."""
    if not name.endswith(TMP_SUFFIX):
        return ""
    owner = name[: -len(TMP_SUFFIX)].rsplit(".", 2)
    return owner[-2] if len(owner) == 3 else ""
