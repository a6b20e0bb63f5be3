"""The Fast R-CNN detection protocol's settings (Girshick 2015, VOC2007 trainval -> test) and its presets.

``paper``: Fast R-CNN's VOC07 settings for its small (CaffeNet-sized) model (Girshick 2015, Sec. 2.3, 4.5;
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

import dataclasses
from dataclasses import dataclass
from typing import Any

from transfer.config import check_presets, checkpoint_every_knob, constant, input_norm_knob, knob, resume_knob

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "iterations": 40_000,
        "lr": 0.001,
        "lr_step": 30_000,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 4,
        "precision": "fp32",
        "scale": 600,
        "max_size": 1000,
        "max_proposals": 2000,
        "score_threshold": 0.05,
        "fc_width": 4096,
    },
    "cpu": {
        "rescale": True,
        "iterations": 800,
        "lr": 0.01,
        "lr_step": 600,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 1,
        "precision": "bf16",
        "scale": 160,
        "max_size": 267,
        "max_proposals": 300,
        "score_threshold": 0.0,
        "fc_width": 1024,
    },
    "smoke": {
        "rescale": False,
        "iterations": 12,
        "lr": 0.001,
        "lr_step": 8,
        "batch_size": 2,
        "rois_per_image": 64,
        "workers": 0,
        "precision": "fp32",
        "scale": 160,
        "max_size": 267,
        "max_proposals": 300,
        "score_threshold": 0.0,
        "fc_width": 512,
    },
}
_PAPER = PRESETS["paper"]
_SOLVER = "Fast R-CNN CaffeNet solver.prototxt"
_CONFIG = "Fast R-CNN lib/fast_rcnn/config.py"

#: implementations of the protocol (--engine): this suite's, and detectron2's (transfer/detection/detectron2_engine.py)
ENGINES = ("torchvision", "detectron2")

#: settings that may change between an interrupted run and its --resume (they do not change the trained weights)
RESUME_MUTABLE = frozenset(
    {"resume", "checkpoint_every", "iterations", "workers", "proposal_workers", "write_voc_results", "save_model"}
)


@dataclass(frozen=True)
class DetectionConfig:
    """Every setting of one Fast R-CNN run; a preset sets the scale of training and testing, the rest is the
    protocol."""

    # data and proposals
    train_split: str = knob("training split", default="trainval", source="Fast R-CNN VOC07: trainval")
    eval_split: str = knob("evaluation split (held out)", default="test", source="Fast R-CNN VOC07: test")
    input_norm: str = input_norm_knob()
    proposals: str | None = knob(
        "proposal cache folder (one .npy per image; interrupted passes resume, later runs reuse it); not given: "
        "OUT/proposals. Pass a shared folder to reuse proposals across runs",
        default=None,
        metavar="DIR",
    )
    proposal_mode: str = knob(
        "OpenCV selective-search mode; fast is Fast R-CNN's setting, quality has higher recall and is slower",
        default="fast",
        choices=("fast", "quality"),
    )
    max_proposals: int = knob(
        "keep the first N proposals per image in selective-search order",
        default=_PAPER["max_proposals"],
        source="Fast R-CNN: ~2k",
        metavar="N",
    )
    proposal_workers: int | None = knob(
        "worker processes for selective search (not given: the number of CPU cores; 1 computes in-process)",
        default=None,
        metavar="N",
    )
    rcnn_mat: str | None = knob(
        "use R-CNN's released selective-search boxes instead: DIR holds voc_2007_<split>.mat (1-based y1 x1 y2 x2, "
        "converted on import)",
        default=None,
        metavar="DIR",
    )
    scale: int = knob("shorter image side in pixels", default=_PAPER["scale"], source=_CONFIG)
    max_size: int = knob("cap on the longer image side", default=_PAPER["max_size"], source=_CONFIG)
    rois_per_image: int = knob("RoIs sampled per training image", default=_PAPER["rois_per_image"], source=_CONFIG)
    # network
    fc_width: int = knob("width of the re-initialised fc6 and fc7", default=_PAPER["fc_width"], source="AlexNet")
    freeze_through: str = knob(
        "freeze trunk convolutions up to this one; Fast R-CNN fine-tunes conv2 and up for CaffeNet-sized models",
        default="conv1",
        choices=("none", "conv1", "conv2", "conv3", "conv4", "conv5"),
        source="Girshick 2015, Sec. 4.5",
    )
    rescale: bool = knob(
        "apply Krähenbühl et al.'s data-dependent rescaling (magic_init) to the trunk and the re-initialised fc6/fc7",
        default=_PAPER["rescale"],
    )
    # optimisation
    iterations: int = knob("training iterations", default=_PAPER["iterations"], source=_SOLVER)
    batch_size: int = knob("images per mini-batch", default=_PAPER["batch_size"], source=_CONFIG)
    lr: float = knob("base learning rate (biases learn at twice it)", default=_PAPER["lr"], source=_SOLVER)
    lr_step: int = knob("iteration at which the learning rate drops x0.1", default=_PAPER["lr_step"], source=_SOLVER)
    precision: str = knob("autocast precision of forward passes", default=_PAPER["precision"], choices=("fp32", "bf16"))
    workers: int = knob("data-loading worker processes", default=_PAPER["workers"])
    # testing
    nms: float = knob("per-class NMS IoU threshold at test time", default=0.3, source="Fast R-CNN: 0.3")
    score_threshold: float = knob(
        "drop detections below this class probability before NMS (0 keeps every detection, so that a barely "
        "trained model still produces detections to score)",
        default=_PAPER["score_threshold"],
        source="py-faster-rcnn: 0.05",
    )
    max_per_image: int = knob(
        "keep the highest-scoring N detections per image over all classes", default=100,
        source="py-faster-rcnn: 100", metavar="N",
    )  # fmt: skip
    ap: str = knob(
        "convention of the primary mAP: devkit = the VOC2007 MATLAB devkit (VOCevaldet.m: IoU >= 0.5, recall "
        "levels of MATLAB's 0:0.1:1, stable sort), which produced Fast R-CNN's published numbers; py-faster-rcnn = "
        "its Python voc_eval (IoU > 0.5, np.arange levels, numpy's default sort). The other one is stored too",
        default="devkit",
        choices=("devkit", "py-faster-rcnn"),
    )
    # run
    engine: str = knob(
        "implementation of the protocol: torchvision (this suite's) or detectron2 (needs detectron2 installed; one "
        "process, no --resume; docs/protocols/detection.md)",
        default="torchvision",
        choices=ENGINES,
    )
    write_voc_results: bool = knob(
        "also write the detections as VOC results files OUT/results/comp4_det_<split>_<class>.txt", default=False
    )
    save_model: bool = knob("save the trained detector as OUT/fast_rcnn.pt", default=True)
    resume: bool = resume_knob()
    checkpoint_every: int = checkpoint_every_knob()
    # fixed by the protocol
    lr_gamma: float = constant(0.1, "factor of the learning-rate step", source=_SOLVER)
    momentum: float = constant(0.9, "SGD momentum", source=_SOLVER)
    weight_decay: float = constant(5e-4, "weight decay on weights (none on biases, Caffe decay_mult: 0)",
                                   source=_SOLVER)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


check_presets(DetectionConfig, PRESETS)
