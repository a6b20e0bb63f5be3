"""Presets of ``bench transfer --task svm`` (frozen-feature VOC2007 linear SVM probes, Goyal et al. 2019).

``paper``: the versioned protocol ``voc07-svm`` as documented in transfer/svm_probe.py (227-px centre crops, the
full cost grid). ``smoke``: the same code on the fixture tree with small images and a 3-value cost grid.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 64, "workers": 4, "precision": "fp32", "svm_image_size": 227, "svm_costs": "paper"},
    "smoke": {"batch_size": 8, "workers": 0, "precision": "fp32", "svm_image_size": 67, "svm_costs": "0.01,1,100"},
}
