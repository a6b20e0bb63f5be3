"""The AlexNet trunk (conv1..pool5) shared by the context encoder and every transfer harness.

Layout is torchvision's ``alexnet().features`` (no LRN, no groups: the sources leave LRN and groups open, see
docs/protocols/sources.md, and this layout lets exported weights load with ``strict=True`` into torchvision code).
With a 227x227 input (the paper's size) pool5 is 256x6x6 = 9216 values.

``widths="caffe"`` gives the original Caffe channel counts (96, 256, 384, 384, 256) for users who want them; such a
trunk does not load into torchvision's AlexNet.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch
from torch import nn

Widths = Literal["torchvision", "caffe"]
_M = TypeVar("_M", bound=nn.Module)
WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "torchvision": (64, 192, 384, 256, 256),
    "caffe": (96, 256, 384, 384, 256),
}

#: index of each named layer's *output* inside the trunk Sequential (after its ReLU / pooling)
LAYER_OUTPUT_INDEX: dict[str, int] = {
    "conv1": 1,
    "pool1": 2,
    "conv2": 4,
    "pool2": 5,
    "conv3": 7,
    "conv4": 9,
    "conv5": 11,
    "pool5": 12,
}
#: index of each convolution inside the trunk Sequential
CONV_INDEX: dict[str, int] = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}


def alexnet_trunk(widths: Widths = "torchvision") -> nn.Sequential:
    """AlexNet conv1..pool5 with the same module indices as ``torchvision.models.alexnet().features``."""
    if widths not in WIDTHS:
        raise ValueError(f"widths must be one of {sorted(WIDTHS)}, got {widths!r}")
    c1, c2, c3, c4, c5 = WIDTHS[widths]
    return nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


@torch.no_grad()
def gaussian_init_(module: _M, std: float = 0.01, bias: float = 0.0, generator: torch.Generator | None = None) -> _M:
    """Random Gaussian initialisation N(0, std) of every conv/linear weight, constant bias (the paper's
    "Random Gaussian" baseline row; std 0.01 is Caffe AlexNet's weight filler)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            m.weight.normal_(0.0, std, generator=generator)
            if m.bias is not None:
                m.bias.fill_(bias)
    return module


def trunk_out_channels(trunk: nn.Sequential) -> int:
    """Channels of the trunk's last convolution (256 for both layouts)."""
    convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels
