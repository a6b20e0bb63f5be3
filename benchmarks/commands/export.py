"""``bench export RUN_DIR``: write RUN_DIR/encoder.safetensors from the run's newest checkpoint.

The file holds the AlexNet encoder in torchvision ``alexnet().features`` keys (it loads with ``strict=True`` into
``torchvision.models.alexnet().features``) and metadata: method, masks, iterations, widths, the SHA-256 of the
source checkpoint and the code commit. ``bench pretrain`` writes the same file at the end of every run. The encoder
is also a timm model: ``import pretrain.timm_models; timm.create_model("alexnet_context_encoder", pretrained=True,
pretrained_cfg_overlay=dict(file="RUN_DIR/encoder.safetensors"))``.

An ``--method inpainting`` run has no AlexNet trunk: its 128-px generator is exported instead, to
``RUN_DIR/generator.safetensors``, with the bottleneck in the Lua code's convolutional layout by default
(``--layout linear`` keeps the training layout).
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "export a pretraining run's AlexNet encoder as safetensors (torchvision and timm compatible)"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `bench pretrain` run folder")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="export this checkpoint file instead of the run's newest checkpoints/ckpt_*.pt",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="output file (default: RUN_DIR/encoder.safetensors, or RUN_DIR/generator.safetensors for inpainting runs)",
    )
    parser.add_argument(
        "--layout",
        choices=["conv", "linear"],
        default="conv",
        help="inpainting runs only: bottleneck as the Lua code's 4x4 convolutions (conv) or as trained (linear)",
    )
    parser.add_argument(
        "--format",
        choices=["safetensors", "detectron2", "mmseg"],
        default="safetensors",
        help="safetensors: the encoder as above; detectron2: RUN_DIR's trunk (or any --weights source) as a "
        "detectron2 checkpoint plus a Fast R-CNN config that builds the model for it, in --output (default "
        "RUN_DIR/detectron2; needs detectron2, docs/protocols/detection.md); mmseg: an mmsegmentation config + "
        "checkpoint of FCN-32s on the AlexNet trunk, from a segmentation run with fcn.safetensors or a pretraining "
        "run (into RUN_DIR/mmseg/ or --output; docs/protocols/segmentation.md)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safetensors import safe_open

    from pretrain.checkpoint import CheckpointError
    from pretrain.export import export_run

    if args.format == "detectron2":  # transfer/detection/detectron2_export.py
        return _export_detectron2(args)
    if args.format == "mmseg":
        from transfer.segmentation.mmseg_export import MmsegExportError, export_mmseg

        try:
            print(json.dumps(export_mmseg(args.run_dir, out=args.output), indent=2, sort_keys=True))
        except MmsegExportError as exc:
            print(f"bench export: error: {exc}", file=sys.stderr)
            return 1
        return 0
    config_path = Path(args.run_dir) / "config.json"
    method = json.loads(config_path.read_text()).get("method") if config_path.is_file() else None
    try:
        if method == "inpainting":
            from pretrain.inpainting import export_generator

            out = args.output or Path(args.run_dir) / "generator.safetensors"
            path = export_generator(args.checkpoint or args.run_dir, out, layout=args.layout)
        else:
            path = export_run(args.run_dir, checkpoint=args.checkpoint, out=args.output)
    except (CheckpointError, ValueError) as exc:
        print(f"bench export: error: {exc}", file=sys.stderr)
        return 1
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    print(json.dumps({"export": str(path), **meta}, indent=2, sort_keys=True))
    return 0


def _export_detectron2(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transfer.detection.detectron2_engine import Detectron2Unavailable
    from transfer.detection.detectron2_export import export_detectron2
    from transfer.weights import WeightsError

    source = Path(args.run_dir)
    folder = args.output or (source / "detectron2" if source.is_dir() else source.parent / "detectron2")
    try:
        written = export_detectron2(args.checkpoint or args.run_dir, folder)
    except (Detectron2Unavailable, WeightsError, ValueError) as exc:
        print(f"bench export: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"export": written["checkpoint"], **written}, indent=2, sort_keys=True))
    return 0
