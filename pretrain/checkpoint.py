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


def _atomic_replace(path: Path, write: Any, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        raise CheckpointError(
            f"cannot load {path} with weights_only=True ({type(exc).__name__}: {exc}); "
            "is it a complete PyTorch checkpoint or state dict?"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict (checkpoint or state dict)")
    return obj
