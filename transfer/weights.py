"""Weight adapters: turn any supported weight source into an initialised AlexNet trunk.

Accepted sources (``--weights``):
- ``random``: Gaussian N(0, 0.01) weights, zero bias (the paper's "Random Gaussian" row), seeded.
- a ``bench pretrain`` run folder: its ``encoder.safetensors`` if present, else its newest checkpoint;
- an exported ``encoder.safetensors`` (torchvision ``alexnet().features`` keys, metadata names the method);
- a ``bench pretrain`` checkpoint (``.pt``; its ``encoder`` entry is used);
- a torchvision AlexNet state dict (``features.N.*`` keys; classifier keys are ignored) or a bare
  ``features`` state dict (``N.*`` keys).
Nothing is unpickled: ``.pt`` files are read with ``weights_only=True`` and safetensors needs no pickle at all.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from pretrain.checkpoint import CheckpointError, load_checkpoint
from pretrain.models.alexnet import Widths, alexnet_trunk, gaussian_init_
from pretrain.runinfo import sha256_file


class WeightsError(RuntimeError):
    """The weight source cannot be turned into an AlexNet trunk; the message says why and names the file."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a run record stores about the weights it started from."""

    source: str
    method: str
    sha256: str | None
    kind: str  # random | safetensors | checkpoint | torchvision
    iterations: int | None = None
    widths: str = "torchvision"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _newest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    return ckpts[-1] if ckpts else None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc
    return tensors, meta


def _trunk_state_from_dict(obj: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], str, int | None, str]:
    """(state dict in trunk keys, method, iterations, kind) from a loaded .pt object."""
    if "encoder" in obj and isinstance(obj["encoder"], dict):
        cfg = obj.get("config") or {}
        widths = cfg.get("widths", "torchvision") if isinstance(cfg, dict) else "torchvision"
        return obj["encoder"], str(obj.get("method", "unknown")), obj.get("iteration"), f"checkpoint:{widths}"
    if "model" in obj and isinstance(obj["model"], dict) and "encoder" not in obj:
        raise WeightsError(f"{path} is a checkpoint without an AlexNet encoder (method {obj.get('method')!r})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("features.") for k in tensors):
        return (
            {k[len("features.") :]: v for k, v in tensors.items() if k.startswith("features.")},
            "torchvision",
            None,
            "torchvision",
        )
    if tensors:
        return tensors, "state-dict", None, "torchvision"
    raise WeightsError(f"{path} holds no tensors that could be AlexNet trunk weights")


def check_weight_values(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors that cannot be trained weights: integer or boolean ones (a state dict of something else, or
    a quantised export), and ones holding NaN or Inf (a run that diverged). The message names file and tensor."""
    for name, tensor in sorted(state.items()):
        if not tensor.is_floating_point():
            raise WeightsError(f"{path}: tensor {name} has dtype {tensor.dtype}; weights must be floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(
                f"{path}: tensor {name} holds {bad} NaN/Inf values (a diverged run?); use an earlier checkpoint"
            )


def _load_into(trunk: nn.Sequential, state: dict[str, torch.Tensor], path: Path) -> None:
    check_weight_values(state, path)
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs trunk {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if wrong:
            parts.append(f"shape mismatches {wrong}")
        raise WeightsError(f"{path} does not fit the AlexNet trunk: " + "; ".join(parts))
    trunk.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def load_alexnet_trunk(
    source: str | Path, *, seed: int = 0, widths: Widths | None = None
) -> tuple[nn.Sequential, WeightsInfo]:
    """Build an AlexNet trunk (torchvision ``features`` layout) initialised from ``source``."""
    if str(source) == "random":
        gen = torch.Generator().manual_seed(seed)
        trunk = gaussian_init_(alexnet_trunk(widths or "torchvision"), std=0.01, bias=0.0, generator=gen)
        info = WeightsInfo(source="random", method="random", sha256=None, kind="random", widths=widths or "torchvision")
        return trunk, info
    path = Path(source)
    if path.is_dir():
        export = path / "encoder.safetensors"
        ckpt = _newest_checkpoint(path)
        if export.is_file():
            path = export
        elif ckpt is not None:
            path = ckpt
        else:
            raise WeightsError(f"run folder {path} has neither encoder.safetensors nor checkpoints/*.pt")
    if not path.is_file():
        raise WeightsError(f"weights not found: {path} (give a run folder, a .safetensors or .pt file, or 'random')")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        method = meta.get("method", "unknown")
        iters = int(meta["iterations"]) if meta.get("iterations", "").isdigit() else None
        kind, w = "safetensors", str(widths or meta.get("widths", "torchvision"))
    else:
        try:
            obj = load_checkpoint(path)
        except CheckpointError as exc:
            raise WeightsError(str(exc)) from exc
        state, method, iters, kind = _trunk_state_from_dict(obj, path)
        w = str(widths or (kind.split(":", 1)[1] if kind.startswith("checkpoint:") else "torchvision"))
        kind = kind.split(":", 1)[0]
    if w not in ("torchvision", "caffe"):
        raise WeightsError(f"{path}: unknown trunk widths {w!r}")
    trunk = alexnet_trunk(w)  # type: ignore[arg-type]
    _load_into(trunk, state, path)
    info = WeightsInfo(source=str(path), method=method, sha256=sha256_file(path), kind=kind, iterations=iters, widths=w)
    return trunk, info


def describe(info: WeightsInfo) -> str:
    return json.dumps(info.to_dict(), sort_keys=True)
