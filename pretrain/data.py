"""Unlabelled images for pretraining: finding them, checking them, and the paper's augmentation.

Sources (``--data``): a folder searched recursively for ``IMAGE_EXTENSIONS`` (case-insensitive; hidden files and
folders, e.g. macOS ``._x.jpg`` resource forks, are ignored), or ``voc:ROOT[:YEAR[:SPLIT]]`` = the
``JPEGImages`` of the images listed in a VOC devkit's ``ImageSets/Main/<SPLIT>.txt`` (default VOC2012
train: VOC2012 val is the segmentation evaluation split, so it stays out of pretraining unless asked for).

Augmentation (official Lua ``donkey_folder.lua`` of the inpainting code): the shorter side is resized to
``resize_short`` keeping the aspect ratio (Lua: ``loadSize`` 350; bilinear), a random ``crop_size`` crop is taken
and flipped horizontally with probability 1/2, and values are mapped to [-1, 1] (``mul(2):add(-1)``).

Randomness: crop offsets and flips are drawn from torch's global RNG inside ``__getitem__``. In DataLoader
workers that RNG is seeded by PyTorch from the loader's ``generator`` (``base_seed + worker_id``), in the main
process (``num_workers=0``) by ``torch.manual_seed``; so a seeded loader generator and a fixed ``num_workers``
give the same crops and flips in every run. Details and every choice the paper leaves open:
``docs/protocols/masks-and-data.md``.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")

#: background that transparent pixels (RGBA, LA, palette with transparency) are composited onto
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I")


class DataError(RuntimeError):
    """Images cannot be found or read; the message names the folder or file."""


# ----------------------------------------------------------------------------------------------- finding images


def _walk_images(folder: Path) -> Iterator[Path]:
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                yield Path(dirpath) / name


def _voc_images(spec: str) -> list[Path]:
    from pretrain.voc_layout import VOCError, image_path, read_image_set, resolve_year_dir

    parts = spec[len("voc:") :].split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(f"bad VOC source {spec!r}: expected voc:ROOT[:YEAR[:SPLIT]], e.g. voc:/data/VOC:2012:trainval")
    root = parts[0]
    year = parts[1] if len(parts) > 1 and parts[1] else "2012"
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        year_dir = resolve_year_dir(root, year)
        ids = read_image_set(year_dir, split, kind="Main")
    except VOCError as exc:
        raise DataError(f"VOC source {spec!r}: {exc}") from exc
    paths = [image_path(year_dir, i) for i in ids]
    present = [p for p in paths if p.is_file()]
    if not present:
        raise DataError(f"VOC source {spec!r}: none of the {len(paths)} images of {split} in {year_dir / 'JPEGImages'}")
    if len(present) < len(paths):
        missing = [str(p) for p in paths if not p.is_file()]
        warnings.warn(f"VOC source {spec!r}: {len(missing)} listed image(s) missing, e.g. {missing[0]}", stacklevel=3)
    return present


def find_images(source: str | Path) -> list[Path]:
    """All image files of ``source``: a folder (searched recursively, sorted by relative path) or
    ``voc:ROOT[:YEAR[:SPLIT]]`` (default year 2012, split train, which keeps the segmentation evaluation split
    VOC2012 val out; in image-set order). Raises ``DataError`` naming the folder when it is missing or holds no
    image."""
    text = str(source)
    if text.startswith("voc:"):
        return _voc_images(text)
    folder = Path(text).expanduser()
    if not folder.exists():
        raise DataError(f"image folder does not exist: {folder}")
    if not folder.is_dir():
        raise DataError(f"image source is not a folder: {folder} (give a folder of images or voc:ROOT)")
    found = sorted(_walk_images(folder), key=lambda p: p.relative_to(folder).as_posix())
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder} (searched recursively)")
    return found


# ----------------------------------------------------------------------------------------------- decoding


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale and bilevel replicated, palette expanded, CMYK/YCbCr converted,
    transparency composited onto ``ALPHA_BACKGROUND``, 16-bit gray scaled by 255/65535 (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im).astype(np.float64)
        if mode != "I" or arr.max(initial=0) > 255:  # "I" holding 0..255 data is already 8-bit
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if arr.max(initial=0) <= 1.0:  # float images in [0, 1]
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


#: images longer than this many times their width (or wider than tall) are skipped as bad: resizing the shorter side
#: of a 1x1500 strip to a crop size makes an array of hundreds of megabytes. Real photographs, panoramas included,
#: stay far below it
MAX_ASPECT_RATIO = 10.0


def aspect_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused (None when its aspect ratio is within ``MAX_ASPECT_RATIO``)."""
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        return f"aspect ratio of {width}x{height} beyond {MAX_ASPECT_RATIO:g}:1 (resizing it would need a huge array)"
    return None


