"""Fast R-CNN testing on VOC2007: detections per image, per-class NMS, devkit AP, and VOC results files.

Test protocol (rbgirshick/fast-rcnn ``lib/fast_rcnn/test.py``, py-faster-rcnn defaults):

- the image at the training scale (shorter side 600, longer at most 1,000), all of its proposals scored at once;
- softmax class probabilities; each class's own regressed box (``bbox_pred``), clipped to the image;
- per class: boxes with probability > ``score_threshold`` (0.05, py-faster-rcnn's ``thresh``), then NMS at IoU
  0.3 (``TEST.NMS``) via ``torchvision.ops.batched_nms``;
- at most ``max_per_image`` = 100 detections per image over all classes (the highest scores, py-faster-rcnn's
  ``max_per_image``);
- VOC2007 11-point AP at IoU 0.5 with difficult objects ignored (:mod:`transfer.detection_ap`); the VOC2010+
  area-under-curve AP is reported too.

``torchvision.ops.nms`` uses exclusive box areas (``x2 - x1``) where Fast R-CNN's ``py_cpu_nms`` adds 1; with
boxes at image scale the difference is below a pixel and only changes which of two near-identical boxes survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms
from tqdm import tqdm

from transfer.detection.boxes import BoxCoder, clip_boxes
from transfer.detection.data import DetectionImage, load_scaled_image
from transfer.detection_ap import ClassDetections, GroundTruth, evaluate_detections
from transfer.engine import autocast


@dataclass(frozen=True)
class EvalConfig:
    scale: int = 600
    max_size: int = 1000
    norm: str = "minus1to1"
    nms_threshold: float = 0.3
    score_threshold: float = 0.05
    max_per_image: int = 100
    roi_chunk: int = 4096  # proposals per forward of the head (memory bound, not a protocol setting)
    precision: str = "fp32"


@torch.no_grad()
def detect_image(
    model: nn.Module, image: DetectionImage, cfg: EvalConfig, device: torch.device, coder: BoxCoder | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image: ``(boxes [D, 4] 0-based, scores [D], labels [D] in 1..C)`` in original pixels."""
    model.eval()
    if len(image.proposals) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    coder = coder or BoxCoder()
    blob, factor, (w, h) = load_scaled_image(image.path, cfg.scale, cfg.max_size, cfg.norm)
    proposals = torch.from_numpy(image.proposals).to(device)
    with autocast(device, cfg.precision):
        features = model.forward_features(blob[None].to(device))  # type: ignore[operator]
        logits, deltas = [], []
        for chunk in proposals.split(cfg.roi_chunk):
            rois = torch.cat([chunk.new_zeros(len(chunk), 1), chunk * factor], dim=1)
            c, d = model.forward_rois(features, rois)  # type: ignore[operator]
            logits.append(c.float())
            deltas.append(d.float())
    probs = torch.cat(logits).softmax(dim=1)
    boxes = clip_boxes(coder.decode(proposals, torch.cat(deltas)), w, h)
    num_classes = probs.shape[1]
    boxes = boxes.reshape(len(proposals), num_classes, 4)[:, 1:].reshape(-1, 4)
    scores = probs[:, 1:].reshape(-1)
    labels = torch.arange(1, num_classes, device=probs.device).repeat(len(proposals))
    keep = torch.nonzero(scores > cfg.score_threshold).flatten()
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, cfg.nms_threshold)[: cfg.max_per_image]  # sorted by score
    return boxes[keep].cpu().numpy(), scores[keep].cpu().numpy(), labels[keep].cpu().numpy()


def ground_truth_by_class(
    images: Sequence[DetectionImage], classes: Sequence[str]
) -> dict[str, dict[str, GroundTruth]]:
    """``{class: {image_id: GroundTruth}}`` for every image of the evaluated split (empty where absent)."""
    out: dict[str, dict[str, GroundTruth]] = {c: {} for c in classes}
    for im in images:
        for k, cls in enumerate(classes, start=1):
            m = im.labels == k
            out[cls][im.image_id] = GroundTruth(im.boxes[m].astype(np.float64), im.difficult[m])
    return out


def evaluate(
    model: nn.Module,
    images: Sequence[DetectionImage],
    classes: Sequence[str],
    cfg: EvalConfig,
    device: torch.device,
    progress: bool = True,
) -> tuple[dict[str, object], dict[str, ClassDetections]]:
    """Detect on every image and compute VOC AP: ``(evaluate_detections(...) result, detections per class)``."""
    found = [detect_image(model, im, cfg, device) for im in tqdm(images, desc="fast r-cnn test", unit="img",
                                                                  disable=not progress)]  # fmt: skip
    return score_detections(images, found, classes)


def score_detections(
    images: Sequence[DetectionImage],
    found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: Sequence[str],
) -> tuple[dict[str, object], dict[str, ClassDetections]]:
    """VOC AP of ``found[k] = (boxes, scores, labels)`` detected on ``images[k]``, in image order (the order in
    which tied scores are ranked): ``(evaluate_detections(...) result, detections per class)``."""
    per_class: dict[str, tuple[list[str], list[float], list[np.ndarray]]] = {c: ([], [], []) for c in classes}
    for im, (boxes, scores, labels) in zip(images, found, strict=True):
        for b, s, lab in zip(boxes, scores, labels):
            ids, sc, bx = per_class[classes[int(lab) - 1]]
            ids.append(im.image_id)
            sc.append(float(s))
            bx.append(b)
    detections = {
        c: ClassDetections(ids, np.asarray(sc, np.float64), np.asarray(bx, np.float64).reshape(-1, 4))
        for c, (ids, sc, bx) in per_class.items()
    }
    result = evaluate_detections(detections, ground_truth_by_class(images, classes), classes)
    result["detections"] = int(sum(len(d.scores) for d in detections.values()))
    return result, detections


def write_voc_results(detections: dict[str, ClassDetections], folder: str | Path, split: str = "test") -> list[Path]:
    """VOC results files ``comp4_det_<split>_<class>.txt``: ``<image id> <score> <x1> <y1> <x2> <y2>`` per line,
    1-based pixel coordinates as the devkit expects (comp4: trained on data other than VOC's own, here because the
    proposals are outside input)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cls, dets in detections.items():
        path = folder / f"comp4_det_{split}_{cls}.txt"
        lines = [
            f"{image_id} {score:.6f} {b[0] + 1:.1f} {b[1] + 1:.1f} {b[2] + 1:.1f} {b[3] + 1:.1f}"
            for image_id, score, b in zip(dets.image_ids, dets.scores, dets.boxes)
        ]
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(path)
        paths.append(path)
    return paths
