"""Normalised masked L2 and the overlap band weights, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from pretrain.losses import masked_l2_loss, overlap_band_weight
from pretrain.masks import CenterMask

# target [1, 2, 2, 2]: channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [0, 2]]; prediction 0
TARGET = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 2.0]]]])
MASK = torch.tensor([[[[True, False], [False, True]]]])  # pixels (0, 0) and (1, 1) dropped


def test_masked_l2_hand_computed() -> None:
    pred = torch.zeros_like(TARGET)
    # dropped values: (0,0): 1 and 0; (1,1): 4 and 2 -> 1 + 0 + 16 + 4 = 21 over 2 pixels x 2 channels
    assert masked_l2_loss(pred, TARGET, MASK).item() == pytest.approx(21 / 4)


def test_masked_l2_with_weights_hand_computed() -> None:
    pred = torch.zeros_like(TARGET)
    weight = torch.tensor([[[[10.0, 1.0], [1.0, 2.0]]]])
    # 10 * (1 + 0) + 2 * (16 + 4) = 50; weights do not enter the denominator (Lua: / nElement)
    assert masked_l2_loss(pred, TARGET, MASK, weight).item() == pytest.approx(50 / 4)


def test_unmasked_l2_is_the_whole_image_mean() -> None:
    pred = torch.zeros_like(TARGET)
    # 1 + 4 + 9 + 16 + 0 + 1 + 0 + 4 = 35 over 8 values (the autoencoder baseline)
    assert masked_l2_loss(pred, TARGET, None).item() == pytest.approx(35 / 8)
    weight = torch.full((1, 1, 2, 2), 2.0)
    assert masked_l2_loss(pred, TARGET, None, weight).item() == pytest.approx(70 / 8)


def test_masked_l2_gradient_only_on_dropped_pixels_and_empty_mask() -> None:
    pred = torch.zeros_like(TARGET, requires_grad=True)
    masked_l2_loss(pred, TARGET, MASK).backward()
    assert pred.grad is not None
    grad = pred.grad[0]
    assert (grad[:, 0, 1] == 0).all() and (grad[:, 1, 0] == 0).all()
    assert grad[0, 1, 1].item() == pytest.approx(2 * (0 - 4) / 4)
    pred2 = torch.ones_like(TARGET, requires_grad=True)
    loss = masked_l2_loss(pred2, TARGET, torch.zeros_like(MASK))
    assert loss.item() == 0.0
    loss.backward()
    assert pred2.grad is not None and (pred2.grad == 0).all()


def test_masked_l2_bf16_inputs_and_shape_errors() -> None:
    pred = torch.zeros_like(TARGET).bfloat16()
    loss = masked_l2_loss(pred, TARGET.bfloat16(), MASK)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(21 / 4)
    with pytest.raises(ValueError, match="shape"):
        masked_l2_loss(pred, TARGET[:, :1], MASK)
    with pytest.raises(ValueError, match="mask"):
        masked_l2_loss(pred.float(), TARGET, MASK[:, 0])


def test_overlap_band_weight_small_case() -> None:
    region = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    region[..., 1:5, 1:5] = True
    hole = torch.zeros_like(region)
    hole[..., 2:4, 2:4] = True
    w = overlap_band_weight(hole, region)
    expected = torch.ones(6, 6)
    expected[1:5, 1:5] = 10.0
    expected[2:4, 2:4] = 1.0
    assert w.dtype == torch.float32 and torch.equal(w[0, 0], expected)
    assert torch.equal(overlap_band_weight(hole, region, band_weight=3.0).unique(), torch.tensor([1.0, 3.0]))


def test_overlap_band_of_the_128px_inpainting_net() -> None:
    gen = torch.Generator().manual_seed(0)
    region = CenterMask(overlap=0).sample(2, 128, 128, gen)
    hole = CenterMask(overlap=4).sample(2, 128, 128, gen)
    w = overlap_band_weight(hole, region)
    assert int((w == 10).sum()) == 2 * (64 * 64 - 56 * 56)
    assert (w[:, :, 36:92, 36:92] == 1).all() and (w[:, :, :32] == 1).all()


def _reference_l2(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The unfused expression: sum(w * M * (pred - target)^2) / (C * sum(M))."""
    return (weight * mask * (pred - target) ** 2).sum() / (mask.sum() * pred.shape[1])


def test_fused_masked_l2_matches_the_unfused_expression_and_its_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 1, 9, 7, generator=gen) < 0.4
    weight = torch.rand(2, 1, 9, 7, generator=gen, dtype=torch.float64) * 3
    pred = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p: masked_l2_loss(p, target, mask, weight), (pred,))
    ref = pred.detach().clone().requires_grad_()
    _reference_l2(ref, target, mask, weight).backward()
    masked_l2_loss(pred, target, mask, weight).backward()
    assert pred.grad is not None and ref.grad is not None
    assert torch.allclose(pred.grad, ref.grad)


def test_masked_l2_channels_last_prediction_same_loss_and_gradient_layout() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    mask = torch.rand(4, 1, 16, 16, generator=gen) < 0.3
    dense = torch.randn(4, 3, 16, 16, generator=gen)
    a = dense.clone().requires_grad_()
    b = dense.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    la, lb = masked_l2_loss(a, target, mask), masked_l2_loss(b, target, mask)
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    assert a.grad is not None and b.grad is not None
    assert torch.allclose(a.grad, b.grad) and b.grad.is_contiguous(memory_format=torch.channels_last)


def test_masked_l2_ignores_non_finite_values_outside_the_mask_and_returns_pred_dtype_gradient() -> None:
    pred = torch.zeros_like(TARGET)
    pred[0, :, 0, 1] = float("nan")  # (0, 1) is not dropped
    pred = pred.bfloat16().requires_grad_()
    loss = masked_l2_loss(pred, TARGET, MASK)
    assert loss.item() == pytest.approx(21 / 4)
    loss.backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16
    assert torch.isfinite(pred.grad).all() and (pred.grad[0, :, 0, 1] == 0).all()
