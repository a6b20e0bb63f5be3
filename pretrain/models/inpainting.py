"""The 128-px semantic-inpainting context encoder and its 64x64 adversarial discriminator.

Pathak et al. 2016, Sec. 3.2 (joint loss) and Sec. 5.1 (semantic inpainting).

Both follow the official Lua ``train.lua`` (github pathak22/context-encoder) layer by layer:

* generator ``netG`` = encoder ``netE`` (conv 3->64 k4 s2 p1 + LeakyReLU(0.2) without BN, then 64->64, 64->128,
  128->256, 256->512, each k4 s2 p1 + BN + LeakyReLU(0.2), giving 512x4x4; conv 512->4000 k4 "valid" giving a
  4000-d code), BN + LeakyReLU(0.2) on the code, decoder (full convolution 4000->512 k4 giving 512x4x4, then
  512->256->128->64, each k4 s2 p1 + BN + ReLU, then 64->3 k4 s2 p1 + Tanh) -> a 3x64x64 prediction of the centre;
* discriminator ``netD`` (``conditionAdv=0``: it sees the 64x64 patch only): conv 3->64 k4 s2 p1 + LeakyReLU(0.2),
  64->128, 128->256, 256->512 (k4 s2 p1 + BN + LeakyReLU(0.2)), conv 512->1 k4 + Sigmoid.

The Lua code zeroes every convolution bias before each step (``m.bias:zero()`` in ``fDx``/``fGx``), so the layers
here have no bias: the parameter counts then equal the Lua counts without biases exactly (generator 71,124,544,
discriminator 2,765,568, BatchNorm scale and shift included).

The two 4x4 bottleneck layers are written as linear layers: a 4x4 "valid" convolution of a 4x4 map is a matrix
product with the flattened map, and a 4x4 full convolution of a 1x1 map is a matrix product reshaped to 4x4. The
result is identical (``conv_bottleneck=True`` builds the convolutional form for checking and for export) and runs
about twice as fast on CPU. ``to_conv_layout``/``from_conv_layout`` convert state dicts between the two forms.

``output_size=128`` (for random-block / random-region masks, where the generator predicts the whole image) adds one
more up-convolution 64->64 (k4 s2 p1 + BN + ReLU) before the last layer; ``InpaintingDiscriminator(input_size=128)``
adds one more strided convolution 64->64 (+ BN + LeakyReLU) after the first. Neither is in the Lua code (which
only trains the centre mask); see docs/protocols/inpainting.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

#: Lua ``nBottleneck`` of the official command (``nBottleneck=4000``)
BOTTLENECK = 4000
#: Parameter counts of the Lua networks without (always zeroed) convolution biases, BatchNorm affine included
LUA_GENERATOR_PARAMETERS = 71_124_544
LUA_DISCRIMINATOR_PARAMETERS = 2_765_568


def _down(cin: int, cout: int, bn: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def lua_init_(module: nn.Module) -> nn.Module:
    """Lua ``weights_init``: convolution (and the linear bottleneck) weights N(0, 0.02), BatchNorm weight
    N(1, 0.02), BatchNorm bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class InpaintingGenerator(nn.Module):
    """Context encoder for semantic inpainting: ``images [N, 3, 128, 128]`` (in [-1, 1], hole filled) ->
    ``prediction [N, 3, output_size, output_size]`` in [-1, 1].

    Module names: ``encoder`` (the five strided convolutions), ``bottleneck`` (conv 512->4000 k4 valid, as
    ``Linear(8192, 4000)`` unless ``conv_bottleneck``), ``bottleneck_norm`` (BN over the 4000-d code), ``expand``
    (full conv 4000->512 k4, as ``Linear(4000, 8192)`` unless ``conv_bottleneck``), ``decoder``.
    """

    def __init__(
        self,
        bottleneck: int = BOTTLENECK,
        nef: int = 64,
        ngf: int = 64,
        channels: int = 3,
        output_size: int = 64,
        conv_bottleneck: bool = False,
    ) -> None:
        super().__init__()
        if output_size not in (64, 128):
            raise ValueError(f"output_size must be 64 (centre) or 128 (whole image), got {output_size}")
        self.bottleneck_dim = bottleneck
        self.ngf = ngf
        self.output_size = output_size
        self.conv_bottleneck = conv_bottleneck
        self.encoder = nn.Sequential(
            *_down(channels, nef, bn=False),  # 64x64
            *_down(nef, nef),  # 32x32
            *_down(nef, nef * 2),  # 16x16
            *_down(nef * 2, nef * 4),  # 8x8
            *_down(nef * 4, nef * 8),  # 4x4
        )
        self.bottleneck: nn.Module
        self.bottleneck_norm: nn.Module
        self.expand: nn.Module
        if conv_bottleneck:
            self.bottleneck = nn.Conv2d(nef * 8, bottleneck, kernel_size=4, bias=False)
            self.bottleneck_norm = nn.BatchNorm2d(bottleneck)
            self.expand = nn.ConvTranspose2d(bottleneck, ngf * 8, kernel_size=4, bias=False)
        else:
            self.bottleneck = nn.Linear(nef * 8 * 16, bottleneck, bias=False)
            self.bottleneck_norm = nn.BatchNorm1d(bottleneck)
            self.expand = nn.Linear(bottleneck, ngf * 8 * 16, bias=False)
        self.bottleneck_act = nn.LeakyReLU(0.2, inplace=True)
        layers: list[nn.Module] = [
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(inplace=True),  # 4x4
            *_up(ngf * 8, ngf * 4),  # 8x8
            *_up(ngf * 4, ngf * 2),  # 16x16
            *_up(ngf * 2, ngf),  # 32x32
        ]
        if output_size == 128:
            layers += _up(ngf, ngf)  # 64x64 (not in the Lua code: whole-image prediction)
        layers += [nn.ConvTranspose2d(ngf, channels, kernel_size=4, stride=2, padding=1, bias=False), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        lua_init_(self)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, 3, 128, 128]`` -> ``code [N, bottleneck]`` (after BN and LeakyReLU)."""
        if images.shape[-2:] != (128, 128):
            raise ValueError(f"the inpainting generator takes 128x128 images, got {tuple(images.shape[-2:])}")
        feats = self.encoder(images)
        if self.conv_bottleneck:
            code = self.bottleneck_act(self.bottleneck_norm(self.bottleneck(feats)))
            return code.flatten(1)
        return self.bottleneck_act(self.bottleneck_norm(self.bottleneck(feats.flatten(1))))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """``code [N, bottleneck]`` -> ``prediction [N, 3, S, S]``."""
        if self.conv_bottleneck:
            maps = self.expand(code[:, :, None, None])
        else:
            maps = self.expand(code).view(code.shape[0], self.ngf * 8, 4, 4)
        return self.decoder(maps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


class InpaintingDiscriminator(nn.Module):
    """Adversarial discriminator of the Lua code (``conditionAdv=0``): ``patch [N, 3, S, S]`` -> ``logit [N]``.

    Returns logits (the Lua ``Sigmoid`` is folded into ``BCEWithLogits`` for numerical stability); use
    ``torch.sigmoid`` for probabilities. ``S`` is 64 (the centre patch) or 128 (whole image, random masks).
    """

    def __init__(self, ndf: int = 64, channels: int = 3, input_size: int = 64) -> None:
        super().__init__()
        if input_size not in (64, 128):
            raise ValueError(f"input_size must be 64 or 128, got {input_size}")
        self.input_size = input_size
        layers = _down(channels, ndf, bn=False)  # 32x32
        if input_size == 128:
            layers += _down(ndf, ndf)  # not in the Lua code: whole-image discriminator
        layers += [
            *_down(ndf, ndf * 2),  # 16x16
            *_down(ndf * 2, ndf * 4),  # 8x8
            *_down(ndf * 4, ndf * 8),  # 4x4
            nn.Conv2d(ndf * 8, 1, kernel_size=4, bias=False),  # 1x1
        ]
        self.net = nn.Sequential(*layers)
        lua_init_(self)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        if patch.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"the discriminator takes {self.input_size}x{self.input_size} patches, got {tuple(patch.shape[-2:])}"
            )
        return self.net(patch).flatten()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (weights and BatchNorm scale/shift; there are no biases)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_conv_layout(state: Mapping[str, torch.Tensor], nef: int = 64, ngf: int = 64) -> dict[str, torch.Tensor]:
    """Generator state dict with the linear bottleneck -> the convolutional (Lua) layout.

    ``bottleneck.weight [4000, 8192]`` -> ``[4000, 512, 4, 4]`` (Conv2d); ``expand.weight [8192, 4000]`` ->
    ``[4000, 512, 4, 4]`` (ConvTranspose2d); every other entry is unchanged.
    """
    out = dict(state)
    w = state["bottleneck.weight"]
    if w.dim() == 2:
        out["bottleneck.weight"] = w.reshape(w.shape[0], nef * 8, 4, 4)
    w = state["expand.weight"]
    if w.dim() == 2:
        out["expand.weight"] = w.t().reshape(w.shape[1], ngf * 8, 4, 4)
    return out


def from_conv_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``to_conv_layout``: convolutional bottleneck weights -> the linear layout used for training."""
    out = dict(state)
    w = state["bottleneck.weight"]
    if w.dim() == 4:
        out["bottleneck.weight"] = w.reshape(w.shape[0], -1)
    w = state["expand.weight"]
    if w.dim() == 4:
        out["expand.weight"] = w.reshape(w.shape[0], -1).t().contiguous()
    return out
