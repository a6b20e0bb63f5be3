"""VOC2007 detection data for Fast R-CNN: images, ground truth, proposals, image scaling and RoI sampling.

Fast R-CNN's VOC settings (Girshick 2015 §2.3 and ``lib/fast_rcnn/config.py``), the defaults here:

- single scale: the shorter side resized to 600 pixels unless the longer side would exceed 1,000, then the longer
  side is 1,000 (``SCALES=(600,)``, ``MAX_SIZE=1000``), bilinear resize;
- horizontal flip: every training image appears once as is and once mirrored (``USE_FLIPPED``), shuffled;
- mini-batch: 2 images x 64 RoIs; 25% foreground (IoU >= 0.5 with a ground-truth box), the rest background with
  the highest IoU in [0.1, 0.5) (``FG_FRACTION``, ``FG_THRESH``, ``BG_THRESH_LO/HI``); the ground-truth boxes
  themselves are added to the proposals of a training image (``roidb`` merges gt and selective-search boxes);
- training images without any foreground or background RoI are dropped (``filter_roidb``); difficult objects are
  not used for training (py-faster-rcnn's ``use_diff=False``) but are kept for evaluation, where the devkit
  ignores them.

Input normalisation depends on how the encoder was pretrained, so it is an option (``--input-norm``, see
``transfer/input_norm.py``): the context
encoder's range [-1, 1] by default, torchvision's ImageNet mean/std for ImageNet weights. Padding of the mini-batch
is zero after normalisation (the mean colour for ``imagenet``, mid-grey for ``minus1to1``).

Bad input is counted in :class:`DetectionDataReport`, never a crash: boxes partly outside the image are clipped, boxes
that vanish after clipping are dropped, images without objects and images without proposals are kept for evaluation
(with ``--skip-bad``, images whose files are missing or malformed are skipped and listed).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pretrain.sampling import SampleKey
from transfer.detection.boxes import BoxCoder, box_iou_inclusive, flip_boxes
from transfer.input_norm import normalize_array
from transfer.voc import VOC_CLASSES, VOCError, image_path, load_annotation, read_image_set


@dataclass
class DetectionImage:
    """One image: ground truth ``boxes [G, 4]`` (0-based inclusive xyxy), ``labels [G]`` in 1..C,
    ``difficult [G]`` and ``proposals [P, 4]``."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    proposals: np.ndarray


@dataclass
class DetectionDataReport:
    """Counts of the bad or unusual input met while loading a split (stored in the run record)."""

    images: int = 0
    no_objects: int = 0
    no_proposals: int = 0
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    unknown_class_objects: int = 0
    skipped: list[str] = field(default_factory=list)
    #: one line per questionable annotation, naming the file: a ``<size>`` that disagrees with the JPEG, and
    #: boxes clipped to the image or dropped (inverted, or entirely outside it)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "problems": list(self.problems),
            "images": self.images,
            "no_objects": self.no_objects,
            "no_proposals": self.no_proposals,
            "clipped_boxes": self.clipped_boxes,
            "dropped_boxes": self.dropped_boxes,
            "unknown_class_objects": self.unknown_class_objects,
            "skipped": len(self.skipped),
        }


