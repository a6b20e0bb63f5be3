"""FCN segmentation: IoU metrics, the model's output size and alignment, loss, training step, seeded training items
(unit tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.distributed import init_distributed
from pretrain.models.alexnet import alexnet_trunk
from pretrain.sampling import SampleKey
from transfer.segmentation.data import SegmentationDataset, voc_items
from transfer.segmentation.model import bilinear_kernel, bilinear_upsampling, build_fcn
from transfer.segmentation.train import (
    NonFiniteLossError,
    build_optimizer,
    segmentation_loss,
    train_fcn,
    train_step,
)
from transfer.segmentation_iou import confusion_matrix, per_class_iou, segmentation_scores

# ---------------------------------------------------------------- metrics


def test_scores_on_hand_worked_matrix_with_absent_class() -> None:
    # rows = truth, columns = prediction; class 2 absent from both -> left out of the means (FCN's nanmean)
    hist = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = segmentation_scores(hist)
    iou = per_class_iou(hist)
    assert iou[0] == pytest.approx(3 / 4)  # 3 / (4 + 3 - 3)
    assert iou[1] == pytest.approx(2 / 3)  # 2 / (2 + 3 - 2)
    assert np.isnan(iou[2])
    assert s["mIoU"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s["pixel_acc"] == pytest.approx(5 / 6)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 1) / 2)
    assert s["fwIoU"] == pytest.approx(4 / 6 * 3 / 4 + 2 / 6 * 2 / 3)


def test_class_only_predicted_counts_as_zero() -> None:
    # class 1 never in the truth but predicted once: IoU 0 and it IS in the mean; its accuracy is undefined
    hist = np.array([[2, 1], [0, 0]])
    s = segmentation_scores(hist)
    assert s["mIoU"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["mean_acc"] == pytest.approx(2 / 3)


def test_confusion_matrix_ignores_255_and_rejects_bad_labels() -> None:
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 2, 1], [2, 0, 1]])
    hist = confusion_matrix(pred, target, 3)
    assert hist.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    assert segmentation_scores(hist)["pixel_acc"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, torch.tensor([[0, 7, 1], [2, 2, 1]]), 3)
    with pytest.raises(ValueError, match="empty"):
        segmentation_scores(np.zeros((3, 3)))


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_size_equals_input_size_for_odd_sizes(variant: str) -> None:
    torch.manual_seed(0)
    model = build_fcn(alexnet_trunk(), variant=variant, fc_channels=16).eval()  # type: ignore[arg-type]
    assert model.crop_offset == 18  # the released FCN-AlexNet's crop offset (32s); the skips keep it
    with torch.no_grad():
        for h, w in [(1, 1), (33, 47), (97, 161), (127, 65), (201, 3)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 21, h, w)


def test_bilinear_upsampling_interpolates_exactly() -> None:
    k = bilinear_kernel(5)  # factor 3, odd size: centred, weights 1 - |d|/3
    assert torch.allclose(k[2], torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]))
    up = bilinear_upsampling(2, 4)
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 2, 6, 6).contiguous()
    out = up(ramp)[0, 0]  # input x sits at output 4 * x + 3 (kernel 7, centre 3)
    interior = out[12, 3 : 3 + 4 * 5 + 1]
    assert torch.allclose(interior, torch.arange(21.0) / 4, atol=1e-5)
    assert not up.weight.requires_grad


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_prediction_is_centred_on_the_input(variant: str) -> None:
    """Absolute alignment: with left-right symmetric filters, a correctly centred FCN commutes with a horizontal
    flip whenever every feature grid is symmetric about the image centre. The grids sit at input x = a * k + b with
    (a, b) = (4, -95), (8, -91), (16, -83), (32, 13) (pad 100), all symmetric exactly when W = 27 (mod 32). A crop
    offset wrong by one pixel breaks the equality (checked by hand: max error ~20 instead of ~1e-4)."""
    torch.manual_seed(0)
    model = build_fcn(alexnet_trunk(), variant=variant, fc_channels=32).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, 0.05)
                m.weight.copy_(m.weight + m.weight.flip(-1))
                m.bias.normal_(0.0, 0.01)  # type: ignore[union-attr]
        x = torch.randn(1, 3, 37, 59)  # 59 = 27 + 32
        out = model(x)
        flipped = model(x.flip(-1)).flip(-1)
        assert out.abs().max() > 10
        assert torch.allclose(out, flipped, atol=1e-4 * out.abs().max().item())
        x = torch.randn(1, 3, 37, 60)  # asymmetric grid: the flip no longer commutes (the test can fail)
        assert not torch.allclose(model(x), model(x.flip(-1)).flip(-1), atol=1e-2)


def test_loss_normalization() -> None:
    scores = torch.randn(2, 3, 4, 5)
    masks = torch.randint(0, 3, (2, 4, 5))
    masks[0, 0, :] = 255
    valid = segmentation_loss(scores, masks, "valid")
    summed = segmentation_loss(scores, masks, "none")
    ce = torch.nn.functional.cross_entropy(scores, masks, ignore_index=255, reduction="none")
    assert valid.item() == pytest.approx(((ce[0].sum() / 15 + ce[1].sum() / 20) / 2).item(), rel=1e-5)
    assert summed.item() == pytest.approx((ce.sum() / 2).item(), rel=1e-5)


def test_train_step_updates_weights_and_keeps_upsampling_frozen() -> None:
    torch.manual_seed(0)
    model = build_fcn(alexnet_trunk(), variant="16s", fc_channels=16)
    opt = build_optimizer(model, lr=1e-2, momentum=0.9, weight_decay=5e-4)
    assert opt.param_groups[1]["lr"] == pytest.approx(2e-2)  # score biases: FCN's lr_mult 2, decay 0
    assert opt.param_groups[1]["weight_decay"] == 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = [
        (torch.randn(3, 37, 53), torch.randint(0, 21, (37, 53)), "a"),
        (torch.randn(3, 41, 29), torch.randint(0, 21, (41, 29)), "b"),  # another size: forwarded separately
    ]
    loss = train_step(model, opt, samples)
    assert np.isfinite(loss) and loss == pytest.approx(np.log(21), rel=1e-4)  # zero-initialised scores
    after = model.state_dict()
    assert not torch.equal(before["score_fr.bias"], after["score_fr.bias"])
    assert not torch.equal(before["fc6.weight"], after["fc6.weight"])
    assert torch.equal(before["upscore.weight"], after["upscore.weight"])
    assert torch.equal(before["up_skips.0.weight"], after["up_skips.0.weight"])


def test_training_items_take_flip_and_crop_from_the_key(voc_root: Path) -> None:
    items = voc_items(voc_root, "train")[:2]
    ds = SegmentationDataset(items, train=True, input_norm="minus1to1", flip=True, crop_size=32)
    views = [ds[SampleKey(1, 0, seed)] for seed in range(8)]
    x, mask, image_id = views[0]
    assert x.shape == (3, 32, 32) and mask.shape == (32, 32) and image_id == items[1].image_id
    again = ds[SampleKey(1, 0, 0)]
    assert torch.equal(again[0], x) and torch.equal(again[1], mask)  # a key is one augmentation
    assert len({v[0].sum().item() for v in views}) > 1  # other seeds, other crops / flips
    with pytest.raises(TypeError, match="sampler keys"):
        ds[0]
    evaluation = SegmentationDataset(items, train=False, input_norm="minus1to1")
    assert evaluation[1][0].shape[1:] == evaluation[1][1].shape  # whole image, by position


# ---------------------------------------------------------------- data


def test_non_finite_loss_stops_training(voc_root: Path) -> None:
    model = build_fcn(alexnet_trunk(), fc_channels=8)
    ds = SegmentationDataset(voc_items(voc_root, "train")[:2], train=True)
    with pytest.raises(NonFiniteLossError, match="at iteration"):
        train_fcn(
            model, ds, ctx=init_distributed("cpu"), iterations=4, batch_size=1, lr=1e30, momentum=0.9,
            weight_decay=0.0, normalization="none", progress=False,
        )  # fmt: skip


_FAIL_WITH_A_WORKER = """
import sys
from pretrain.distributed import init_distributed
from pretrain.models.alexnet import alexnet_trunk
from transfer.segmentation.data import SegmentationDataset, voc_items
from transfer.segmentation.model import build_fcn
from transfer.segmentation.train import train_fcn

ds = SegmentationDataset(voc_items(sys.argv[1], "train")[:2], train=True)
train_fcn(
    build_fcn(alexnet_trunk(), fc_channels=8), ds, ctx=init_distributed("cpu"), iterations=4, batch_size=1,
    lr=1e30, momentum=0.9, weight_decay=0.0, normalization="none", workers=1, progress=False,
)
"""


def test_a_training_error_with_loader_workers_ends_the_process(
    voc_root: Path, tmp_path: Path, subprocess_env: dict
) -> None:
    """An error that leaves train_fcn uncaught (library use) must not leave the process waiting for its DataLoader
    worker at exit: the workers ignore SIGTERM (preemption), so they must be shut down with the loader, not by
    multiprocessing's exit handler."""
    import subprocess
    import sys

    script = tmp_path / "fail.py"
    script.write_text(_FAIL_WITH_A_WORKER)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(voc_root)], env=subprocess_env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the process did not exit after the training error (waiting for its worker)") from exc
    assert proc.returncode == 1 and "NonFiniteLossError" in proc.stderr, proc.stderr[-2000:]
