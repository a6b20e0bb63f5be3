"""Presets of ``bench transfer --task cls`` (VOC2007 classification fine-tuning).

``paper``: Krähenbühl et al.'s VOC2007 protocol (ICLR 2016) and their ``voc-classification/src/train_cls.py``
(80k iterations, batch 16, lr 0.001 halved every 10k, 227-px crops, scale 0.5-2.0, 10 random test crops).
``cpu``: the same protocol sized for 2 CPU cores on the demo dataset, where the harness learns (128-px crops, fc6/fc7
1024 wide, 800 iterations with one lr halving, bf16, Krähenbühl's rescaling; the reasons and measurements are in
docs/protocols/cpu-preset.md).
``smoke``: the same code at CPU scale for the fixture tree (a few iterations, small crops); numbers are meaningless.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
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
    "cpu": {
        "iterations": 800,
        "lr": 0.001,
        "batch_size": 16,
        "workers": 1,
        "precision": "bf16",
        "cls_lr_step": 600,
        "cls_crop_size": 128,
        "cls_eval_crops": 10,
        "cls_fc_width": 1024,
        "rescale": True,
        "rescale_batches": 4,
        "cls_save_model": False,
    },
    "smoke": {
        "rescale": False,
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
