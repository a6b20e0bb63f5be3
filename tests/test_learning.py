"""Learning checks: every harness fits a small training set far above chance, with real training steps on a real
VOC-layout tree (JPEG, XML, PNG files made by ``benchmarks.demo_data``).

A harness that is broken (a sign error in a loss, a zero learning rate, labels shuffled against images, an
evaluation that reads the wrong scores) stays at chance and fails here; one that is merely undertrained at CPU scale
still fits a few dozen images. Each check prints its figure (run with ``-s`` to see them), and ``pytest -m learning``
selects them all, including the long ones marked ``slow``.

The checks call the protocol's library functions directly, because the commands rightly refuse to evaluate on the
training split. They use the protocol's code paths unchanged and only size the run: a small tree, narrow fc layers,
no scale augmentation where the check is about fitting, and Krähenbühl's between-layer rescaling of the random
Gaussian trunk, without which that trunk does not train at all at these iteration counts (measured: Fast R-CNN
train-set mAP 0.4 without it and 26.6 with it after 2,000 iterations on 150 images; docs/protocols/cpu-preset.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pretrain.sampling import IterationBatchSampler
from tests.conftest import fit_detection_split

pytestmark = pytest.mark.learning

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------ classification
def _fit_classifier(root: Path, iterations: int, lr: float, seed: int = 0) -> tuple[object, float]:
    """Fine-tune a rescaled random trunk on VOC2007 train and score it on the same images (1 centre crop)."""
    from transfer.classification import (
        ClassificationConfig,
        VOCClassificationEval,
        VOCClassificationTrain,
        build_classifier,
        evaluate,
        finetune,
        load_classification_items,
        rescale_for_finetuning,
    )
    from transfer.classification_ap import mean_average_precision
    from transfer.voc import VOC_CLASSES, resolve_year_dir
    from transfer.weights import load_alexnet_trunk

    torch.manual_seed(seed)
    items, _ = load_classification_items(resolve_year_dir(root, "2007"), "train", VOC_CLASSES)
    cfg = ClassificationConfig(
        iterations=iterations,
        batch_size=16,
        lr=lr,
        lr_step=10**9,
        crop_size=128,
        min_scale=1.0,
        max_scale=1.0,
        fc_width=512,
        eval_crops=0,
        precision="bf16",
        input_norm="minus1to1",
    )
    trunk, _ = load_alexnet_trunk("random", seed=seed)
    model = build_classifier(trunk, len(VOC_CLASSES), cfg, seed)
    model.set_trainable("all")
    dataset = VOCClassificationTrain(items, cfg)
    loader = DataLoader(dataset, batch_sampler=IterationBatchSampler(len(items), 16, 0, iterations, seed))
    first = DataLoader(dataset, batch_sampler=IterationBatchSampler(len(items), 16, 0, 2, seed))
    rescale_for_finetuning(model, torch.cat([images for images, _ in first]), cfg, seed)
    finetune(model, loader, cfg, CPU)
    scores, _, labels = evaluate(model, DataLoader(VOCClassificationEval(items, cfg, seed), batch_size=8), CPU, "bf16")
    m, _, _ = mean_average_precision(scores, labels, VOC_CLASSES, "sklearn")
    return model, 100.0 * m


def _chance_map(root: Path, split: str = "train") -> float:
    """mAP of constant scores (every image tied): the positive rate of each class, averaged."""
    from transfer.classification import load_classification_items
    from transfer.classification_ap import mean_average_precision
    from transfer.voc import VOC_CLASSES, resolve_year_dir

    items, _ = load_classification_items(resolve_year_dir(root, "2007"), split, VOC_CLASSES)
    labels = np.stack([i.labels for i in items]).astype(np.int64)
    m, _, _ = mean_average_precision(np.zeros(labels.shape), labels, VOC_CLASSES, "sklearn")
    return 100.0 * m


@pytest.fixture(scope="module")
def fitted_classifier(fit_tree: Path) -> tuple[object, float]:
    """The classification check's network (also the trained encoder of the SVM check) and its train mAP."""
    return _fit_classifier(fit_tree, iterations=300, lr=0.003)


def test_classification_fits_its_training_set(fit_tree: Path, fitted_classifier: tuple[object, float]) -> None:
    train_map = fitted_classifier[1]
    chance = _chance_map(fit_tree)
    print(f"\n[learning] cls fine-tuning, 32 train images, 300 it: train mAP {train_map:.1f} (chance {chance:.1f})")
    assert train_map >= 90.0


def test_classification_check_fails_without_learning(fit_tree: Path) -> None:
    """The check above can fail: with a zero learning rate the same run stays near chance."""
    _, train_map = _fit_classifier(fit_tree, iterations=20, lr=0.0)
    print(f"\n[learning] cls fine-tuning at lr 0: train mAP {train_map:.1f}")
    assert train_map < 60.0


