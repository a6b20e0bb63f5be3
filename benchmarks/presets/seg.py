"""Presets of ``bench transfer --task seg`` (FCN segmentation on VOC2012).

``paper``: the released FCN-AlexNet solver (fcn.berkeleyvision.org/voc-fcn-alexnet/solver.prototxt and net.py):
fixed lr 1e-4 for the normalised softmax loss, momentum 0.9, weight decay 5e-4, ``iter_size: 20`` single images per
update (batch 20 here), ``max_iter: 100000``; fc6/fc7 with 4096 maps.
``cpu``: the same protocol sized for 2 CPU cores on the demo dataset, where FCN-32s learns: 400 updates of 2 images
at lr 0.01 with Krähenbühl's rescaling (trunk and fc6/fc7), fc6/fc7 512 maps, bf16 (docs/protocols/cpu-preset.md).
``smoke``: the same code at CPU scale on the
small VOC-layout demo tree (a few minutes on 2 cores): 20 updates of 2 images, narrow fc layers, a larger lr so that
the loss visibly moves.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "iterations": 100_000,
        "lr": 1e-4,
        "batch_size": 20,
        "workers": 4,
        "precision": "fp32",
        "seg_momentum": 0.9,
        "seg_weight_decay": 5e-4,
        "seg_loss_norm": "valid",
        "fcn_fc_channels": 4096,
    },
    "cpu": {
        "rescale": True,
        "iterations": 400,
        "lr": 1e-2,
        "batch_size": 2,
        "workers": 1,
        "precision": "bf16",
        "seg_momentum": 0.9,
        "seg_weight_decay": 5e-4,
        "seg_loss_norm": "valid",
        "fcn_fc_channels": 512,
    },
    "smoke": {
        "rescale": False,
        "iterations": 20,
        "lr": 1e-3,
        "batch_size": 2,
        "workers": 0,
        "precision": "fp32",
        "seg_momentum": 0.9,
        "seg_weight_decay": 5e-4,
        "seg_loss_norm": "valid",
        "fcn_fc_channels": 256,
    },
}
