"""The AlexNet trunk and the Fast R-CNN box head as detectron2 components, and the detectron2 config of the protocol.

Importing this module registers, in detectron2's registries:

- ``build_alexnet_backbone`` (``MODEL.BACKBONE.NAME``): AlexNet conv1..conv5 with their ReLUs and the two max
  poolings between them, torchvision's ``alexnet().features`` widths (64, 192, 384, 256, 256), one output feature
  ``conv5`` at stride 16 (pool5 is replaced by RoI pooling, as in Fast R-CNN); ``MODEL.BACKBONE.FREEZE_AT`` is the
  number of convolutions frozen from the bottom (1 = conv1, the protocol's default);
- ``AlexNetFCHead`` (``MODEL.ROI_BOX_HEAD.NAME``): fc6 and fc7 of ``MODEL.ROI_BOX_HEAD.FC_DIM`` units, each followed
  by ReLU and dropout 0.5, as Fast R-CNN's CaffeNet model (detectron2's own ``FastRCNNConvFCHead`` has no dropout).

Parameter names are ``backbone.conv1.weight`` .. ``backbone.conv5.bias``, ``roi_heads.box_head.fc6.weight``, ..., and
detectron2's ``roi_heads.box_predictor.cls_score`` / ``bbox_pred``. detectron2 is a hard import here; the rest of
the suite reaches this module only through :mod:`transfer.detection.detectron2_engine`, which checks first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, ROI_BOX_HEAD_REGISTRY, Backbone
from torch import nn

from pretrain.models.alexnet import CONV_INDEX, WIDTHS

if TYPE_CHECKING:
    from transfer.detection.detectron2_engine import Detectron2Settings

BACKBONE_NAME = "build_alexnet_backbone"
BOX_HEAD_NAME = "AlexNetFCHead"
FEATURE_NAME = "conv5"
FEATURE_STRIDE = 16
NUM_VOC_CLASSES = 20
CONV_NAMES = tuple(CONV_INDEX)  # conv1 .. conv5
#: Fast R-CNN's target normalisation (std 0.1, 0.1, 0.2, 0.2) as detectron2's box-regression weights
BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class AlexNetBackbone(Backbone):
    """conv1..relu5 of AlexNet; ``forward(images)`` -> ``{"conv5": [N, 256, ~H/16, ~W/16]}`` in fp32.

    ``compute_dtype`` (set by the engine, ``None`` by default) runs the convolutions under autocast in that dtype;
    the output is fp32 either way, because detectron2's RoI pooling on CPU has no bf16 kernel."""

    def __init__(self, freeze_at: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = WIDTHS["torchvision"]
        self.conv1 = nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.compute_dtype: torch.dtype | None = None
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first ``freeze_at`` convolutions (0 trains all, 5 freezes the whole trunk)."""
        if not 0 <= freeze_at <= len(CONV_NAMES):
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be 0..{len(CONV_NAMES)}, got {freeze_at}")
        for name in CONV_NAMES[:freeze_at]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # channels-last: the same arithmetic, faster on CPU (as the torchvision engine's trunk)
        x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x, self.compute_dtype):
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            x = torch.relu(self.conv3(x))
            x = torch.relu(self.conv4(x))
            x = torch.relu(self.conv5(x))
        return {FEATURE_NAME: x.float().contiguous()}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {FEATURE_NAME: ShapeSpec(channels=WIDTHS["torchvision"][4], stride=FEATURE_STRIDE)}


@BACKBONE_REGISTRY.register()
def build_alexnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> AlexNetBackbone:
    if input_shape.channels != 3:
        raise ValueError(f"the AlexNet backbone takes 3-channel images, got {input_shape.channels}")
    return AlexNetBackbone(freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@ROI_BOX_HEAD_REGISTRY.register()
class AlexNetFCHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout on the flattened 6x6 RoI-pooled conv5 features."""

    def __init__(self, cfg: CfgNode, input_shape: ShapeSpec, dropout: float = 0.5) -> None:
        super().__init__()
        if cfg.MODEL.ROI_BOX_HEAD.NUM_FC != 2 or cfg.MODEL.ROI_BOX_HEAD.NUM_CONV != 0:
            raise ValueError("AlexNetFCHead is fc6 + fc7: set MODEL.ROI_BOX_HEAD.NUM_FC 2 and NUM_CONV 0")
        width = int(cfg.MODEL.ROI_BOX_HEAD.FC_DIM)
        in_features = int(input_shape.channels * input_shape.height * input_shape.width)
        self.fc6 = nn.Linear(in_features, width)
        self.fc7 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)
        self.compute_dtype: torch.dtype | None = None
        self._output_size = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(x, self.compute_dtype):
            x = self.drop(torch.relu(self.fc6(x.flatten(1))))
            x = self.drop(torch.relu(self.fc7(x)))
        return x.float()

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._output_size)


def _autocast(x: torch.Tensor, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None)


@dataclass(frozen=True)
class InputConvention:
    """How detectron2 normalises its input for one of the suite's ``--input-norm`` conventions: the model is fed
    0..255 pixels in ``format`` channel order and computes ``(x - mean) / std`` per channel."""

    format: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


