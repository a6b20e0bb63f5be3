"""FCN (Long, Shelhamer, Darrell, CVPR 2015) on the transferred AlexNet trunk.

Layout follows the released FCN-AlexNet (``fcn.berkeleyvision.org/voc-fcn-alexnet/net.py``):

- conv1..pool5: the transferred trunk (torchvision ``alexnet().features`` layout, module keys ``features.N``),
  with conv1 padded by **100** pixels and max-pooling in Caffe's **ceil** mode, as FCN does, so that every input
  size (down to 1x1) yields at least one fc6 position and a score map that covers the whole input;
- fc6 as a 6x6 convolution (4096 maps), ReLU, dropout 0.5; fc7 as a 1x1 convolution (4096), ReLU, dropout 0.5:
  re-initialised (the transferred encoder has no fc layers), N(0, ``fc_init_std``) weights and ``fc_init_bias``;
- ``score_fr``: 1x1 convolution to 21 classes, zero-initialised (Caffe's default filler in the FCN nets);
- up-sampling by transposed convolutions initialised to bilinear interpolation with FCN's ``surgery.interp``
  kernel and frozen by default (``lr_mult: 0`` in the released nets);
- the up-sampled scores cropped back onto the input grid.

Alignment: every feature map is related to input pixels by an affine map ``x_in = a * x + b`` (the receptive-field
centre of position ``x``), composed layer by layer as Caffe's ``coord_map`` does. The crop offsets are computed from
these maps, never hard-coded. For FCN-32s on the torchvision trunk the offset is 18, the value in the released
FCN-AlexNet ``crop`` layer. All up-sampling kernels have odd size ``2f - 1`` (FCN-AlexNet's 63 for f = 32): then
every offset is an integer and the prediction at output pixel ``(i, j)`` is centred on input pixel ``(i, j)``.

Skip variants (the FCN paper only trained FCN-32s for AlexNet; the sources below are this suite's choice, see
docs/protocols/segmentation.md): FCN-16s adds a score layer on relu5 (conv5's output, the deepest stride-16
feature; VGG's pool4 plays that role), FCN-8s also on relu2 (conv2's output, the deepest stride-8 feature; VGG's
pool3). Skip score layers are zero-initialised so a new variant starts as FCN-32s, and each intermediate 2x
up-sampling is a 3x3 stride-2 bilinear transposed convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
from torch import nn

from pretrain.models.alexnet import LAYER_OUTPUT_INDEX, trunk_out_channels
from transfer.rescale import rescale_trunk

Variant = Literal["32s", "16s", "8s"]
VARIANTS: tuple[str, ...] = ("32s", "16s", "8s")
#: FCN's conv1 padding (voc-fcn-alexnet/net.py: ``conv_relu(n.data, 11, 96, stride=4, pad=100)``)
FCN_CONV1_PAD = 100
#: skip source of each variant: trunk output used (name from ``LAYER_OUTPUT_INDEX``)
SKIP_SOURCES: dict[str, tuple[str, ...]] = {"32s": (), "16s": ("conv5",), "8s": ("conv5", "conv2")}


@dataclass(frozen=True)
class CoordMap:
    """``x_input = a * x + b``: where position ``x`` of a feature map sits on the input grid."""

    a: Fraction
    b: Fraction

    def through(self, kernel: int, stride: int, padding: int) -> CoordMap:
        """The map after a convolution or pooling layer (kernel, stride, padding) applied to this map."""
        return CoordMap(self.a * stride, self.b + self.a * (Fraction(kernel - 1, 2) - padding))

    def upsampled(self, kernel: int, stride: int) -> CoordMap:
        """The map after a transposed convolution (no padding): output ``y`` sits at input ``(y - (k-1)/2) / s``."""
        return CoordMap(self.a / stride, self.b - self.a * Fraction(kernel - 1, 2) / stride)


def _pair(v: int | tuple[int, ...]) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ValueError(f"non-square kernel/stride/padding {v} is not supported")
        return int(v[0])
    return int(v)


def layer_coord_map(start: CoordMap, layers: list[nn.Module]) -> CoordMap:
    """Compose the coordinate maps of a list of modules (conv, pool; element-wise layers are identities)."""
    cm = start
    for m in layers:
        if isinstance(m, nn.Conv2d | nn.MaxPool2d):
            if _pair(getattr(m, "dilation", 1)) != 1:
                raise ValueError("dilated layers are not supported by the FCN alignment")
            cm = cm.through(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding))  # type: ignore[arg-type]
    return cm


def bilinear_kernel(size: int) -> torch.Tensor:
    """FCN's ``surgery.upsample_filt``: a 2-D bilinear interpolation kernel of the given size."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    return torch.from_numpy(filt.astype(np.float32))


