"""``bench export RUN --format mmseg``: an mmsegmentation config and checkpoint of the FCN-32s AlexNet.

RUN is either a segmentation run folder holding ``fcn.safetensors`` (``bench transfer --task seg --save-model``,
either engine: the trained FCN is exported) or any weight source ``--weights`` accepts (a ``bench pretrain`` run
folder, an ``encoder.safetensors``, a checkpoint): then the trunk is the pretrained encoder and fc6/fc7/score layer
carry the protocol's initialisation (seed 0, 4096 maps), ready for fine-tuning in mmseg.

Written into ``--output`` (default ``RUN/mmseg/``): ``fcn32s_alexnet.py`` (``model`` of type ``EncoderDecoder`` with
the suite's ``ContextEncoderAlexNet`` backbone and ``FCNAlexNetHead``, and ``custom_imports`` naming the module that
registers them) and ``fcn32s_alexnet.pth`` (``{"state_dict": ..., "meta": ...}`` of tensors and strings only, so that
``torch.load(..., weights_only=True)`` reads it). The model built from the config loads it with ``strict=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transfer.input_norm import resolve_input_norm
from transfer.segmentation.mmseg_engine import (
    ENGINE,
    build_model,
    model_config,
    native_to_mmseg_state,
    require_mmseg,
)
from transfer.segmentation.model import build_fcn
from transfer.segmentation.protocol import SegmentationError
from transfer.voc import SEG_CLASSES
from transfer.weights import WeightsError, load_alexnet_trunk

CONFIG_NAME = "fcn32s_alexnet.py"
CHECKPOINT_NAME = "fcn32s_alexnet.pth"
#: fc6/fc7 width of an export from pretrained weights alone (the protocol's paper setting)
PAPER_FC_WIDTH = 4096


class MmsegExportError(ValueError):
    """RUN cannot be exported for mmseg; the message names the file and what would fix it."""


def _seg_run_settings(run_dir: Path) -> dict[str, Any]:
    """input_norm and trunk widths of a segmentation run, from its record (defaults when it has none)."""
    for path in sorted(run_dir.glob("seg_*.json")):
        record = json.loads(path.read_text())
        return {
            "input_norm": record["config"].get("input_norm", "minus1to1"),
            "widths": record["weights"].get("widths", "torchvision"),
            "record": path.name,
        }
    return {"input_norm": "minus1to1", "widths": "torchvision", "record": None}


def _fcn_state(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(native FCN-32s state dict, settings) of a segmentation run folder or a pretrained weight source."""
    fcn_file = source / "fcn.safetensors" if source.is_dir() else None
    if fcn_file is not None and fcn_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(fcn_file))
        if "fc6.weight" not in state or any(k.startswith(("score_skips.", "up_skips.")) for k in state):
            raise MmsegExportError(f"{fcn_file} is not an FCN-32s (only FCN-32s has an mmseg head here)")
        settings = _seg_run_settings(source)
        settings.update(fc_width=int(state["fc6.weight"].shape[0]), trained=True, source=str(fcn_file))
        return state, settings
    try:
        trunk, info = load_alexnet_trunk(source, seed=0)
    except WeightsError as exc:
        raise MmsegExportError(str(exc)) from exc
    fcn = build_fcn(trunk, variant="32s", num_classes=len(SEG_CLASSES), fc_channels=PAPER_FC_WIDTH, seed=0)
    settings = {
        "input_norm": resolve_input_norm("auto", info.kind),
        "widths": info.widths,
        "fc_width": PAPER_FC_WIDTH,
        "trained": False,
        "source": info.source,
        "method": info.method,
    }
    return fcn.state_dict(), settings


def config_text(model: dict[str, Any], meta: dict[str, Any]) -> str:
    """The mmseg config file: plain Python literals, importable by ``mmengine.Config.fromfile``."""
    lines = [
        "# FCN-32s on the context-encoders-bench AlexNet trunk (written by `bench export --format mmseg`)",
        f"# source: {meta['source']}; head: {'trained' if meta['trained'] else 'initialised, not trained'}",
        "default_scope = 'mmseg'",
        "custom_imports = dict(imports=['transfer.segmentation.mmseg_models'], allow_failed_imports=False)",
        f"model = {model!r}",
        "",
    ]
    return "\n".join(lines)


def export_mmseg(run_dir: str | Path, out: str | Path | None = None) -> dict[str, str]:
    """Write the config and checkpoint; returns their paths and what they hold."""
    try:
        require_mmseg()
    except SegmentationError as exc:
        raise MmsegExportError(str(exc)) from exc
    source = Path(run_dir)
    state, settings = _fcn_state(source)
    config = model_config(fc_width=settings["fc_width"], input_norm=settings["input_norm"], widths=settings["widths"])
    model = build_model(config)
    mm_state = {k: v.detach().cpu().contiguous() for k, v in native_to_mmseg_state(state).items()}
    try:
        model.load_state_dict(mm_state, strict=True)
    except RuntimeError as exc:
        raise MmsegExportError(f"{settings['source']} does not fit the mmseg FCN-32s: {exc}") from exc
    folder = Path(out) if out is not None else (source if source.is_dir() else source.parent) / "mmseg"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in settings.items()} | {"engine": ENGINE, "classes": ",".join(SEG_CLASSES)}
    config_path, ckpt_path = folder / CONFIG_NAME, folder / CHECKPOINT_NAME
    tmp = ckpt_path.with_suffix(".pth.tmp")
    torch.save({"state_dict": mm_state, "meta": meta}, tmp)
    tmp.replace(ckpt_path)
    config_path.write_text(config_text(config, settings))
    return {"config": str(config_path), "checkpoint": str(ckpt_path), **meta}
