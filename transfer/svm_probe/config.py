"""The frozen-feature VOC2007 SVM probe's settings (Goyal et al. 2019, protocol ``voc07-svm``) and its presets.

``paper``: the versioned protocol ``voc07-svm`` as documented in transfer/svm_probe/__init__.py (227-px centre
crops, the full cost grid, all six layers). ``cpu``: conv5 (the primary layer) with a 5-value cost grid on the demo
dataset, at 128 px (its images are 200x150): the full grid over six layers takes 14 minutes per run on 2 cores.
``smoke``: the same code on the fixture tree with small images, a 2-value cost grid and two layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transfer.config import check_presets, input_norm_knob, knob

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "batch_size": 64,
        "workers": 4,
        "precision": "fp32",
        "crop_size": 227,
        "costs": "paper",
        "layers": "conv1,conv2,conv3,conv4,conv5,pool5",
    },
    "cpu": {
        "rescale": False,
        "batch_size": 32,
        "workers": 1,
        "precision": "bf16",
        "crop_size": 128,
        "costs": "0.01,0.1,1,10,100",
        "layers": "conv5",
    },
    "smoke": {
        "rescale": False,
        "batch_size": 8,
        "workers": 0,
        "precision": "fp32",
        "crop_size": 67,
        "costs": "0.1,10",
        "layers": "conv3,conv5",
    },
}
_PAPER = PRESETS["paper"]
_SOURCE = "Goyal et al. 2019, VOC07 SVM benchmark"


@dataclass(frozen=True)
class SVMProbeConfig:
    """Every setting of one probe run; the fixed parts of the protocol are in ``SVMProtocol``."""

    train_split: str = knob("training split (the SVMs and their cost selection)", default="trainval", source=_SOURCE)
    eval_split: str = knob("evaluation split (held out)", default="test", source=_SOURCE)
    classes: str = knob(
        "class list: 'voc' (the 20 PASCAL classes), 'data' (the names found in the training annotations, sorted) "
        "or a comma-separated list",
        default="voc",
    )
    input_norm: str = input_norm_knob()
    crop_size: int = knob("centre-crop side in px (shorter side resized to it)", default=_PAPER["crop_size"],
                          source=_SOURCE)  # fmt: skip
    layers: str = knob("comma-separated trunk layers to probe", default=_PAPER["layers"], source=_SOURCE)
    primary_layer: str = knob(
        "layer whose mAP is the record's primary metric (fixed in advance: never chosen on test)", default="conv5"
    )
    pooling: str = knob(
        "adaptive pooling of each layer to a grid of about 9216 values", default="avg", choices=("avg", "max")
    )
    costs: str = knob(
        "comma-separated LinearSVC cost grid, or 'paper' for Goyal et al.'s 1e-7..1e2 (any other grid is recorded "
        "in the protocol)",
        default=_PAPER["costs"],
        source=_SOURCE,
    )
    rescale: bool = knob(
        "apply Krähenbühl et al.'s data-dependent rescaling (magic_init -cs) to conv1..conv5 before extracting "
        "features",
        default=_PAPER["rescale"],
    )
    batch_size: int = knob("images per feature-extraction batch", default=_PAPER["batch_size"])
    precision: str = knob("autocast precision of forward passes", default=_PAPER["precision"], choices=("fp32", "bf16"))
    workers: int = knob("data-loading worker processes", default=_PAPER["workers"])
    jobs: int = knob("parallel processes for the per-class SVMs", default=1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


check_presets(SVMProbeConfig, PRESETS)
