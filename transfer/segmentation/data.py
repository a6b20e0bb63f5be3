"""VOC2012 segmentation data (plus SBD's extra annotations) for the FCN harness.

Items are listed and checked up front (``build_items`` + ``check_items``): every mask is loaded once and compared
with its image's size and the label range, so a bad file stops the run before any training (``VOCError`` naming
the file), or, with ``skip_bad``, is dropped and counted in the run record.

SBD (Hariharan et al. 2011, "Semantic Boundaries Dataset", the ``dataset`` folder of its release) holds
``cls/<id>.mat`` (a MATLAB struct ``GTcls`` whose ``Segmentation`` field is the class-index mask), ``img/<id>.jpg``
and the split lists ``train.txt`` / ``val.txt``. Its images come from VOC2011, so some of them are VOC2012 ``val``
images: every such image is removed from the training set (no leakage into the evaluation split) and the number
removed is reported. Where VOC2012 itself has a mask for an image, VOC's mask is used.

Input normalisation (the shared ``--input-norm``, see ``transfer/input_norm.py``): ``minus1to1`` maps RGB to
[-1, 1] as the context encoder's pretraining does; ``imagenet`` subtracts torchvision's ImageNet mean and divides by
its std (for torchvision AlexNet weights); ``auto`` picks by the weights. Zero
padding of conv1 then pads with the mean/mid-grey colour, as FCN's mean-subtracted Caffe input does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pretrain.sampling import SampleKey
from transfer.input_norm import normalize_image
from transfer.voc import (
    IGNORE_LABEL,
    SEG_CLASSES,
    VOCError,
    image_path,
    load_image,
    load_segmentation_mask,
    read_image_set,
    resolve_year_dir,
)


@dataclass(frozen=True)
class SegItem:
    """One image and where its mask comes from (``voc``: SegmentationClass PNG, ``sbd``: cls/<id>.mat)."""

    image_id: str
    image: Path
    mask: Path
    source: Literal["voc", "sbd"]


@dataclass(frozen=True)
class ItemList:
    items: list[SegItem]
    sbd_added: int = 0
    sbd_removed_val: int = 0  # SBD images dropped because they are in the evaluation split


def read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise VOCError(f"SBD split file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_items(voc_root: str | Path, split: str, year: str = "2012") -> list[SegItem]:
    """Items of ``ImageSets/Segmentation/<split>.txt`` of VOC<year>."""
    ydir = resolve_year_dir(voc_root, year)
    ids = read_image_set(ydir, split, kind="Segmentation")
    return [SegItem(i, image_path(ydir, i), ydir / "SegmentationClass" / f"{i}.png", "voc") for i in ids]


def build_train_items(
    voc_root: str | Path,
    split: str,
    eval_split: str,
    sbd_root: str | Path | None = None,
    sbd_splits: Sequence[str] = ("train", "val"),
) -> ItemList:
    """VOC2012 ``split`` plus, when ``sbd_root`` is given, SBD ``sbd_splits`` minus every VOC2012 ``eval_split``
    image (and minus images VOC already provides)."""
    items = voc_items(voc_root, split)
    if sbd_root is None:
        return ItemList(items)
    sbd = Path(sbd_root)
    if not (sbd / "cls").is_dir():
        raise VOCError(f"SBD root {sbd} has no cls/ folder (give the 'dataset' folder of the SBD release)")
    ydir = resolve_year_dir(voc_root, "2012")
    held_out = set(read_image_set(ydir, eval_split, kind="Segmentation"))
    have = {it.image_id for it in items}
    removed = added = 0
    seen: set[str] = set()
    for name in sbd_splits:
        for image_id in read_id_list(sbd / f"{name}.txt"):
            if image_id in seen:
                continue
            seen.add(image_id)
            if image_id in held_out:
                removed += 1
                continue
            if image_id in have:
                continue
            img = sbd / "img" / f"{image_id}.jpg"
            if not img.is_file():
                img = image_path(ydir, image_id)
            items.append(SegItem(image_id, img, sbd / "cls" / f"{image_id}.mat", "sbd"))
            have.add(image_id)
            added += 1
    return ItemList(items, sbd_added=added, sbd_removed_val=removed)


def load_sbd_mask(path: Path, image_size: tuple[int, int] | None, num_classes: int = len(SEG_CLASSES)) -> np.ndarray:
    """Class-index mask from an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``), validated like VOC masks."""
    import scipy.io

    if not path.is_file():
        raise VOCError(f"SBD mask not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path), mat_dtype=True, squeeze_me=True, struct_as_record=False)
        mask = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        msg = f"{path}: unreadable SBD mask, expected a GTcls struct with a Segmentation field ({exc})"
        raise VOCError(msg) from exc
    if mask.ndim != 2:
        raise VOCError(f"{path}: GTcls.Segmentation has shape {mask.shape}, expected a 2-D mask")
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise VOCError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {image_size[0]}x{image_size[1]}")
    bad = np.unique(mask[((mask < 0) | (mask >= num_classes)) & (mask != IGNORE_LABEL)])
    if bad.size:
        raise VOCError(f"{path}: labels {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE_LABEL}")
    return mask.astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file without decoding it."""
    if not path.is_file():
        raise VOCError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise VOCError(f"{path}: unreadable image ({exc})") from exc


