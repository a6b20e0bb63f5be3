"""Presets of ``bench transfer --task cls`` (VOC2007 classification fine-tuning).

``paper``: Krähenbühl et al.'s VOC2007 protocol as PAPER.md §6 and their ``voc-classification/src/train_cls.py``
(80k iterations, batch 16, lr 0.001 halved every 10k, 227-px crops, scale 0.5-2.0, 10 random test crops).
``smoke``: the same code at CPU scale for the fixture tree (a few iterations, small crops); numbers are meaningless.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "iterations": 80000,
        "lr": 0.001,
        "batch_size": 16,
        "workers": 4,
        "precision": "fp32",
        "cls_lr_step": 10000,
        "cls_crop_size": 227,
        "cls_eval_crops": 10,
        "cls_fc_width": 4096,
        "rescale_batches": 10,
        "cls_save_model": True,
    },
    "smoke": {
        "iterations": 6,
        "lr": 0.001,
        "batch_size": 4,
        "workers": 0,
        "precision": "fp32",
        "cls_lr_step": 3,
        "cls_crop_size": 67,
        "cls_eval_crops": 2,
        "cls_fc_width": 256,
        "rescale_batches": 2,
        "cls_save_model": False,
    },
}
