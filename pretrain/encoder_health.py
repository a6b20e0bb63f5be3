"""How much of a trained AlexNet encoder is alive: the fraction of each convolution's channels that never activate.

A ReLU channel whose output is zero at every position of every image passes no signal forward and gets no gradient
back, so it stays dead when the encoder is fine-tuned. Adam at a learning rate too high for an encoder without
normalisation leaves many such channels (measured on the demo data: after 3,000 iterations of 16 at lr 1e-3, 82% of
conv2's and 63% of conv3's channels were dead for the context encoder; at lr 2e-4, 1% and 10%;
docs/protocols/cpu-preset.md), and a trunk in that state transfers worse than a random one. ``bench pretrain``
measures it at the end of a run on a few of its own training images and writes it into ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pretrain.models.alexnet import CONV_INDEX, LAYER_OUTPUT_INDEX, alexnet_trunk

#: above this dead fraction in any convolution, ``bench pretrain`` prints a warning
DEAD_WARNING = 0.5


@torch.no_grad()
def dead_channel_fractions(trunk: nn.Sequential, images: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """``{conv1: fraction, ..., conv5: fraction}``: for each convolution, the fraction of its output channels whose
    ReLU output is 0 at every position of every image of ``images`` ([N, 3, H, W], the encoder's input scale)."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty [N, 3, H, W] batch, got shape {tuple(images.shape)}")
    conv_at = {LAYER_OUTPUT_INDEX[name]: name for name in CONV_INDEX}  # trunk index of each conv's ReLU output
    alive: dict[str, torch.Tensor] = {}
    was_training = trunk.training
    trunk.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size]
            for index, layer in enumerate(trunk):
                x = layer(x)
                name = conv_at.get(index)
                if name is not None:
                    active = (x > 0).flatten(2).any(dim=2).any(dim=0)  # [C]
                    alive[name] = active if name not in alive else alive[name] | active
    finally:
        trunk.train(was_training)
    return {name: round(1.0 - float(a.float().mean()), 4) for name, a in alive.items()}


def encoder_dead_channels(
    encoder_state: Mapping[str, torch.Tensor], widths: str, images: torch.Tensor
) -> dict[str, float]:
    """:func:`dead_channel_fractions` of an encoder given as its state dict (torchvision ``features`` keys)."""
    trunk = alexnet_trunk(widths)  # type: ignore[arg-type]
    trunk.load_state_dict({k: v.float() for k, v in encoder_state.items()}, strict=True)
    return dead_channel_fractions(trunk, images.float())


def dead_warning(fractions: Mapping[str, float]) -> str | None:
    """A one-line warning naming the layers where more than :data:`DEAD_WARNING` of the channels are dead."""
    bad = [f"{name} {100 * f:.0f}%" for name, f in fractions.items() if f > DEAD_WARNING]
    if not bad:
        return None
    return (
        f"dead channels (never active on the checked training images): {', '.join(bad)}; such an "
        "encoder transfers poorly; a lower --lr keeps more channels alive"
    )
