"""PASCAL VOC detection average precision, computed exactly as the VOC devkit does (and as py-faster-rcnn does).

``VOCevaldet.m`` (VOCdevkit 2007, and the same matching in 2010-2012):

1. all detections of one class over the whole set are sorted by decreasing confidence (MATLAB's ``sort`` is stable,
   so detections with equal scores keep the order in which they were given; we sort with ``kind="stable"``);
2. each detection is assigned to the ground-truth box of its image with the highest IoU (every ground-truth box of
   that class is a candidate, difficult or not, detected already or not);
3. if that IoU is ``>= 0.5`` (the devkit's ``ovmax>=VOCopts.minoverlap``): a difficult ground truth makes the
   detection neither a true nor a false positive; a not yet detected one makes it a true positive (and marks the
   box detected); an already detected one makes it a false positive (a duplicate); below the threshold it is a
   false positive;
4. recall = cumulative TP / number of non-difficult ground-truth boxes; precision = cumulative TP / (TP + FP).

IoU uses the devkit's inclusive pixel convention: a box ``[x1, y1, x2, y2]`` covers ``(x2 - x1 + 1) * (y2 - y1 + 1)``
pixels, and the intersection width is ``min(x2) - max(x1) + 1`` (ignored when not positive).

Two AP definitions are provided: the 11-point interpolated AP of VOC2007 (the loop in ``VOCevaldet.m``, the one the
paper's Table 2 reports), with the recall levels of MATLAB's ``0:0.1:1`` (:mod:`transfer.voc_devkit`), and the area
under the monotone precision envelope of VOC2010 and later (``VOCap``).

Conventions (``convention``): ``"devkit"`` (default) is the MATLAB devkit as above, which produced the Fast R-CNN
numbers of the paper. ``"py-faster-rcnn"`` is py-faster-rcnn's Python ``voc_eval.py``, which differs in three places:
the IoU test is ``ovmax > 0.5`` (a detection at exactly 0.5 is a false positive), the 11 levels are
``np.arange(0., 1.1, 0.1)`` (0.6000000000000001 and 0.7000000000000001, so a recall of exactly 3/5 or 7/10 misses
a level), and detections are ordered by ``np.argsort(-confidence)``, numpy's default sort, which does not promise
to keep tied detections in their given order. Its IoU (inclusive pixels), its matching to the highest-IoU box and
its handling of difficult and duplicate detections are the devkit's.

Boxes here are 0-based (``transfer.voc`` subtracts 1 from the XML values); the +1 convention is unaffected by the
offset. A class without any non-difficult ground truth has an undefined AP: :func:`voc_detection_ap` returns
``nan`` for it and :func:`evaluate_detections` leaves it out of the mean (listing it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from transfer.voc_devkit import DEVKIT_RECALL_LEVELS, NUMPY_RECALL_LEVELS, eleven_point_ap

APConvention = Literal["devkit", "py-faster-rcnn"]
AP_CONVENTIONS: tuple[str, ...] = ("devkit", "py-faster-rcnn")


@dataclass(frozen=True)
class GroundTruth:
    """The ground truth of one class in one image: ``boxes [N, 4]`` 0-based xyxy and ``difficult [N]`` bools."""

    boxes: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True)
class ClassDetections:
    """All detections of one class: ``image_ids [D]``, ``scores [D]``, ``boxes [D, 4]`` (0-based xyxy)."""

    image_ids: Sequence[str]
    scores: np.ndarray
    boxes: np.ndarray

    @staticmethod
    def empty() -> ClassDetections:
        return ClassDetections([], np.zeros(0, np.float64), np.zeros((0, 4), np.float64))


def voc07_11point_ap(recall: np.ndarray, precision: np.ndarray, convention: APConvention = "devkit") -> float:
    """VOC2007 AP: mean over the 11 recall levels of the highest precision at recall >= t (0 if none).

    ``devkit``: the levels of MATLAB's ``0:0.1:1`` (0.6 and 0.7 exact, 0.30000000000000004); ``py-faster-rcnn``:
    ``np.arange(0., 1.1, 0.1)`` (also 0.6000000000000001 and 0.7000000000000001). See :mod:`transfer.voc_devkit`.
    """
    levels = DEVKIT_RECALL_LEVELS if convention == "devkit" else NUMPY_RECALL_LEVELS
    return eleven_point_ap(recall, precision, levels)


def voc_auc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP: area under the precision envelope (precision made monotone decreasing), summed at recall steps."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def box_iou_inclusive(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``[4]`` with ``boxes [N, 4]`` in the devkit's inclusive pixel convention."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1.0
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def _check_convention(convention: str) -> None:
    if convention not in AP_CONVENTIONS:
        raise ValueError(f"unknown AP convention {convention!r}; choose one of {AP_CONVENTIONS}")


def match_detections(
    detections: ClassDetections,
    ground_truth: Mapping[str, GroundTruth],
    iou_threshold: float = 0.5,
    convention: APConvention = "devkit",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Matching of one class: ``(tp [D], fp [D], npos)`` in decreasing-score order (see module docstring)."""
    _check_convention(convention)
    npos = int(sum(int((~g.difficult.astype(bool)).sum()) for g in ground_truth.values()))
    negated = -np.asarray(detections.scores, dtype=np.float64)
    # MATLAB's sort is stable; py-faster-rcnn calls numpy's default sort (no promise for ties)
    order = np.argsort(negated, kind="stable") if convention == "devkit" else np.argsort(negated)
    detected = {k: np.zeros(len(g.boxes), bool) for k, g in ground_truth.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    for d, i in enumerate(order):
        gt = ground_truth.get(detections.image_ids[i])
        if gt is None or len(gt.boxes) == 0:
            fp[d] = 1
            continue
        ious = box_iou_inclusive(boxes[i], np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4))
        j = int(np.argmax(ious))  # first maximum, as MATLAB's max
        hit = ious[j] >= iou_threshold if convention == "devkit" else ious[j] > iou_threshold
        if hit:
            if bool(gt.difficult[j]):
                continue  # neither TP nor FP
            if not detected[detections.image_ids[i]][j]:
                tp[d] = 1
                detected[detections.image_ids[i]][j] = True
            else:
                fp[d] = 1  # duplicate detection
        else:
            fp[d] = 1
    return tp, fp, npos


