"""Semantic-inpainting evaluation (the paper's Table 1) and the inpainting baselines that need no training.

Protocol ``inpaint-center`` (version 1), written out in docs/protocols/inpainting.md:

* Images: every image of a held-out folder, one fixed crop each (no randomness): the shorter side is resized to
  ``resize_short`` (default 350, the scale the official data loader trains at; 0 keeps the native size) with
  bilinear interpolation, then the central ``crop_size`` (128) square is taken. An image whose crop would need
  more pixels than it has (shorter side below 128 with ``resize_short=0``, or below 128 at all) is upscaled to a
  128 shorter side with a warning.
* Hole: the central 64x64 square shrunk by ``overlap`` pixels on each side (Pathak et al. 2016, Sec. 5.1: the
  network sees a ring of ``overlap`` px of the true centre). Every method fills the hole only; every other pixel
  is the original.
* Regions: ``center`` = the whole 64x64 centre of the completed image (the ring, if any, is the original there for
  every method), ``hole`` = the dropped pixels only. With ``overlap=0`` both are the same.
* Values in [0, 1]. Per image: ``L1`` = mean |x_hat - x| over the region's pixels and channels, ``L2`` = mean
  (x_hat - x)^2 (the MSE), ``PSNR`` = 10 log10(1 / L2) dB (L2 floored at 1e-10, i.e. at most 100 dB). Reported:
  the mean over images of each (Table 1 prints L1 and L2 as percentages) and, in addition, the PSNR of the pooled
  MSE (``PSNR_pooled_*``). The paper does not say which PSNR it averages; the per-image mean is the primary one.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PROTOCOL_ID = "inpaint-center"
PROTOCOL_VERSION = 1
BASELINES = ("mean", "telea", "ns", "biharmonic", "shiftmap", "fsr-fast", "fsr-best", "nn")
#: the ``cv2.xphoto.inpaint`` algorithm flag of each OpenCV-contrib baseline
XPHOTO_ALGORITHMS = {"shiftmap": "INPAINT_SHIFTMAP", "fsr-fast": "INPAINT_FSR_FAST", "fsr-best": "INPAINT_FSR_BEST"}
REGIONS = ("center", "hole")
#: the three per-image metrics of Table 1, in [0, 1] units (PSNR in dB)
METRICS = ("L1", "L2", "PSNR")
PSNR_FLOOR_MSE = 1e-10


class InpaintEvalError(ValueError):
    """Bad evaluation input (no images, a mask of the wrong size, ...); the message names the file."""


@dataclass(frozen=True)
class EvalProtocol:
    """The fixed crop and hole of the evaluation (see the module docstring)."""

    crop_size: int = 128
    resize_short: int = 350
    overlap: int = 7

    def describe(self) -> str:
        native = "native size" if self.resize_short == 0 else f"shorter side resized to {self.resize_short} px"
        return (
            f"{native}, central {self.crop_size}x{self.crop_size} crop; hole = central "
            f"{self.crop_size // 2}x{self.crop_size // 2} shrunk by {self.overlap} px per side; L1, L2 (MSE) in "
            "[0,1] units and PSNR = 10 log10(1/MSE) per image, averaged over images; regions: center (64x64, the "
            "ring is the original for every method) and hole (dropped pixels only)"
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# -- images and masks -------------------------------------------------------------------------------------------
def load_eval_image(path: str | Path, protocol: EvalProtocol = EvalProtocol()) -> np.ndarray:
    """The protocol's deterministic crop of one image: ``float32 [crop, crop, 3]`` in [0, 1]."""
    from pretrain.data import to_rgb8

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb8(im)
    except (OSError, ValueError) as exc:
        raise InpaintEvalError(f"{path}: cannot read image ({exc})") from exc
    return crop_for_eval(rgb, protocol, name=str(path))


def crop_for_eval(im: Image.Image, protocol: EvalProtocol = EvalProtocol(), name: str = "image") -> np.ndarray:
    """Resize (shorter side to ``resize_short``) and centre-crop a PIL image (see ``load_eval_image``)."""
    size = protocol.crop_size
    short = min(im.size)
    target = protocol.resize_short
    if short < size:
        warnings.warn(
            f"{name}: {im.size[0]}x{im.size[1]} is smaller than {size} px; upscaling it", UserWarning, stacklevel=2
        )
        target = max(target, size)
    if target and short != target:
        scale = target / short
        im = im.resize(
            (max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))), Image.Resampling.BILINEAR
        )
    left = (im.size[0] - size) // 2
    top = (im.size[1] - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.float32) / 255.0


