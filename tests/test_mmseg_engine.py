"""The mmsegmentation engine of the segmentation protocol (``--engine mmseg``) and ``bench export --format mmseg``.

Without mmseg installed: ``--engine mmseg`` stops with one line saying how to install it (checked in a subprocess
whose import system refuses mmseg/mmcv/mmengine). With it: the mmseg model computes the native FCN's scores from the
same weights; mmseg's ``IoUMetric`` and the suite's metric agree on the same predictions; a smoke run writes a valid
record; the export loads strictly into the model its config builds; the engine fits a small training set (learning);
and, at the ``cpu`` preset on the demo tree, both engines reach the same mIoU within the tolerance that
docs/protocols/segmentation.md states (slow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.cli import main as bench
from transfer.records import read_record, validate_record
from transfer.voc import IGNORE_LABEL

HAVE_MMSEG = all(importlib.util.find_spec(m) is not None for m in ("mmseg", "mmcv", "mmengine"))
needs_mmseg = pytest.mark.skipif(
    not HAVE_MMSEG, reason="mmsegmentation, mmcv and mmengine are not installed (README: the mmseg engine)"
)
CPU = torch.device("cpu")
#: |native - mmseg| val mIoU allowed at the cpu preset on the demo tree (docs/protocols/segmentation.md says why)
AGREEMENT_TOLERANCE = 3.0

BLOCKER = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmseg', 'mmcv', 'mmengine'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
from benchmarks.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_engine_without_mmseg_is_a_one_line_error(voc_root: Path, tmp_path: Path, subprocess_env: dict) -> None:
    args = ["transfer", "--task", "seg", "--engine", "mmseg", "--preset", "smoke", "--voc-root", str(voc_root)]
    args += ["--weights", "random", "--out", str(tmp_path / "run"), "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], env=subprocess_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--engine mmseg needs mmsegmentation" in lines[0] and "pip install" in lines[0]
    assert not list((tmp_path / "run").glob("*.json"))


def test_export_without_mmseg_is_an_error(tmp_path: Path, subprocess_env: dict) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "export", str(tmp_path), "--format", "mmseg"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "pip install" in proc.stderr


# ------------------------------------------------------------------------------------------------ with mmseg
def _varied_fcn(fc_channels: int = 64, seed: int = 0) -> Any:
    """A native FCN-32s with a non-zero score layer, so that its predictions vary between pixels."""
    from transfer.segmentation.model import build_fcn
    from transfer.weights import load_alexnet_trunk

    trunk, _ = load_alexnet_trunk("random", seed=seed)
    fcn = build_fcn(trunk, fc_channels=fc_channels, seed=seed)
    with torch.no_grad():
        for m in fcn.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                torch.nn.init.zeros_(m.bias)  # type: ignore[arg-type]
    return fcn.eval()


@needs_mmseg
def test_mmseg_model_gives_the_native_scores(voc_root: Path) -> None:
    from mmengine.dataset import pseudo_collate

    from transfer.segmentation import mmseg_engine as E
    from transfer.segmentation.data import SegmentationDataset, voc_items

    E.require_mmseg()
    fcn = _varied_fcn()
    model = E.build_model(E.model_config(fc_width=64)).eval()
    model.load_state_dict(E.native_to_mmseg_state(fcn.state_dict()), strict=True)
    items = voc_items(voc_root, "val")[:3]
    mm_items = E.PipelineItems(items, E.pipeline_config(train=False))
    native_items = SegmentationDataset(items, train=False)
    with torch.no_grad():
        for k in range(len(items)):
            (result,) = model.test_step(pseudo_collate([mm_items[k]]))
            image, _, _ = native_items[k]
            native = fcn(image[None])[0]
            mm = result.seg_logits.data
            assert mm.shape == native.shape  # scores on the input grid, no resize
            assert torch.allclose(mm, native, atol=1e-4 * float(native.abs().max()))
            agree = (result.pred_sem_seg.data[0] == native.argmax(0)).float().mean()
            assert agree > 0.999 and float(native.std()) > 0  # scores vary over the image


@needs_mmseg
def test_iou_metric_agrees_with_the_suite_on_the_same_predictions() -> None:
    """The same predictions and masks: mmseg's per-class areas equal the suite's confusion-matrix sums exactly, its
    summary (2 decimals) is the suite's mIoU / pixel / mean accuracy rounded, classes absent from both count as
    NaN in both, and a class only predicted has IoU 0 in both."""
    from mmseg.evaluation import IoUMetric

    from transfer.segmentation import mmseg_engine as E
    from transfer.segmentation_iou import confusion_matrix, per_class_iou, segmentation_scores

    E.require_mmseg()
    gen = torch.Generator().manual_seed(0)
    metric = E.iou_metric()
    hist = torch.zeros(21, 21, dtype=torch.int64)
    for k in range(6):
        h, w = 90 + 7 * k, 120 - 5 * k
        truth = torch.randint(0, 12, (h, w), generator=gen)  # classes 12..20 never in the truth
        truth[torch.rand(h, w, generator=gen) < 0.1] = IGNORE_LABEL
        pred = torch.where(torch.rand(h, w, generator=gen) < 0.6, truth.clamp(max=11), torch.randint(0, 14, (h, w)))
        hist += confusion_matrix(pred, truth, 21)
        sample = {"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": truth[None]}}
        metric.process({}, [sample])
    areas = [torch.stack([r[i] for r in metric.results]).sum(0) for i in range(4)]
    inter, union, pred_area, label_area = areas
    hd = hist.double()
    assert torch.equal(inter.double(), torch.diag(hd))
    assert torch.equal(label_area.double(), hd.sum(1)) and torch.equal(pred_area.double(), hd.sum(0))
    assert torch.equal(union.double(), hd.sum(1) + hd.sum(0) - torch.diag(hd))
    mm_iou = (inter.double() / union.double()).numpy()
    suite_iou = per_class_iou(hist)
    assert np.array_equal(np.isnan(mm_iou), np.isnan(suite_iou)) and np.isnan(suite_iou[14:]).all()
    assert suite_iou[12] == mm_iou[12] == 0.0  # predicted, never true
    assert np.array_equal(mm_iou[~np.isnan(mm_iou)], suite_iou[~np.isnan(suite_iou)])
    summary = metric.compute_metrics(metric.results)
    suite = segmentation_scores(hist)
    for mm_name, name in (("mIoU", "mIoU"), ("aAcc", "pixel_acc"), ("mAcc", "mean_acc")):
        assert float(summary[mm_name]) == pytest.approx(round(100 * suite[name], 2), abs=1e-4)
    assert isinstance(metric, IoUMetric)


@pytest.fixture(scope="module")
def mmseg_smoke_run(voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_MMSEG:
        pytest.skip("mmsegmentation, mmcv and mmengine are not installed (README: the mmseg engine)")
    out = tmp_path_factory.mktemp("mmseg-smoke")
    args = ["transfer", "--task", "seg", "--engine", "mmseg", "--preset", "smoke", "--voc-root", str(voc_root)]
    args += ["--weights", "random", "--out", str(out), "--device", "cpu", "--iterations", "3", "--rescale"]
    args += ["--save-model", "--save-predictions", "--workers", "1"]
    assert bench(args) == 0
    return out


@needs_mmseg
def test_smoke_mmseg_run_writes_a_valid_record(mmseg_smoke_run: Path) -> None:
    (path,) = mmseg_smoke_run.glob("seg_*.json")
    rec = read_record(path)
    assert validate_record(rec) == []
    assert rec["protocol"]["id"] == "fcn32s-voc2012-mmseg" and rec["config"]["engine"] == "mmseg"
    assert rec["extra"]["engine"]["name"] == "mmseg" and rec["extra"]["engine"]["versions"]["mmseg"]
    assert rec["train_split"] == "train" and rec["eval_split"] == "val" and rec["config"]["iterations"] == 3
    assert rec["extra"]["train_images"] == 20 and rec["extra"]["eval_images"] == 20
    hist = np.array(rec["extra"]["confusion_matrix"])
    assert hist.shape == (21, 21) and hist.sum() == rec["extra"]["labelled_pixels"] > 0
    assert rec["extra"]["crop_offset"] == 18 and rec["weights"]["rescale"]["images"] == 16
    mm = rec["extra"]["mmseg_iou_metric"]  # IoUMetric on the same predictions, beside the suite's metrics
    assert mm["mIoU"] == pytest.approx(round(rec["metrics"]["mIoU"], 2), abs=1e-4)
    assert mm["aAcc"] == pytest.approx(round(rec["metrics"]["pixel_acc"], 2), abs=1e-4)
    log = [json.loads(line) for line in (mmseg_smoke_run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == 3 and np.isfinite(log[-1]["loss"])
    assert len(list((mmseg_smoke_run / "predictions").glob("*.png"))) == 20


def _strict_build_and_load(folder: Path) -> Any:
    """What an mmseg user does with the export: build from the config, load the checkpoint strictly."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(folder / "fcn32s_alexnet.py"))
    model = MODELS.build(cfg.model)
    ckpt = torch.load(folder / "fcn32s_alexnet.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()


@needs_mmseg
def test_export_of_a_seg_run_loads_strictly_and_predicts_as_trained(
    mmseg_smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from transfer.segmentation.mmseg_engine import native_to_mmseg_state

    assert bench(["export", str(mmseg_smoke_run), "--format", "mmseg", "--output", str(tmp_path / "mm")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trained"] == "True" and printed["fc_width"] == "256"
    model = _strict_build_and_load(tmp_path / "mm")
    trained = native_to_mmseg_state(load_file(str(mmseg_smoke_run / "fcn.safetensors")))
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key


@needs_mmseg
def test_export_of_pretrained_weights_loads_strictly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from pretrain.models.alexnet import alexnet_trunk

    run = tmp_path / "pretrain-run"
    run.mkdir()
    trunk = alexnet_trunk()
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(run / "encoder.safetensors"))
    assert bench(["export", str(run), "--format", "mmseg"]) == 0
    model = _strict_build_and_load(run / "mmseg")
    for key, value in trunk.state_dict().items():
        assert torch.equal(model.state_dict()[f"backbone.features.{key}"], value)
    assert model.decode_head.fc6.out_channels == 4096
    assert float(model.decode_head.conv_seg.weight.detach().abs().sum()) == 0.0  # the protocol's zero score layer


def test_export_names_a_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not HAVE_MMSEG:
        pytest.skip("mmsegmentation, mmcv and mmengine are not installed (README: the mmseg engine)")
    assert bench(["export", str(tmp_path / "missing"), "--format", "mmseg"]) == 1
    err = capsys.readouterr().err
    assert "bench export: error:" in err and "missing" in err


# ---------------------------------------------------------------------------------------------------- learning
@needs_mmseg
@pytest.mark.learning
@pytest.mark.slow  # a few minutes on 2 cores, as the native FCN's learning check
def test_mmseg_engine_fits_its_training_set(fit_tree: Path, tmp_path: Path) -> None:
    """tests/test_learning.py's FCN-32s check on the same tree and settings: a rescaled random trunk, 600 updates of
    4 images at lr 0.02, fc6/fc7 256 wide, bf16, the 24 VOC2012 train images scored on themselves (mIoU over the
    classes present >= 50)."""
    from transfer.config import TransferRun
    from transfer.segmentation import mmseg_engine as E
    from transfer.segmentation.config import SegmentationConfig
    from transfer.segmentation.data import check_items, voc_items
    from transfer.segmentation_iou import per_class_iou

    root = fit_tree
    E.require_mmseg()
    items, _ = check_items(voc_items(root, "train"), skip_bad=False)
    cfg = SegmentationConfig(
        iterations=600, batch_size=4, lr=0.02, fc_width=256, rescale=True, precision="bf16", workers=0,
        progress=False, input_norm="minus1to1", engine="mmseg",
    )  # fmt: skip
    run = TransferRun(voc_root=str(root), weights="random", out=str(tmp_path / "run"))
    torch.manual_seed(0)
    fcn, _, _ = E._initial_fcn(cfg, run, items)
    model = E.build_model(E.model_config(fc_width=256))
    model.load_state_dict(E.native_to_mmseg_state(fcn.state_dict()), strict=True)
    (tmp_path / "run").mkdir()
    E.train_mmseg(model, items, cfg, CPU, tmp_path / "run" / "train_log.jsonl", seed=run.seed)
    hist, _ = E.evaluate_mmseg(model, items, cfg, CPU, tmp_path / "run")
    h = np.asarray(hist)
    present = h.sum(axis=1) > 0
    miou = 100.0 * float(np.mean(per_class_iou(h)[present]))
    print(f"\n[learning] mmseg FCN-32s, 24 train images, 600 it: train mIoU {miou:.1f} over {present.sum()} classes")
    assert miou >= 50.0


# --------------------------------------------------------------------------------------------------- agreement
def _demo_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's VOC tree (``bench demo``'s cache when it is there, else made with the same settings)."""
    from benchmarks.commands.demo import (
        DATA_VERSION,
        VOC_IMAGE_SIZE,
        VOC_SPLITS_2007,
        VOC_SPLITS_2012,
        _default_cache,
    )
    from benchmarks.demo_data import make_voc_tree

    cache = Path(_default_cache())
    if (cache / f"complete-v{DATA_VERSION}").exists():
        return cache / "voc"
    root = tmp_path_factory.mktemp("demo") / "voc"
    return make_voc_tree(
        root, splits_2007=VOC_SPLITS_2007, splits_2012=VOC_SPLITS_2012, image_size=VOC_IMAGE_SIZE, seed=0
    )


@needs_mmseg
@pytest.mark.slow  # two cpu-preset segmentation runs (tens of minutes on 2 busy cores)
def test_engines_agree_at_the_cpu_preset(
    tmp_path_factory: pytest.TempPathFactory, subprocess_env: dict[str, str]
) -> None:
    voc = _demo_voc(tmp_path_factory)
    out = tmp_path_factory.mktemp("agree")
    miou = {}
    for engine in ("native", "mmseg"):
        cmd = [sys.executable, "-m", "benchmarks.cli", "transfer", "--task", "seg", "--engine", engine]
        cmd += ["--preset", "cpu", "--voc-root", str(voc), "--weights", "random", "--seed", "0", "--device", "cpu"]
        cmd += ["--variant", "32s", "--out", str(out / engine)]  # the cpu preset's 8s is native only
        env = {**subprocess_env, "OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1))}
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=7200)
        (path,) = (out / engine).glob("seg_*.json")
        miou[engine] = read_record(path)["metrics"]["mIoU"]
    print(f"\n[agreement] cpu preset with FCN-32s, demo tree, random weights, seed 0: {miou}")
    assert abs(miou["native"] - miou["mmseg"]) <= AGREEMENT_TOLERANCE
