"""Atomic writes and safe loading of checkpoints and small files.

Every file the suite writes goes to a temporary file in the same folder first and is then renamed over the
target, so an interrupted write never leaves a truncated checkpoint or record behind. Checkpoints are read with
``torch.load(weights_only=True)``: loading never executes pickled code.

Checkpoint layout written by ``bench pretrain`` (``CHECKPOINT_FORMAT``)::

    {"format": "context-encoders-bench/checkpoint", "format_version": 1,
     "method": str, "iteration": int,
     "model": state_dict of every trained module (prefixed by module name),
     "encoder": AlexNet trunk state_dict in torchvision ``alexnet().features`` keys ("0.weight", ...)
                (absent for networks without an AlexNet trunk),
     "optimizer": ..., "rng": ..., "config": dict, "code_version": dict}
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "context-encoders-bench/checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint or weight file is missing, unreadable or of the wrong kind."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` swaps it for a moment, which
    a thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_temporary(path: Path, write: Any, mode: str) -> str:
    """Write a complete, synced temporary file next to ``path`` with the mode a plain ``open`` would give
    (``mkstemp`` makes it 0600: a record or checkpoint others should read would stay private); return its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def _atomic_replace(path: Path, write: Any, mode: str) -> None:
    tmp = _write_temporary(path, write, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_create_json(folder: str | Path, names: Any, obj: Any) -> Path:
    """Write ``obj`` (JSON as ``atomic_write_json``) under the first of ``names`` (an iterable of file names) that
    does not exist in ``folder``, atomically and without overwriting anything, even when other processes write
    to the folder at the same moment: the complete file is linked to its name, and the kernel refuses a link over
    an existing name (no check-then-rename window)."""
    folder = Path(folder)
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    tmp = _write_temporary(folder / "record.json", lambda fh: fh.write(text), "w")
    try:
        for name in names:
            target = folder / name
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError as exc:  # a file system without hard links: exclusive create, then write
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                    raise
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
            return target
        raise FileExistsError(f"no free file name in {folder}")
    finally:
        os.unlink(tmp)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    _atomic_replace(path, lambda fh: torch.save(obj, fh), "wb")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    _atomic_replace(path, lambda fh: fh.write(data), "wb")
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    _atomic_replace(path, lambda fh: fh.write(text), "w")
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """JSON with sorted keys and a trailing newline, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _one_line_reason(exc: Exception) -> str:
    """The line of torch's many-line load error that says what is wrong with the file (its first lines are
    advice about ``weights_only``, which must stay on: it is what keeps pickled code from running)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))]
        lines = detail or ["the file holds objects other than tensors and plain containers, or is not a checkpoint"]
    first = lines[0] if lines else type(exc).__name__
    return first.split(". ")[0].rstrip(".")[:200]  # the first sentence; the rest is advice


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``bench pretrain`` checkpoint (or any state-dict file) with ``weights_only=True``.

    Raises ``CheckpointError`` naming the file when it is missing, truncated, or needs unpickling of code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several exception types for corrupt or unsafe files
        reason = _one_line_reason(exc)
        raise CheckpointError(
            f"cannot load {path} with weights_only=True ({type(exc).__name__}: {reason}); "
            "is it a complete PyTorch checkpoint or state dict?"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict (checkpoint or state dict)")
    return obj
