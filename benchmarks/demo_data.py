"""Synthetic PASCAL VOC data for the demo and the tests: real JPEG, XML and palette-PNG files in the devkit layout.

Objects of each class are drawn as a class-specific shape, colour and stripe texture onto crops of the natural
photographs that scikit-image ships (no download needed). The tree holds VOC2007 (Main: train, val, trainval,
test and the per-class ``<cls>_<split>.txt`` files) and VOC2012 (Main and Segmentation: train, val, trainval), with
``Annotations`` (boxes, difficult and truncated flags), ``SegmentationClass`` and ``SegmentationObject`` masks
(object borders labelled 255 as in VOC). Everything is a deterministic function of the seed.
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
_SHAPES = ("rectangle", "ellipse", "triangle", "diamond")


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


def _class_style(k: int) -> tuple[str, tuple[int, int, int], int]:
    """Shape, colour and stripe period that identify class ``k``."""
    hue = (k * 0.618034) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return _SHAPES[k % len(_SHAPES)], (int(r * 255), int(g * 255), int(b * 255)), 3 + (k // 4) % 5


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[int, int]] | None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if shape == "triangle":
        return [(cx, y1), (x2, y2), (x1, y2)]
    if shape == "diamond":
        return [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: int | tuple) -> None:
    poly = _polygon(shape, box)
    if poly is not None:
        draw.polygon(poly, fill=fill)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.rectangle(box, fill=fill)


@dataclass(frozen=True)
class _Obj:
    cls: int
    box: tuple[int, int, int, int]  # 0-based inclusive pixel box
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
    image = _crop(rng, backgrounds, w, h)
    seg = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint8)
    objects: list[_Obj] = []
    for n, k in enumerate(classes, start=1):
        ow = int(rng.integers(w // 4, w // 2 + 1))
        oh = int(rng.integers(h // 4, h // 2 + 1))
        x1 = int(rng.integers(-ow // 5, w - ow + ow // 5))
        y1 = int(rng.integers(-oh // 5, h - oh + oh // 5))
        box = (x1, y1, x1 + ow - 1, y1 + oh - 1)
        shape, colour, period = _class_style(k)
        # texture: the class colour with stripes of a class-specific period
        tex = np.zeros((h, w, 3), np.uint8)
        tex[:] = colour
        stripes = (np.arange(w)[None, :] + np.arange(h)[:, None]) // period % 2 == 0
        tex[stripes] = (np.array(colour) * 0.45).astype(np.uint8)
        shape_mask = Image.new("L", (w, h), 0)
        _draw_shape(ImageDraw.Draw(shape_mask), shape, box, 255)
        m = np.array(shape_mask) > 0
        if not m.any():
            continue
        image = Image.composite(Image.fromarray(tex), image, shape_mask.filter(ImageFilter.GaussianBlur(0.6)))
        seg[m], inst[m] = k + 1, n
        ys, xs = np.nonzero(m)
        vis = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        truncated = (
            vis != (max(box[0], 0), max(box[1], 0), min(box[2], w - 1), min(box[3], h - 1))
            or box[0] < 0
            or box[1] < 0
            or box[2] >= w
            or box[3] >= h
        )
        counter[0] += 1
        objects.append(
            _Obj(
                k,
                vis,
                difficult=difficult_every > 0 and counter[0] % difficult_every == 0,
                truncated=truncated,
                instance=n,
            )
        )
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
                cls_ids = [(cls_cursor + j) % len(classes) for j in range(n_obj)]
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
