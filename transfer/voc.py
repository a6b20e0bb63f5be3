"""PASCAL VOC devkit files: annotations, classification labels, segmentation masks and images.

Locating a year, its image sets and its JPEGs (``resolve_year_dir``, ``read_image_set``, ``image_path``,
``VOCError``) is ``pretrain.voc_layout``, re-exported here so that transfer code has one VOC module. Accepted roots
(``--voc-root``): the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOCdevkit/VOC2007``. Box coordinates
are returned 0-based ``[x1, y1, x2, y2]`` floats in pixel units: VOC XML stores 1-based inclusive integers, so
``x1 = xmin - 1`` and ``x2 = xmax - 1``.

Problems are ``VOCError`` naming the file. Callers that accept ``--skip-bad`` catch it per item and count it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.voc_layout import VOCError, image_path, read_image_set, resolve_year_dir

__all__ = [
    "IGNORE",
    "IGNORE_LABEL",
    "NEGATIVE",
    "POSITIVE",
    "SEG_CLASSES",
    "VOC_CLASSES",
    "VOCAnnotation",
    "VOCError",
    "VOCObject",
    "classes_in_annotations",
    "classification_labels",
    "image_path",
    "load_annotation",
    "load_image",
    "load_segmentation_mask",
    "parse_annotation",
    "read_image_set",
    "resolve_year_dir",
    "voc_palette",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
#: segmentation label of pixels that are ignored (object borders, "difficult" regions)
IGNORE_LABEL = 255
SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)

# classification label values
POSITIVE, NEGATIVE, IGNORE = 1, -1, 0


@dataclass(frozen=True)
class VOCObject:
    name: str
    box: tuple[float, float, float, float]  # 0-based x1, y1, x2, y2
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class VOCAnnotation:
    image_id: str
    width: int
    height: int
    objects: tuple[VOCObject, ...] = field(default_factory=tuple)


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise VOCError(f"{path}: missing <{tag}>")
    return child.text.strip()


def parse_annotation(path: str | Path) -> VOCAnnotation:
    """Parse one VOC XML annotation file."""
    path = Path(path)
    if not path.is_file():
        raise VOCError(f"annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise VOCError(f"{path}: malformed XML ({exc})") from exc
    try:
        size = root.find("size")
        if size is None:
            raise VOCError(f"{path}: missing <size>")
        width, height = int(float(_text(size, "width", path))), int(float(_text(size, "height", path)))
        objects = []
        for obj in root.findall("object"):
            bnd = obj.find("bndbox")
            if bnd is None:
                raise VOCError(f"{path}: <object> without <bndbox>")
            xmin, ymin, xmax, ymax = (float(_text(bnd, t, path)) for t in ("xmin", "ymin", "xmax", "ymax"))
            diff = obj.find("difficult")
            trunc = obj.find("truncated")
            objects.append(
                VOCObject(
                    name=_text(obj, "name", path),
                    box=(xmin - 1.0, ymin - 1.0, xmax - 1.0, ymax - 1.0),
                    difficult=diff is not None and (diff.text or "0").strip() == "1",
                    truncated=trunc is not None and (trunc.text or "0").strip() == "1",
                )
            )
    except ValueError as exc:
        raise VOCError(f"{path}: non-numeric value ({exc})") from exc
    image_id = path.stem
    return VOCAnnotation(image_id=image_id, width=width, height=height, objects=tuple(objects))


def load_annotation(year_dir: Path, image_id: str) -> VOCAnnotation:
    return parse_annotation(year_dir / "Annotations" / f"{image_id}.xml")


def classification_labels(ann: VOCAnnotation, classes: tuple[str, ...] = VOC_CLASSES) -> np.ndarray:
    """Per-class label vector: 1 if a non-difficult object of the class is present, 0 ("ignore") if only
    difficult ones are, -1 otherwise (the devkit's classification ground truth)."""
    labels = np.full(len(classes), NEGATIVE, dtype=np.int8)
    index = {c: i for i, c in enumerate(classes)}
    for obj in ann.objects:
        i = index.get(obj.name)
        if i is None:
            continue
        if not obj.difficult:
            labels[i] = POSITIVE
        elif labels[i] != POSITIVE:
            labels[i] = IGNORE
    return labels


def classes_in_annotations(anns: list[VOCAnnotation]) -> tuple[str, ...]:
    """Sorted class names present in a set of annotations (for non-VOC class lists)."""
    return tuple(sorted({o.name for a in anns for o in a.objects}))


def load_segmentation_mask(
    year_dir: Path, image_id: str, image_size: tuple[int, int] | None = None, num_classes: int = 21
) -> np.ndarray:
    """Class-index mask (H, W) uint8 from ``SegmentationClass/<id>.png`` (palette indices).

    Raises ``VOCError`` when the file is missing, its size differs from ``image_size`` (W, H), or it holds labels
    outside ``0..num_classes-1`` and 255.
    """
    path = year_dir / "SegmentationClass" / f"{image_id}.png"
    if not path.is_file():
        raise VOCError(f"segmentation mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise VOCError(f"{path}: mask mode is {im.mode}, expected a palette (P) or grayscale (L) PNG")
            mask = np.array(im, dtype=np.uint8)
    except OSError as exc:
        raise VOCError(f"{path}: unreadable mask ({exc})") from exc
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise VOCError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {image_size[0]}x{image_size[1]}")
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_LABEL)])
    if bad.size:
        raise VOCError(f"{path}: labels {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE_LABEL}")
    return mask


def voc_palette() -> list[int]:
    """The standard 256-entry VOC colour map (flattened RGB) of ``SegmentationClass`` PNGs (the devkit's
    ``VOClabelcolormap.m``: bits of the label spread over the high bits of R, G, B)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB, naming the file on failure."""
    if not path.is_file():
        raise VOCError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise VOCError(f"{path}: unreadable image ({exc})") from exc
