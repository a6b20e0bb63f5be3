"""``bench inpaint-eval``: the paper's Table 1 (semantic inpainting) for a trained network or a baseline.

Every image of --images gets one fixed crop (shorter side resized to --resize-short, central 128x128 square) and a
hole (the central 64x64 square shrunk by --overlap px per side, or the white pixels of --mask). The method fills the
hole; mean L1, mean L2 (fractions of the [0, 1] range, stored and printed in percent as Table 1) and PSNR (dB,
10 log10(1/MSE) per image, then averaged) are computed over the whole 64x64 centre (``*_center``) and over the
hole only (``*_hole``). Written to --out: one run record (JSON, task "inpaint", primary metric PSNR_hole) and the
per-image values (CSV next to it). Baselines need no training: mean (mean colour of the visible pixels), telea and
ns (OpenCV cv2.inpaint), biharmonic (scikit-image), the patch-based shiftmap (shift-map stitching) and fsr-fast /
fsr-best (frequency-selective reconstruction, two quality profiles; fsr-best is about 20x slower) of OpenCV contrib's
cv2.xphoto.inpaint, nn (nearest neighbour by HOG features of the context among the crops of --train-images, its
pixels pasted into the hole: the paper's NN-inpainting baseline). The protocol is in docs/protocols/inpainting.md.
"""

from __future__ import annotations

import argparse
import dataclasses

from pretrain.checkpoint import CheckpointError
from pretrain.data import DataError
from pretrain.inpainting_eval import BASELINES, InpaintEvalError
from transfer.inpaint_eval import InpaintEvalConfig, run_inpaint_eval

HELP = "evaluate inpainting (Table 1: mean L1, mean L2, PSNR) of a trained network or a classical baseline"
DESCRIPTION = __doc__

BASELINE_CHOICES = tuple(BASELINES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--weights",
        help="a `bench pretrain --method inpainting` run folder (newest checkpoint), checkpoint .pt, or generator "
        "state dict (.pt/.safetensors)",
    )
    what.add_argument(
        "--baseline",
        choices=BASELINE_CHOICES,
        help="a method without training: mean fill, OpenCV telea / ns, scikit-image biharmonic, OpenCV-contrib "
        "xphoto shiftmap / fsr-fast / fsr-best, HOG nearest neighbour (nn, needs --train-images)",
    )
    parser.add_argument("--images", required=True, help="held-out images (folder, searched recursively)")
    parser.add_argument("--out", required=True, help="folder for the run record and the per-image CSV")
    parser.add_argument(
        "--train-images", default=None, help="folder searched by --baseline nn for nearest neighbours (training images)"
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="px of the central 64x64 square left visible per side (default: the network's training overlap from "
        "its checkpoint; 7 as the paper for baselines). Use the same value for every row of a table",
    )
    parser.add_argument(
        "--resize-short",
        type=int,
        default=350,
        help="shorter side before the central 128 crop (350: the official training scale, loadSize; 0: native size)",
    )
    parser.add_argument("--mask", default=None, help="128x128 mask image (white = hole) instead of the centre hole")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (sorted by path)")
    parser.add_argument("--radius", type=float, default=3.0, help="cv2.inpaint neighbourhood radius (telea, ns)")
    parser.add_argument("--dataset", default=None, help="dataset name in the record (default: the folder's name)")
    parser.add_argument("--seed", type=int, default=None, help="training seed of the weights, stored in the record")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")


def print_table(method: str, metrics: dict[str, float], n: int) -> None:
    """Table 1 layout: L1 and L2 in percent, PSNR in dB, one line per region."""
    print(f"\n{method}: {n} image(s)")
    print(f"{'region':<8} {'mean L1 (%)':>12} {'mean L2 (%)':>12} {'PSNR (dB)':>10} {'PSNR pooled':>12}")
    for region in ("center", "hole"):
        print(
            f"{region:<8} {100 * metrics[f'L1_{region}']:>12.2f} {100 * metrics[f'L2_{region}']:>12.2f} "
            f"{metrics[f'PSNR_{region}']:>10.2f} {metrics[f'PSNR_pooled_{region}']:>12.2f}"
        )


def run(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(InpaintEvalConfig)}
    cfg = InpaintEvalConfig(**{k: v for k, v in vars(args).items() if k in names})
    try:
        result = run_inpaint_eval(cfg)
    except (CheckpointError, DataError, InpaintEvalError, ValueError) as exc:
        raise SystemExit(f"bench inpaint-eval: {exc}") from exc
    print_table(result.method, result.metrics, result.images)
    print(f"\nrecord: {result.record_path}\nper-image values: {result.csv_path}")
    return 0
