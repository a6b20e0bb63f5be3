"""What every transfer harness repeats: mixed precision, the non-finite-loss stop, Caffe's per-parameter learning
rate multipliers and the step learning-rate schedule."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from transfer.config import ProtocolError

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s type when ``precision`` is ``bf16``; nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ProtocolError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NonFiniteLossError(ProtocolError):
    """The training loss became NaN or infinite; training stopped before the weights changed. The message names
    the iteration and what to try."""

    def __init__(self, loss: float | str, iteration: int, hint: str = "lower --lr or check the weights") -> None:
        super().__init__(f"non-finite training loss {loss} at iteration {iteration}; {hint}")
        self.iteration = iteration


def caffe_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    is_bias: Callable[[str], bool] = lambda name: name.endswith("bias"),
    bias_lr_mult: float = 2.0,
    bias_decay_mult: float = 0.0,
) -> list[dict[str, Any]]:
    """SGD parameter groups with Caffe's per-layer settings: the parameters ``is_bias`` selects learn at
    ``bias_lr_mult`` times the rate with ``bias_decay_mult`` times the weight decay (Caffe's ``lr_mult: 2``,
    ``decay_mult: 0`` on biases, as the AlexNet, Fast R-CNN and FCN prototxts set them); the others at 1x and 1x.
    Frozen parameters are left out. Each group keeps its ``lr_mult`` for :func:`set_learning_rate`."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    weights = [p for n, p in trained if not is_bias(n)]
    biases = [p for n, p in trained if is_bias(n)]
    if not weights and not biases:
        raise ProtocolError("nothing to train: every layer is frozen")
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": biases, "lr": lr * bias_lr_mult, "weight_decay": weight_decay * bias_decay_mult,
         "lr_mult": bias_lr_mult},
    ]  # fmt: skip


def step_lr(base_lr: float, gamma: float, step: int, iteration: int) -> float:
    """Caffe's ``step`` policy: ``base_lr * gamma ** (iteration // step)``; a constant rate when ``step`` <= 0."""
    return base_lr * gamma ** (iteration // step) if step > 0 else base_lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every group's rate to ``lr`` times its ``lr_mult``; returns ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the network itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