def centre_region(size: int = 128) -> np.ndarray:
    """Boolean ``[size, size]``: the central square of half the side (1/4 of the area, Pathak et al. 2016, Sec. 3.3)."""
    region = np.zeros((size, size), bool)
    q = size // 4
    region[q : size - q, q : size - q] = True
    return region


def centre_hole(size: int = 128, overlap: int = 0) -> np.ndarray:
    """Boolean ``[size, size]``: the central square shrunk by ``overlap`` px on each side (True = dropped)."""
    if not 0 <= overlap < size // 8:
        raise ValueError(f"overlap must be in [0, {size // 8}), got {overlap}")
    hole = np.zeros((size, size), bool)
    q = size // 4
    hole[q + overlap : size - q - overlap, q + overlap : size - q - overlap] = True
    return hole


def load_mask_file(path: str | Path, size: int = 128) -> np.ndarray:
    """A mask image (white / nonzero = hole) as boolean ``[size, size]``; a different size is an error."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise InpaintEvalError(f"{path}: cannot read mask ({exc})") from exc
    if arr.shape != (size, size):
        raise InpaintEvalError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} (the crop the network sees; "
            "white = pixels to fill)"
        )
    mask = arr > 127
    if not mask.any():
        raise InpaintEvalError(f"{path}: the mask marks no pixel to fill (white = hole)")
    return mask


# -- metrics ----------------------------------------------------------------------------------------------------
def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for values in [0, 1]: 10 log10(1 / MSE), MSE floored at 1e-10 (100 dB)."""
    return 10.0 * math.log10(1.0 / max(float(mse), PSNR_FLOOR_MSE))


