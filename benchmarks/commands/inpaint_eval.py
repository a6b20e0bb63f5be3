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
import time
from pathlib import Path
from typing import Any

HELP = "evaluate inpainting (Table 1: mean L1, mean L2, PSNR) of a trained network or a classical baseline"
DESCRIPTION = __doc__

#: = pretrain.inpainting_eval.BASELINES (not imported: --help stays fast)
BASELINE_CHOICES = ("mean", "telea", "ns", "biharmonic", "shiftmap", "fsr-fast", "fsr-best", "nn")


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


def _load_crops(paths: list[Path], protocol: Any, root: Path) -> list[tuple[str, Any]]:
    from tqdm import tqdm

    from pretrain.inpainting_eval import load_eval_image

    return [
        (p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p), load_eval_image(p, protocol))
        for p in tqdm(paths, desc="loading", unit="img", leave=False)
    ]


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
    from pretrain.checkpoint import CheckpointError
    from pretrain.data import DataError, find_images
    from pretrain.distributed import resolve_device
    from pretrain.inpainting_eval import (
        PROTOCOL_ID,
        PROTOCOL_VERSION,
        XPHOTO_ALGORITHMS,
        EvalProtocol,
        InpaintEvalError,
        as_table_units,
        build_baseline,
        centre_hole,
        centre_region,
        evaluate,
        load_mask_file,
        network_inpainter,
        write_per_image_csv,
    )
    from pretrain.runinfo import sha256_file, utc_now_iso
    from transfer.records import make_record, write_record

    started_at, t0 = utc_now_iso(), time.time()
    try:
        device = resolve_device(args.device)
        images_root = Path(args.images)
        paths = find_images(images_root)
        if args.limit is not None:
            paths = paths[: args.limit]
        weights: dict[str, Any]
        if args.weights:
            from pretrain.inpainting import load_generator

            loaded = load_generator(args.weights, device)
            overlap = (
                args.overlap if args.overlap is not None else (loaded.overlap if loaded.overlap is not None else 7)
            )
            method = "inpainting" if (loaded.adv_weight is None or loaded.adv_weight > 0) else "inpainting-l2"
            weights = {
                "source": str(loaded.path),
                "method": method,
                "sha256": sha256_file(loaded.path),
                "iteration": loaded.iteration,
                "train_overlap": loaded.overlap,
                "adv_weight": loaded.adv_weight,
            }
        else:
            overlap = args.overlap if args.overlap is not None else 7
            method = f"baseline-{args.baseline}"
            weights = {"source": f"baseline:{args.baseline}", "method": method, "sha256": None}
        protocol = EvalProtocol(resize_short=args.resize_short, overlap=overlap)
        hole = load_mask_file(args.mask, protocol.crop_size) if args.mask else centre_hole(protocol.crop_size, overlap)
        region = centre_region(protocol.crop_size)
        if args.weights:
            inpainter = network_inpainter(loaded.generator, device)
        else:
            train_crops = None
            if args.baseline == "nn":
                if not args.train_images:
                    raise InpaintEvalError("--baseline nn needs --train-images (the folder to search for neighbours)")
                train_root = Path(args.train_images)
                train_crops = [im for _, im in _load_crops(find_images(train_root), protocol, train_root)]
                weights["train_images"] = str(train_root)
                weights["train_count"] = len(train_crops)
            inpainter = build_baseline(args.baseline, train_crops, radius=args.radius)
        crops = _load_crops(paths, protocol, images_root)
        rows, metrics = evaluate(inpainter, crops, hole, region, progress=True)
    except (CheckpointError, DataError, InpaintEvalError, ValueError) as exc:
        raise SystemExit(f"bench inpaint-eval: {exc}") from exc

    table = as_table_units(metrics)
    dataset = args.dataset or images_root.resolve().name
    record = make_record(
        task="inpaint",
        protocol_id=PROTOCOL_ID,
        protocol_version=PROTOCOL_VERSION,
        protocol_description=protocol.describe() + ("" if not args.mask else f"; hole from mask file {args.mask}"),
        dataset=dataset,
        train_split=None,  # nothing is trained; the nn search folder is in weights["train_images"]
        eval_split=str(images_root),
        metrics={k: v for k, v in table.items() if not k.startswith("PSNR_pooled")},
        primary_metric="PSNR_hole",
        weights=weights,
        seed=args.seed,
        config={
            **protocol.to_dict(),
            "mask": args.mask,
            "radius": args.radius if args.baseline in ("telea", "ns") else None,
            "xphoto_algorithm": XPHOTO_ALGORITHMS.get(args.baseline or ""),
            "limit": args.limit,
            "images": len(rows),
        },
        started_at=started_at,
        wall_time_s=time.time() - t0,
        device=device,
        extra={
            "pooled_psnr": {k: v for k, v in table.items() if k.startswith("PSNR_pooled")},
            "units": "L1_* and L2_* in percent of the [0, 1] range, PSNR_* in dB",
            "per_image_csv": "<this record file name without .json>_per_image.csv, next to it",
        },
    )
    out = Path(args.out)
    record_path = write_record(record, out)
    csv_path = write_per_image_csv(rows, record_path.with_name(record_path.stem + "_per_image.csv"))
    print_table(method, metrics, len(rows))
    print(f"\nrecord: {record_path}\nper-image values: {csv_path}")
    return 0
