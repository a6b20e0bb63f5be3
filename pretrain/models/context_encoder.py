"""The AlexNet context encoder used for feature learning (Pathak et al. 2016, Sec. 3.1).

Encoder: AlexNet conv1..pool5 (``alexnet_trunk``, torchvision ``alexnet().features`` layout) -> 256x6x6 at 227 px.
Bottleneck: a channel-wise fully-connected layer ("each of the m=256 feature maps of size 6x6 is fully connected to
itself only": 256 * 36 * 36 = 331,776 weights plus a bias, nothing between maps), dropout (0.5; an open
choice, docs/protocols/sources.md) and a stride-1 1x1 convolution that mixes the channels.
Decoder: five up-convolutions, each followed by ReLU in the paper; 4x4 stride-2 ``ConvTranspose2d`` take 6x6 to
192x192. The last up-convolution outputs the 3 image channels through ``tanh`` instead of ReLU, because the
images are in [-1, 1] (the official Lua code ends its generator the same way). The 192x192 prediction is aligned
to the input size by a bilinear resize (``output_align="resize"``, default) or left at 192 px
(``output_align="none"``; the method then compares it with the centre crop of the image). All choices the paper
does not fix are options, see docs/protocols/pretraining.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.alexnet import Widths, alexnet_trunk, trunk_out_channels

OUTPUT_ALIGN_CHOICES = ("resize", "none")


class ChannelWiseFC(nn.Module):
    """Fully-connected layer applied to each channel separately, with no parameters between channels.

    ``weight: [C, n*n, n*n]`` maps the flattened ``n x n`` map of channel ``c`` to a new ``n x n`` map; the
    forward pass is one batched matrix multiply (``einsum``), equivalent to the author's Caffe trick of a
    ``n x n`` grouped convolution with ``C`` groups and ``C*n*n`` outputs.
    """

    def __init__(self, channels: int = 256, size: int = 6) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        area = size * size
        self.weight = nn.Parameter(torch.empty(channels, area, area))
        self.bias = nn.Parameter(torch.empty(channels, area))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # same scheme as nn.Linear(area, area) applied per channel
        bound = 1.0 / math.sqrt(self.size * self.size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, n, n] -> [N, C, n, n]."""
        n, c, h, w = x.shape
        if (c, h, w) != (self.channels, self.size, self.size):
            raise ValueError(
                f"ChannelWiseFC expects [N, {self.channels}, {self.size}, {self.size}], got {tuple(x.shape)}"
            )
        flat = x.reshape(n, c, h * w)
        out = torch.einsum("ncj,cij->nci", flat, self.weight) + self.bias
        return out.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}x{self.size}"


class ContextEncoder(nn.Module):
    """AlexNet encoder + channel-wise FC bottleneck + five-up-convolution decoder.

    Args:
        widths: AlexNet channel layout of the encoder (``torchvision`` loads into torchvision's AlexNet).
        dropout: dropout probability after the channel-wise FC (paper: 0.5, unverified).
        decoder_channels: output channels of the first four up-convolutions (the fifth outputs 3).
        output_align: ``resize`` bilinearly resizes the 192x192 prediction to the input size; ``none`` returns it.
        input_size: image side the encoder is built for (227 px in the paper; pool5 is then 6x6).
    """

    def __init__(
        self,
        widths: Widths = "torchvision",
        dropout: float = 0.5,
        decoder_channels: Sequence[int] = (128, 64, 64, 32),
        output_align: str = "resize",
        input_size: int = 227,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError(
                f"decoder_channels needs 4 values (the fifth up-convolution outputs RGB), got {decoder_channels}"
            )
        if output_align not in OUTPUT_ALIGN_CHOICES:
            raise ValueError(f"output_align must be one of {OUTPUT_ALIGN_CHOICES}, got {output_align!r}")
        self.input_size, self.output_align = input_size, output_align
        self.encoder = alexnet_trunk(widths)
        channels = trunk_out_channels(self.encoder)
        with torch.no_grad():
            feat = self.encoder(torch.zeros(1, 3, input_size, input_size))
        self.feature_size = int(feat.shape[-1])
        self.channel_fc = ChannelWiseFC(channels, self.feature_size)
        self.dropout = nn.Dropout(dropout)
        self.channel_mix = nn.Conv2d(channels, channels, kernel_size=1, stride=1)
        layers: list[nn.Module] = []
        ins = [channels, *decoder_channels]
        outs = [*decoder_channels, 3]
        for i, (cin, cout) in enumerate(zip(ins, outs, strict=True)):
            layers.append(nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            layers.append(nn.ReLU(inplace=True) if i < 4 else nn.Tanh())
        self.decoder = nn.Sequential(*layers)

    def forward_encoder(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] in [-1, 1] (H = W = 227) -> pool5 features [N, 256, 6, 6]."""
        return self.encoder(images)

    def forward_bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """features: [N, 256, 6, 6] -> [N, 256, 6, 6] (channel-wise FC, ReLU, dropout, 1x1 channel mixing, ReLU)."""
        x = F.relu(self.channel_fc(features))
        x = self.dropout(x)
        return F.relu(self.channel_mix(x))

    def forward_decoder(self, code: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
        """code: [N, 256, 6, 6] -> prediction [N, 3, 192, 192] in [-1, 1], resized to ``out_size`` when given
        and ``output_align == "resize"``."""
        pred = self.decoder(code)
        if out_size is not None and self.output_align == "resize" and pred.shape[-1] != out_size:
            pred = F.interpolate(pred, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return pred

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [N, 3, H, W] -> prediction [N, 3, H, W] (``resize``) or [N, 3, 192, 192] (``none``)."""
        code = self.forward_bottleneck(self.forward_encoder(images))
        return self.forward_decoder(code, out_size=images.shape[-1])
