"""Reconstruction loss of the context encoder (Pathak et al. 2016, eq. 1; PAPER.md §4).

``L_rec(x) = || M (.) (x - F((1 - M) (.) x)) ||_2^2`` with ``M = 1`` on dropped pixels, normalised by the number of
dropped values: ``masked_l2_loss`` returns

    sum_{n,c,h,w} weight[n,h,w] * M[n,h,w] * (pred - target)[n,c,h,w]^2  /  (C * sum_{n,h,w} M[n,h,w])

i.e. the mean squared error over the dropped pixel-channel values (with ``weight = 1``). Weights do not enter the
denominator: this is the official Lua code's normalisation (``train.lua``: the gradient of the weighted L2 is
``2 * wtl2Matrix * (fake - real) / fake:nElement()``), so a ring weighted 10x adds to the loss instead of being
averaged away. Without a mask (the autoencoder baseline: the whole image is reconstructed) the denominator is
``N * C * H * W``.
"""

from __future__ import annotations

import torch


def masked_l2_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised masked L2 (see the module docstring), a scalar.

    pred, target: ``[N, C, H, W]``; mask: bool ``[N, 1, H, W]`` (True = dropped, the pixels that count) or None
    (every pixel counts); weight: optional per-pixel weights ``[N, 1, H, W]`` broadcast over channels. A mask with no
    dropped pixel gives 0 (still connected to ``pred`` so ``backward`` works). Computed in float32 whatever the
    input dtype (bf16 autocast outputs are upcast).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    diff2 = (pred.float() - target.float()).pow(2)
    if weight is not None:
        diff2 = diff2 * weight.float()
    if mask is None:
        return diff2.mean()
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [N, 1, H, W], got {tuple(mask.shape)}")
    m = mask.to(device=diff2.device, dtype=torch.bool)
    count = m.sum() * pred.shape[1]
    total = torch.where(m, diff2, torch.zeros((), dtype=diff2.dtype, device=diff2.device)).sum()
    return total / count.clamp(min=1).to(total.dtype)


def overlap_band_weight(mask_hole: torch.Tensor, mask_region: torch.Tensor, band_weight: float = 10.0) -> torch.Tensor:
    """Per-pixel L2 weights ``[N, 1, H, W]`` (float32): ``band_weight`` on the overlap ring, 1 elsewhere.

    The ring is inside the predicted region (``mask_region``, e.g. the 64x64 centre) but outside the dropped hole
    (``mask_hole``, the centre shrunk by the overlap): the network sees those pixels yet must predict them, and the
    official code weights their L2 ``overlapL2Weight = 10`` times (PAPER.md §2).
    """
    if mask_hole.shape != mask_region.shape:
        raise ValueError(f"mask_hole {tuple(mask_hole.shape)} and mask_region {tuple(mask_region.shape)} differ")
    ring = mask_region.bool() & ~mask_hole.bool()
    ones = torch.ones(ring.shape, dtype=torch.float32, device=ring.device)
    return torch.where(ring, torch.full_like(ones, band_weight), ones)
