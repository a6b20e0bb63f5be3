"""Where things are in a PASCAL VOC devkit tree: the ``VOC<year>`` folder, its image sets and its JPEG images.

This is the part of VOC handling that pretraining needs too (``--data voc:ROOT`` and the ``voc-shapes`` masks), so
it sits in ``pretrain/``, below both stages; ``transfer.voc`` re-exports it beside the annotation and mask parsers.

Accepted roots: the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOCdevkit/VOC2007`` (then the other
years are looked up beside it). Problems are ``VOCError`` naming the file or folder.
"""

from __future__ import annotations

from pathlib import Path


class VOCError(RuntimeError):
    """A VOC file is missing or malformed; the message names it."""


def resolve_year_dir(root: str | Path, year: str) -> Path:
    """Return the ``VOC<year>`` folder for any accepted form of ``root``."""
    root = Path(root)
    if not root.exists():
        raise VOCError(f"VOC root does not exist: {root}")
    name = f"VOC{year}"
    candidates = [root / "VOCdevkit" / name, root / name, root.parent / name]
    if root.name == name:
        candidates.insert(0, root)
    for cand in candidates:
        if cand.is_dir():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise VOCError(f"no {name} folder found for VOC root {root} (looked for {tried})")


def read_image_set(year_dir: Path, split: str, kind: str = "Main") -> list[str]:
    """Image ids listed in ``ImageSets/<kind>/<split>.txt`` (``kind`` is Main or Segmentation)."""
    path = year_dir / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        raise VOCError(f"image set file not found: {path} (is split {split!r} part of {year_dir.name}?)")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VOCError(f"image set file is empty: {path}")
    return ids


def image_path(year_dir: Path, image_id: str) -> Path:
    """The JPEG of ``image_id`` (it may not exist; callers check)."""
    return year_dir / "JPEGImages" / f"{image_id}.jpg"
