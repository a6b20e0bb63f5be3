"""The FCN-AlexNet protocol's network as mmsegmentation modules (importing this file registers them in mmseg).

- ``ContextEncoderAlexNet`` (backbone): the suite's AlexNet trunk (torchvision ``alexnet().features`` layout,
  state-dict keys ``features.N.*``) with conv1 padded by 100 pixels and Caffe's ceil-mode pooling, as the native
  FCN builds it; it returns ``(pool5,)``.
- ``FCNAlexNetHead`` (decode head): the released FCN-32s head: fc6 as a 6x6 convolution and fc7 as a 1x1
  convolution of ``channels`` maps (each ReLU + element-wise dropout), the score layer (mmseg's ``conv_seg``), then
  FCN's frozen bilinear transposed convolution (kernel 63, stride 32) and the crop at the offset that the
  coordinate maps give (18 for the torchvision trunk). Its scores therefore already have the input's size and sit on
  the input's pixel grid, and mmseg's own bilinear ``resize`` of the logits (in ``loss_by_feat`` and
  ``predict_by_feat``) maps a size onto itself, which leaves every value unchanged.

A config naming these types needs ``custom_imports = dict(imports=["transfer.segmentation.mmseg_models"])`` (what
``bench export --format mmseg`` writes) or this module imported before ``MODELS.build``. Weights are loaded as
state dicts (``model.load_state_dict(..., strict=True)``), never through a pickle-based loader.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from mmengine.model import BaseModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import nn

from pretrain.models.alexnet import alexnet_trunk
from transfer.segmentation.model import FCN_CONV1_PAD, CoordMap, bilinear_upsampling, layer_coord_map

#: names the two modules are registered under in mmseg's ``MODELS`` registry
BACKBONE_TYPE = "ContextEncoderAlexNet"
HEAD_TYPE = "FCNAlexNetHead"


def fcn_trunk(widths: str = "torchvision") -> nn.Sequential:
    """The AlexNet trunk as FCN runs it: conv1 padded by 100, max-pooling rounding its output size up."""
    trunk = alexnet_trunk(widths)  # type: ignore[arg-type]
    first = next(m for m in trunk if isinstance(m, nn.Conv2d))
    first.padding = (FCN_CONV1_PAD, FCN_CONV1_PAD)
    for m in trunk:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    return trunk


@MODELS.register_module(name=BACKBONE_TYPE, force=True)
class ContextEncoderAlexNet(BaseModule):
    """AlexNet conv1..pool5 (FCN's padding and pooling); ``forward(x) -> (pool5,)``."""

    def __init__(self, widths: str = "torchvision", init_cfg: Any = None) -> None:
        super().__init__(init_cfg)
        self.widths = widths
        self.features = fcn_trunk(widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.features(x),)


@MODELS.register_module(name=HEAD_TYPE, force=True)
class FCNAlexNetHead(BaseDecodeHead):
    """FCN-32s on pool5: fc6 (6x6) -> fc7 (1x1) -> ``conv_seg`` -> frozen bilinear up-sampling -> crop to the input.

    ``fc_dropout`` is FCN's element-wise dropout after fc6 and after fc7; mmseg's own ``dropout_ratio`` (a
    channel-wise ``Dropout2d`` before ``conv_seg``) is forced to 0 so that the head drops what FCN drops.
    ``trunk_widths`` fixes the trunk whose coordinate map gives the crop offset.
    """

    def __init__(
        self,
        *,
        fc_dropout: float = 0.5,
        fc_init_std: float = 0.01,
        fc_init_bias: float = 0.1,
        learn_upsampling: bool = False,
        trunk_widths: str = "torchvision",
        **kwargs: Any,
    ) -> None:
        kwargs["dropout_ratio"] = 0.0
        kwargs.setdefault("init_cfg", None)  # the FCN initialisation below, not mmseg's Normal(conv_seg)
        super().__init__(**kwargs)
        self.fc6 = nn.Conv2d(self.in_channels, self.channels, kernel_size=6)
        self.fc7 = nn.Conv2d(self.channels, self.channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc_drop = nn.Dropout(fc_dropout)
        score_map = layer_coord_map(CoordMap(Fraction(1), Fraction(0)), list(fcn_trunk(trunk_widths))).through(6, 1, 0)
        factor = score_map.a
        if factor.denominator != 1:
            raise ValueError(f"FCN output stride {factor} is not an integer")
        self.upscore = bilinear_upsampling(self.out_channels, int(factor), learn_upsampling)
        final = score_map.upsampled(2 * int(factor) - 1, int(factor))
        if (-final.b).denominator != 1 or final.b > 0:
            raise ValueError(f"FCN alignment offset {-final.b} is not a non-negative integer")
        self.crop_offset = int(-final.b)
        with torch.no_grad():
            for fc in (self.fc6, self.fc7):
                fc.weight.normal_(0.0, fc_init_std)
                nn.init.constant_(fc.bias, fc_init_bias)  # type: ignore[arg-type]
            nn.init.zeros_(self.conv_seg.weight)
            nn.init.zeros_(self.conv_seg.bias)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Coarse class scores (stride 32) of the score layer."""
        x = self._transform_inputs(inputs)
        x = self.fc_drop(self.relu(self.fc6(x)))
        x = self.fc_drop(self.relu(self.fc7(x)))
        return self.cls_seg(x)

    def upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """FCN's up-sampling and crop: scores on the ``size`` input grid (float32, as the native FCN computes it)."""
        with torch.autocast(scores.device.type, enabled=False):
            up = self.upscore(scores.float())
        off, (height, width) = self.crop_offset, size
        if up.shape[2] < off + height or up.shape[3] < off + width:
            raise RuntimeError(f"score map {tuple(up.shape[2:])} does not cover a {height}x{width} input at {off}")
        return up[:, :, off : off + height, off : off + width]

    def loss(self, inputs: tuple[torch.Tensor, ...], batch_data_samples: Any, train_cfg: Any) -> dict:
        size = tuple(batch_data_samples[0].gt_sem_seg.shape[-2:])
        return self.loss_by_feat(self.upsample(self.forward(inputs), size), batch_data_samples)

    def predict(self, inputs: tuple[torch.Tensor, ...], batch_img_metas: list[dict], test_cfg: Any) -> torch.Tensor:
        meta = batch_img_metas[0]
        size = meta["pad_shape"][:2] if "pad_shape" in meta else meta["img_shape"][:2]
        return self.predict_by_feat(self.upsample(self.forward(inputs), tuple(size)), batch_img_metas)