def load_detection_split(
    year_dir: Path,
    split: str,
    proposals: Callable[[str, int, int], np.ndarray],
    classes: Sequence[str] = VOC_CLASSES,
    skip_bad: bool = False,
) -> tuple[list[DetectionImage], DetectionDataReport]:
    """Read a split's annotations and proposals (``proposals(image_id, width, height) -> [P, 4]``)."""
    report = DetectionDataReport()
    index = {c: i + 1 for i, c in enumerate(classes)}
    images = []
    for image_id in read_image_set(year_dir, split):
        path = image_path(year_dir, image_id)
        try:
            ann = load_annotation(year_dir, image_id)
            if not path.is_file():
                raise VOCError(f"image not found: {path}")
        except VOCError as exc:
            if not skip_bad:
                raise
            report.skipped.append(str(exc))
            continue
        w, h = ann.width, ann.height
        xml = year_dir / "Annotations" / f"{image_id}.xml"
        actual = _jpeg_size(path)
        if actual is not None and actual != (w, h):
            report.problems.append(
                f"{xml}: <size> {w}x{h} disagrees with {path.name} ({actual[0]}x{actual[1]}); the JPEG's size is used"
            )
            w, h = actual
        boxes, labels, difficult = [], [], []
        for obj in ann.objects:
            if obj.name not in index:
                report.unknown_class_objects += 1
                continue
            x1, y1, x2, y2 = obj.box
            if x2 < max(x1, 0) or y2 < max(y1, 0) or x1 > min(x2, w - 1) or y1 > min(y2, h - 1):
                report.dropped_boxes += 1  # inverted, or entirely outside the image
                why = "x2 < x1 or y2 < y1" if (x2 < x1 or y2 < y1) else f"outside the {w}x{h} image"
                report.problems.append(f"{xml}: {obj.name} box {obj.box} dropped ({why})")
                continue
            cx1, cy1, cx2, cy2 = (
                min(max(x1, 0), w - 1),
                min(max(y1, 0), h - 1),
                min(max(x2, 0), w - 1),
                min(max(y2, 0), h - 1),
            )
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                report.clipped_boxes += 1
                report.problems.append(f"{xml}: {obj.name} box {obj.box} clipped to the {w}x{h} image")
            boxes.append((cx1, cy1, cx2, cy2))
            labels.append(index[obj.name])
            difficult.append(obj.difficult)
        props = np.asarray(proposals(image_id, w, h), np.float32).reshape(-1, 4)
        report.images += 1
        report.no_objects += int(not boxes)
        report.no_proposals += int(len(props) == 0)
        images.append(
            DetectionImage(
                image_id=image_id,
                path=path,
                width=w,
                height=h,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
                difficult=np.asarray(difficult, bool),
                proposals=props,
            )
        )
    if report.problems:
        shown = "; ".join(report.problems[:5])
        more = f"; ... {len(report.problems) - 5} more in the record" if len(report.problems) > 5 else ""
        warnings.warn(f"{split}: {len(report.problems)} annotation problems: {shown}{more}", stacklevel=2)
    return images, report


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header (no decoding), None when it cannot be read (reported elsewhere)."""
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # PIL raises many types for broken files; the loader reports the image when it is used
        return None


def image_scale(width: int, height: int, scale: int = 600, max_size: int = 1000) -> float:
    """Fast R-CNN's ``prep_im_for_blob`` factor: shorter side to ``scale`` unless the longer exceeds ``max_size``."""
    factor = scale / min(width, height)
    if round(factor * max(width, height)) > max_size:
        factor = max_size / max(width, height)
    return factor