def region_errors(completed: np.ndarray, original: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """``L1``, ``L2`` (MSE) and ``PSNR`` of ``completed`` vs ``original`` (``[H, W, C]`` in [0, 1]) over the
    pixels where ``region`` (``[H, W]`` bool) is True, averaged over pixels and channels."""
    if completed.shape != original.shape:
        raise ValueError(f"shapes differ: {completed.shape} vs {original.shape}")
    diff = completed.astype(np.float64)[region] - original.astype(np.float64)[region]
    if diff.size == 0:
        raise ValueError("the region is empty")
    l2 = float(np.mean(diff**2))
    return {"L1": float(np.mean(np.abs(diff))), "L2": l2, "PSNR": psnr_from_mse(l2)}


def image_errors(completed: np.ndarray, original: np.ndarray, hole: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Per-image values ``{"L1_center", "L2_center", "PSNR_center", "L1_hole", ...}`` (fractions, dB)."""
    out: dict[str, float] = {}
    for name, mask in (("center", region), ("hole", hole)):
        for key, value in region_errors(completed, original, mask).items():
            out[f"{key}_{name}"] = value
    return out


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Dataset metrics from per-image rows: means of every per-image value (``L1_*``, ``L2_*`` as fractions,
    ``PSNR_*`` in dB) and ``PSNR_pooled_*`` = PSNR of the mean MSE."""
    if not rows:
        raise ValueError("no images to summarise")
    out: dict[str, float] = {}
    for region in REGIONS:
        for key in METRICS:
            out[f"{key}_{region}"] = float(np.mean([r[f"{key}_{region}"] for r in rows]))
        out[f"PSNR_pooled_{region}"] = psnr_from_mse(out[f"L2_{region}"])
    return out


def as_table_units(metrics: dict[str, float]) -> dict[str, float]:
    """L1 and L2 as percentages (as Table 1 prints them), PSNR unchanged (dB)."""
    return {k: (100.0 * v if k.startswith(("L1_", "L2_")) else v) for k, v in metrics.items()}


# -- inpainters: fill(image [H,W,3] in [0,1], hole [H,W] bool) -> completed image -----------------------------
Inpainter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _paste(image: np.ndarray, fill: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[hole] = fill[hole]
    return np.clip(out, 0.0, 1.0)


def mean_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill the hole with the mean colour of the visible pixels of this image."""
    out = image.copy()
    out[hole] = image[~hole].mean(axis=0)
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def opencv_inpainter(method: str, radius: float = 3.0) -> Inpainter:
    """``cv2.inpaint`` with ``INPAINT_TELEA`` (Telea 2004) or ``INPAINT_NS`` (Navier-Stokes, Bertalmio et al.
    2001) on the 8-bit image; ``radius`` = the neighbourhood radius (OpenCV's sample uses 3)."""
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]

    def fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        res = cv2.inpaint(_to_uint8(image), hole.astype(np.uint8) * 255, radius, flag)
        return _paste(image, res.astype(np.float32) / 255.0, hole)

    return fill


def xphoto_inpainter(name: str) -> Inpainter:
    """OpenCV contrib ``cv2.xphoto.inpaint`` on the 8-bit crop with the algorithm of ``XPHOTO_ALGORITHMS[name]``.

    ``shiftmap`` (He & Sun 2012): the hole is stitched from copies of the image shifted by its 60 most frequent
    patch offsets (8x8 patches), chosen per pixel by a graph-cut; it gets the crop as RGB (measured better than
    the CIELab input OpenCV suggests, docs/protocols/inpainting.md). ``fsr-fast`` / ``fsr-best`` (frequency-selective
    reconstruction, Seiler et al. 2015, Genser et al. 2018): each block is extrapolated from its context as a sparse
    sum of Fourier basis functions, in YCrCb; the crop goes in as BGR, the order the function documents. OpenCV
    exposes no other parameter of either algorithm. Its mask marks the *known* pixels (the reverse of
    ``cv2.inpaint``); the hole's own pixels are set to 0 first so nothing of them can leak in.
    """
    import cv2

    if name not in XPHOTO_ALGORITHMS:
        raise InpaintEvalError(f"unknown xphoto baseline {name!r}; choose one of {tuple(XPHOTO_ALGORITHMS)}")
    algorithm = getattr(cv2.xphoto, XPHOTO_ALGORITHMS[name])
    bgr = name != "shiftmap"

    def fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        src = _to_uint8(image)
        src[hole] = 0
        if bgr:
            src = np.ascontiguousarray(src[..., ::-1])
        known = np.where(hole, 0, 255).astype(np.uint8)
        dst = np.zeros_like(src)
        cv2.xphoto.inpaint(src, known, dst, algorithm)  # writes dst in place, returns None
        if bgr:
            dst = dst[..., ::-1]
        return _paste(image, dst.astype(np.float32) / 255.0, hole)

    return fill


def biharmonic_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """scikit-image ``inpaint_biharmonic`` (per channel, ``channel_axis=-1``)."""
    from skimage.restoration import inpaint_biharmonic

    res = inpaint_biharmonic(image.astype(np.float64), hole, channel_axis=-1)
    return _paste(image, res.astype(np.float32), hole)


@dataclass(frozen=True)
class HOGParams:
    """HOG of the grayscale 128x128 crop (scikit-image ``hog``; Dalal & Triggs defaults)."""

    orientations: int = 9
    pixels_per_cell: int = 8
    cells_per_block: int = 2


def _hog_blocks(gray: np.ndarray, params: HOGParams) -> np.ndarray:
    from skimage.feature import hog

    return hog(
        gray,
        orientations=params.orientations,
        pixels_per_cell=(params.pixels_per_cell, params.pixels_per_cell),
        cells_per_block=(params.cells_per_block, params.cells_per_block),
        block_norm="L2-Hys",
        feature_vector=False,
    )


def context_block_mask(hole: np.ndarray, params: HOGParams = HOGParams()) -> np.ndarray:
    """Boolean ``[blocks_y, blocks_x]``: HOG blocks that see no dropped pixel (the hole grown by 1 px, since
    gradients use both neighbours). Only these blocks describe the context."""
    grown = hole.copy()
    grown[1:, :] |= hole[:-1, :]
    grown[:-1, :] |= hole[1:, :]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    c, b = params.pixels_per_cell, params.cells_per_block
    ny = hole.shape[0] // c - b + 1
    nx = hole.shape[1] // c - b + 1
    keep = np.zeros((ny, nx), bool)
    for i in range(ny):
        for j in range(nx):
            keep[i, j] = not grown[i * c : (i + b) * c, j * c : (j + b) * c].any()
    return keep


def _gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


class HOGNearestNeighbour:
    """Nearest-neighbour inpainting with HOG features (the paper's "NN-inpainting (HOG features)" row).

    Database: the protocol's crop of every training image and its mirror image. Match: the Euclidean distance
    between the HOG blocks (``HOGParams``) of the query and of each database crop over the blocks that see only
    context pixels (``context_block_mask``), i.e. the match is found from the context alone. Paste: the matched
    crop's pixels at the hole's position are copied into the hole as they are (no blending, no alignment search).
    """

    def __init__(self, train_images: Sequence[np.ndarray], params: HOGParams = HOGParams()) -> None:
        if not train_images:
            raise InpaintEvalError("the nearest-neighbour baseline needs at least one training image")
        self.params = params
        crops = []
        for im in train_images:
            crops += [im, im[:, ::-1].copy()]
        self.crops = np.stack(crops)
        self.hogs = np.stack([_hog_blocks(_gray(c), params) for c in self.crops])
        self._keep_cache: dict[bytes, np.ndarray] = {}

    def match(self, image: np.ndarray, hole: np.ndarray) -> int:
        """Index into ``self.crops`` of the nearest neighbour of ``image``'s context."""
        key = np.packbits(hole).tobytes()
        if key not in self._keep_cache:
            self._keep_cache[key] = context_block_mask(hole, self.params)
        keep = self._keep_cache[key]
        if not keep.any():
            raise InpaintEvalError("the hole leaves no HOG block of pure context to match")
        query = _hog_blocks(_gray(image), self.params)[keep].ravel()
        dists = ((self.hogs[:, keep].reshape(len(self.hogs), -1) - query) ** 2).sum(axis=1)
        return int(np.argmin(dists))

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        return _paste(image, self.crops[self.match(image, hole)], hole)


def network_inpainter(generator: torch.nn.Module, device: torch.device | str = "cpu") -> Inpainter:
    """Fill with an ``InpaintingGenerator`` (eval mode: BatchNorm uses its running statistics).

    The input is the crop in [-1, 1] with the hole set to the paper's fill colour; a 64x64 prediction covers the
    central 64x64 square (a 128x128 one the whole crop) and is pasted into the hole only.
    """
    from pretrain.masks import PAPER_FILL

    generator = generator.to(device).eval()
    fill_value = torch.tensor(PAPER_FILL, dtype=torch.float32).view(3, 1, 1)

    @torch.no_grad()
    def fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        size = image.shape[0]
        x = torch.from_numpy(image).permute(2, 0, 1).float() * 2.0 - 1.0
        h = torch.from_numpy(hole)[None]
        x = torch.where(h, fill_value.expand_as(x), x)
        pred = generator(x[None].to(device))[0].float().cpu().clamp(-1, 1)
        out_size = pred.shape[-1]
        full = torch.full_like(x, float("nan"))
        off = (size - out_size) // 2
        full[:, off : off + out_size, off : off + out_size] = pred
        if torch.isnan(full[:, h[0]]).any():
            raise InpaintEvalError(
                f"the mask reaches outside the central {out_size}x{out_size} square this network predicts"
            )
        res = ((full + 1.0) / 2.0).permute(1, 2, 0).numpy()
        return _paste(image, np.nan_to_num(res), hole)

    return fill


def build_baseline(name: str, train_images: Sequence[np.ndarray] | None = None, radius: float = 3.0) -> Inpainter:
    """The inpainter of ``--baseline name`` (``BASELINES``); ``nn`` needs ``train_images``."""
    if name == "mean":
        return mean_fill
    if name in ("telea", "ns"):
        return opencv_inpainter(name, radius)
    if name == "biharmonic":
        return biharmonic_fill
    if name in XPHOTO_ALGORITHMS:
        return xphoto_inpainter(name)
    if name == "nn":
        if train_images is None:
            raise InpaintEvalError("--baseline nn needs --train-images (the folder to search for neighbours)")
        return HOGNearestNeighbour(train_images)
    raise InpaintEvalError(f"unknown baseline {name!r}; choose one of {BASELINES}")


# -- the evaluation loop -----------------------------------------------------------------------------------------
def evaluate(
    inpainter: Inpainter,
    images: Sequence[tuple[str, np.ndarray]],
    hole: np.ndarray,
    region: np.ndarray,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Fill ``hole`` in every ``(name, crop)`` and return (per-image rows, dataset metrics as fractions/dB)."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    for name, image in tqdm(images, desc="inpaint-eval", unit="img", disable=not progress):
        completed = inpainter(image, hole)
        rows.append({"image": name, **image_errors(completed, image, hole, region)})
    return rows, summarize(rows)


def write_per_image_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Per-image values (fractions of [0, 1], PSNR in dB) as CSV, written atomically."""
    import io

    from pretrain.checkpoint import atomic_write_text

    buf = io.StringIO()
    fields = ["image"] + [f"{m}_{r}" for r in REGIONS for m in METRICS]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.8g}" if k != "image" else row[k]) for k in fields})
    return atomic_write_text(Path(path), buf.getvalue())
