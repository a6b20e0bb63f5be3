"""Object proposals for Fast R-CNN: selective search (OpenCV contrib) with an on-disk cache, or R-CNN's .mat files.

Fast R-CNN (Girshick 2015) trains and tests on selective-search proposals, "fast" mode, about 2,000 per image (R-CNN's
released ``selective_search_data/voc_2007_{trainval,test}.mat``). This module computes them with
``cv2.ximgproc.segmentation`` (``--proposal-mode fast`` is Fast R-CNN's setting, ``quality`` the slower, higher
recall mode) in parallel worker processes, one cache file per image so that an interrupted pass resumes and a later
run reuses everything. OpenCV's implementation is not bit-identical to the MATLAB code of Uijlings et al., so the
proposals (and the mAP) differ slightly from R-CNN's released boxes; users who have those files import them with
:func:`load_rcnn_mat`.

Post-processing, as Fast R-CNN's ``pascal_voc.py`` / ``ds_utils``: boxes clipped to the image, duplicates removed
(first occurrence kept, so the selective-search ranking is preserved), boxes narrower or shorter than ``min_size`` = 2
pixels removed; then the first ``max_proposals`` boxes are kept (a cap applied when loading, so one cache serves
every cap). Boxes are ``float32 [N, 4]`` 0-based inclusive ``x1, y1, x2, y2``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pretrain.checkpoint import atomic_write_bytes

PROPOSAL_MODES = ("fast", "quality")
#: Fast R-CNN's ``pascal_voc`` config ``min_size``
MIN_BOX_SIZE = 2


class ProposalError(RuntimeError):
    """Proposals cannot be computed or read; the message names the file."""


def clean_boxes(boxes: np.ndarray, width: int, height: int, min_size: int = MIN_BOX_SIZE) -> np.ndarray:
    """Clip to the image, drop duplicates (keeping the first) and boxes smaller than ``min_size`` on a side."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_size) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_size)
    return np.ascontiguousarray(boxes[keep])


