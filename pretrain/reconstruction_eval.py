"""Held-out reconstruction error of a context encoder (or autoencoder) against mean fill.

The feature-learning context encoder is trained with an L2 loss on the dropped region only, so the direct measure
of whether it learned anything is that loss on images it never saw, with masks drawn from a fixed seed, next to
the simplest fill that uses the context: every dropped pixel set to the mean colour of the image's visible pixels.
A network at its initialisation predicts roughly a constant and loses to that fill; a trained one beats it.

Values are mean squared errors over the dropped pixels and the three channels, in the networks' [-1, 1] range
(multiply by 1/4 for the [0, 1] range of the inpainting tables).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pretrain.masks import PAPER_FILL, apply_mask
from pretrain.methods import PretrainMethod


def mean_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images [N, 3, H, W]`` with every pixel where ``mask [N, 1, H, W]`` is True set to the mean colour of that
    image's visible pixels."""
    keep = (~mask).to(images.dtype)
    mean = (images * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
    return torch.where(mask, mean.expand_as(images), images)


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    m = mask.expand_as(target)
    diff = (pred.float() - target.float())[m]
    return float((diff**2).sum()), int(diff.numel())


@torch.no_grad()
def masked_region_errors(
    method: PretrainMethod, batches: Iterable[torch.Tensor], seed: int = 0, network: str = "model"
) -> dict[str, float]:
    """Masked-region MSE of ``method``'s network and of mean fill on ``batches`` of ``[N, 3, H, W]`` images in
    [-1, 1]. Masks come from the method's own mask strategy, drawn from a generator seeded with ``seed`` (the same
    masks for every method evaluated with the same seed); the network sees the masked input filled as in training.
    Returns ``{"l2_network", "l2_mean_fill", "pixels"}``."""
    net = method.networks[network]
    was_training = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    sums = {"network": 0.0, "mean_fill": 0.0}
    count = 0
    try:
        for images in batches:
            images = images.to(method.device)
            mask = method.build_mask_generator().sample(images.shape[0], *images.shape[2:], gen).to(images.device)
            inputs = apply_mask(images, mask, fill=PAPER_FILL)
            with method.autocast():
                pred = net(method.to_layout(inputs))
            if pred.shape[-2:] != images.shape[-2:]:
                raise ValueError("masked_region_errors needs a network whose output is aligned with its input")
            s, n = _masked_mse(pred, images, mask)
            sums["network"] += s
            sums["mean_fill"] += _masked_mse(mean_fill(images, mask), images, mask)[0]
            count += n
    finally:
        net.train(was_training)
    if count == 0:
        raise ValueError("no dropped pixel in the evaluation batches")
    return {"l2_network": sums["network"] / count, "l2_mean_fill": sums["mean_fill"] / count, "pixels": float(count)}