# ------------------------------------------------------------------------------------------------------ detection
def _fit_fast_rcnn(root: Path, work: Path, iterations: int, lr: float, seed: int = 0) -> float:
    """Fast R-CNN on a rescaled random trunk: selective-search proposals from the real proposal code (the
    ground-truth boxes join them in training, as Fast R-CNN's roidb does), trained on VOC2007 train and scored by
    VOC07 AP on the same images."""
    from transfer.detection.config import DetectionConfig
    from transfer.detection.data import (
        DetectionTrainSet,
        RoISampler,
        collate_detection,
        train_views,
    )
    from transfer.detection.evaluate import EvalConfig, evaluate
    from transfer.detection.model import FastRCNN, freeze_trunk, rescale_fast_rcnn
    from transfer.detection.train import train
    from transfer.engine import caffe_param_groups
    from transfer.voc import VOC_CLASSES
    from transfer.weights import load_alexnet_trunk

    torch.manual_seed(seed)
    usable, images = fit_detection_split(root, work)
    sampler = RoISampler(rois_per_image=64)
    trunk, _ = load_alexnet_trunk("random", seed=seed)
    model = FastRCNN(trunk, hidden=512, seed=seed)
    rescale_fast_rcnn(model, [im.path for im in usable], "minus1to1", seed=seed)
    freeze_trunk(model, "conv1")
    cfg = DetectionConfig(iterations=iterations, lr=lr, lr_step=int(iterations * 0.75), precision="bf16")
    optimizer = torch.optim.SGD(caffe_param_groups(model, lr, cfg.weight_decay), lr=lr, momentum=cfg.momentum)
    loader = DataLoader(
        DetectionTrainSet(usable, 160, 267, "minus1to1", sampler),
        batch_sampler=IterationBatchSampler(len(usable), 2, 0, iterations, seed, views=train_views(flip=True)),
        collate_fn=collate_detection,
    )
    train(model, loader, optimizer, cfg, CPU, progress=False)
    test_cfg = EvalConfig(scale=160, max_size=267, score_threshold=0.0, precision="bf16")
    result, _ = evaluate(model, images, list(VOC_CLASSES), test_cfg, CPU, progress=False)
    return float(result["mAP"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- segmentation
def _fit_fcn(root: Path, variant: str, iterations: int, lr: float, seed: int = 0) -> tuple[float, int]:
    """FCN on a rescaled random trunk, trained on VOC2012 train and scored on the same images; returns the mean IoU
    over the classes present in the ground truth (background included) and how many there are."""
    from pretrain.distributed import DistributedContext
    from transfer.segmentation.data import SegmentationDataset, check_items, voc_items
    from transfer.segmentation.evaluate import evaluate_fcn
    from transfer.segmentation.model import build_fcn, rescale_fcn
    from transfer.segmentation.train import train_fcn
    from transfer.segmentation_iou import per_class_iou
    from transfer.voc import SEG_CLASSES
    from transfer.weights import load_alexnet_trunk

    torch.manual_seed(seed)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=CPU)
    items, _ = check_items(voc_items(root, "train"), skip_bad=False)
    trunk, _ = load_alexnet_trunk("random", seed=seed)
    model = build_fcn(trunk, variant=variant, num_classes=len(SEG_CLASSES), fc_channels=256, seed=seed)  # type: ignore[arg-type]
    rescale_fcn(model, [i.image for i in items], "minus1to1", seed=seed)
    train_fcn(
        model, SegmentationDataset(items, train=True, input_norm="minus1to1", flip=True), ctx=ctx,
        iterations=iterations, batch_size=4, lr=lr, momentum=0.9, weight_decay=5e-4, normalization="valid",
        precision="bf16", workers=0, seed=seed, progress=False,
    )  # fmt: skip
    hist = evaluate_fcn(
        model, SegmentationDataset(items, train=False, input_norm="minus1to1"), ctx=ctx,
        num_classes=len(SEG_CLASSES), precision="bf16", workers=0, progress=False,
    )  # fmt: skip
    counts = np.asarray(hist)
    present = counts.sum(axis=1) > 0
    return 100.0 * float(np.mean(per_class_iou(counts)[present])), int(present.sum())


def test_fast_rcnn_fits_its_training_set(fit_tree: Path, tmp_path: Path) -> None:
    train_map = _fit_fast_rcnn(fit_tree, tmp_path, iterations=600, lr=0.01)
    print(f"\n[learning] Fast R-CNN, 32 train images, 600 it: train VOC07 mAP {train_map:.1f}")
    assert train_map >= 50.0


@pytest.mark.slow  # about 3 minutes per variant on 2 cores
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_fcn_fits_its_training_set(fit_tree: Path, variant: str) -> None:
    miou, present = _fit_fcn(fit_tree, variant, iterations=600, lr=0.02)
    print(f"\n[learning] FCN-{variant}, 24 train images, 600 it: train mIoU {miou:.1f} over {present} classes present")
    assert miou >= 50.0


# -------------------------------------------------------------------------------------------------------- SVM probe
def _probe_map(trunk: torch.nn.Sequential, root: Path, layer: str = "conv5") -> float:
    """VOC07 SVM probe of ``trunk``'s ``layer``: VOC2007 train -> test of the fit tree, mAP in %."""
    from transfer.classification import load_classification_items
    from transfer.svm_probe import SVMProtocol, VOCCentreCrops, extract_features, probe_layer
    from transfer.voc import VOC_CLASSES, resolve_year_dir

    year_dir = resolve_year_dir(root, "2007")
    protocol = SVMProtocol(costs=(0.01, 0.1, 1.0, 10.0), layers=(layer,), image_size=128)
    feats, labels = {}, {}
    for split in ("train", "test"):
        items, _ = load_classification_items(year_dir, split, VOC_CLASSES)
        loader = DataLoader(VOCCentreCrops(items, protocol.image_size, "minus1to1"), batch_size=16)
        feats[split] = extract_features(trunk, loader, protocol, CPU, "bf16")[layer]
        labels[split] = np.stack([i.labels for i in items])
    aps, _ = probe_layer(feats["train"], labels["train"], feats["test"], labels["test"], VOC_CLASSES, protocol)
    return 100.0 * float(np.nanmean(list(aps.values())))


def test_svm_probe_ranks_a_trained_encoder_above_random_features(
    fit_tree: Path, fitted_classifier: tuple[object, float]
) -> None:
    """The probe must tell features learned on the task's images (the trunk of the classification check above)
    from random-init features of the same architecture, on held-out test images; and even random features, which
    respond to texture, must leave chance behind (a probe that ignores its features would not)."""
    from transfer.weights import load_alexnet_trunk

    trained = _probe_map(fitted_classifier[0].features, fit_tree)  # type: ignore[attr-defined]
    random_map = _probe_map(load_alexnet_trunk("random", seed=0)[0], fit_tree)
    chance = _chance_map(fit_tree, "test")
    print(
        f"\n[learning] svm probe conv5, train -> test: trained encoder {trained:.1f} mAP, random init "
        f"{random_map:.1f}, chance {chance:.1f}"
    )
    assert trained > random_map > chance + 5.0


# --------------------------------------------------------------------------------------------- context encoder
def test_context_encoder_beats_mean_fill_on_held_out_images(tmp_path: Path) -> None:
    """A short context-encoder run predicts the dropped regions of held-out scenes better than filling them with
    each image's mean colour; at its initialisation it does worse."""
    from benchmarks.demo_data import make_scene_folder
    from pretrain.config import PretrainConfig
    from pretrain.data import UnlabeledImageDataset, find_images
    from pretrain.engine import train_one_iteration
    from pretrain.methods import METHODS
    from pretrain.reconstruction_eval import masked_region_errors

    train_dir = make_scene_folder(tmp_path / "train", 64, size=(160, 128), seed=1)
    held_dir = make_scene_folder(tmp_path / "held", 16, size=(160, 128), seed=2)
    cfg = PretrainConfig(
        data=str(train_dir), out=str(tmp_path / "run"), crop_size=128, resize_short=128, batch_size=16, lr=1e-3,
        precision="bf16", iterations=500, seed=0,
    )  # fmt: skip
    method = METHODS["context-encoder"](cfg, CPU)
    train_set = UnlabeledImageDataset(find_images(train_dir), 128, 128)
    held = torch.stack([UnlabeledImageDataset(find_images(held_dir), 128, 128, flip=False)[i] for i in range(16)])
    before = masked_region_errors(method, [held], seed=5)
    loader = DataLoader(
        train_set, batch_size=16, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    it = 0
    while it < cfg.iterations:
        for images in loader:
            train_one_iteration(method, images, cfg, it, 0)
            it += 1
            if it == cfg.iterations:
                break
    after = masked_region_errors(method, [held], seed=5)
    print(
        f"\n[learning] context encoder, 500 it at 128 px: held-out masked L2 {after['l2_network']:.4f} "
        f"(initialisation {before['l2_network']:.4f}), mean fill {after['l2_mean_fill']:.4f}"
    )
    assert before["l2_network"] > before["l2_mean_fill"]
    assert after["l2_network"] < after["l2_mean_fill"]
