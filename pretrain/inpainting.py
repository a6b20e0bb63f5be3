"""Loading and exporting a trained 128-px inpainting generator (``bench inpaint``, ``bench inpaint-eval``,
``bench export``). The method that trains it is ``pretrain.methods.inpainting``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pretrain.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_write_bytes, load_checkpoint
from pretrain.export import safetensors_bytes
from pretrain.methods.inpainting import FINE_SIZE, InpaintingMethod, generator_config
from pretrain.models.inpainting import BOTTLENECK, InpaintingGenerator, from_conv_layout, to_conv_layout


@dataclass(frozen=True)
class LoadedGenerator:
    """A generator restored for inference and where it came from."""

    generator: InpaintingGenerator
    path: Path
    iteration: int | None
    overlap: int | None  # the training overlap, when the file records it
    adv_weight: float | None
    config: dict[str, Any]


def _resolve_weights_file(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        ckpts = sorted((path / "checkpoints").glob("ckpt_*.pt"))
        if not ckpts:
            raise CheckpointError(
                f"{path}: no checkpoints/ckpt_*.pt in this run folder (is it a `bench pretrain` run?)"
            )
        return ckpts[-1]
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    return path


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
    return load_checkpoint(path)


def load_generator(source: str | Path, device: torch.device | str = "cpu") -> LoadedGenerator:
    """An ``InpaintingGenerator`` from a ``bench pretrain --method inpainting`` run folder (its newest checkpoint),
    a checkpoint ``.pt`` or a generator state dict (``.pt`` / ``.safetensors``, linear or convolutional bottleneck
    layout). Raises ``CheckpointError`` naming the file and the expected shape for any other network."""
    path = _resolve_weights_file(source)
    obj = _read_state(path)
    config: dict[str, Any] = {}
    iteration = None
    if obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("method") != InpaintingMethod.name:
            raise CheckpointError(
                f"{path}: a {obj.get('method')!r} checkpoint; expected one written by `bench pretrain --method "
                "inpainting` (generator + discriminator)"
            )
        config = dict(obj.get("config") or {})
        iteration = int(obj["iteration"]) if obj.get("iteration") is not None else None
        state = {k[len("generator.") :]: v for k, v in obj["model"].items() if k.startswith("generator.")}
    else:
        state = {(k[len("generator.") :] if k.startswith("generator.") else k): v for k, v in obj.items()}
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    state = from_conv_layout(state) if "bottleneck.weight" in state and "expand.weight" in state else state
    if config:
        gen_kwargs = generator_config(config)
    else:  # infer the variant from the tensors
        bottleneck = state.get("bottleneck.weight")
        gen_kwargs = {
            "bottleneck": int(bottleneck.shape[0]) if bottleneck is not None else BOTTLENECK,
            "output_size": FINE_SIZE if "decoder.14.weight" in state else 64,
        }
    generator = InpaintingGenerator(bottleneck=gen_kwargs["bottleneck"], output_size=gen_kwargs["output_size"])
    expected = generator.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(
                f"{path}: no entry {key!r} (expected shape {tuple(value.shape)}); this is not an inpainting "
                "generator (InpaintingGenerator, 128x128 input)"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                f"(InpaintingGenerator with a {gen_kwargs['bottleneck']}-d code, {gen_kwargs['output_size']} px output)"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected entries {unexpected[:5]} for an inpainting generator")
    generator.load_state_dict(state)
    options = config.get("method_options") or {}
    return LoadedGenerator(
        generator=generator.to(device).eval(),
        path=path,
        iteration=iteration,
        overlap=int(options.get("overlap", 7)) if config and config.get("mask") == "center" else None,
        adv_weight=float(options.get("adv_weight", 0.001)) if config else None,
        config=config,
    )


def export_generator(source: str | Path, out: str | Path, layout: str = "conv") -> Path:
    """Write the generator of ``source`` (see ``load_generator``) as safetensors, with the bottleneck in the
    convolutional layout of the Lua code (``layout="conv"``: ``bottleneck.weight [4000, 512, 4, 4]``,
    ``expand.weight [4000, 512, 4, 4]``) or the linear one used for training."""
    if layout not in ("conv", "linear"):
        raise ValueError(f"layout must be 'conv' or 'linear', got {layout!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in load_generator(source).generator.state_dict().items()}
    if layout == "conv":
        state = {k: v.contiguous() for k, v in to_conv_layout(state).items()}
    # the header in a fixed order: exporting the same checkpoint twice gives the same bytes
    return atomic_write_bytes(out, safetensors_bytes(state, {"layout": layout, "network": "InpaintingGenerator"}))
