"""Region masks of the context encoder (Pathak et al., CVPR 2016, Sec. 3.3): which pixels are dropped.

A mask is a bool tensor ``[N, 1, H, W]``, True = dropped pixel (the paper's ``M = 1``). Four strategies:

- ``center``: the centre square, 1/4 of the area (paper §3.3 "central region"), optionally shrunk by ``overlap``
  pixels per side as the 128-px inpainting network does (official ``train.lua``: ``overlapPred``).
- ``random-block``: several smaller, possibly overlapping blocks covering up to 1/4 of the image (paper §3.3).
- ``random-region``: the official Lua code's algorithm (``train.lua``): a 600x600 uniform noise field, bicubic
  upscaled (10000x10000 in the Lua code), thresholded at 0.25; a random window is accepted when 20-30% of it is
  masked.
- ``voc-shapes``: the paper's text: PASCAL VOC 2012 object shapes (``SegmentationObject``), randomly deformed and
  pasted at random places, covering up to 1/4 of the image.

Every generator draws an independent mask per sample by default; ``per_batch=True`` draws one mask per batch and
repeats it (the Lua code's behaviour). Every draw is a deterministic function of the ``torch.Generator`` passed to
``sample``. Choices the paper leaves open are listed in ``docs/protocols/masks-and-data.md``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pretrain.voc_layout import VOCError, read_image_set, resolve_year_dir

#: fill value of dropped pixels for images in [-1, 1]: the mean colour (117, 104, 123) of the official Lua code
#: (``train.lua``: ``real_ctr[{{},{1},...}]:fill(2*117.0/255.0 - 1.0)`` and likewise 104, 123)
PAPER_FILL: tuple[float, float, float] = (2 * 117 / 255 - 1, 2 * 104 / 255 - 1, 2 * 123 / 255 - 1)

MASK_CHOICES: tuple[str, ...] = ("center", "random-block", "random-region", "voc-shapes")


class MaskError(ValueError):
    """A mask generator cannot be built (missing VOC masks, impossible options); the message says what to fix."""


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _randint(n: int, low: torch.Tensor | int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` (inclusive, elementwise) from one float draw per element."""
    low_t = torch.as_tensor(low, dtype=torch.long)
    high_t = torch.as_tensor(high, dtype=torch.long)
    span = (high_t - low_t + 1).clamp(min=1).double()
    return low_t + (torch.rand(n, generator=generator, dtype=torch.float64) * span).long().clamp(max=span.long() - 1)


