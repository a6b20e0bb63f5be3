"""``bench transfer --task seg`` end to end on the VOC-layout fixture: smoke training + evaluation writing a valid
record, bad masks (error naming the file / skipped and counted), and a 2-process torchrun (gloo) evaluation of the
same weights giving the same confusion matrix and mIoU as one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmarks.cli import main as bench
from pretrain.models.alexnet import alexnet_trunk
from transfer.records import read_record
from transfer.segmentation.data import check_items, voc_items
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


@pytest.fixture(scope="module")
def damaged(voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tree = tmp_path_factory.mktemp("seg") / "voc"
    shutil.copytree(voc_root, tree)
    return (tree, *damage_masks(tree))


@pytest.fixture(scope="module")
def smoke_run(damaged: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg_out")
    args = ["transfer", "--task", "seg", "--voc-root", str(damaged[0]), "--weights", "random", "--out", str(out)]
    args += ["--preset", "smoke", "--iterations", "2", "--skip-bad", "--save-fcn", "--save-predictions"]
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
    assert rec["dataset"] == "VOC2012" and rec["train_split"] == "train" and rec["eval_split"] == "val"
    assert 0.0 <= rec["metrics"]["mIoU"] <= 100.0 and rec["metrics"]["pixel_acc"] > 0
    assert rec["skipped"]["count"] == 2
    assert rec["extra"]["train_images"] == 19 and rec["extra"]["eval_images"] == 19
    hist = np.array(rec["extra"]["confusion_matrix"])
    assert hist.shape == (21, 21) and hist.sum() == rec["extra"]["labelled_pixels"] > 0
    assert set(rec["per_class"]["IoU"]) <= set(SEG_CLASSES)
    assert set(rec["per_class"]["IoU"]) | set(rec["extra"]["absent_classes"]) == set(SEG_CLASSES)
    assert rec["config"]["iterations"] == 2 and rec["config"]["fc_channels"] == 256
    log = [json.loads(line) for line in (smoke_run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == 2 and np.isfinite(log[-1]["loss"])
    preds = sorted((smoke_run / "predictions").glob("*.png"))
    assert len(preds) == 19
    ydir = resolve_year_dir(Path(rec["config"]["voc_root"]), "2012")
    with Image.open(preds[0]) as p, Image.open(ydir / "JPEGImages" / f"{preds[0].stem}.jpg") as im:
        assert p.mode == "P" and p.size == im.size
    assert (smoke_run / "fcn.safetensors").is_file()


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
    Both use one thread per process so that every per-pixel decision is computed identically."""
    fcn = _varied_fcn(tmp_path / "varied.safetensors")
    common = ["transfer", "--task", "seg", "--voc-root", str(damaged[0]), "--weights", "random", "--preset", "smoke"]
    common += ["--skip-bad", "--device", "cpu", "--fcn-weights", str(fcn)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench([*common, "--out", str(tmp_path / "one"), "--iterations", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
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
