"""One writer per run folder: an advisory ``fcntl`` lock on a lock file inside the folder.

A second ``bench pretrain``, ``bench transfer`` or ``bench reproduce`` on a folder that another process is writing
stops at once with ``RunFolderBusy``, whose message names the holder (process id, host, command, start time; the
holder writes them into the lock file once it has the lock). The kernel releases the lock when the holder exits,
however it exits (``kill -9`` included), so a stale lock file never blocks a later run.

The lock file is removed on a normal release. Removing it is safe because a process that has just obtained the lock
checks that the file it locked is still the one at the path (a process that locked a file another process had
already unlinked tries again).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.runinfo import utc_now_iso

LOCK_NAME = ".bench.lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the lock of a run folder; the message names it."""


def _describe_holder(lock_path: Path) -> str:
    try:
        holder: dict[str, Any] = json.loads(lock_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process (it has not written its name yet)"
    return (
        f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')!r}, "
        f"since {holder.get('started')})"
    )


def _open_locked(lock_path: Path) -> int | None:
    """The descriptor of ``lock_path`` with an exclusive lock held, or None when another process holds it."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


@contextlib.contextmanager
def run_folder_lock(folder: str | Path, command: str, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the lock ``folder/name`` for the block (the folder is created if needed); raise ``RunFolderBusy``
    at once when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / name
    fd = _open_locked(lock_path)
    if fd is None:
        raise RunFolderBusy(
            f"{folder} is in use by {_describe_holder(lock_path)}; wait for it to finish or stop it, or choose "
            f"another output folder (the lock is {lock_path}, released when that process exits)"
        )
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": utc_now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


def command_line() -> str:
    """``bench`` and the arguments of this process, for the lock file."""
    return " ".join(["bench", *sys.argv[1:]])
