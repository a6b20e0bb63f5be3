"""Export of a pretrained AlexNet encoder: ``encoder.safetensors`` and a timm model that loads it.

``encoder.safetensors`` holds the trunk in torchvision ``alexnet().features`` keys (``"0.weight"``, ... ``"10.bias"``)
so ``torchvision.models.alexnet().features.load_state_dict(load_file(path), strict=True)`` works, plus string
metadata: format, method, mask, iterations, widths, crop size, the SHA-256 of the source checkpoint and the code
commit. No pickle is needed to read it.

The export is also a timm model: see ``pretrain/timm_models.py`` (kept apart because importing timm takes seconds,
which every pretraining run would otherwise pay).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint
from pretrain.runinfo import sha256_file

EXPORT_NAME = "encoder.safetensors"
EXPORT_FORMAT = "context-encoders-bench/encoder"


def export_metadata(checkpoint: dict[str, Any], checkpoint_path: Path | None) -> dict[str, str]:
    """Safetensors metadata (str -> str) describing where an exported encoder comes from."""
    cfg = checkpoint.get("config") or {}
    commit = (checkpoint.get("code_version") or {}).get("commit")
    return {
        "format": EXPORT_FORMAT,
        "layout": "torchvision.models.alexnet().features",
        "method": str(checkpoint.get("method", "unknown")),
        "mask": str(cfg.get("mask", "")) if checkpoint.get("method") == "context-encoder" else "none",
        "mask_per_batch": str(bool(cfg.get("mask_per_batch", False))).lower(),
        "iterations": str(int(checkpoint.get("iteration", 0))),
        "widths": str(cfg.get("widths", "torchvision")),
        "crop_size": str(cfg.get("crop_size", "")),
        "seed": str(cfg.get("seed", "")),
        "source_checkpoint": checkpoint_path.name if checkpoint_path is not None else "",
        "source_checkpoint_sha256": sha256_file(checkpoint_path) if checkpoint_path is not None else "",
        "code_commit": str(commit or ""),
    }


def export_checkpoint(checkpoint_path: str | Path, out: str | Path) -> Path:
    """Write the ``encoder`` of a ``bench pretrain`` checkpoint to ``out`` (safetensors, atomically)."""
    checkpoint_path = Path(checkpoint_path)
    ckpt = load_checkpoint(checkpoint_path)
    encoder = ckpt.get("encoder")
    if not isinstance(encoder, dict):
        raise CheckpointError(
            f"{checkpoint_path} has no AlexNet encoder to export (method {ckpt.get('method')!r} has no AlexNet trunk)"
        )
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in encoder.items()}
    out = Path(out)
    atomic_write_bytes(out, safetensors_bytes(tensors, export_metadata(ckpt, checkpoint_path)))
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file with its header in a fixed order (tensors by name, metadata keys sorted), so that the
    same tensors and metadata always give the same bytes: ``safetensors.torch.save`` writes the metadata in hash
    order, which changes from process to process, and ``weights.sha256`` in records would not name the weights.
    The layout is the safetensors format: an 8-byte little-endian header length, the JSON header (padded with
    spaces to a multiple of 8 bytes) and the raw little-endian tensor data."""
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}  # fmt: skip
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        blob = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": dtypes[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def export_run(run_dir: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the newest checkpoint of ``run_dir`` (or ``checkpoint``) to ``run_dir/encoder.safetensors``."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        folder = run_dir / "checkpoints"
        ckpts = sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else []
        if not ckpts:
            raise CheckpointError(f"{run_dir} holds no checkpoints/ckpt_*.pt; is it a `bench pretrain` run folder?")
        checkpoint = ckpts[-1]
    return export_checkpoint(checkpoint, out if out is not None else run_dir / EXPORT_NAME)
