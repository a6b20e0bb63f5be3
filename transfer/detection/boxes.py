"""Box utilities of Fast R-CNN: the regression target coder, IoU, clipping and flipping.

Boxes are ``[N, 4]`` 0-based ``x1, y1, x2, y2`` in pixels with *inclusive* corners, the convention of the VOC devkit
and of Fast R-CNN (``width = x2 - x1 + 1``). Regression targets are Fast R-CNN's ``bbox_transform`` (Girshick 2015,
R-CNN appendix C):

    dx = (gx - px) / pw,  dy = (gy - py) / ph,  dw = log(gw / pw),  dh = log(gh / ph)

with centres ``x = x1 + 0.5 * w``, normalised as ``(t - mean) / std`` with mean ``(0, 0, 0, 0)`` and std
``(0.1, 0.1, 0.2, 0.2)`` (py-faster-rcnn ``BBOX_NORMALIZE_MEANS/STDS``; the original Fast R-CNN computed the
same kind of statistics from the training set). Decoding is the exact inverse (``x2 = cx + 0.5 * w - 1``), so an
encode/decode round trip returns the input; ``dw``/``dh`` are clamped at ``log(1000 / 16)`` as torchvision does so
that an untrained regressor cannot overflow ``exp``.
"""

from __future__ import annotations

import math

import torch

BBOX_MEANS: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
_DWH_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode ground-truth boxes relative to proposals and decode predicted deltas back to boxes."""

    def __init__(
        self,
        means: tuple[float, float, float, float] = BBOX_MEANS,
        stds: tuple[float, float, float, float] = BBOX_STDS,
    ) -> None:
        self.means = means
        self.stds = stds

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ref.new_tensor(self.means), ref.new_tensor(self.stds)

    def encode(self, proposals: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Normalised deltas ``[N, 4]`` that move ``proposals [N, 4]`` onto ``targets [N, 4]``."""
        pw = proposals[:, 2] - proposals[:, 0] + 1.0
        ph = proposals[:, 3] - proposals[:, 1] + 1.0
        px = proposals[:, 0] + 0.5 * pw
        py = proposals[:, 1] + 0.5 * ph
        gw = targets[:, 2] - targets[:, 0] + 1.0
        gh = targets[:, 3] - targets[:, 1] + 1.0
        gx = targets[:, 0] + 0.5 * gw
        gy = targets[:, 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
        mean, std = self._stats(deltas)
        return (deltas - mean) / std

    def decode(self, proposals: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Boxes from ``proposals [N, 4]`` and normalised ``deltas [N, 4K]`` (K classes) -> ``[N, 4K]``."""
        if proposals.numel() == 0:
            return deltas.new_zeros(deltas.shape)
        mean, std = self._stats(deltas)
        d = deltas.reshape(deltas.shape[0], -1, 4) * std + mean
        pw = (proposals[:, 2] - proposals[:, 0] + 1.0)[:, None]
        ph = (proposals[:, 3] - proposals[:, 1] + 1.0)[:, None]
        px = proposals[:, 0][:, None] + 0.5 * pw
        py = proposals[:, 1][:, None] + 0.5 * ph
        cx = d[..., 0] * pw + px
        cy = d[..., 1] * ph + py
        w = torch.exp(d[..., 2].clamp(max=_DWH_CLAMP)) * pw
        h = torch.exp(d[..., 3].clamp(max=_DWH_CLAMP)) * ph
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1.0, cy + 0.5 * h - 1.0], dim=-1)
        return boxes.reshape(deltas.shape)


def box_iou_inclusive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of inclusive-corner boxes (the devkit's and Fast R-CNN's ``bbox_overlaps``)."""
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0]) + 1.0).clamp(min=0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1]) + 1.0).clamp(min=0)
    inter = iw * ih
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip ``[N, 4K]`` boxes to the image ``[0, width - 1] x [0, height - 1]``."""
    out = boxes.clone()
    out[:, 0::4] = out[:, 0::4].clamp(0, width - 1)
    out[:, 1::4] = out[:, 1::4].clamp(0, height - 1)
    out[:, 2::4] = out[:, 2::4].clamp(0, width - 1)
    out[:, 3::4] = out[:, 3::4].clamp(0, height - 1)
    return out


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror ``[N, 4]`` boxes of an image ``width`` pixels wide (Fast R-CNN: ``x1' = W - x2 - 1``)."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2] - 1.0
    out[:, 2] = width - boxes[:, 0] - 1.0
    return out
