"""``bench inpaint``: fill the centre (or a given mask) of any images with a trained inpainting network.

Each image is cropped as in ``bench inpaint-eval`` (shorter side resized to --resize-short, central 128x128 crop;
smaller images are upscaled with a warning). The hole is the central 64x64 square shrunk by --overlap px per side
(default: the overlap the network was trained with), or the white pixels of --mask (a 128x128 image). The network's
input is the crop with the hole set to the paper's mean colour; its prediction is pasted into the hole. Written to
--out: ``NNNN_<name>.png`` (the completed 128x128 crop) per image and ``grid.png`` (one row per image: masked input |
result | original, like the paper's figures).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fill the centre (or a mask) of images with a trained inpainting network; writes results and a grid"
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="+", help="image files and/or folders (searched recursively for jpg, jpeg, png, ...)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="a `bench pretrain --method inpainting` run folder (newest checkpoint), a checkpoint .pt, or a "
        "generator state dict (.pt/.safetensors, linear or convolutional bottleneck layout)",
    )
    parser.add_argument("--out", required=True, help="folder for the completed images and grid.png")
    parser.add_argument(
        "--mask",
        default=None,
        help="128x128 mask image, white = pixels to fill (default: the central square). A network trained with "
        "the centre mask can fill only pixels inside the central 64x64 square",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="px of the central 64x64 square left visible per side (default: the training overlap stored in the "
        "checkpoint, else 7 as the paper)",
    )
    parser.add_argument(
        "--resize-short",
        type=int,
        default=350,
        help="shorter side before the central 128 crop (350: the official training scale, loadSize; 0: native size)",
    )
    parser.add_argument("--grid-rows", type=int, default=32, help="at most this many images in grid.png")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")


def _collect(sources: list[str]) -> list[Path]:
    from pretrain.data import DataError, find_images

    found: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found += find_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"image not found: {path}")
    return found


def run(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from pretrain.checkpoint import CheckpointError, atomic_write_bytes
    from pretrain.data import DataError
    from pretrain.distributed import resolve_device
    from pretrain.inpainting import load_generator
    from pretrain.inpainting_eval import (
        EvalProtocol,
        InpaintEvalError,
        centre_hole,
        load_eval_image,
        load_mask_file,
        network_inpainter,
    )

    try:
        device = resolve_device(args.device)
        loaded = load_generator(args.weights, device)
        overlap = args.overlap if args.overlap is not None else (loaded.overlap if loaded.overlap is not None else 7)
        protocol = EvalProtocol(resize_short=args.resize_short, overlap=overlap)
        hole = load_mask_file(args.mask, protocol.crop_size) if args.mask else centre_hole(protocol.crop_size, overlap)
        out_size = loaded.generator.output_size
        off = (protocol.crop_size - out_size) // 2
        if hole[:off].any() or hole[off + out_size :].any() or hole[:, :off].any() or hole[:, off + out_size :].any():
            raise InpaintEvalError(
                f"{args.mask}: the mask has pixels outside the central {out_size}x{out_size} square, the only part "
                f"{loaded.path} predicts (it was trained with the centre mask)"
            )
        paths = _collect(args.images)
        fill = network_inpainter(loaded.generator, device)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows: list[np.ndarray] = []
        for i, path in enumerate(tqdm(paths, desc="inpaint", unit="img")):
            image = load_eval_image(path, protocol)
            completed = fill(image, hole)
            masked = image.copy()
            masked[hole] = np.array([117, 104, 123], np.float32) / 255.0  # the paper's fill colour, as the net sees
            result = Image.fromarray(np.rint(completed * 255).astype(np.uint8))
            target = out / f"{i:04d}_{path.stem}.png"
            buf = io.BytesIO()
            result.save(buf, format="PNG")
            atomic_write_bytes(target, buf.getvalue())
            if len(rows) < args.grid_rows:
                rows.append(np.concatenate([masked, completed, image], axis=1))
        grid = np.concatenate(rows, axis=0)
        buf = io.BytesIO()
        Image.fromarray(np.rint(grid * 255).astype(np.uint8)).save(buf, format="PNG")
        atomic_write_bytes(out / "grid.png", buf.getvalue())
    except (CheckpointError, DataError, InpaintEvalError, ValueError) as exc:
        raise SystemExit(f"bench inpaint: {exc}") from exc
    print(
        f"filled {len(paths)} image(s) with {loaded.path} (overlap {overlap} px) -> {out} (grid.png: masked input | "
        "result | original)"
    )
    return 0
