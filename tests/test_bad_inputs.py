"""Bad weights, extreme images and wrong annotations are refused or named; exports are byte-identical."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pretrain.data import UnlabeledImageDataset
from transfer.weights import WeightsError, load_alexnet_trunk


@pytest.mark.parametrize("damage", ["nan", "inf", "int"])
def test_weights_with_nan_inf_or_integers_are_refused(tmp_path: Path, damage: str) -> None:
    trunk, _ = load_alexnet_trunk("random", seed=0)
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    if damage == "int":
        state["6.weight"] = state["6.weight"].to(torch.int32)
    else:
        state["6.weight"][0, 0, 0, 0] = float(damage)
    path = tmp_path / "encoder.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"6\.weight") as info:
        load_alexnet_trunk(path)
    assert str(path) in str(info.value)


def test_an_extreme_strip_is_skipped_and_counted(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    Image.fromarray(np.full((1500, 1, 3), 128, np.uint8)).save(data / "strip.png")
    with pytest.warns(UserWarning, match="skipped 1"):
        dataset = UnlabeledImageDataset(sorted(data.rglob("*.*")), crop_size=64, resize_short=80)
    assert [(Path(p).name, "aspect" in r) for p, r in dataset.skipped] == [("strip.png", True)]


def test_cls_skips_a_strip_with_skip_bad(voc_root: Path, tmp_path: Path) -> None:
    from transfer.classification import load_classification_items
    from transfer.voc import VOC_CLASSES, VOCError, read_image_set, resolve_year_dir

    voc = tmp_path / "voc"
    shutil.copytree(voc_root, voc)
    year = resolve_year_dir(voc, "2007")
    victim = read_image_set(year, "trainval")[0]
    Image.fromarray(np.full((1, 1500, 3), 90, np.uint8)).save(year / "JPEGImages" / f"{victim}.jpg")
    with pytest.raises(VOCError, match="aspect ratio"):
        load_classification_items(year, "trainval", VOC_CLASSES)
    items, skipped = load_classification_items(year, "trainval", VOC_CLASSES, skip_bad=True)
    assert len(skipped) == 1 and victim in skipped[0] and "aspect ratio" in skipped[0]
    assert victim not in {i.image_id for i in items}


def test_detection_annotation_problems_are_named_per_file(voc_root: Path, tmp_path: Path) -> None:
    import re

    from transfer.detection.data import load_detection_split
    from transfer.voc import read_image_set, resolve_year_dir

    voc = tmp_path / "voc"
    shutil.copytree(voc_root, voc)
    year = resolve_year_dir(voc, "2007")
    first, second = read_image_set(year, "test")[:2]
    xml = year / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    text = re.sub(r"<width>\d+</width>", "<width>999</width>", text, count=1)  # <size> disagrees with the JPEG
    xml.write_text(text)
    xml2 = year / "Annotations" / f"{second}.xml"
    text2 = re.sub(r"<xmax>\d+</xmax>", "<xmax>0</xmax>", xml2.read_text(), count=1)  # x2 < x1
    xml2.write_text(text2)
    with pytest.warns(UserWarning, match="annotation problems"):
        _, report = load_detection_split(year, "test", lambda i, w, h: np.zeros((0, 4), np.float32))
    problems = report.to_dict()["problems"]
    assert isinstance(problems, list)
    assert any(str(xml) in p and "<size> 999x" in p for p in problems)
    assert any(str(xml2) in p and "dropped" in p for p in problems)


def test_exporting_twice_gives_identical_bytes(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    out = tmp_path / "random"
    run = [sys.executable, "-m", "benchmarks.cli"]
    proc = subprocess.run([*run, "pretrain", "--method", "random", "--out", str(out), "--device", "cpu"],
                          env=subprocess_env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    exports = []
    for name in ("a", "b"):  # separate processes: safetensors' own writer orders metadata by a per-process hash
        target = tmp_path / f"{name}.safetensors"
        proc = subprocess.run([*run, "export", str(out), "--output", str(target)], env=subprocess_env,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        exports.append(target.read_bytes())
    assert exports[0] == exports[1] == (out / "encoder.safetensors").read_bytes()
    _, info = load_alexnet_trunk(tmp_path / "a.safetensors")
    assert info.method == "random"