def load_scaled_image(
    path: Path, scale: int, max_size: int, norm: str = "minus1to1", flip: bool = False
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """``(image [3, h, w] float32 normalised, factor, (W, H) of the file)``."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except OSError as exc:
        raise VOCError(f"{path}: unreadable image ({exc})") from exc
    if flip:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    factor = image_scale(rgb.width, rgb.height, scale, max_size)
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    arr = normalize_array(np.asarray(rgb.resize(size, Image.Resampling.BILINEAR)), norm)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), factor, (rgb.width, rgb.height)


@dataclass(frozen=True)
class RoISampler:
    """Fast R-CNN's ``_sample_rois``: ``rois_per_image`` RoIs, at most ``fg_fraction`` of them foreground."""

    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_threshold: float = 0.5
    bg_threshold: tuple[float, float] = (0.1, 0.5)
    coder: BoxCoder = field(default_factory=BoxCoder)

    def sample(
        self, rois: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rois [K, 4], labels [K] (0 = background), targets [K, 4] normalised deltas to the matched gt)``."""
        if len(gt_boxes) == 0 or len(rois) == 0:
            return rois.new_zeros((0, 4)), gt_labels.new_zeros(0), rois.new_zeros((0, 4))
        iou = box_iou_inclusive(rois, gt_boxes)
        max_iou, assigned = iou.max(dim=1)
        fg = torch.nonzero(max_iou >= self.fg_threshold).flatten()
        bg = torch.nonzero((max_iou < self.bg_threshold[1]) & (max_iou >= self.bg_threshold[0])).flatten()
        n_fg = min(round(self.fg_fraction * self.rois_per_image), len(fg))
        fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
        n_bg = min(self.rois_per_image - n_fg, len(bg))
        bg = bg[torch.randperm(len(bg), generator=generator)[:n_bg]]
        keep = torch.cat([fg, bg])
        labels = gt_labels[assigned[keep]].clone()
        labels[n_fg:] = 0
        targets = self.coder.encode(rois[keep], gt_boxes[assigned[keep]])
        targets[n_fg:] = 0
        return rois[keep], labels, targets


def has_training_rois(image: DetectionImage, sampler: RoISampler) -> bool:
    """Fast R-CNN's ``filter_roidb``: an image trains only if it has a foreground or a background RoI."""
    train = ~image.difficult
    if not train.any():
        return False
    gt = torch.from_numpy(image.boxes[train])
    rois = torch.cat([gt, torch.from_numpy(image.proposals)])
    max_iou = box_iou_inclusive(rois, gt).max(dim=1).values
    return bool(((max_iou >= sampler.fg_threshold) | (max_iou >= sampler.bg_threshold[0])).any())


def train_views(flip: bool) -> int:
    """Views of each training image in the sampler's epochs: as is (view 0) and, with ``flip``, mirrored (view 1),
    so that an epoch holds every image once in each view as Fast R-CNN's flipped roidb does."""
    return 2 if flip else 1


class DetectionTrainSet(torch.utils.data.Dataset):
    """Indexed by the sampler's keys ``(image index, view, seed)``: view 1 is the image mirrored (Fast R-CNN's
    flipped roidb, :func:`train_views`), the seed draws its RoI sample; returns one image's blob and its RoIs."""

    def __init__(
        self,
        images: Sequence[DetectionImage],
        scale: int = 600,
        max_size: int = 1000,
        norm: str = "minus1to1",
        sampler: RoISampler | None = None,
    ) -> None:
        self.images = list(images)
        self.scale, self.max_size, self.norm = scale, max_size, norm
        self.sampler = sampler or RoISampler()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        index, view, seed = key
        flip = view == 1
        item = self.images[index]
        image, factor, (w, _) = load_scaled_image(item.path, self.scale, self.max_size, self.norm, flip)
        train = ~item.difficult
        gt = torch.from_numpy(item.boxes[train])
        labels = torch.from_numpy(item.labels[train])
        props = torch.from_numpy(item.proposals)
        if flip:
            gt, props = flip_boxes(gt, w), flip_boxes(props, w)
        rois, roi_labels, targets = self.sampler.sample(
            torch.cat([gt, props]), gt, labels, torch.Generator().manual_seed(seed)
        )
        return {"image": image, "rois": rois * factor, "labels": roi_labels, "targets": targets}


def collate_detection(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad images to the largest height and width (zeros, bottom/right) and index RoIs by image: ``rois [R, 5]``."""
    h = max(int(it["image"].shape[1]) for it in items)
    w = max(int(it["image"].shape[2]) for it in items)
    images = torch.zeros(len(items), 3, h, w)
    rois = []
    for i, it in enumerate(items):
        images[i, :, : it["image"].shape[1], : it["image"].shape[2]] = it["image"]
        rois.append(torch.cat([torch.full((len(it["rois"]), 1), float(i)), it["rois"]], dim=1))
    return {
        "images": images,
        "rois": torch.cat(rois),
        "labels": torch.cat([it["labels"] for it in items]),
        "targets": torch.cat([it["targets"] for it in items]),
    }
