"""Reconstruction loss of the context encoder (Pathak et al. 2016, Sec. 3.2, Eq. (1)).

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

from typing import Any

import torch


def masked_l2_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised masked L2 (see the module docstring), a scalar.

    pred, target: ``[N, C, H, W]`` in any memory layout (a channels-last prediction is not copied); mask: bool
    ``[N, 1, H, W]`` (True = dropped, the pixels that count) or None (every pixel counts); weight: optional per-pixel
    weights ``[N, 1, H, W]`` broadcast over channels. A mask with no dropped pixel gives 0 (still connected to
    ``pred`` so ``backward`` works); values outside the mask never enter the loss or its gradient, even when they
    are not finite. Computed in float32 whatever the input dtype (bf16 autocast outputs are upcast; float64 stays
    float64); the gradient comes back in ``pred``'s dtype.

    One fused autograd function: the forward pass makes the masked difference once, keeps ``2 w M (pred -
    target) / denominator`` as the gradient and sums the squares with a dot product; the backward pass only scales
    the kept gradient (the unfused expression made about four full-size temporaries each way).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must be [N, 1, H, W], got {tuple(mask.shape)}")
        mask = mask.to(device=pred.device, dtype=torch.bool)
    if weight is not None:
        weight = weight.to(device=pred.device, dtype=torch.promote_types(pred.dtype, torch.float32))
    return _MaskedL2.apply(pred, target, mask, weight)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor (contiguous or channels-last), a copy otherwise."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # a view: the permuted tensor is contiguous
    return t.reshape(-1)


class _MaskedL2(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None,
        weight: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = torch.promote_types(pred.dtype, torch.float32)  # float32, or float64 for float64 inputs
        diff = pred.to(dtype) - target.to(dtype)  # a new tensor in pred's layout
        if mask is not None:
            diff.masked_fill_(~mask, 0.0)
            denom = (mask.sum() * pred.shape[1]).clamp(min=1).to(dtype)
        else:
            denom = torch.tensor(float(diff.numel()), dtype=dtype, device=diff.device)
        weighted = diff if weight is None else diff * weight
        total = torch.dot(_flat(diff), _flat(weighted))  # sum of w * M * (pred - target)^2 (M is 0 or 1)
        grad = weighted.mul_(2.0 / denom)  # d loss / d pred, kept for backward
        ctx.save_for_backward(grad)
        ctx.pred_dtype = pred.dtype
        return total / denom

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return (grad * grad_output).to(ctx.pred_dtype), None, None, None


def overlap_band_weight(mask_hole: torch.Tensor, mask_region: torch.Tensor, band_weight: float = 10.0) -> torch.Tensor:
    """Per-pixel L2 weights ``[N, 1, H, W]`` (float32): ``band_weight`` on the overlap ring, 1 elsewhere.

    The ring is inside the predicted region (``mask_region``, e.g. the 64x64 centre) but outside the dropped hole
    (``mask_hole``, the centre shrunk by the overlap): the network sees those pixels yet must predict them, and the
    official code weights their L2 ``overlapL2Weight = 10`` times (Pathak et al. 2016, Sec. 5.1; ``train.lua``).
    """
    if mask_hole.shape != mask_region.shape:
        raise ValueError(f"mask_hole {tuple(mask_hole.shape)} and mask_region {tuple(mask_region.shape)} differ")
    ring = mask_region.bool() & ~mask_hole.bool()
    ones = torch.ones(ring.shape, dtype=torch.float32, device=ring.device)
    return torch.where(ring, torch.full_like(ones, band_weight), ones)
