"""Fast R-CNN (Girshick 2015) on the transferred AlexNet trunk.

Architecture, as Fast R-CNN's CaffeNet model (``models/CaffeNet/train.prototxt``) with the transferred encoder:

- conv1..conv5 (+ ReLU) of the AlexNet trunk from the weight adapter; the last max pooling (pool5) is replaced by
  RoI max pooling to 6x6 at the conv5 stride of 16 (``torchvision.ops.RoIPool((6, 6), 1/16)``, the same rounding as
  Caffe's ROIPooling layer);
- fc6 and fc7 (4096 each, ReLU, dropout 0.5) re-initialised: Gaussian N(0, 0.005) weights and bias 0.1 as Caffe's
  AlexNet fc fillers (the paper transfers the encoder only, so these layers start from scratch);
- ``cls_score`` (21-way, N(0, 0.01), bias 0) and class-specific ``bbox_pred`` (84 = 21 x 4, N(0, 0.001), bias 0),
  Fast R-CNN's fillers.

Which trunk layers train is :func:`freeze_trunk`'s job: Fast R-CNN fine-tunes "conv2 and up" for its small models
(S = CaffeNet, M) and "conv3_1 and up" for VGG16 (paper §4.5), so conv1 is frozen by default.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import RoIPool

from pretrain.models.alexnet import CONV_INDEX, LAYER_OUTPUT_INDEX, trunk_out_channels
from transfer.rescale import rescale_trunk

NUM_CLASSES = 21  # background + 20 VOC classes
FEATURE_STRIDE = 16


class FastRCNN(nn.Module):
    """``forward(images [N, 3, H, W], rois [R, 5] (batch index, x1, y1, x2, y2) in input pixels)`` ->
    ``(cls_logits [R, C], bbox_deltas [R, 4C])``."""

    def __init__(
        self,
        trunk: nn.Sequential,
        num_classes: int = NUM_CLASSES,
        hidden: int = 4096,
        dropout: float = 0.5,
        pool_size: int = 6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # conv1..relu5: everything before pool5
        self.features = nn.Sequential(*list(trunk.children())[: LAYER_OUTPUT_INDEX["conv5"] + 1])
        self.roi_pool = RoIPool((pool_size, pool_size), spatial_scale=1.0 / FEATURE_STRIDE)
        channels = trunk_out_channels(trunk)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.cls_score = nn.Linear(hidden, num_classes)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        self.num_classes = num_classes
        self.reset_head(seed)

    @torch.no_grad()
    def reset_head(self, seed: int = 0) -> None:
        """Re-initialise fc6, fc7, cls_score and bbox_pred with Fast R-CNN's / Caffe AlexNet's fillers."""
        gen = torch.Generator().manual_seed(seed)
        for m in self.head:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.005, generator=gen)
                m.bias.fill_(0.1)
        self.cls_score.weight.normal_(0.0, 0.01, generator=gen)
        self.cls_score.bias.zero_()
        self.bbox_pred.weight.normal_(0.0, 0.001, generator=gen)
        self.bbox_pred.bias.zero_()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """conv5 feature maps ``[N, 256, H/16, W/16]`` (roughly). The convolutions run in channels-last layout (the
        same arithmetic; on CPU a Fast R-CNN step is about 6% faster in fp32 and 9% in bf16, docs/performance.md)."""
        return self.features(images.contiguous(memory_format=torch.channels_last))

    def forward_rois(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # RoI pooling in fp32: torchvision's CPU kernel has no bf16 version (on CUDA autocast casts it to fp32 too)
        pooled = self.roi_pool(features.float(), rois.float())
        h = self.head(pooled)
        return self.cls_score(h), self.bbox_pred(h)

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_rois(self.forward_features(images), rois)


def freeze_trunk(model: FastRCNN, freeze_through: str | None) -> list[str]:
    """Freeze the trunk's convolutions up to and including ``freeze_through`` (``conv1``..``conv5``; ``None`` or
    ``"none"`` trains all). Returns the names of the frozen layers."""
    if freeze_through in (None, "none"):
        return []
    if freeze_through not in CONV_INDEX:
        raise ValueError(f"freeze_through must be none or one of {sorted(CONV_INDEX)}, got {freeze_through!r}")
    frozen = []
    for name, index in CONV_INDEX.items():
        if index <= CONV_INDEX[freeze_through]:
            for p in model.features[index].parameters():
                p.requires_grad_(False)
            frozen.append(name)
    return frozen


def rescale_fast_rcnn(model: FastRCNN, image_paths: list, norm: str, seed: int = 0) -> dict[str, object]:
    """``--rescale`` for Fast R-CNN: Krähenbühl's magic_init on the trunk and the re-initialised fc6/fc7.

    fc6 and fc7 get the within-layer data-dependent init, then the between-layer correction rescales conv1..fc7,
    measured on whole 227-px training views with pool5 (3x3 max pooling, stride 2: 6x6 at 227 px) standing in for
    RoI pooling, which is what Krähenbühl et al. did before handing the network to Fast R-CNN. cls_score and
    bbox_pred keep Fast R-CNN's fillers."""
    fc6, fc7 = (m for m in model.head if isinstance(m, nn.Linear))
    head = [nn.MaxPool2d(3, 2), fc6, nn.ReLU(), fc7]
    return rescale_trunk(model.features, image_paths, norm, seed=seed, head=head, head_names=["fc6", "fc7"])
