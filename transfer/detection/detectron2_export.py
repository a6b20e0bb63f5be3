"""``bench export RUN --format detectron2``: the AlexNet trunk as a detectron2 checkpoint, with a config that builds
the protocol's Fast R-CNN around it.

Writes ``<folder>/alexnet_backbone.pth`` (detectron2's checkpoint layout, ``{"model": {"backbone.conv1.weight": ...,
"backbone.conv5.bias"}}``, exactly the keys of the registered backbone, so ``DetectionCheckpointer`` loads it without
its name-matching heuristics) and ``<folder>/fast_rcnn_alexnet.yaml`` (the ``paper`` preset's Fast R-CNN:
precomputed proposals, ROIPool 6x6 on conv5, fc6/fc7 4096, the protocol's RoI sampling and solver, the input
normalisation the weights were trained with, and ``MODEL.WEIGHTS`` naming the checkpoint). A detectron2 user needs::

    import transfer.detection.detectron2_model  # registers build_alexnet_backbone and AlexNetFCHead
    cfg = get_cfg(); cfg.merge_from_file("RUN/detectron2/fast_rcnn_alexnet.yaml")
    model = build_model(cfg); DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)

The box head and predictor are not in the checkpoint: the protocol re-initialises them (the torchvision and
detectron2 engines use Fast R-CNN's Gaussian fillers; a model built from the config has detectron2's).
"""

from __future__ import annotations

from pathlib import Path

BACKBONE_FILE = "alexnet_backbone.pth"
CONFIG_FILE = "fast_rcnn_alexnet.yaml"


def export_detectron2(weights: str | Path, folder: str | Path, input_norm: str = "auto") -> dict[str, str]:
    """Export the trunk of ``weights`` (anything ``--weights`` takes except ``random``) into ``folder``; returns the
    written paths and what was exported."""
    from transfer.detection.detectron2_engine import Detectron2Settings, require_detectron2

    version = require_detectron2()  # before anything imports detectron2: a missing install is a one-line error
    from pretrain.checkpoint import atomic_torch_save, atomic_write_text
    from transfer.detection.detectron2_model import backbone_state_from_trunk, protocol_config
    from transfer.input_norm import resolve_input_norm
    from transfer.weights import load_alexnet_trunk

    if str(weights) == "random":
        raise ValueError("--format detectron2 exports trained weights; 'random' has none to export")
    trunk, info = load_alexnet_trunk(weights)
    if info.widths != "torchvision":
        raise ValueError(f"{info.source}: a trunk of {info.widths} widths; the detectron2 backbone has torchvision's")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / BACKBONE_FILE
    state = backbone_state_from_trunk(trunk.state_dict())
    # matching_heuristics False: the keys are exactly the model's, no name guessing on load
    atomic_torch_save(
        {"model": state, "__author__": "context-encoders-bench", "matching_heuristics": False}, checkpoint
    )
    norm = resolve_input_norm(input_norm, info.kind)
    cfg = protocol_config(Detectron2Settings(input_norm=norm), device="cpu", weights=str(checkpoint.resolve()))
    config = folder / CONFIG_FILE
    atomic_write_text(config, cfg.dump())
    return {
        "checkpoint": str(checkpoint),
        "config": str(config),
        "source": info.source,
        "method": info.method,
        "weights_kind": info.kind,
        "input_norm": norm,
        "detectron2": version,
    }