def voc_detection_ap(
    detections: ClassDetections,
    ground_truth: Mapping[str, GroundTruth],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    convention: APConvention = "devkit",
) -> float:
    """AP (fraction in [0, 1]) of one class; ``nan`` when the class has no non-difficult ground truth."""
    tp, fp, npos = match_detections(detections, ground_truth, iou_threshold, convention)
    if npos == 0:
        return math.nan
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / npos
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc07_11point_ap(recall, precision, convention) if use_07_metric else voc_auc_ap(recall, precision)


def evaluate_detections(
    detections: Mapping[str, ClassDetections],
    ground_truth: Mapping[str, Mapping[str, GroundTruth]],
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, object]:
    """Per-class AP (percent) under each convention, their means and the classes left out of the means.

    ``detections[cls]`` holds every detection of a class; ``ground_truth[cls][image_id]`` every evaluated image
    (images without objects of the class have empty entries or none). Returns ``{"ap07": {cls: %}, "ap_auc":
    {cls: %}, "ap07_py_faster_rcnn": {cls: %}, "mAP": %, "mAP_auc": %, "mAP_py_faster_rcnn": %,
    "classes_without_gt": [...]}``: ``ap07``/``ap_auc`` are the devkit's 11-point and area-under-curve APs,
    ``ap07_py_faster_rcnn`` the 11-point AP of py-faster-rcnn's ``voc_eval``.
    """
    ap07: dict[str, float] = {}
    ap_auc: dict[str, float] = {}
    ap07_py: dict[str, float] = {}
    without_gt: list[str] = []
    for cls in classes:
        dets = detections.get(cls, ClassDetections.empty())
        gts = ground_truth.get(cls, {})
        a07 = voc_detection_ap(dets, gts, iou_threshold, use_07_metric=True)
        if math.isnan(a07):
            without_gt.append(cls)
            continue
        ap07[cls] = 100.0 * a07
        ap_auc[cls] = 100.0 * voc_detection_ap(dets, gts, iou_threshold, use_07_metric=False)
        ap07_py[cls] = 100.0 * voc_detection_ap(dets, gts, iou_threshold, convention="py-faster-rcnn")

    def mean(values: dict[str, float]) -> float:
        return float(np.mean(list(values.values()))) if values else 0.0

    return {
        "ap07": ap07,
        "ap_auc": ap_auc,
        "ap07_py_faster_rcnn": ap07_py,
        "mAP": mean(ap07),
        "mAP_auc": mean(ap_auc),
        "mAP_py_faster_rcnn": mean(ap07_py),
        "classes_without_gt": without_gt,
    }
