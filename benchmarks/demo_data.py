"""Synthetic PASCAL VOC data for the demo and the tests: real JPEG, XML and palette-PNG files in the devkit layout.

Objects are drawn onto crops of the natural photographs that scikit-image ships (no download needed). Each of the
20 classes is one of five shapes filled with one of four two-tone textures (stripes across, stripes down, a
checkerboard, dots) whose colours and period are drawn per object, so a class is decided by shape and texture,
never by colour. Objects vary in size (about 1/5 to 3/5 of the shorter image side) and aspect, overlap (later
objects occlude earlier ones; boxes and masks cover the visible part) and are cut by the image border (truncated).
An object is difficult when less than 35% of its shape is visible or it covers less than 1.2% of the image, as VOC
annotators flag objects hard to recognise (and, with ``difficult_every``, every N-th object as well).

The tree holds VOC2007 (Main: train, val, trainval, test and the per-class ``<cls>_<split>.txt`` files) and VOC2012
(Main and Segmentation: train, val, trainval), with ``Annotations`` (boxes, difficult and truncated flags),
``SegmentationClass`` and ``SegmentationObject`` masks (object borders and difficult objects labelled 255 as in
VOC). :func:`make_scene_folder` writes unlabelled scenes of the same kind for pretraining. Everything is a
deterministic function of the seed.
"""

from __future__ import annotations

import colorsys
import warnings
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from transfer.voc import IGNORE_LABEL, VOC_CLASSES, voc_palette

_BACKGROUNDS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "cat",
    "colorwheel",
    "retina",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
)
#: class k is shape ``_SHAPES[k // 4]`` filled with texture ``_TEXTURES[k % 4]``; colours are drawn per object, so a
#: class is told apart by shape and texture, never by colour
_SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "cross")
_TEXTURES = ("hstripes", "vstripes", "checker", "dots")
#: an object whose visible part is below this fraction of its full shape (occluded or cut by the border), or below
#: ``_DIFFICULT_AREA`` of the image, is marked difficult, as VOC annotators mark objects hard to recognise
_DIFFICULT_VISIBLE = 0.35
_DIFFICULT_AREA = 0.012


def natural_backgrounds() -> list[np.ndarray]:
    """RGB uint8 photographs bundled with scikit-image."""
    import skimage.data

    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _BACKGROUNDS:
            try:
                im = np.asarray(getattr(skimage.data, name)())
            except Exception:  # a sample missing from this scikit-image build is simply not used
                continue
            if im.ndim == 2:
                im = np.stack([im] * 3, axis=-1)
            images.append(np.ascontiguousarray(im[..., :3]).astype(np.uint8))
    if not images:
        raise RuntimeError("scikit-image ships no sample photographs in this installation")
    return images