def bilinear_upsampling(channels: int, factor: int, learnable: bool = False) -> nn.ConvTranspose2d:
    """A ``channels``-to-``channels`` transposed convolution (kernel ``2 * factor - 1``, stride ``factor``, no bias)
    initialised to per-channel bilinear interpolation (FCN's ``surgery.interp``)."""
    size = 2 * factor - 1
    up = nn.ConvTranspose2d(channels, channels, kernel_size=size, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        k = bilinear_kernel(size)
        for c in range(channels):
            up.weight[c, c] = k
    up.weight.requires_grad_(learnable)
    return up


def _crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return x[:, :, top : top + height, left : left + width]


class FCN(nn.Module):
    """FCN-32s/16s/8s on an AlexNet trunk. ``forward(images [N, 3, H, W]) -> scores [N, num_classes, H, W]``."""

    def __init__(
        self,
        trunk: nn.Sequential,
        num_classes: int = 21,
        variant: Variant = "32s",
        fc_channels: int = 4096,
        dropout: float = 0.5,
        fc_init_std: float = 0.01,
        fc_init_bias: float = 0.1,
        learn_upsampling: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.num_classes = num_classes
        self.features = trunk
        convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
        convs[0].padding = (FCN_CONV1_PAD, FCN_CONV1_PAD)
        for m in trunk:
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True  # Caffe pooling rounds the output size up
        c5 = trunk_out_channels(trunk)
        self.fc6 = nn.Conv2d(c5, fc_channels, kernel_size=6)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, kernel_size=1)
        with torch.no_grad():
            for fc in (self.fc6, self.fc7):
                fc.weight.normal_(0.0, fc_init_std, generator=generator)
                nn.init.constant_(fc.bias, fc_init_bias)  # type: ignore[arg-type]
            nn.init.zeros_(self.score_fr.weight)
            nn.init.zeros_(self.score_fr.bias)  # type: ignore[arg-type]

        # coordinate maps of every tapped feature and of score_fr
        identity = CoordMap(Fraction(1), Fraction(0))
        self._skip_index = [LAYER_OUTPUT_INDEX[name] for name in SKIP_SOURCES[variant]]
        self._skip_maps = [layer_coord_map(identity, list(trunk)[: i + 1]) for i in self._skip_index]
        pool5 = layer_coord_map(identity, list(trunk))
        score_map = pool5.through(6, 1, 0)

        self.score_skips = nn.ModuleList()
        self.up_skips = nn.ModuleList()
        channels = {i: self._out_channels(trunk, i) for i in self._skip_index}
        cm = score_map
        for i, skip_map in zip(self._skip_index, self._skip_maps):
            factor = cm.a / skip_map.a
            if factor.denominator != 1:
                raise ValueError(f"skip from trunk index {i}: stride ratio {factor} is not an integer")
            score = nn.Conv2d(channels[i], num_classes, kernel_size=1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)  # type: ignore[arg-type]
            self.score_skips.append(score)
            self.up_skips.append(bilinear_upsampling(num_classes, int(factor), learn_upsampling))
            cm = skip_map
        final_factor = cm.a
        if final_factor.denominator != 1:
            raise ValueError(f"final up-sampling factor {final_factor} is not an integer")
        self.upscore = bilinear_upsampling(num_classes, int(final_factor), learn_upsampling)
        self._score_map = score_map
        self.output_stride = int(final_factor)

    @staticmethod
    def _out_channels(trunk: nn.Sequential, index: int) -> int:
        convs = [m for m in list(trunk)[: index + 1] if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    @property
    def crop_offset(self) -> int:
        """Offset of the input's top-left pixel inside the final up-sampled score map (18 for FCN-32s)."""
        cm = self._score_map
        for up, skip_map in zip(self.up_skips, self._skip_maps):
            up_map = cm.upsampled(_pair(up.kernel_size), _pair(up.stride))  # type: ignore[arg-type]
            cm = CoordMap(skip_map.a, max(up_map.b, skip_map.b))
        final = cm.upsampled(_pair(self.upscore.kernel_size), _pair(self.upscore.stride))
        offset = -final.b
        if offset.denominator != 1 or offset < 0:
            raise ValueError(f"FCN alignment offset {offset} is not a non-negative integer")
        return int(offset)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk + fc6/fc7. Returns (fc7 activations [N, C, h, w], skip features in ``SKIP_SOURCES`` order)."""
        taps: dict[int, torch.Tensor] = {}
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._skip_index:
                taps[i] = x
        x = self.drop(self.relu(self.fc6(x)))
        x = self.drop(self.relu(self.fc7(x)))
        return x, [taps[i] for i in self._skip_index]

    def fuse(self, score: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, CoordMap]:
        """Add the skip scores (FCN-16s/8s): up-sample, crop both maps to their common extent, sum."""
        cm = self._score_map
        for feat, skip_map, score_layer, up in zip(skips, self._skip_maps, self.score_skips, self.up_skips):
            upsampled = up(score)
            up_map = cm.upsampled(_pair(up.kernel_size), _pair(up.stride))  # type: ignore[arg-type]
            skip_score = score_layer(feat)
            a = skip_map.a
            starts = (up_map.b, skip_map.b)
            start = max(starts)
            offs = [int((start - s) / a) for s in starts]
            h = min(upsampled.shape[2] - offs[0], skip_score.shape[2] - offs[1])
            w = min(upsampled.shape[3] - offs[0], skip_score.shape[3] - offs[1])
            score = _crop(upsampled, offs[0], offs[0], h, w) + _crop(skip_score, offs[1], offs[1], h, w)
            cm = CoordMap(a, start)
        return score, cm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] (normalised) -> class scores [N, num_classes, H, W] aligned with the input."""
        height, width = images.shape[-2:]
        x, skips = self.forward_features(images)
        score, _ = self.fuse(self.score_fr(x), skips)
        # the final up-sampling runs in float32 even under bf16 autocast: CPU has no fast bf16 kernel for this
        # 64x64-kernel stride-32 transposed convolution (about 40x slower than float32, docs/performance.md); it
        # is a tiny share of the FLOPs, and in float32 runs it changes nothing
        with torch.autocast(score.device.type, enabled=False):
            up = self.upscore(score.float())
        off = self.crop_offset
        if up.shape[2] < off + height or up.shape[3] < off + width:
            raise RuntimeError(
                f"FCN score map {tuple(up.shape[2:])} does not cover a {height}x{width} input at offset {off}"
            )
        return _crop(up, off, off, height, width)


def build_fcn(
    trunk: nn.Sequential,
    *,
    variant: Variant = "32s",
    num_classes: int = 21,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    learn_upsampling: bool = False,
    seed: int = 0,
) -> FCN:
    """FCN on ``trunk`` with its re-initialised layers drawn from ``seed`` (identical on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    return FCN(
        trunk,
        num_classes=num_classes,
        variant=variant,
        fc_channels=fc_channels,
        dropout=dropout,
        learn_upsampling=learn_upsampling,
        generator=gen,
    )


def rescale_fcn(model: FCN, image_paths: list, norm: str, seed: int = 0) -> dict[str, object]:
    """``--rescale`` for FCN: Krähenbühl's magic_init on the network as it runs (conv1 padded by 100, ceil-mode
    pooling) up to fc7: fc6 and fc7 get the within-layer data-dependent init, then the between-layer correction
    rescales conv1..fc7 on 227-px training views. The zero-initialised score layers are left as they are (a zero
    layer has no scale to correct)."""
    head = [model.fc6, nn.ReLU(), model.fc7]
    return rescale_trunk(model.features, image_paths, norm, seed=seed, head=head, head_names=["fc6", "fc7"])
