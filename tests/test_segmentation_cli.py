"""``bench transfer --task seg`` end to end on the VOC-layout fixture: SBD extra annotations without leakage,
smoke training (VOC2012 train + a tiny SBD) and evaluation writing a valid record, bad masks (error naming the file
or skipped and counted), and a 2-process torchrun (gloo) evaluation of the same weights giving the same confusion
matrix and mIoU as one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmarks.cli import main as bench
from pretrain.models.alexnet import alexnet_trunk
from pretrain.sampling import SampleKey
from transfer.records import read_record
from transfer.segmentation.data import (
    SegmentationDataset,
    build_train_items,
    check_items,
    load_sbd_mask,
    voc_items,
)
from transfer.segmentation.model import build_fcn
from transfer.voc import SEG_CLASSES, VOCError, resolve_year_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


def damage_masks(tree: Path) -> tuple[Path, Path]:
    """Give one VOC2012 train mask a wrong size and one val mask an out-of-range label."""
    ydir = resolve_year_dir(tree, "2012")
    bad_size = ydir / "SegmentationClass" / f"{voc_items(tree, 'train')[0].image_id}.png"
    with Image.open(bad_size) as im:
        palette = im.getpalette()
        im.resize((im.width + 3, im.height)).save(bad_size)
    bad_label = ydir / "SegmentationClass" / f"{voc_items(tree, 'val')[1].image_id}.png"
    with Image.open(bad_label) as im:
        arr = np.array(im)
    arr[0, 0] = 50
    out = Image.fromarray(arr, mode="P")
    out.putpalette(palette or [])
    out.save(bad_label)
    return bad_size, bad_label


def _write_sbd(root: Path, ids: dict[str, list[str]], size: tuple[int, int] = (40, 30)) -> None:
    (root / "cls").mkdir(parents=True)
    (root / "img").mkdir()
    for split, split_ids in ids.items():
        (root / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
        for i in split_ids:
            seg = np.zeros(size[::-1], dtype=np.uint8)
            seg[5:15, 10:30] = 7
            seg[0, 0] = 255
            gt = {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.array([7])}
            scipy.io.savemat(root / "cls" / f"{i}.mat", {"GTcls": gt})
            Image.new("RGB", size, (90, 120, 30)).save(root / "img" / f"{i}.jpg")


def test_sbd_extra_annotations_without_val_leakage(voc_root: Path, tmp_path: Path) -> None:
    val_ids = [it.image_id for it in voc_items(voc_root, "val")]
    train_ids = [it.image_id for it in voc_items(voc_root, "train")]
    sbd = tmp_path / "sbd"
    _write_sbd(sbd, {"train": ["2008_000001", val_ids[0], train_ids[0]], "val": ["2008_000002", val_ids[1]]})
    lst = build_train_items(voc_root, "train", "val", sbd)
    ids = [it.image_id for it in lst.items]
    assert lst.sbd_removed_val == 2 and lst.sbd_added == 2
    assert not set(ids) & set(val_ids)
    assert ids.count(train_ids[0]) == 1 and next(it for it in lst.items if it.image_id == train_ids[0]).source == "voc"
    mask = load_sbd_mask(sbd / "cls" / "2008_000001.mat", (40, 30))
    assert mask.shape == (30, 40) and set(np.unique(mask)) == {0, 7, 255}
    with pytest.raises(VOCError, match=r"2008_000001\.mat.*image is 41x30"):
        load_sbd_mask(sbd / "cls" / "2008_000001.mat", (41, 30))
    good, skipped = check_items(lst.items, skip_bad=False)
    assert len(good) == 22 and not skipped
    x, m, _ = SegmentationDataset(good, train=True, crop_size=64)[SampleKey(len(good) - 1, 0, 3)]
    assert x.shape == (3, 64, 64) and m.shape == (64, 64) and (m == 255).sum() > 64 * 64 - 40 * 30


@pytest.fixture(scope="module")
def damaged(voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tree = tmp_path_factory.mktemp("seg") / "voc"
    shutil.copytree(voc_root, tree)
    return (tree, *damage_masks(tree))


@pytest.fixture(scope="module")
def smoke_run(damaged: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg_out")
    args = ["transfer", "--task", "seg", "--voc-root", str(damaged[0]), "--weights", "random", "--out", str(out)]
    args += ["--preset", "smoke", "--iterations", "2", "--skip-bad", "--save-model", "--save-predictions", "--rescale"]
    val_id = voc_items(damaged[0], "val")[0].image_id
    _write_sbd(out / "sbd", {"train": ["2008_000001", val_id], "val": []})
    args += ["--sbd-root", str(out / "sbd")]
    assert bench(args) == 0
    return out


def _record(folder: Path) -> dict[str, Any]:
    paths = sorted(folder.glob("seg_*.json"))
    assert len(paths) == 1, paths
    return read_record(paths[0])


def test_bad_masks_error_or_skip(damaged: tuple[Path, Path, Path]) -> None:
    tree, bad_size, bad_label = damaged
    with pytest.raises(VOCError, match=bad_size.name):
        check_items(voc_items(tree, "train"), skip_bad=False)
    with pytest.raises(VOCError, match=rf"{bad_label.name}.*labels \[50\]"):
        check_items(voc_items(tree, "val"), skip_bad=False)
    good, skipped = check_items(voc_items(tree, "train") + voc_items(tree, "val"), skip_bad=True)
    assert len(good) == 38 and len(skipped) == 2
    assert any(bad_size.name in s for s in skipped) and any(bad_label.name in s for s in skipped)


def test_cli_names_the_bad_mask(damaged: tuple[Path, Path, Path], tmp_path: Path) -> None:
    args = ["transfer", "--task", "seg", "--voc-root", str(damaged[0]), "--weights", "random"]
    with pytest.raises(SystemExit, match=damaged[1].name):
        bench([*args, "--out", str(tmp_path), "--preset", "smoke"])
    assert not list(tmp_path.glob("*.json"))  # nothing written by a run that stopped


def test_smoke_training_writes_a_valid_record(smoke_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _record(smoke_run)
    assert rec["task"] == "seg" and rec["primary_metric"] == "mIoU" and rec["protocol"]["id"] == "fcn32s-voc2012"
    assert rec["dataset"] == "VOC2012" and rec["train_split"] == "train+sbd" and rec["eval_split"] == "val"
    assert rec["extra"]["sbd"] == {"added": 1, "removed_in_eval_split": 1}
    assert 0.0 <= rec["metrics"]["mIoU"] <= 100.0 and rec["metrics"]["pixel_acc"] > 0
    assert rec["skipped"]["count"] == 2
    assert rec["extra"]["train_images"] == 20 and rec["extra"]["eval_images"] == 19
    hist = np.array(rec["extra"]["confusion_matrix"])
    assert hist.shape == (21, 21) and hist.sum() == rec["extra"]["labelled_pixels"] > 0
    assert set(rec["per_class"]["IoU"]) <= set(SEG_CLASSES)
    assert set(rec["per_class"]["IoU"]) | set(rec["extra"]["absent_classes"]) == set(SEG_CLASSES)
    assert rec["config"]["iterations"] == 2 and rec["config"]["fc_width"] == 256
    log = [json.loads(line) for line in (smoke_run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == 2 and np.isfinite(log[-1]["loss"])
    preds = sorted((smoke_run / "predictions").glob("*.png"))
    assert len(preds) == 19
    ydir = resolve_year_dir(Path(rec["config"]["voc_root"]), "2012")
    with Image.open(preds[0]) as p, Image.open(ydir / "JPEGImages" / f"{preds[0].stem}.jpg") as im:
        assert p.mode == "P" and p.size == im.size
    assert (smoke_run / "fcn.safetensors").is_file()
    rescale = rec["weights"]["rescale"]  # --rescale: the trunk's conv layers were rescaled on training images
    assert rescale["scope"].startswith("trunk conv1..conv5 + fc6, fc7") and rescale["images"] == 16
    assert len(rescale["weight_scale"]) == 7 and any(abs(s - 1.0) > 1e-3 for s in rescale["weight_scale"])


def _varied_fcn(path: Path) -> Path:
    """An FCN whose predictions vary from pixel to pixel (He-normal weights, zero biases), so that the comparison
    below is of many per-pixel decisions, not of an all-background map."""
    torch.manual_seed(0)
    model = build_fcn(alexnet_trunk(), fc_channels=256)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                torch.nn.init.zeros_(m.bias)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_two_process_torchrun_gives_the_same_miou(
    damaged: tuple[Path, Path, Path], tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """The same weights evaluated by 1 process and by 2 gloo ranks (which first run one DDP training step at lr 0,
    leaving the weights unchanged): the all-reduced confusion matrix must equal the single-process one exactly.
    Both run as subprocesses with one thread each, so every per-pixel decision is computed identically."""
    fcn = _varied_fcn(tmp_path / "varied.safetensors")
    common = ["transfer", "--task", "seg", "--voc-root", str(damaged[0]), "--weights", "random", "--preset", "smoke"]
    common += ["--skip-bad", "--device", "cpu", "--fcn-weights", str(fcn)]
    single = [sys.executable, "-m", "benchmarks.cli", *common, "--out", str(tmp_path / "one"), "--iterations", "0"]
    proc = subprocess.run(single, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = _record(tmp_path / "one")
    assert one["train_split"] is None and one["extra"]["train"]["iterations"] == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["benchmarks.cli", *common, "--out", str(tmp_path / "two"), "--iterations", "1", "--lr", "0"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _record(tmp_path / "two")
    assert two["extra"]["world_size"] == 2 and one["extra"]["world_size"] == 1
    hist = np.array(one["extra"]["confusion_matrix"])
    assert (hist.sum(0) > 0).sum() >= 3  # several predicted classes
    assert two["extra"]["confusion_matrix"] == one["extra"]["confusion_matrix"]
    assert two["metrics"]["mIoU"] == one["metrics"]["mIoU"]
    assert "mIoU" in proc.stdout