INPUT_CONVENTIONS: dict[str, InputConvention] = {
    "minus1to1": InputConvention("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "imagenet": InputConvention("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "caffe": InputConvention("BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0)),
}


def protocol_config(settings: Detectron2Settings, device: str = "cpu", weights: str = "") -> CfgNode:
    """A detectron2 config of Fast R-CNN on the AlexNet backbone: precomputed proposals, ROIPool 6x6 on conv5,
    fc6/fc7, the protocol's RoI sampling and solver. ``get_cfg().merge_from_file`` reads its ``dump()`` back."""
    if settings.freeze_through not in (None, "none", *CONV_NAMES):
        raise ValueError(f"unknown freeze_through {settings.freeze_through!r}; choose none or one of {CONV_NAMES}")
    freeze_convs = 0 if settings.freeze_through in (None, "none") else CONV_NAMES.index(settings.freeze_through) + 1
    if settings.input_norm not in INPUT_CONVENTIONS:
        raise ValueError(
            f"unknown input normalisation {settings.input_norm!r}; choose one of {list(INPUT_CONVENTIONS)}"
        )
    conv = INPUT_CONVENTIONS[settings.input_norm]
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.PIXEL_MEAN = list(conv.pixel_mean)
    cfg.MODEL.PIXEL_STD = list(conv.pixel_std)
    cfg.INPUT.FORMAT = conv.format
    cfg.INPUT.MIN_SIZE_TRAIN = (settings.scale,)
    cfg.INPUT.MAX_SIZE_TRAIN = settings.max_size
    cfg.INPUT.MIN_SIZE_TEST = settings.scale
    cfg.INPUT.MAX_SIZE_TEST = settings.max_size
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.MODEL.BACKBONE.NAME = BACKBONE_NAME
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_convs
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    cfg.MODEL.LOAD_PROPOSALS = True
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = [FEATURE_NAME]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_VOC_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = settings.rois_per_image
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = settings.fg_fraction
    # IoU < 0.1: neither foreground nor background (ignored); [0.1, 0.5): background; >= 0.5: foreground
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [settings.bg_threshold_lo, settings.fg_threshold]
    cfg.MODEL.ROI_HEADS.IOU_LABELS = [-1, 0, 1]
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = settings.score_threshold
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = settings.nms
    cfg.TEST.DETECTIONS_PER_IMAGE = settings.max_per_image
    cfg.MODEL.ROI_BOX_HEAD.NAME = BOX_HEAD_NAME
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = settings.fc_width
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 6
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = BBOX_REG_WEIGHTS
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 1.0  # Fast R-CNN's sigma 1 (detectron2's default 0 is plain L1)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    cfg.SOLVER.IMS_PER_BATCH = settings.batch_size
    cfg.SOLVER.BASE_LR = settings.lr
    cfg.SOLVER.MOMENTUM = settings.momentum
    cfg.SOLVER.NESTEROV = False
    cfg.SOLVER.WEIGHT_DECAY = settings.weight_decay
    cfg.SOLVER.WEIGHT_DECAY_NORM = settings.weight_decay
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0  # Caffe's lr_mult 2 / decay_mult 0 for biases
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.MAX_ITER = settings.iterations
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.STEPS = (settings.lr_step,) if settings.lr_step > 0 else ()
    cfg.SOLVER.GAMMA = settings.lr_gamma
    cfg.SOLVER.WARMUP_ITERS = 0  # Fast R-CNN has no warm-up
    cfg.SOLVER.WARMUP_FACTOR = 1.0
    cfg.SOLVER.CHECKPOINT_PERIOD = max(1, settings.iterations)
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    return cfg


def backbone_state_from_trunk(trunk_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``torchvision alexnet().features`` keys (``0.weight``, ``3.weight``, ...) -> detectron2 model keys
    (``backbone.conv1.weight``, ...)."""
    out = {}
    for name, index in CONV_INDEX.items():
        for kind in ("weight", "bias"):
            key = f"{index}.{kind}"
            if key not in trunk_state:
                raise KeyError(f"trunk state has no {key!r} ({name}); expected torchvision alexnet().features keys")
            out[f"backbone.{name}.{kind}"] = trunk_state[key].detach().clone().float()
    return out


def model_state_from_fast_rcnn(fast_rcnn_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The torchvision engine's ``FastRCNN.state_dict()`` as detectron2 model keys: the trunk, fc6/fc7, and the
    predictor with detectron2's class order (the 20 classes first, background last; class-specific boxes for the
    20 classes only, where the torchvision engine also has a never-trained background slot)."""
    trunk = {k.removeprefix("features."): v for k, v in fast_rcnn_state.items() if k.startswith("features.")}
    out = backbone_state_from_trunk(trunk)
    linears = sorted({int(k.split(".")[1]) for k in fast_rcnn_state if k.startswith("head.")})
    for name, index in zip(("fc6", "fc7"), linears, strict=True):
        for kind in ("weight", "bias"):
            out[f"roi_heads.box_head.{name}.{kind}"] = fast_rcnn_state[f"head.{index}.{kind}"].detach().clone()
    cls_w, cls_b = fast_rcnn_state["cls_score.weight"], fast_rcnn_state["cls_score.bias"]
    out["roi_heads.box_predictor.cls_score.weight"] = torch.cat([cls_w[1:], cls_w[:1]]).clone()
    out["roi_heads.box_predictor.cls_score.bias"] = torch.cat([cls_b[1:], cls_b[:1]]).clone()
    out["roi_heads.box_predictor.bbox_pred.weight"] = fast_rcnn_state["bbox_pred.weight"][4:].clone()
    out["roi_heads.box_predictor.bbox_pred.bias"] = fast_rcnn_state["bbox_pred.bias"][4:].clone()
    return out
