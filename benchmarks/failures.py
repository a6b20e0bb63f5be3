"""Expected failures, as one-line messages: what ``bench`` prints instead of a Python traceback.

An expected failure is one a user can cause and fix: a bad or missing file, a busy run folder, a full disk, a
read-only folder, a signal. ``bench`` (``benchmarks/cli.py``) turns them into ``bench <command>: error: ...`` and
a non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

#: errors of the file system that say nothing about the code: the message names the file and what to do
DISK_ERRORS = {
    errno.ENOSPC: "the disk is full; free space or choose another output folder",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
}

#: exit status of an interrupted command (128 + SIGINT, what a shell reports for Ctrl-C)
EXIT_INTERRUPTED = 130


def _expected_types() -> tuple[type[BaseException], ...]:
    from pretrain.checkpoint import CheckpointError
    from pretrain.data import DataError
    from pretrain.runlock import RunFolderBusy
    from transfer.records import RecordError
    from transfer.voc import VOCError
    from transfer.weights import WeightsError

    return (CheckpointError, DataError, RunFolderBusy, RecordError, VOCError, WeightsError)


def expected_failure(exc: BaseException) -> str | None:
    """The message for an expected failure, or None when ``exc`` is a bug."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc} ({DISK_ERRORS[exc.errno]})"
    try:
        types = _expected_types()
    except ImportError:  # a partial install; the traceback is then the best description
        return None
    if isinstance(exc, types):
        return str(exc)
    return None