def _crop(rng: np.random.Generator, backgrounds: list[np.ndarray], w: int, h: int) -> Image.Image:
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    scale = max(w / bg.shape[1], h / bg.shape[0]) * float(rng.uniform(1.0, 1.6))
    im = Image.fromarray(bg).resize((max(w, round(bg.shape[1] * scale)), max(h, round(bg.shape[0] * scale))))
    x0 = int(rng.integers(im.width - w + 1))
    y0 = int(rng.integers(im.height - h + 1))
    out = im.crop((x0, y0, x0 + w, y0 + h))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _class_style(k: int) -> tuple[str, str]:
    """Shape and texture that identify class ``k``."""
    return _SHAPES[(k // len(_TEXTURES)) % len(_SHAPES)], _TEXTURES[k % len(_TEXTURES)]


def _texture(kind: str, w: int, h: int, period: int, colours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """An ``[h, w, 3]`` uint8 two-tone texture of ``kind`` with the given period in pixels."""
    ys, xs = np.mgrid[0:h, 0:w]
    if kind == "hstripes":
        on = ys // period % 2 == 0
    elif kind == "vstripes":
        on = xs // period % 2 == 0
    elif kind == "checker":
        on = (xs // period + ys // period) % 2 == 0
    else:  # dots on a square lattice
        c = period - 0.5
        on = ((xs % (2 * period) - c) ** 2 + (ys % (2 * period) - c) ** 2) <= (0.7 * period) ** 2
    return np.where(on[..., None], colours[0], colours[1]).astype(np.uint8)


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[int, int]] | None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    if shape == "cross":
        ax, ay = (x2 - x1) // 6, (y2 - y1) // 6
        return [
            (cx - ax, y1), (cx + ax, y1), (cx + ax, cy - ay), (x2, cy - ay), (x2, cy + ay), (cx + ax, cy + ay),
            (cx + ax, y2), (cx - ax, y2), (cx - ax, cy + ay), (x1, cy + ay), (x1, cy - ay), (cx - ax, cy - ay),
        ]  # fmt: skip
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: int | tuple) -> None:
    poly = _polygon(shape, box)
    if poly is not None:
        draw.polygon(poly, fill=fill)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle(box, fill=fill)


def _object_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two contrasting colours of random hues (a light and a dark tone)."""
    light = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.75, 1.0)))
    dark = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.1, 0.4)))
    tones = (np.array(light) * 255, np.array(dark) * 255)
    return (tones[0], tones[1]) if rng.random() < 0.5 else (tones[1], tones[0])


@dataclass(frozen=True)
class _Obj:
    cls: int
    box: tuple[int, int, int, int]  # 0-based inclusive pixel box of the visible part
    difficult: bool
    truncated: bool
    instance: int  # value of the object's pixels in the SegmentationObject mask


def _render(
    rng: np.random.Generator,
    backgrounds: list[np.ndarray],
    w: int,
    h: int,
    classes: list[int],
    difficult_every: int,
    counter: list[int],
) -> tuple[Image.Image, np.ndarray, np.ndarray, list[_Obj]]:
    """Draw one object per entry of ``classes`` (in order, so later objects occlude earlier ones) onto a photograph
    crop; returns the image, the class and instance masks and the annotated (visible) objects."""
    image = _crop(rng, backgrounds, w, h)
    inst = np.zeros((h, w), np.uint8)
    drawn: list[tuple[int, int, np.ndarray, tuple[int, int, int, int]]] = []  # (class, instance, full mask, box)
    for n, k in enumerate(classes, start=1):
        side = float(rng.uniform(0.22, 0.62))  # scale variation: the object's size relative to the image
        ow = max(8, int(min(w, h) * side * rng.uniform(0.8, 1.25)))
        oh = max(8, int(min(w, h) * side * rng.uniform(0.8, 1.25)))
        x1 = int(rng.integers(-ow // 5, w - ow + ow // 5 + 1))
        y1 = int(rng.integers(-oh // 5, h - oh + oh // 5 + 1))
        box = (x1, y1, x1 + ow - 1, y1 + oh - 1)
        shape, texture = _class_style(k)
        tex = _texture(texture, w, h, int(rng.integers(2, 6)), _object_colours(rng))
        shape_mask = Image.new("L", (w, h), 0)
        _draw_shape(ImageDraw.Draw(shape_mask), shape, box, 255)
        m = np.array(shape_mask) > 0
        if not m.any():
            continue
        image = Image.composite(Image.fromarray(tex), image, shape_mask.filter(ImageFilter.GaussianBlur(0.6)))
        inst[m] = n
        drawn.append((k, n, m, box))
    seg = np.zeros((h, w), np.uint8)
    objects: list[_Obj] = []
    for k, n, full, box in drawn:
        vis_mask = inst == n
        visible = int(vis_mask.sum())
        if visible == 0:
            continue  # wholly hidden by later objects: not annotated
        seg[vis_mask] = k + 1
        ys, xs = np.nonzero(vis_mask)
        vis = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        outside = box[0] < 0 or box[1] < 0 or box[2] >= w or box[3] >= h
        truncated = outside or vis != (max(box[0], 0), max(box[1], 0), min(box[2], w - 1), min(box[3], h - 1))
        counter[0] += 1
        hard = visible < _DIFFICULT_VISIBLE * int(full.sum()) or visible < _DIFFICULT_AREA * w * h
        picked = difficult_every > 0 and counter[0] % difficult_every == 0
        objects.append(_Obj(k, vis, difficult=hard or picked, truncated=truncated, instance=n))
    # VOC marks a band around every object boundary as "void" (255)
    edges = np.zeros_like(seg, bool)
    edges[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edges[1:, :] |= inst[1:, :] != inst[:-1, :]
    seg[edges] = IGNORE_LABEL
    inst[edges] = IGNORE_LABEL
    for obj in objects:  # difficult objects are void in the masks too
        if obj.difficult:
            seg[inst == obj.instance] = IGNORE_LABEL
    return image, seg, inst, objects


def _annotation_xml(image_id: str, folder: str, w: int, h: int, objects: list[_Obj], names: tuple[str, ...]) -> str:
    parts = [
        "<annotation>",
        f"  <folder>{folder}</folder>",
        f"  <filename>{image_id}.jpg</filename>",
        "  <source><database>context-encoders-bench synthetic VOC</database></source>",
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        f"  <segmented>{1 if objects else 0}</segmented>",
    ]
    for o in objects:
        x1, y1, x2, y2 = o.box
        parts += [
            "  <object>",
            f"    <name>{escape(names[o.cls])}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{int(o.truncated)}</truncated>",
            f"    <difficult>{int(o.difficult)}</difficult>",
            f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"  # one line, as in the devkit's files
            f"<xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_voc_tree(
    root: str | Path,
    *,
    splits_2007: dict[str, int] | None = None,
    splits_2012: dict[str, int] | None = None,
    image_size: tuple[int, int] = (160, 120),
    classes: tuple[str, ...] = VOC_CLASSES,
    max_objects: int = 3,
    difficult_every: int = 7,
    seed: int = 0,
) -> Path:
    """Write ``root/VOCdevkit/VOC2007`` and ``VOC2012`` and return ``root``.

    ``splits_2007`` defaults to ``{"train": 20, "val": 20, "test": 20}``, ``splits_2012`` to
    ``{"train": 20, "val": 20}`` (``trainval`` is always their union). Image sizes vary by up to 25% around
    ``image_size`` (W, H) so that code never relies on one size. Object classes cycle through ``classes`` so that
    every class appears in every split of at least ``len(classes)`` images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    backgrounds = natural_backgrounds()
    palette = voc_palette()
    splits = {
        "2007": splits_2007 or {"train": 20, "val": 20, "test": 20},
        "2012": splits_2012 or {"train": 20, "val": 20},
    }
    counter = [0]
    for year, sizes in splits.items():
        ydir = root / "VOCdevkit" / f"VOC{year}"
        for sub in (
            "Annotations",
            "JPEGImages",
            "ImageSets/Main",
            "ImageSets/Segmentation",
            "SegmentationClass",
            "SegmentationObject",
        ):
            (ydir / sub).mkdir(parents=True, exist_ok=True)
        ids_by_split: dict[str, list[str]] = {}
        labels: dict[str, dict[str, int]] = {}
        next_id = 1
        cls_cursor = 0
        for split, count in sizes.items():
            ids = []
            for _ in range(count):
                image_id = f"{next_id:06d}" if year == "2007" else f"{year}_{next_id:06d}"
                next_id += 1
                w = int(image_size[0] * rng.uniform(0.8, 1.25))
                h = int(image_size[1] * rng.uniform(0.8, 1.25))
                n_obj = int(rng.integers(1, max_objects + 1))
                # the first object's class cycles (every class in every split), the others are drawn at random
                cls_ids = [cls_cursor % len(classes), *rng.integers(len(classes), size=n_obj - 1).tolist()]
                cls_cursor += 1
                image, seg, inst, objects = _render(rng, backgrounds, w, h, cls_ids, difficult_every, counter)
                image.save(ydir / "JPEGImages" / f"{image_id}.jpg", quality=90)
                (ydir / "Annotations" / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, f"VOC{year}", w, h, objects, classes)
                )
                for arr, sub in ((seg, "SegmentationClass"), (inst, "SegmentationObject")):
                    png = Image.fromarray(arr, mode="P")
                    png.putpalette(palette)
                    png.save(ydir / sub / f"{image_id}.png")
                lab: dict[str, int] = {}
                for o in objects:
                    name = classes[o.cls]
                    lab[name] = 1 if (not o.difficult or lab.get(name) == 1) else 0
                labels[image_id] = lab
                ids.append(image_id)
            ids_by_split[split] = ids
        if "train" in ids_by_split and "val" in ids_by_split:
            ids_by_split["trainval"] = ids_by_split["train"] + ids_by_split["val"]
        for split, ids in ids_by_split.items():
            text = "".join(f"{i}\n" for i in ids)
            (ydir / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
            if split != "test":
                (ydir / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text)
            for name in classes:
                rows = "".join(f"{i} {labels[i].get(name, -1):2d}\n" for i in ids)
                (ydir / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(rows)
    return root


def make_image_folder(
    folder: str | Path,
    count: int = 24,
    size: tuple[int, int] = (160, 128),
    seed: int = 0,
    formats: tuple[str, ...] = ("jpg", "png"),
) -> Path:
    """Write ``count`` natural-photograph crops (unlabelled pretraining data) into ``folder`` (with a subfolder,
    since loaders search recursively)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    backgrounds = natural_backgrounds()
    for i in range(count):
        sub = folder / ("a" if i % 2 == 0 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        ext = formats[i % len(formats)]
        _crop(rng, backgrounds, size[0], size[1]).save(sub / f"img_{i:04d}.{ext}")
    return folder


def make_scene_folder(
    folder: str | Path,
    count: int,
    size: tuple[int, int] = (256, 192),
    max_objects: int = 4,
    num_classes: int = len(VOC_CLASSES),
    seed: int = 0,
) -> Path:
    """Write ``count`` unlabelled scenes (JPEG): photograph crops with 0..``max_objects`` objects of the same shape
    and texture classes as :func:`make_voc_tree`, so that pretraining sees the kind of images the transfer tasks
    use, without their labels. Files go into subfolders of 500 (loaders search recursively)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    backgrounds = natural_backgrounds()
    for i in range(count):
        sub = folder / f"{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        w = int(size[0] * rng.uniform(0.85, 1.15))
        h = int(size[1] * rng.uniform(0.85, 1.15))
        classes = rng.integers(num_classes, size=int(rng.integers(0, max_objects + 1))).tolist()
        image = _render(rng, backgrounds, w, h, classes, 0, [0])[0]
        image.save(sub / f"scene_{i:05d}.jpg", quality=90)
    return folder