def load_mask(item: SegItem, size: tuple[int, int] | None) -> np.ndarray:
    if item.source == "sbd":
        return load_sbd_mask(item.mask, size)
    return load_segmentation_mask(item.mask.parent.parent, item.image_id, size)


def check_items(items: list[SegItem], skip_bad: bool) -> tuple[list[SegItem], list[str]]:
    """Validate every (image, mask) pair. Returns (good items, messages of skipped ones); raises the first
    ``VOCError`` unless ``skip_bad``."""
    good, skipped = [], []
    for item in items:
        try:
            load_mask(item, image_size(item.image))
        except VOCError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        good.append(item)
    return good, skipped


class SegmentationDataset(Dataset):
    """(image [3, H, W] float, mask [H, W] int64 with 255 = ignore, image id) per item.

    Training (``train=True``): horizontal flip with probability 1/2 (the FCN paper tried mirroring and jittering and
    saw no gain; the suite mirrors by default, ``--seg-no-flip`` turns it off), and with ``crop_size`` a random
    square crop, padding with zeros (the mean) / 255 where the image is smaller, so that a batch can be stacked.
    Randomness comes from the key: training items are indexed by the sampler's ``SampleKey`` (``pretrain/sampling.py``)
    and the flip and crop are drawn from its seed, so every draw has its own augmentation and runs are reproducible
    with any number of workers. Evaluation items are indexed by their position.
    """

    def __init__(
        self,
        items: list[SegItem],
        *,
        train: bool,
        input_norm: str = "minus1to1",
        flip: bool = True,
        crop_size: int | None = None,
    ) -> None:
        self.items = items
        self.train = train
        self.input_norm = input_norm
        self.flip = flip
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, seed = (key[0], key[2]) if isinstance(key, tuple) else (key, None)
        if self.train and seed is None:
            raise TypeError("a training SegmentationDataset is indexed by sampler keys (index, view, seed)")
        item = self.items[index]
        image = load_image(item.image)
        mask = torch.from_numpy(load_mask(item, image.size).astype(np.int64))
        x = normalize_image(image, self.input_norm)
        if self.train and seed is not None:
            gen = torch.Generator().manual_seed(seed)
            if self.flip and torch.rand((), generator=gen) < 0.5:
                x, mask = x.flip(-1), mask.flip(-1)
            if self.crop_size is not None:
                x, mask = random_crop(x, mask, self.crop_size, gen)
        return x, mask, item.image_id


def random_crop(
    x: torch.Tensor, mask: torch.Tensor, size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` x ``size`` window; sides shorter than ``size`` are padded (image 0, mask 255)."""
    h, w = mask.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=0.0)
        mask = torch.nn.functional.pad(mask, (0, pw, 0, ph), value=IGNORE_LABEL)
        h, w = mask.shape
    top = int(torch.randint(0, h - size + 1, (), generator=gen))
    left = int(torch.randint(0, w - size + 1, (), generator=gen))
    return x[:, top : top + size, left : left + size], mask[top : top + size, left : left + size]


def collate_list(
    batch: list[tuple[torch.Tensor, torch.Tensor, str]],
) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """Keep samples as a list: FCN trains on whole images of different sizes (``train_step`` stacks equal sizes)."""
    return batch
