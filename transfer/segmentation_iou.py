"""Semantic-segmentation metrics from a confusion matrix, as the FCN evaluation code computes them.

The FCN reference scorer (Long et al., ``fcn.berkeleyvision.org/score.py``) accumulates one confusion matrix over
every labelled pixel of the split (``hist[gt, pred]``; pixels labelled 255 are ignored) and derives

- pixel accuracy      ``diag.sum() / hist.sum()``
- mean accuracy       ``nanmean(diag / hist.sum(1))``
- per-class IoU       ``diag / (hist.sum(1) + hist.sum(0) - diag)``
- mean IoU            ``nanmean(IoU)``: a class absent from both the truth and the prediction has 0/0 = NaN and is
  left out of the mean (a class present in the prediction only has IoU 0 and counts)
- frequency-weighted IoU ``sum(freq * IoU)`` over classes with ``freq = hist.sum(1) / hist.sum()``.

Values are returned as fractions in [0, 1]; run records store them as percentages (``transfer.records``).
"""

from __future__ import annotations

import numpy as np
import torch

from transfer.voc import IGNORE_LABEL


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_label: int = IGNORE_LABEL
) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows = truth, columns = prediction.

    pred, target: integer tensors of the same shape (any). Target pixels equal to ``ignore_label`` are not counted;
    any other target value outside ``0..num_classes-1`` is an error (masks are validated when loaded).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_label
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target labels outside 0..{num_classes - 1} and {ignore_label}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted labels outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def per_class_iou(hist: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU of each class (NaN where the class is absent from both truth and prediction)."""
    h = np.asarray(hist, dtype=np.float64)
    diag = np.diag(h)
    union = h.sum(1) + h.sum(0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return diag / union


def segmentation_scores(hist: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``pixel_acc``, ``mean_acc``, ``mIoU`` and ``fwIoU`` (fractions) of a confusion matrix (rows = truth).

    NaN classes are left out of the means as ``np.nanmean`` does in the FCN scorer. An empty matrix (no labelled
    pixel at all) is an error: there is nothing to score.
    """
    h = np.asarray(hist, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {h.shape}")
    total = h.sum()
    if total <= 0:
        raise ValueError("confusion matrix is empty: no labelled pixel was scored")
    diag = np.diag(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = diag / h.sum(1)
    iou = per_class_iou(h)
    freq = h.sum(1) / total
    present = ~np.isnan(iou)
    return {
        "pixel_acc": float(diag.sum() / total),
        "mean_acc": float(np.nanmean(class_acc)) if np.any(~np.isnan(class_acc)) else float("nan"),
        "mIoU": float(np.mean(iou[present])),
        "fwIoU": float(np.sum(freq[present] * iou[present])),
    }
