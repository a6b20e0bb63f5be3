"""Presets of ``bench transfer --task det`` (Fast R-CNN on VOC2007).

``paper``: Fast R-CNN's VOC07 settings for its small (CaffeNet-sized) model (Girshick 2015 §2.3, §4.5;
rbgirshick/fast-rcnn ``models/CaffeNet/solver.prototxt`` and ``lib/fast_rcnn/config.py``): 2 images x 64 RoIs,
lr 0.001 dropped x0.1 after 30k of 40k iterations, short side 600 / long side <= 1000, ~2,000 fast-mode
selective-search proposals per image, conv1 frozen.
``cpu``: the same protocol sized for 2 CPU cores on the demo dataset, where the harness learns (short side 160,
fc6/fc7 1024 wide, 800 iterations at lr 0.01 with Krähenbühl's rescaling, bf16, every detection kept for scoring;
reasons and measurements in docs/protocols/cpu-preset.md).
``smoke``: the same code at CPU scale for the tiny synthetic VOC tree (short side 160, fc6/fc7 512
wide, a few iterations, every detection kept for scoring).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "iterations": 40_000,
        "lr": 0.001,
        "det_lr_step": 30_000,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 4,
        "precision": "fp32",
        "det_scale": 600,
        "det_max_size": 1000,
        "max_proposals": 2000,
        "det_score_threshold": 0.05,
        "det_fc_dim": 4096,
    },
    "cpu": {
        "rescale": True,
        "iterations": 800,
        "lr": 0.01,
        "det_lr_step": 600,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 1,
        "precision": "bf16",
        "det_scale": 160,
        "det_max_size": 267,
        "max_proposals": 300,
        "det_score_threshold": 0.0,
        "det_fc_dim": 1024,
    },
    "smoke": {
        "rescale": False,
        "iterations": 12,
        "lr": 0.001,
        "det_lr_step": 8,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 0,
        "precision": "fp32",
        "det_scale": 160,
        "det_max_size": 267,
        "max_proposals": 300,
        "det_score_threshold": 0.0,
        "det_fc_dim": 512,
    },
}
