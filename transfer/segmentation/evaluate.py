"""FCN evaluation on VOC2012 ``val``: one confusion matrix over every labelled pixel of the split.

Protocol (FCN's ``score.py``): whole images at their original size, one at a time, the arg-max class per pixel,
``hist[truth, prediction]`` accumulated over all pixels except those labelled 255; the metrics of
``transfer.segmentation_iou.segmentation_scores`` come from that single matrix (not a mean of per-image scores).
Under torchrun every rank scores the images ``rank, rank + world, ...`` and the matrices are summed
(``all_reduce_sum``), so the metric is that of the whole split whatever the number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pretrain.distributed import DistributedContext, all_reduce_sum
from transfer.engine import autocast
from transfer.segmentation.data import SegmentationDataset, collate_list
from transfer.segmentation_iou import confusion_matrix
from transfer.voc import voc_palette


def save_prediction_png(pred: np.ndarray, path: Path) -> None:
    """Write a class-index map as a VOC palette PNG (the ``SegmentationClass`` format)."""
    im = Image.fromarray(pred.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    im.save(tmp)
    tmp.replace(path)


@torch.no_grad()
def evaluate_fcn(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    ctx: DistributedContext,
    num_classes: int = 21,
    precision: str = "fp32",
    workers: int = 0,
    predictions_dir: Path | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Confusion matrix ``[num_classes, num_classes]`` (int64, rows = truth) of ``model`` over ``dataset``,
    summed over all ranks. With ``predictions_dir``, each prediction is saved as ``<image id>.png``."""
    model.eval()
    shard = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
    loader = DataLoader(shard, batch_size=1, collate_fn=collate_list, num_workers=workers)
    hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    iterator: Any = loader
    if progress and ctx.is_main:
        iterator = tqdm(loader, desc="fcn eval", unit="img", dynamic_ncols=True)
    for batch in iterator:
        for image, mask, image_id in batch:
            with autocast(ctx.device, precision):
                scores = model(image[None].to(ctx.device))
            pred = scores.argmax(1)[0].cpu()
            hist += confusion_matrix(pred, mask, num_classes)
            if predictions_dir is not None:
                save_prediction_png(pred.numpy(), predictions_dir / f"{image_id}.png")
    hist = hist.to(ctx.device)
    all_reduce_sum(hist)
    return hist.cpu()