def _seed_c_rand(seed: int) -> bool:
    """Seed the C library's ``rand()``, which OpenCV's selective search uses to rank its boxes; ``False`` if the C
    library cannot be reached (the ranking order is then not reproducible, the set of boxes still is)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt"))
        libc.srand(ctypes.c_uint(seed))
    except (OSError, AttributeError, TypeError):
        return False
    return True


def selective_search(image_bgr: np.ndarray, mode: str = "fast", seed: int = 0) -> np.ndarray:
    """Raw selective-search boxes ``[N, 4]`` (0-based inclusive xyxy, in ranking order) of a BGR uint8 image.

    As in Uijlings et al.'s code, OpenCV ranks the boxes by hierarchy level times a random number (C ``rand()``);
    the C generator is seeded with ``seed`` right before, so the order, and thus which boxes a cap keeps, does not
    depend on how many images a process handled before (or on the number of workers).
    """
    import cv2

    if mode not in PROPOSAL_MODES:
        raise ValueError(f"proposal mode must be one of {PROPOSAL_MODES}, got {mode!r}")
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(image_bgr)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    _seed_c_rand(seed)
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    return np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1, rects[:, 1] + rects[:, 3] - 1], 1)


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ProposalError(f"cannot read image for proposals: {path}")
    return image


def proposals_for_image(path: str | Path, mode: str = "fast") -> np.ndarray:
    """Cleaned selective-search proposals of one image file (no cache, no cap): the unit the speed benchmark times."""
    image = _read_bgr(Path(path))
    return clean_boxes(selective_search(image, mode), image.shape[1], image.shape[0])


class ProposalCache:
    """One ``<root>/ss-<mode>/<image_id>.npy`` per image (``<root>/rcnn-mat/`` for imported R-CNN boxes), written
    atomically (temporary file, then rename)."""

    def __init__(self, root: str | Path, mode: str = "fast") -> None:
        if mode not in (*PROPOSAL_MODES, "rcnn"):
            raise ValueError(f"proposal mode must be one of {(*PROPOSAL_MODES, 'rcnn')}, got {mode!r}")
        self.folder = Path(root) / ("rcnn-mat" if mode == "rcnn" else f"ss-{mode}")
        self.mode = mode

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.npy"

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def load(self, image_id: str) -> np.ndarray:
        path = self.path(image_id)
        try:
            boxes = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProposalError(f"{path}: unreadable proposal cache file ({exc}); delete it to recompute") from exc
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ProposalError(f"{path}: expected an [N, 4] array, found shape {boxes.shape}; delete it to recompute")
        return boxes.astype(np.float32, copy=False)

    def save(self, image_id: str, boxes: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(boxes, dtype=np.float32))
        return atomic_write_bytes(self.path(image_id), buffer.getvalue())  # readable as a plain open's file


@dataclass
class ProposalStats:
    """What a proposal pass did: images computed now, found in the cache, and failed (id -> reason)."""

    computed: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _compute_one(job: tuple[str, str, str, str]) -> tuple[str, str | None]:
    """Worker: compute and cache one image; returns (image_id, error message or None)."""
    import cv2

    cv2.setNumThreads(1)
    image_id, path, root, mode = job
    try:
        ProposalCache(root, mode).save(image_id, proposals_for_image(path, mode))
    except Exception as exc:  # reported per image, the pass goes on
        return image_id, f"{type(exc).__name__}: {exc}"
    return image_id, None


def compute_proposals(
    images: Mapping[str, str | Path],
    cache: ProposalCache,
    workers: int = 1,
    progress: bool = True,
) -> ProposalStats:
    """Make sure every image of ``images`` (id -> path) has a cache file; compute the missing ones.

    ``workers`` > 1 uses that many worker processes (spawned, one OpenCV thread each). Images that fail are reported
    in the returned stats instead of stopping the pass; already cached images are not touched.
    """
    stats = ProposalStats()
    todo = []
    for image_id, path in images.items():
        if cache.has(image_id):
            stats.cached += 1
        else:
            todo.append((image_id, str(path), str(cache.folder.parent), cache.mode))
    if not todo:
        return stats
    bar = tqdm(total=len(todo), desc=f"selective search ({cache.mode})", unit="img", disable=not progress)
    results: Iterable[tuple[str, str | None]]
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        results = pool.map(_compute_one, todo, chunksize=max(1, min(16, len(todo) // (4 * workers))))
    else:
        pool = None
        results = map(_compute_one, todo)
    try:
        for image_id, error in results:
            if error is None:
                stats.computed += 1
            else:
                stats.failed[image_id] = error
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return stats


def load_rcnn_mat(path: str | Path, image_ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """Boxes of R-CNN's released selective-search ``.mat`` file, converted to 0-based ``x1, y1, x2, y2``.

    The file holds a cell array ``boxes`` (one ``[N, 4]`` matrix per image, 1-based ``y1 x1 y2 x2``) and usually a
    cell array ``images`` of image ids in the same order; without it ``image_ids`` (the split's order) names them.
    Conversion as Fast R-CNN's ``pascal_voc._load_selective_search_roidb``: ``boxes[:, (1, 0, 3, 2)] - 1``.
    """
    import scipy.io

    path = Path(path)
    try:
        data = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as exc:
        raise ProposalError(f"cannot read R-CNN proposal file {path}: {exc}") from exc
    if "boxes" not in data:
        raise ProposalError(f"{path}: no 'boxes' variable (expected R-CNN's selective_search_data format)")
    raw = data["boxes"].ravel()
    if "images" in data:
        ids = [str(np.asarray(x).ravel()[0]) for x in data["images"].ravel()]
    elif image_ids is not None:
        ids = list(image_ids)
    else:
        raise ProposalError(f"{path}: no 'images' variable; pass the split's image ids")
    if len(ids) != len(raw):
        raise ProposalError(f"{path}: {len(raw)} box sets for {len(ids)} image ids")
    out = {}
    for image_id, boxes in zip(ids, raw):
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out[image_id] = np.ascontiguousarray(b[:, (1, 0, 3, 2)] - 1.0)
    return out


def import_rcnn_mat(path: str | Path, cache: ProposalCache, sizes: Mapping[str, tuple[int, int]]) -> int:
    """Write the cleaned boxes of an R-CNN ``.mat`` file into ``cache`` for the images of ``sizes`` (id -> (W, H));
    returns how many images were imported."""
    boxes = load_rcnn_mat(path, list(sizes))
    n = 0
    for image_id, (w, h) in sizes.items():
        if image_id in boxes:
            cache.save(image_id, clean_boxes(boxes[image_id], w, h))
            n += 1
    return n
