"""Facts about the code and machine that every run folder and record carries."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from pretrain import __version__
from pretrain.allocator import allocator_mode

_REPO_ROOT = Path(__file__).resolve().parent.parent


def utc_now_iso() -> str:
    """Current UTC time as an ISO-8601 string with a trailing 'Z'."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def code_version() -> dict[str, Any]:
    """Package version plus the git commit of the source tree (when it is a checkout) and a dirty flag."""
    info: dict[str, Any] = {
        "package": "context-encoders-bench",
        "version": __version__,
        "commit": None,
        "dirty": None,
    }
    if (_REPO_ROOT / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            info["commit"] = commit
            info["dirty"] = bool(status)
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Software and hardware the run executed on (stored in run folders and records)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(device) if device is not None else None,
        "allocator": allocator_mode(),  # pretrain.allocator: heap (freed memory kept for reuse) or system
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a hard dependency
        env["torchvision"] = None
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        if key in os.environ:
            env[key.lower()] = int(os.environ[key])
    return env


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
