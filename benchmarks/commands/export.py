"""``bench export RUN_DIR``: write RUN_DIR/encoder.safetensors from the run's newest checkpoint.

The file holds the AlexNet encoder in torchvision ``alexnet().features`` keys (it loads with ``strict=True`` into
``torchvision.models.alexnet().features``) and metadata: method, masks, iterations, widths, the SHA-256 of the
source checkpoint and the code commit. ``bench pretrain`` writes the same file at the end of every run. The encoder
is also a timm model: ``import pretrain.timm_models; timm.create_model("alexnet_context_encoder", pretrained=True,
pretrained_cfg_overlay=dict(file="RUN_DIR/encoder.safetensors"))``.
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
    parser.add_argument("--output", default=None, help="output file (default: RUN_DIR/encoder.safetensors)")


def run(args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from pretrain.checkpoint import CheckpointError
    from pretrain.export import export_run

    try:
        path = export_run(args.run_dir, checkpoint=args.checkpoint, out=args.output)
    except CheckpointError as exc:
        print(f"bench export: error: {exc}", file=sys.stderr)
        return 1
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    print(json.dumps({"export": str(path), **meta}, indent=2, sort_keys=True))
    return 0