@dataclass(eq=False, repr=False)
class MaskGenerator(ABC):
    """Base class: ``sample(n, H, W, generator) -> bool [n, 1, H, W]`` (True = dropped).

    Subclasses are dataclasses whose fields are their options (checked in ``__post_init__``); they implement
    ``_sample`` (an independent mask per sample) and this class adds the ``per_batch`` mode. Fields with
    ``repr=False`` are state or loading options, not part of ``describe()``.
    """

    name: ClassVar[str] = "mask"
    per_batch: bool = field(default=False, kw_only=True)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """Draw masks for a batch of ``n`` images of ``height`` x ``width``: bool ``[n, 1, H, W]``, True = dropped."""
        if n < 0 or height < 1 or width < 1:
            raise ValueError(f"invalid mask request n={n}, height={height}, width={width}")
        if n == 0:
            return torch.zeros(0, 1, height, width, dtype=torch.bool)
        if self.per_batch:
            return self._sample(1, height, width, generator).expand(n, 1, height, width).clone()
        return self._sample(n, height, width, generator)

    @abstractmethod
    def _sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` independent masks, bool ``[n, 1, H, W]``."""

    def describe(self) -> dict[str, object]:
        """The name and options of this generator."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self) if f.repr}}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({opts})"


@dataclass(eq=False, repr=False)
class CenterMask(MaskGenerator):
    """The central square (paper §3.3 "central region"): side ``fraction`` x size (1/4 of the area at 0.5),
    shrunk by ``overlap`` px on each side.

    The 128-px inpainting network of the official code predicts the 64x64 centre but drops only the centre shrunk by
    ``overlapPred`` (paper: 7 px, official command: 4 px), so a ring of the true centre stays visible. The square
    has side ``floor(fraction * size + 0.5) - 2 * overlap`` and starts at ``(size - side_without_overlap) // 2 +
    overlap``; for 128 px and overlap 4 that is rows/cols 36..91 (the Lua code's 1-based ``1 + 32 + 4 .. 96 - 4``).
    """

    name: ClassVar[str] = "center"
    fraction: float = 0.5
    overlap: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise MaskError(f"center mask fraction must be in (0, 1], got {self.fraction}")
        if self.overlap < 0:
            raise MaskError(f"center mask overlap must be >= 0, got {self.overlap}")

    def region_box(self, height: int, width: int, overlap: int | None = None) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` (exclusive end) of the centre square shrunk by ``overlap`` px."""
        ov = self.overlap if overlap is None else overlap
        side_h = math.floor(self.fraction * height + 0.5)
        side_w = math.floor(self.fraction * width + 0.5)
        top, left = (height - side_h) // 2, (width - side_w) // 2
        if side_h - 2 * ov < 1 or side_w - 2 * ov < 1:
            raise MaskError(f"overlap {ov} leaves no hole in a {side_h}x{side_w} centre of a {height}x{width} image")
        return top + ov, left + ov, top + side_h - ov, left + side_w - ov

    def _sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        top, left, bottom, right = self.region_box(height, width)
        mask = torch.zeros(n, 1, height, width, dtype=torch.bool)
        mask[:, :, top:bottom, left:right] = True
        return mask


@dataclass(eq=False, repr=False)
class RandomBlockMask(MaskGenerator):
    """Several smaller, possibly overlapping rectangular blocks covering up to ``max_coverage`` of the image
    (paper §3.3 "random block"; the sizes and counts are this suite's choice, see the protocol doc).

    Blocks are proposed one after another (``attempts`` proposals per mask); each block's height and width are drawn
    independently and uniformly from ``[min_side, max_side]`` x image side, its position uniformly inside the image.
    A block is kept when the union of kept blocks still covers at most ``max_coverage`` of the pixels and fewer than
    ``max_blocks`` blocks are kept. The first block always fits (``max_side**2 <= max_coverage``), so coverage > 0.
    """

    name: ClassVar[str] = "random-block"
    max_coverage: float = 0.25
    min_side: float = 1 / 8
    max_side: float = 1 / 4
    max_blocks: int = 10
    attempts: int = 30

    def __post_init__(self) -> None:
        if not 0.0 < self.max_coverage <= 1.0:
            raise MaskError(f"random-block max_coverage must be in (0, 1], got {self.max_coverage}")
        if not 0.0 < self.min_side <= self.max_side <= 1.0:
            raise MaskError(f"random-block needs 0 < min_side <= max_side <= 1, got {self.min_side}, {self.max_side}")
        if self.max_side**2 > self.max_coverage:
            raise MaskError(
                f"random-block max_side {self.max_side} gives blocks larger than max_coverage {self.max_coverage}"
            )
        if self.max_blocks < 1 or self.attempts < 1:
            raise MaskError("random-block max_blocks and attempts must be >= 1")

    def _sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        limit = math.floor(self.max_coverage * height * width + 1e-9)

        def side_range(size: int) -> tuple[int, int]:
            lo = max(1, round(self.min_side * size))
            return lo, max(lo, math.floor(self.max_side * size))

        (h_lo, h_hi), (w_lo, w_hi) = side_range(height), side_range(width)
        # every random number is drawn up front in one batch (deterministic given the generator) ...
        shape = (n, self.attempts)
        bh = _randint(n * self.attempts, h_lo, h_hi, generator).view(shape)
        bw = _randint(n * self.attempts, w_lo, w_hi, generator).view(shape)
        y0 = _randint(n * self.attempts, 0, (height - bh).flatten(), generator).view(shape)
        x0 = _randint(n * self.attempts, 0, (width - bw).flatten(), generator).view(shape)
        params = torch.stack([y0, x0, bh, bw], 2).tolist()
        # ... then blocks are added with slices: each step touches only the block's pixels
        union = np.zeros((n, height, width), dtype=bool)
        for i in range(n):
            canvas, covered, kept = union[i], 0, 0
            for top, left, h, w in params[i]:
                block = canvas[top : top + h, left : left + w]
                added = h * w - int(np.count_nonzero(block))
                if covered + added <= limit:
                    block[...] = True
                    covered += added
                    kept += 1
                    if kept >= self.max_blocks:
                        break
        return torch.from_numpy(union)[:, None]


@dataclass(eq=False, repr=False)
class RandomRegionMask(MaskGenerator):
    """Random region dropout as the official Lua code makes it (``train.lua``, ``opt.wtl2`` / random pattern).

    Lua: ``low_pattern = uniform(600x600)`` (``res = 0.06`` x ``MAX_SIZE = 10000``), bicubic-upscaled to
    10000x10000, ``pattern = lt(pattern, 0.25)``; then per batch a window of the image size is cut at a uniform
    position and accepted when ``20 < area% < 30``, else redrawn.

    Here the continuous upscaled field is built once (from ``seed``) at ``field_size`` x ``field_size`` and cached
    (float16; 10000 as in Lua needs ~0.6 GB at build time, the default 2000 needs 8 MB). To keep the shapes'
    scale in image pixels the same as the Lua code's whatever ``field_size`` is, a window spans
    ``H * field_size / reference_field_size`` field pixels (``reference_field_size = 10000``, the Lua size); it
    is bicubic-resized to ``H`` x ``W`` and then thresholded at ``density``. With ``field_size = 10000`` no resize
    happens and the algorithm is the Lua one. Candidate windows are evaluated in batches; a sample that finds no
    accepted window within ``max_tries`` raises ``MaskError`` (this happens only for impossible settings).
    """

    name: ClassVar[str] = "random-region"
    noise_size: int = 600
    field_size: int = 2000
    density: float = 0.25
    min_coverage: float = 0.20
    max_coverage: float = 0.30
    max_tries: int = 2000
    seed: int = 0
    reference_field_size: int = 10000
    _field: torch.Tensor | None = field(default=None, init=False, repr=False)
    _resize_cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.noise_size < 4 or self.field_size < self.noise_size:
            raise MaskError(
                f"random-region needs 4 <= noise_size <= field_size, got {self.noise_size}, {self.field_size}"
            )
        if not 0.0 <= self.min_coverage < self.max_coverage <= 1.0:
            raise MaskError(
                "random-region needs 0 <= min_coverage < max_coverage <= 1, got "
                f"{self.min_coverage}, {self.max_coverage}"
            )

    @property
    def field(self) -> torch.Tensor:
        """The cached continuous field ``[field_size, field_size]`` (float16), built on first use."""
        if self._field is None:
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.rand(1, 1, self.noise_size, self.noise_size, generator=gen)
            up = F.interpolate(noise, size=(self.field_size, self.field_size), mode="bicubic", align_corners=False)
            self._field = up[0, 0].to(torch.float16)
        return self._field

    def window_size(self, height: int, width: int) -> tuple[int, int]:
        scale = self.field_size / self.reference_field_size
        wh, ww = max(2, round(height * scale)), max(2, round(width * scale))
        if wh > self.field_size or ww > self.field_size:
            raise MaskError(f"random-region field of {self.field_size} px is too small for {height}x{width} images")
        return wh, ww

    def _raw_windows(self, k: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """``k`` continuous field windows at field resolution, float32 ``[k, wh, ww]`` (Lua: uniform position)."""
        field = self.field
        wh, ww = self.window_size(height, width)
        y0 = _randint(k, 0, self.field_size - wh, generator)
        x0 = _randint(k, 0, self.field_size - ww, generator)
        r = y0[:, None] + torch.arange(wh)[None]
        c = x0[:, None] + torch.arange(ww)[None]
        return field[r[:, :, None], c[:, None, :]].float()

    def _resize_matrix(self, src: int, dst: int) -> torch.Tensor:
        """``[dst, src]`` matrix of 1-D bicubic resizing (``F.interpolate``'s, align_corners=False), cached."""
        key = (src, dst)
        if key not in self._resize_cache:
            eye = torch.eye(src)[:, None, :, None]  # src one-hot columns as [src, 1, src, 1] images
            cols = F.interpolate(eye, size=(dst, 1), mode="bicubic", align_corners=False)
            self._resize_cache[key] = cols[:, 0, :, 0].T.contiguous()
        return self._resize_cache[key]

    def _threshold(self, windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Windows resized (bicubic) to ``H x W`` and thresholded: bool ``[k, H, W]``.

        Bicubic resizing is separable, so it is done as ``A_h @ window @ A_w^T`` with cached matrices (the same
        values as ``F.interpolate(mode="bicubic")`` up to float rounding, several times faster on CPU).
        """
        if windows.shape[-2:] != (height, width):
            a_h = self._resize_matrix(windows.shape[-2], height)
            a_w = self._resize_matrix(windows.shape[-1], width)
            windows = a_h @ windows @ a_w.T
        return windows < self.density

    def _in_band(self, masks: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        cov = masks.flatten(1).float().mean(1)
        # strict inequalities, as the Lua code's `area > 20 and area < 30`
        return (cov > self.min_coverage - margin) & (cov < self.max_coverage + margin)

    def _sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        out = torch.zeros(n, height, width, dtype=torch.bool)
        pending = torch.arange(n)
        wh, ww = self.window_size(height, width)
        # Pre-selection at field resolution (cheap): a candidate goes on to the exact test only when its coverage
        # there is within `margin` of the band. Resizing moves coverage by < 0.02 (measured), so the margin of 0.01
        # drops well under 1% of the windows that would pass; the exact band test is always on the final H x W mask.
        margin = 0.01 if (wh, ww) != (height, width) else 0.0
        per_round, checks = 8, 3  # candidates per pending sample and round; exact tests per sample and round
        tries = 0
        while pending.numel() > 0:
            if tries >= self.max_tries:
                raise MaskError(
                    f"random-region: no window with {self.min_coverage:.0%}-{self.max_coverage:.0%} coverage in "
                    f"{self.max_tries} tries for {height}x{width} images (density {self.density}); "
                    "check the coverage band and field options"
                )
            m = pending.numel()
            raw = self._raw_windows(m * per_round, height, width, generator).view(m, per_round, wh, ww)
            coarse = self._in_band(raw.flatten(0, 1) < self.density, margin).view(m, per_round)
            rank = coarse.long().cumsum(1) - 1
            done = torch.zeros(m, dtype=torch.bool)
            for j in range(checks):
                pick = coarse & (rank == j) & ~done[:, None]  # at most one candidate per sample
                rows, cols = torch.nonzero(pick, as_tuple=True)
                if rows.numel() == 0:
                    break
                chosen = self._threshold(raw[rows, cols], height, width)
                ok = self._in_band(chosen)
                out[pending[rows[ok]]] = chosen[ok]
                done[rows[ok]] = True
            pending = pending[~done]
            tries += per_round
        return out[:, None]


def load_voc_object_shapes(
    voc_root: str | Path,
    year: str = "2012",
    split: str = "train",
    resolution: int = 64,
    min_object_pixels: int = 64,
    max_shapes: int | None = None,
) -> torch.Tensor:
    """Object shapes of VOC ``SegmentationObject`` masks: bool ``[S, R, R]``, each object cropped to its box,
    centred in a square and resized to ``resolution`` (object borders, label 255, are not part of a shape)."""
    try:
        year_dir = resolve_year_dir(voc_root, year)
        ids = read_image_set(year_dir, split, kind="Segmentation")
    except VOCError as exc:
        raise MaskError(f"voc-shapes: {exc}") from exc
    folder = year_dir / "SegmentationObject"
    if not folder.is_dir():
        raise MaskError(f"voc-shapes: no SegmentationObject folder at {folder}")
    shapes: list[torch.Tensor] = []
    for image_id in ids:
        path = folder / f"{image_id}.png"
        if not path.is_file():
            continue
        try:
            with Image.open(path) as im:
                arr = np.array(im if im.mode in ("P", "L") else im.convert("L"))
        except OSError:
            continue
        for value in np.unique(arr):
            if value in (0, 255):
                continue
            obj = arr == value
            if int(obj.sum()) < min_object_pixels:
                continue
            ys, xs = np.nonzero(obj)
            crop = obj[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            side = max(crop.shape)
            square = np.zeros((side, side), dtype=np.float32)
            oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
            square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
            t = torch.from_numpy(square)[None, None]
            shapes.append(F.interpolate(t, size=(resolution, resolution), mode="area")[0, 0] >= 0.5)
            if max_shapes is not None and len(shapes) >= max_shapes:
                break
        if max_shapes is not None and len(shapes) >= max_shapes:
            break
    shapes = [s for s in shapes if bool(s.any())]
    if not shapes:
        raise MaskError(
            f"voc-shapes: no object masks (>= {min_object_pixels} px) found in {folder} for the images of "
            f"ImageSets/Segmentation/{split}.txt; check --voc-root"
        )
    return torch.stack(shapes)


@dataclass(eq=False, repr=False)
class VOCShapeMask(MaskGenerator):
    """Random region dropout as the paper describes it (§3.3): shapes of PASCAL VOC 2012 object segmentation masks,
    randomly deformed and pasted at random places until up to 1/4 of the image is covered.

    The deformation (this suite's choice, see the protocol doc): area fraction of the image per shape uniform in
    ``[min_area, max_area]``, aspect ratio log-uniform in ``[1/max_aspect, max_aspect]``, rotation uniform in
    ``[-max_rotation, max_rotation]`` degrees, horizontal flip with probability 1/2; the shape is placed at a uniform
    position where it fits fully inside the image. ``attempts`` shapes are proposed per mask; a shape is kept when
    the union still covers at most ``max_coverage`` (so coverage never exceeds it). Each paste is one
    ``cv2.warpAffine`` (bilinear) of the shape into its box.

    ``split`` defaults to VOC2012 ``train``: ``val`` is the test split of the segmentation transfer.
    """

    name: ClassVar[str] = "voc-shapes"
    voc_root: str | Path
    year: str = "2012"
    split: str = "train"
    max_coverage: float = 0.25
    min_area: float = 0.03
    max_area: float = 0.15
    max_aspect: float = 1.5
    max_rotation: float = 30.0
    attempts: int = 8
    resolution: int = 64
    min_object_pixels: int = field(default=64, repr=False)
    max_shapes: int | None = field(default=None, repr=False)
    #: the loaded shapes, bool ``[S, R, R]``
    shapes: torch.Tensor = field(init=False, repr=False)
    #: fraction of each shape's square that the object fills (to scale a shape to a target area)
    fill_fraction: torch.Tensor = field(init=False, repr=False)
    _shapes_np: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_area <= self.max_area < self.max_coverage <= 1.0:
            raise MaskError(
                f"voc-shapes needs 0 < min_area <= max_area < max_coverage <= 1, got {self.min_area}, "
                f"{self.max_area}, {self.max_coverage}"
            )
        self.voc_root = str(self.voc_root)
        self.shapes = load_voc_object_shapes(
            self.voc_root, self.year, self.split, self.resolution, self.min_object_pixels, self.max_shapes
        )
        self.fill_fraction = self.shapes.flatten(1).float().mean(1)
        self._shapes_np = self.shapes.numpy().astype(np.float32)

    def _draw(self, n: int, generator: torch.Generator) -> list[list[float]]:
        """Random deformations for ``n`` pastes (one batched draw): rows of
        ``[shape index, area fraction, aspect, angle (rad), flip sign, u_x, u_y]``."""
        idx = _randint(n, 0, self.shapes.shape[0] - 1, generator).double()
        area = _uniform(n, self.min_area, self.max_area, generator).double()
        log_a = math.log(self.max_aspect)
        aspect = torch.exp(_uniform(n, -log_a, log_a, generator)).double()
        angle = torch.deg2rad(_uniform(n, -self.max_rotation, self.max_rotation, generator)).double()
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
        u = torch.rand(n, 2, generator=generator).double()
        return torch.stack([idx, area, aspect, angle, flip, u[:, 0], u[:, 1]], 1).tolist()

    def _render(self, params: list[float], height: int, width: int, scale: float) -> tuple[int, int, np.ndarray]:
        """One deformed shape: ``(top, left, bool array)`` of its box inside the image.

        The shape's square is scaled so that the object covers ``area * scale`` of the image, stretched by
        ``aspect``, rotated, flipped, and centred at a uniform position where its rotated box fits the image.
        """
        k, area, aspect, angle, flip, u_x, u_y = params
        idx = int(k)
        sq_area = area * scale * height * width / max(float(self.fill_fraction[idx]), 1e-3)
        bw, bh = math.sqrt(sq_area * aspect), math.sqrt(sq_area / aspect)
        cos, sin = math.cos(angle), math.sin(angle)
        half_x = (abs(cos) * bw + abs(sin) * bh) / 2
        half_y = (abs(sin) * bw + abs(cos) * bh) / 2
        cx = half_x + u_x * (width - 2 * half_x) if 2 * half_x < width else width / 2
        cy = half_y + u_y * (height - 2 * half_y) if 2 * half_y < height else height / 2
        x0, x1 = max(0, math.floor(cx - half_x)), min(width, math.ceil(cx + half_x))
        y0, y1 = max(0, math.floor(cy - half_y)), min(height, math.ceil(cy + half_y))
        if x1 <= x0 or y1 <= y0:
            return 0, 0, np.zeros((0, 0), dtype=bool)
        # destination pixel (x, y) of the box (centre at x0 + x + 0.5) -> shape pixel coordinates (centres at
        # integers): s = (R / 2) * diag(flip * 2 / bw, 2 / bh) R(-angle) (p - c) + (R / 2 - 0.5)
        half_r = self.resolution / 2
        lin = np.array([[cos * 2 / bw * flip, sin * 2 / bw * flip], [-sin * 2 / bh, cos * 2 / bh]]) * half_r
        offset = lin @ np.array([x0 + 0.5 - cx, y0 + 0.5 - cy]) + (half_r - 0.5)
        warp = np.concatenate([lin, offset[:, None]], 1)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        out = cv2.warpAffine(self._shapes_np[idx], warp, (x1 - x0, y1 - y0), flags=flags, borderValue=0.0)
        return y0, x0, out >= 0.5

    def _sample(self, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        limit = math.floor(self.max_coverage * height * width + 1e-9)
        fallback_scales = (0.5, 0.25, 0.1, 0.05)
        params = self._draw(n * (self.attempts + len(fallback_scales)), generator)
        per = self.attempts + len(fallback_scales)
        union = np.zeros((n, height, width), dtype=bool)
        for i in range(n):
            canvas, covered = union[i], 0
            mine = params[i * per : (i + 1) * per]
            # `attempts` full-size proposals; then, for a mask still empty (every proposal overshot, rare),
            # smaller shapes until one fits, so coverage is always > 0
            plan = [(p, 1.0) for p in mine[: self.attempts]] + list(zip(mine[self.attempts :], fallback_scales))
            for j, (p, scale) in enumerate(plan):
                if j >= self.attempts and covered > 0:
                    break
                top, left, shape = self._render(p, height, width, scale)
                if shape.size == 0:
                    continue
                region = canvas[top : top + shape.shape[0], left : left + shape.shape[1]]
                added = int(np.count_nonzero(shape & ~region))
                if covered + added <= limit:
                    region |= shape
                    covered += added
        return torch.from_numpy(union)[:, None]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "shapes": int(self.shapes.shape[0])}


def build_mask(
    name: str, *, per_batch: bool = False, voc_root: str | Path | None = None, **options: object
) -> MaskGenerator:
    """Build a mask generator by name (one of ``MASK_CHOICES``); ``options`` go to its constructor."""
    if name == "center":
        return CenterMask(per_batch=per_batch, **options)  # type: ignore[arg-type]
    if name == "random-block":
        return RandomBlockMask(per_batch=per_batch, **options)  # type: ignore[arg-type]
    if name == "random-region":
        return RandomRegionMask(per_batch=per_batch, **options)  # type: ignore[arg-type]
    if name == "voc-shapes":
        if voc_root is None:
            raise MaskError(
                "mask 'voc-shapes' needs voc_root (--voc-root): a VOC devkit with VOC2012 SegmentationObject masks"
            )
        return VOCShapeMask(voc_root, per_batch=per_batch, **options)  # type: ignore[arg-type]
    raise MaskError(f"unknown mask {name!r}; choose one of {', '.join(MASK_CHOICES)}")


def apply_mask(
    images: torch.Tensor, mask: torch.Tensor, fill: tuple[float, float, float] | torch.Tensor = PAPER_FILL
) -> torch.Tensor:
    """Masked input: ``images [N, 3, H, W]`` with dropped pixels (``mask [N, 1, H, W]`` True) set to ``fill``
    (default the paper's mean colour). Returns a new tensor; ``images`` is not changed."""
    if mask.dtype != torch.bool:
        mask = mask > 0.5
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return torch.where(mask.to(images.device), fill_t, images)
