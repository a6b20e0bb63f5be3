"""Presets of ``bench transfer --task svm`` (frozen-feature VOC2007 linear SVM probes, Goyal et al. 2019).

``paper``: the versioned protocol ``voc07-svm`` as documented in transfer/svm_probe.py (227-px centre crops, the
full cost grid, all six layers). ``cpu``: conv5 (the primary layer) with a 5-value cost grid on the demo dataset,
at 128 px (its images are 200x150): the full grid over six layers takes 14 minutes per run on 2 cores.
``smoke``: the same code on the fixture tree with small images, a 2-value cost grid and two layers.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "batch_size": 64,
        "workers": 4,
        "precision": "fp32",
        "svm_image_size": 227,
        "svm_costs": "paper",
        "svm_layers": "conv1,conv2,conv3,conv4,conv5,pool5",
    },
    "cpu": {
        "rescale": False,
        "batch_size": 32,
        "workers": 1,
        "precision": "bf16",
        "svm_image_size": 128,
        "svm_costs": "0.01,0.1,1,10,100",
        "svm_layers": "conv5",
    },
    "smoke": {
        "rescale": False,
        "batch_size": 8,
        "workers": 0,
        "precision": "fp32",
        "svm_image_size": 67,
        "svm_costs": "0.1,10",
        "svm_layers": "conv3,conv5",
    },
}
