"""Fast R-CNN box coder, IoU, clipping and flipping."""

from __future__ import annotations

import torch

from transfer.detection.boxes import BoxCoder, box_iou_inclusive, clip_boxes, flip_boxes


def random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 400
    wh = torch.rand(n, 2, generator=gen) * 180 + 20  # size ratios below the exp clamp of log(1000 / 16)
    return torch.cat([xy, xy + wh - 1], dim=1)


def test_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    proposals, targets = random_boxes(500, gen), random_boxes(500, gen)
    coder = BoxCoder()
    deltas = coder.encode(proposals, targets)
    torch.testing.assert_close(coder.decode(proposals, deltas), targets, atol=1e-3, rtol=1e-5)
    # class-specific layout [N, 4K]: every class slot decodes independently
    multi = torch.cat([deltas, torch.zeros_like(deltas)], dim=1)
    decoded = coder.decode(proposals, multi)
    torch.testing.assert_close(decoded[:, :4], targets, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(decoded[:, 4:], proposals, atol=1e-3, rtol=1e-5)


def test_encode_matches_hand_computed_normalised_targets() -> None:
    # 10x10 proposal, target shifted 5 px right and twice as tall: dx = .5, dy = .5, dw = 0, dh = log 2
    deltas = BoxCoder().encode(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[5.0, 0, 14, 19]]))
    expected = torch.tensor([[0.5 / 0.1, 0.5 / 0.1, 0.0, torch.log(torch.tensor(2.0)).item() / 0.2]])
    torch.testing.assert_close(deltas, expected)


def test_iou_clip_and_flip() -> None:
    iou = box_iou_inclusive(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[0.0, 0, 9, 19], [10.0, 10, 19, 19]]))
    torch.testing.assert_close(iou, torch.tensor([[0.5, 0.0]]))
    clipped = clip_boxes(torch.tensor([[-5.0, -1, 120, 50]]), width=100, height=40)
    assert clipped.tolist() == [[0.0, 0.0, 99.0, 39.0]]
    flipped = flip_boxes(torch.tensor([[0.0, 3, 9, 7]]), width=100)
    assert flipped.tolist() == [[90.0, 3.0, 99.0, 7.0]]
    assert flip_boxes(flipped, width=100).tolist() == [[0.0, 3.0, 9.0, 7.0]]
