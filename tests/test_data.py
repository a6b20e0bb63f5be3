"""Unlabelled image data: finding files, skipping bad ones, colour-mode conversion, augmentation, reproducibility."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pretrain.data import (
    ALPHA_BACKGROUND,
    DataError,
    UnlabeledImageDataset,
    build_pretrain_dataset,
    check_image,
    find_images,
    load_rgb,
)


def exact(path: Path, size: int) -> torch.Tensor:
    """The image as the dataset returns it with no resize, a full-size crop and no flip: exact pixel values."""
    return UnlabeledImageDataset([path], crop_size=size, resize_short=None, flip=False)[0]


def as_float(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1


# --------------------------------------------------------------------------------------------- finding images


def test_find_images_recursive_sorted_and_filtered(image_folder: Path, tmp_path: Path) -> None:
    paths = find_images(image_folder)
    assert len(paths) == 24
    assert {p.suffix for p in paths} == {".jpg", ".png"}
    assert any(p.parent != image_folder for p in paths)  # found in subfolders
    rel = [p.relative_to(image_folder).as_posix() for p in paths]
    assert rel == sorted(rel)

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "sub" / "UPPER.JPG", format="JPEG")
    Image.new("RGB", (8, 8)).save(folder / "x.webp")
    Image.new("RGB", (8, 8)).save(folder / "y.bmp")
    Image.new("RGB", (8, 8)).save(folder / "z.ppm")
    Image.new("RGB", (8, 8)).save(folder / ".hidden" / "h.png")
    Image.new("RGB", (8, 8)).save(folder / "._resource.jpg", format="JPEG")
    (folder / "notes.txt").write_text("not an image")
    names = [p.name for p in find_images(folder)]
    assert names == ["UPPER.JPG", "x.webp", "y.bmp", "z.ppm"]


def test_missing_empty_or_file_source_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError, match="no_such_folder"):
        find_images(missing)
    empty = tmp_path / "empty_folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty_folder"):
        find_images(empty)
    with pytest.raises(DataError, match=re.escape("readme.txt")):
        find_images(empty / "sub" / "readme.txt")
    with pytest.raises(DataError, match="empty_folder"):
        build_pretrain_dataset(empty, crop_size=32, resize_short=None)


def test_voc_source_lists_the_split_images(voc_root: Path) -> None:
    year = voc_root / "VOCdevkit" / "VOC2012"
    ids = (year / "ImageSets" / "Main" / "train.txt").read_text().split()
    paths = find_images(f"voc:{voc_root}")  # default VOC2012 train (val is the segmentation test split)
    assert [p.stem for p in paths] == ids and len(paths) == 20
    assert len(find_images(f"voc:{voc_root}:2012:trainval")) == 40
    assert all(p.parent == year / "JPEGImages" for p in paths)
    test07 = find_images(f"voc:{voc_root}:2007:test")
    assert [p.stem for p in test07] == (voc_root / "VOCdevkit/VOC2007/ImageSets/Main/test.txt").read_text().split()
    assert len(find_images(f"voc:{voc_root / 'VOCdevkit'}:2012:train")) == 20
    with pytest.raises(DataError, match="nosplit"):
        find_images(f"voc:{voc_root}:2012:nosplit")
    with pytest.raises(DataError, match="VOC1999"):
        find_images(f"voc:{voc_root}:1999")
    with pytest.raises(DataError, match="voc:ROOT"):
        find_images("voc:")


def test_voc_source_with_missing_images(voc_root: Path, tmp_path: Path) -> None:
    year = tmp_path / "VOCdevkit" / "VOC2012"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    shutil.copy(voc_root / "VOCdevkit/VOC2012/JPEGImages/2012_000001.jpg", year / "JPEGImages")
    (year / "ImageSets" / "Main" / "train.txt").write_text("2012_000001\n2012_000002\n")
    with pytest.warns(UserWarning, match="missing"):
        assert len(find_images(f"voc:{tmp_path}")) == 1
    (year / "ImageSets" / "Main" / "train.txt").write_text("2012_000002\n")
    with pytest.raises(DataError, match="JPEGImages"):
        find_images(f"voc:{tmp_path}")


# --------------------------------------------------------------------------------------------- bad files


@pytest.fixture()
def damaged_folder(image_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(image_folder, folder)
    (folder / "garbage.jpg").write_bytes(b"this is not a JPEG file at all" * 20)
    jpeg = next(iter(sorted(image_folder.rglob("*.jpg")))).read_bytes()
    (folder / "a" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "b" / "empty.png").write_bytes(b"")
    png = next(iter(sorted(image_folder.rglob("*.png")))).read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 3])
    return folder


@pytest.mark.parametrize("scan_workers", [0, 2])
def test_corrupt_truncated_and_empty_files_are_skipped_and_counted(damaged_folder: Path, scan_workers: int) -> None:
    with pytest.warns(UserWarning, match="skipped 4 of 28"):
        ds = build_pretrain_dataset(damaged_folder, crop_size=64, resize_short=80, scan_workers=scan_workers)
    assert len(ds) == 24 and ds.num_found == 28
    skipped = {Path(p).name: reason for p, reason in ds.skipped}
    assert set(skipped) == {"garbage.jpg", "truncated.jpg", "empty.png", "truncated.png"}
    assert skipped["empty.png"] == "empty file"
    assert "truncated" in skipped["truncated.jpg"]
    assert all(Path(p).name not in skipped for p in map(str, ds.paths))
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 64, 64)


def test_nothing_readable_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_pretrain_dataset(tmp_path, crop_size=16, resize_short=None)


def test_unscanned_bad_file_is_replaced_by_the_next_item(damaged_folder: Path) -> None:
    paths = [damaged_folder / "garbage.jpg", *find_images(damaged_folder)[:2]]
    ds = UnlabeledImageDataset(paths, crop_size=32, resize_short=40, scan=False)
    with pytest.warns(UserWarning, match="garbage.jpg"):
        x = ds[0]
    assert x.shape == (3, 32, 32)
    assert check_image(damaged_folder / "garbage.jpg") is not None
    assert check_image(paths[1]) is None


# --------------------------------------------------------------------------------------------- colour modes


def test_grayscale_bilevel_palette_and_alpha_convert_to_rgb(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # 32 x 32, 0..248
    Image.fromarray(ramp, "L").save(tmp_path / "gray.png")
    x = exact(tmp_path / "gray.png", 32)
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(ramp).float() / 127.5 - 1)

    Image.fromarray(ramp > 127).convert("1").save(tmp_path / "bilevel.png")
    assert set(exact(tmp_path / "bilevel.png", 32).unique().tolist()) == {-1.0, 1.0}

    pal = Image.new("P", (32, 32))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    pal.save(tmp_path / "palette.png")
    x = exact(tmp_path / "palette.png", 32)
    assert torch.allclose(x[:, 0, 0], as_float((0, 0, 255))) and torch.allclose(x[:, 0, 31], as_float((255, 0, 0)))

    pal.info["transparency"] = 1  # palette index 1 (blue) transparent -> background
    pal.save(tmp_path / "palette_t.png", transparency=1)
    x = exact(tmp_path / "palette_t.png", 32)
    assert torch.allclose(x[:, 0, 0], as_float(ALPHA_BACKGROUND))

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :16, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    x = exact(tmp_path / "rgba.png", 32)
    assert torch.allclose(x[:, 5, 5], as_float((200, 0, 0)))
    assert torch.allclose(x[:, 5, 30], as_float(ALPHA_BACKGROUND))

    la = Image.fromarray(np.stack([ramp, np.full_like(ramp, 255)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert torch.allclose(exact(tmp_path / "la.png", 32)[1], torch.from_numpy(ramp).float() / 127.5 - 1)


def test_cmyk_jpeg_converts_to_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan
    cmyk.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half white
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    x = exact(tmp_path / "cmyk.jpg", 32)
    assert torch.allclose(x[:, 16, 4], as_float((255, 255, 255)), atol=0.06)
    assert torch.allclose(x[:, 16, 28], as_float((0, 255, 255)), atol=0.06)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp16).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    x = exact(tmp_path / "gray16.png", 32)
    expected = torch.from_numpy(np.rint(ramp16 / 257.0)).float() / 127.5 - 1
    assert torch.allclose(x[0], expected) and torch.equal(x[0], x[2])
    assert x.min() == -1 and x.max() == 1 and len(x[0, 0].unique()) == 32  # full range, no clipping at 255

    # a 16-bit binary PGM in a .ppm file opens as mode "I"
    (tmp_path / "gray16.ppm").write_bytes(b"P5\n32 32\n65535\n" + ramp16.astype(">u2").tobytes())
    assert Image.open(tmp_path / "gray16.ppm").mode == "I"
    assert torch.allclose(exact(tmp_path / "gray16.ppm", 32)[1], expected)

    rgb16 = np.zeros((32, 32, 3), np.uint16)
    rgb16[..., 2] = 65535  # BGR order for OpenCV: red channel at full scale
    rgb16[..., 1] = 32896  # green at 128 * 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16)
    x = exact(tmp_path / "rgb16.png", 32)
    assert torch.allclose(x[:, 3, 3], as_float((255, 128, 0)), atol=1 / 127.5)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    im.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)


# --------------------------------------------------------------------------------------------- augmentation


def test_output_shape_range_and_resizing(image_folder: Path, tmp_path: Path) -> None:
    ds = build_pretrain_dataset(image_folder, crop_size=64, resize_short=80)
    assert ds.skipped == []
    for i in range(0, len(ds), 5):
        x = ds[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.01
    # a shorter side below the crop is upscaled to the crop (resize_short=None and resize_short < crop)
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "small.png")
    for resize_short in (None, 10):
        x = UnlabeledImageDataset([tmp_path / "small.png"], crop_size=48, resize_short=resize_short)[0]
        assert x.shape == (3, 48, 48) and torch.allclose(x[:, 0, 0], as_float((255, 0, 0)))
    # resize_short: shorter side becomes exactly that, aspect kept (160x128 -> 100x80)
    assert ds.target_short_side(160, 128) == 80


def test_flip_and_crop_randomness(tmp_path: Path) -> None:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :8] = 255  # white stripe on the left
    Image.fromarray(arr).save(tmp_path / "stripe.png")
    torch.manual_seed(0)
    ds = UnlabeledImageDataset([tmp_path / "stripe.png"], crop_size=32, resize_short=None, flip=True)
    left = [bool(ds[0][0, 0, 0] > 0) for _ in range(40)]
    assert 5 < sum(left) < 35  # both orientations appear
    no_flip = UnlabeledImageDataset([tmp_path / "stripe.png"], crop_size=32, resize_short=None, flip=False)
    assert all(no_flip[0][0, 0, 0] > 0 for _ in range(10))


def test_per_item_randomness_reproducible_with_a_seeded_loader(image_folder: Path) -> None:
    ds = build_pretrain_dataset(image_folder, crop_size=32, resize_short=48)

    def batches(seed: int, workers: int) -> list[torch.Tensor]:
        loader = DataLoader(
            ds, batch_size=8, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed)
        )
        return list(loader)

    a, b, c = batches(0, 2), batches(0, 2), batches(1, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    torch.manual_seed(5)
    d = batches(0, 0)
    torch.manual_seed(5)
    e = batches(0, 0)
    assert all(torch.equal(x, y) for x, y in zip(d, e))


def test_jpeg_draft_fast_path_matches_full_decode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:600, 0:800]
    big = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], -1).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=92)
    fast = UnlabeledImageDataset([tmp_path / "big.jpg"], crop_size=64, resize_short=72, jpeg_draft=True)
    full = UnlabeledImageDataset([tmp_path / "big.jpg"], crop_size=64, resize_short=72, jpeg_draft=False)
    torch.manual_seed(3)
    x = fast[0]
    torch.manual_seed(3)
    y = full[0]
    assert x.shape == y.shape == (3, 64, 64)
    assert (x - y).abs().mean() < 0.02
    assert load_rgb(tmp_path / "big.jpg", min_short=72).size == (100, 75)  # decoded at 1/8 scale
