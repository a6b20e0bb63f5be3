"""FCN training: per-pixel cross-entropy (255 ignored), SGD with momentum, whole images, optional torchrun/DDP.

Protocol (the released FCN-AlexNet, ``fcn.berkeleyvision.org/voc-fcn-alexnet``; see
docs/protocols/segmentation.md):

- loss ``SoftmaxWithLoss(normalize=True, ignore_label=255)``: each image's loss is the mean over its labelled
  pixels (``normalization="valid"``); ``normalization="none"`` sums over pixels (``normalize=False``, the FCN-VGG
  nets, which go with lr 1e-10 and momentum 0.99 at batch 1);
- solver: SGD, fixed lr 1e-4 ("lr for normalized softmax"), momentum 0.9, weight decay 5e-4, ``iter_size: 20``
  (20 single-image forward/backward passes per update, gradients averaged) -> ``batch_size`` 20 here;
- ``score_fr`` bias: lr x2 and no weight decay (``lr_mult: 2, decay_mult: 0``); every other layer lr x1, decay x1;
  up-sampling frozen unless the model was built with ``learn_upsampling``.

``train_step`` runs one update on a list of samples: whole images of different sizes are forwarded one by one
(Caffe's batch of 1 with ``iter_size``), samples of equal size are stacked. Each image weighs the same in the update.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain.distributed import DistributedContext
from pretrain.engine import truncate_log_after
from pretrain.preemption import Preempted, PreemptionGuard, ignore_stop_signals
from pretrain.sampling import IterationBatchSampler
from transfer.engine import NonFiniteLossError, autocast, caffe_param_groups, unwrap
from transfer.resumable import TrainingCheckpoint
from transfer.segmentation.data import SegmentationDataset, collate_list
from transfer.voc import IGNORE_LABEL

LossNormalization = Literal["valid", "none"]
Sample = tuple[torch.Tensor, torch.Tensor, str]


def segmentation_loss(scores: torch.Tensor, masks: torch.Tensor, normalization: LossNormalization) -> torch.Tensor:
    """Mean over images of each image's cross-entropy (scores [N, C, H, W], masks [N, H, W] with 255 ignored).

    ``valid``: an image's loss is divided by its number of labelled pixels (Caffe ``normalize: true``);
    ``none``: summed over its pixels (Caffe ``normalize: false``). An image with no labelled pixel adds 0.
    """
    per_pixel = F.cross_entropy(scores.float(), masks, ignore_index=IGNORE_LABEL, reduction="none")
    per_image = per_pixel.flatten(1).sum(1)
    if normalization == "valid":
        per_image = per_image / (masks != IGNORE_LABEL).flatten(1).sum(1).clamp(min=1)
    elif normalization != "none":
        raise ValueError(f"loss normalization must be 'valid' or 'none', got {normalization!r}")
    return per_image.mean()


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with FCN's per-layer multipliers: score-layer biases at 2x lr without decay, the rest 1x with decay."""
    groups = caffe_param_groups(unwrap(model), lr, weight_decay, is_bias=_is_score_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _is_score_bias(name: str) -> bool:
    return name.startswith(("score_fr.", "score_skips.")) and name.endswith("bias")


def _chunks(samples: list[Sample]) -> list[list[Sample]]:
    """Consecutive runs of samples with equal image size (stacked into one forward pass each)."""
    out: list[list[Sample]] = []
    for s in samples:
        if out and out[-1][0][0].shape == s[0].shape:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    *,
    normalization: LossNormalization = "valid",
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> float:
    """One SGD update on ``samples`` (this rank's share of the batch). Returns the mean per-image loss.

    Gradients are accumulated over equal-size chunks, each weighted by its share of the images; under DDP only the
    last chunk synchronises gradients (DDP then averages over ranks, so every image in the global batch weighs the
    same when ranks hold equal shares).
    """
    device = torch.device(device)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    chunks = _chunks(samples)
    total = 0.0
    for k, chunk in enumerate(chunks):
        images = torch.stack([s[0] for s in chunk]).to(device, non_blocking=True)
        masks = torch.stack([s[1] for s in chunk]).to(device, non_blocking=True)
        sync = k == len(chunks) - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        ctx = nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        with ctx:
            with autocast(device, precision):
                scores = model(images)
            loss = segmentation_loss(scores, masks, normalization)
            (loss * (len(chunk) / len(samples))).backward()
        total += float(loss.detach()) * len(chunk)
    optimizer.step()
    return total / len(samples)


def train_fcn(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    ctx: DistributedContext,
    iterations: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    normalization: LossNormalization,
    precision: str = "fp32",
    workers: int = 0,
    seed: int = 0,
    log_path: Path | None = None,
    log_every: int = 20,
    progress: bool = True,
    checkpoints: TrainingCheckpoint | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train for ``iterations`` updates of ``batch_size`` images (the global batch, split over ranks).

    With ``checkpoints`` the run writes its rolling checkpoint when due and when SIGTERM/SIGINT asks it to stop
    (then raising :class:`pretrain.preemption.Preempted`); ``resume`` (this rank's view of that checkpoint,
    ``TrainingCheckpoint.load``) continues it bit for bit: weights, optimizer, RNG states, and the sampler started at
    the saved iteration. Returns a summary (final and mean loss of the last ``log_every`` updates, images per
    second). A non-finite loss stops training with ``NonFiniteLossError``.
    """
    if iterations <= 0:
        return {"iterations": 0, "images": 0}
    if batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of the number of processes {ctx.world_size}")
    if resume is not None and checkpoints is None:
        raise ValueError("resume needs the checkpoints it came from")
    per_rank = batch_size // ctx.world_size
    if ctx.distributed:
        ddp_args: dict[str, Any] = {"device_ids": [ctx.device]} if ctx.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_args)
    optimizer = build_optimizer(model, lr, momentum, weight_decay)
    start, recent = 0, []
    if resume is not None and checkpoints is not None:
        start = checkpoints.restore(resume, unwrap(model), optimizer)
        recent = list((resume.get("stats") or {}).get("recent", []))
        if log_path is not None and ctx.is_main:
            truncate_log_after(log_path, start)
    sampler = IterationBatchSampler(len(dataset), per_rank, start, iterations, seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_list,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,  # walked once; and ignore_stop_signals' workers must not persist (its docstring)
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator(),  # the loader's base seed is not drawn from the global RNG dropout uses
    )
    show = progress and ctx.is_main
    bar: Any = None
    if show:
        bar = tqdm(total=iterations, initial=start, desc="fcn train", unit="it", dynamic_ncols=True)
    log = log_path.open("a") if (log_path is not None and ctx.is_main) else None
    begin = time.perf_counter()
    try:
        with ExitStack() as stack:
            guard = stack.enter_context(PreemptionGuard()) if checkpoints is not None else None
            for it, samples in enumerate(loader, start=start + 1):
                loss = train_step(
                    model, optimizer, samples, normalization=normalization, device=ctx.device, precision=precision
                )
                if not math.isfinite(loss):
                    raise NonFiniteLossError(loss, it, "lower --lr")
                recent = ([*recent, loss])[-log_every:]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if log is not None and (it % log_every == 0 or it == iterations):
                    record = {"iteration": it, "loss": loss, "loss_avg": sum(recent) / len(recent)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if checkpoints is not None and guard is not None:
                    stop = checkpoints.stop_requested(guard.requested)
                    if stop or checkpoints.due(it, iterations):
                        path = checkpoints.save(it, unwrap(model), optimizer, stats={"recent": recent})
                        if stop:
                            raise Preempted(guard.signal_name or "a signal to another process", it, str(path))
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    elapsed = time.perf_counter() - begin
    trained = iterations - start
    return {
        "iterations": iterations,
        "images": iterations * batch_size,
        "final_loss": recent[-1] if recent else None,
        "loss_avg_last": sum(recent) / len(recent) if recent else None,
        "train_time_s": elapsed,
        "images_per_s": trained * batch_size / elapsed if elapsed > 0 and trained > 0 else None,
    }