def check_image(path: str | Path) -> str | None:
    """Cheaply check that ``path`` decodes to an RGB image: ``None`` if fine, else the reason.

    JPEGs are decoded in draft mode at 1/8 size (the whole entropy-coded stream is still read, so truncation is
    caught); other formats are decoded fully.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if size == 0:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width < 1 or im.height < 1:
                    return f"zero-size image {im.width}x{im.height}"
                if (problem := aspect_problem(im.width, im.height)) is not None:
                    return problem
                im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
                to_rgb8(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        return "not a recognised image"
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return f"unreadable: {exc}"
    except Exception as exc:  # a malformed file must never stop the scan; the reason names the error
        return f"unreadable: {type(exc).__name__}: {exc}"
    return None


def load_rgb(path: str | Path, min_short: int | None = None, draft: bool = True) -> Image.Image:
    """Decode ``path`` as 8-bit RGB with its EXIF orientation applied.

    With ``draft`` and ``min_short`` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side
    is still >= ``min_short`` (the fast path for images much larger than the training size).
    """
    with Image.open(path) as im:
        if draft and min_short is not None and im.format == "JPEG":
            scale = min_short / max(1, min(im.size))
            if scale < 0.5:
                im.draft(None, (max(1, math.ceil(im.width * scale)), max(1, math.ceil(im.height * scale))))
        im.load()
        return to_rgb8(ImageOps.exif_transpose(im))


# ----------------------------------------------------------------------------------------------- the dataset


class UnlabeledImageDataset(Dataset):
    """Images as float tensors ``[3, crop_size, crop_size]`` in [-1, 1] with the paper's augmentation.

    ``resize_short``: the shorter side is resized to it first (None: the image keeps its size); a shorter side
    below ``crop_size`` is upscaled to ``crop_size``. ``flip``: random horizontal flip. ``scan``: every file is
    checked in the constructor (``check_image``, in ``scan_workers`` processes when > 0); unreadable, truncated and
    empty files are dropped with one warning and listed in ``self.skipped`` as ``(path, reason)``; ``DataError``
    when none is readable. Without a scan (or if a file breaks later) ``__getitem__`` warns and returns the next
    readable item instead, up to ``max_retries`` files on.

    ``cache_dir``: a pre-resized uint8 cache for repeated epochs. The decoded image resized to its target short
    side is stored once as ``<cache_dir>/<key>.npy`` (``H x W x 3`` uint8; the key hashes the file's path, size
    and modification time and the resize settings, so an edited image or a different ``resize_short`` never reads
    a stale entry) and later epochs only memory-map it, crop and flip. The crops are identical with and without the
    cache (the same RNG draws on the same pixels). Entries are written atomically by whichever worker first needs
    them, or all at once by ``build_cache()``.
    """

    def __init__(
        self,
        paths: list[Path],
        crop_size: int,
        resize_short: int | None,
        flip: bool = True,
        scan: bool = True,
        scan_workers: int = 0,
        jpeg_draft: bool = True,
        max_retries: int = 10,
        cache_dir: str | Path | None = None,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if resize_short is not None and resize_short < 1:
            raise ValueError(f"resize_short must be >= 1 or None, got {resize_short}")
        self.crop_size = crop_size
        self.resize_short = resize_short
        self.flip = flip
        self.jpeg_draft = jpeg_draft
        self.max_retries = max_retries
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.skipped: list[tuple[str, str]] = []
        paths = [Path(p) for p in paths]
        if not paths:
            raise DataError("no image files given to UnlabeledImageDataset")
        #: number of files given (readable or not), for the run summary next to ``len(self.skipped)``
        self.num_found = len(paths)
        if scan:
            paths = self._scan(paths, scan_workers)
        self.paths = paths

    def _scan(self, paths: list[Path], workers: int) -> list[Path]:
        from tqdm import tqdm

        names = [str(p) for p in paths]
        bar = {"total": len(names), "desc": "checking images", "unit": "img", "disable": len(names) < 2000}
        if workers > 0:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                reasons = list(tqdm(pool.map(check_image, names, chunksize=64), **bar))
        else:
            reasons = [check_image(p) for p in tqdm(names, **bar)]
        good = [p for p, r in zip(paths, reasons) if r is None]
        self.skipped = [(n, r) for n, r in zip(names, reasons) if r is not None]
        if self.skipped:
            shown = "; ".join(f"{n} ({r})" for n, r in self.skipped[:5])
            more = f"; ... {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            warnings.warn(f"skipped {len(self.skipped)} of {len(names)} image files: {shown}{more}", stacklevel=3)
        if not good:
            folders = sorted({str(p.parent) for p in paths})[:3]
            raise DataError(f"none of the {len(names)} image files is readable (in {', '.join(folders)})")
        return good

    def __len__(self) -> int:
        return len(self.paths)

    def target_short_side(self, width: int, height: int) -> int:
        short = min(width, height)
        target = short if self.resize_short is None else self.resize_short
        return max(target, self.crop_size)

    def cache_path(self, index: int) -> Path | None:
        """Where image ``index``'s resized uint8 copy lives in ``cache_dir`` (None without a cache)."""
        if self.cache_dir is None:
            return None
        path = self.paths[index]
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.resize_short}|{self.crop_size}|{self.jpeg_draft}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def resized(self, index: int) -> np.ndarray:
        """Image ``index`` decoded and resized to its target short side: uint8 ``[H, W, 3]`` (read from / written
        to the cache when there is one; a cached array is a read-only memory map)."""
        cached = self.cache_path(index)
        if cached is not None and cached.is_file():
            try:
                return np.load(cached, mmap_mode="r")
            except (OSError, ValueError):  # a damaged entry is rebuilt below
                pass
        arr = self._decode_resized(index)
        if cached is not None:
            tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, arr)
            os.replace(tmp, cached)
        return arr

    def build_cache(self) -> int:
        """Fill the cache for every image now (instead of during the first epoch); returns how many were written."""
        if self.cache_dir is None:
            raise ValueError("build_cache() needs a cache_dir")
        todo = [i for i in range(len(self.paths)) if not self.cache_path(i).is_file()]  # type: ignore[union-attr]
        for i in todo:
            self.resized(i)
        return len(todo)

    def _decode_resized(self, index: int) -> np.ndarray:
        path = self.paths[index]
        # the draft fast path only when the image is resized anyway (resize_short=None keeps full resolution)
        hint = None if self.resize_short is None else max(self.resize_short, self.crop_size)
        im = load_rgb(path, min_short=hint, draft=self.jpeg_draft)
        w, h = im.size
        if w < 1 or h < 1:
            raise DataError(f"zero-size image: {path}")
        short = min(w, h)
        target = self.target_short_side(w, h)
        if target != short:
            new_w = target if w == short else max(target, round(w * target / short))
            new_h = target if h == short else max(target, round(h * target / short))
            im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)

    def load(self, index: int) -> torch.Tensor:
        """The augmented image ``index`` (raises on an unreadable file)."""
        arr = self.resized(index)
        h, w = arr.shape[:2]
        c = self.crop_size
        x0 = int(torch.randint(0, w - c + 1, (1,)).item())
        y0 = int(torch.randint(0, h - c + 1, (1,)).item())
        crop = arr[y0 : y0 + c, x0 : x0 + c]
        if self.flip and float(torch.rand(1).item()) < 0.5:
            crop = crop[:, ::-1]
        out = torch.from_numpy(np.array(crop, dtype=np.uint8))  # a writable contiguous copy of the crop
        return out.permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def __getitem__(self, index: int) -> torch.Tensor:
        errors = []
        for k in range(self.max_retries + 1):
            i = (index + k) % len(self.paths)
            try:
                return self.load(i)
            except Exception as exc:  # decoders raise many types on malformed files; each one is named
                errors.append(f"{self.paths[i]} ({type(exc).__name__}: {exc})")
                warnings.warn(f"skipping unreadable image {self.paths[i]}: {exc}", stacklevel=2)
        raise DataError(f"{len(errors)} unreadable images in a row: {'; '.join(errors[:3])}")


def build_pretrain_dataset(
    source: str | Path,
    crop_size: int,
    resize_short: int | None,
    flip: bool = True,
    scan_workers: int = 0,
    cache_dir: str | Path | None = None,
) -> UnlabeledImageDataset:
    """``find_images(source)`` then a scanned ``UnlabeledImageDataset`` (``DataError`` before any training work
    when the source is missing, empty or holds no readable image). ``cache_dir``: the pre-resized uint8 cache
    (``UnlabeledImageDataset``)."""
    return UnlabeledImageDataset(
        find_images(source),
        crop_size=crop_size,
        resize_short=resize_short,
        flip=flip,
        scan=True,
        scan_workers=scan_workers,
        cache_dir=cache_dir,
    )
