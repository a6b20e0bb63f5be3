"""Fast R-CNN training: the multi-task loss, one SGD step and the iteration loop.

Protocol (Girshick 2015, "Fast R-CNN", §2.3 and §4; ``models/CaffeNet/solver.prototxt`` of rbgirshick/fast-rcnn):
SGD, momentum 0.9, weight decay 5e-4 (weights only, biases at twice the learning rate without decay: Caffe's
``lr_mult``/``decay_mult``), base learning rate 0.001; for VOC07 trainval "30k mini-batch iterations, then lower the
learning rate to 0.0001 and train for another 10k iterations" (40k in all, step at 30k). Loss: softmax log loss over
all sampled RoIs plus smooth-L1 (sigma 1) on the normalised deltas of the ground-truth class of foreground RoIs,
divided by the number of RoIs in the mini-batch (Fast R-CNN's ``SmoothL1Loss`` normalisation), weight 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from transfer.detection.config import DetectionConfig
from transfer.engine import NonFiniteLossError, autocast, set_learning_rate, step_lr


def fast_rcnn_loss(
    cls_logits: torch.Tensor, bbox_deltas: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classification loss, box loss)`` for ``cls_logits [R, C]``, ``bbox_deltas [R, 4C]``, ``labels [R]`` and
    normalised ``targets [R, 4]`` (zero rows for background)."""
    n = max(1, labels.numel())
    loss_cls = F.cross_entropy(cls_logits.float(), labels, reduction="sum") / n
    fg = torch.nonzero(labels > 0).flatten()
    if fg.numel() == 0:
        return loss_cls, bbox_deltas.sum() * 0.0
    deltas = bbox_deltas.float().reshape(len(labels), -1, 4)[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(deltas, targets[fg].float(), beta=1.0, reduction="sum") / n
    return loss_cls, loss_box


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "fp32",
    iteration: int = 0,
) -> dict[str, float]:
    """One SGD step on a collated mini-batch (``images``, ``rois``, ``labels``, ``targets``); returns the losses.
    A non-finite loss raises ``NonFiniteLossError`` before the weights change."""
    model.train()
    images = batch["images"].to(device, non_blocking=True)
    rois = batch["rois"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    targets = batch["targets"].to(device, non_blocking=True)
    with autocast(device, precision):
        cls_logits, deltas = model(images, rois)
    loss_cls, loss_box = fast_rcnn_loss(cls_logits, deltas, labels, targets)
    loss = loss_cls + loss_box
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"(cls {loss_cls.item()}, box {loss_box.item()})", iteration)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": float(loss.item()),
        "loss_cls": float(loss_cls.item()),
        "loss_box": float(loss_box.item()),
        "fg_rois": int((labels > 0).sum().item()),
        "rois": int(labels.numel()),
    }


def train(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    cfg: DetectionConfig,
    device: torch.device,
    progress: bool = True,
    start: int = 0,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run iterations ``start .. cfg.iterations - 1`` over ``batches`` (which yields the batches of exactly those
    iterations); ``after_step(done)`` runs after each (checkpoints, preemption). Returns the mean losses of the
    last 20 iterations (Caffe's ``average_loss``-style smoothing) and the iterations done."""
    recent: list[dict[str, float]] = []
    bar = tqdm(total=cfg.iterations, initial=start, desc="fast r-cnn train", unit="it", disable=not progress)
    done = start
    try:
        for it, batch in enumerate(batches, start=start):
            if it >= cfg.iterations:
                break
            lr = set_learning_rate(optimizer, step_lr(cfg.lr, cfg.lr_gamma, cfg.lr_step, it))
            stats = train_step(model, batch, optimizer, device, cfg.precision, it)
            recent = [*recent[-19:], stats]
            done = it + 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", cls=f"{stats['loss_cls']:.3f}", lr=f"{lr:g}")
            if after_step is not None:
                after_step(done)
    finally:
        bar.close()
    summary = {k: sum(r[k] for r in recent) / len(recent) for k in ("loss", "loss_cls", "loss_box")} if recent else {}
    summary["iterations"] = float(done)
    return summary
