"""The VOC2007 classification fine-tuning protocol's settings (Krähenbühl et al. 2015, ``voc-classification``'s
``train_cls.py``) and its presets.

``paper``: Krähenbühl et al.'s VOC2007 protocol (80k iterations, batch 16, lr 0.001 halved every 10k, 227-px
crops, scale 0.5-2.0, 10 random test crops; Pathak et al. 2016 use it for Table 2).
``cpu``: the same protocol sized for 2 CPU cores on the demo dataset, where the harness learns (128-px crops, fc6/fc7
1024 wide, 800 iterations at lr 0.003 with one halving, no dropout and no scale augmentation, bf16, Krähenbühl's
rescaling; the reasons and measurements are in docs/protocols/cpu-preset.md).
``smoke``: the same code at CPU scale for the fixture tree (a few iterations, small crops); numbers are meaningless.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transfer.config import check_presets, checkpoint_every_knob, constant, input_norm_knob, knob, resume_knob

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "iterations": 80000,
        "lr": 0.001,
        "batch_size": 16,
        "workers": 4,
        "precision": "fp32",
        "lr_step": 10000,
        "crop_size": 227,
        "min_scale": 0.5,
        "max_scale": 2.0,
        "dropout": 0.5,
        "eval_crops": 10,
        "fc_width": 4096,
        "rescale_batches": 10,
        "save_model": True,
    },
    "cpu": {
        "iterations": 800,
        "lr": 0.003,
        "batch_size": 16,
        "workers": 1,
        "precision": "bf16",
        "lr_step": 600,
        "crop_size": 128,
        "min_scale": 1.0,
        "max_scale": 1.0,
        "dropout": 0.0,
        "eval_crops": 10,
        "fc_width": 1024,
        "rescale": True,
        "rescale_batches": 4,
        "save_model": False,
    },
    "smoke": {
        "rescale": False,
        "iterations": 6,
        "lr": 0.001,
        "batch_size": 4,
        "workers": 0,
        "precision": "fp32",
        "lr_step": 3,
        "crop_size": 67,
        "min_scale": 0.5,
        "max_scale": 2.0,
        "dropout": 0.5,
        "eval_crops": 2,
        "fc_width": 256,
        "rescale_batches": 2,
        "save_model": False,
    },
}
_PAPER = PRESETS["paper"]
_SOURCE = "Krähenbühl et al. train_cls.py"

#: settings that may change between an interrupted run and its --resume (they do not change the trained weights)
RESUME_MUTABLE = frozenset({"iterations", "workers", "resume", "checkpoint_every", "save_model"})


@dataclass(frozen=True)
class ClassificationConfig:
    """Every setting of one fine-tuning run; a preset sets the training scale, the rest is the protocol."""

    # data
    train_split: str = knob("training split", default="trainval", source="Krähenbühl et al.: VOC2007 trainval")
    eval_split: str = knob("evaluation split (held out)", default="test", source="Krähenbühl et al.: VOC2007 test")
    classes: str = knob(
        "class list: 'voc' (the 20 PASCAL classes), 'data' (the names found in the training annotations, sorted) "
        "or a comma-separated list",
        default="voc",
    )
    input_norm: str = input_norm_knob()
    crop_size: int = knob("square training and test crop side in px", default=_PAPER["crop_size"], source=_SOURCE)
    min_scale: float = knob("smallest scale augmentation factor", default=_PAPER["min_scale"], source=_SOURCE)
    max_scale: float = knob("largest scale augmentation factor", default=_PAPER["max_scale"], source=_SOURCE)
    # network
    dropout: float = knob("dropout after fc6 and fc7", default=_PAPER["dropout"], source="AlexNet, train_cls.py")
    train_from: str = knob(
        "lowest trained layer: all = fine-tune every layer (the paper's Context Encoder row), fc6 = fc6..fc8 on a "
        "frozen trunk, fc8 = the last layer only",
        default="all",
        choices=("all", "fc6", "fc8"),
        source="Krähenbühl et al. --train-from",
    )
    clip: str = knob(
        "drop7: trunk + fc6 + fc7 + fc8; pool5: the network is cut at pool5 and fc8 reads the 9216 pool5 values "
        "directly (no fc6/fc7)",
        default="drop7",
        choices=("drop7", "pool5"),
        source="Krähenbühl et al. --clip",
    )
    fc_width: int = knob("width of fc6 and fc7", default=_PAPER["fc_width"], source="AlexNet: 4096")
    pretrained_fc: str = knob(
        "auto: when the weights are a torchvision AlexNet state dict holding fc6/fc7 (classifier.1/.4) of the right "
        "shape, start fc6/fc7 from them (the ImageNet row); never: always re-initialise fc6/fc7",
        default="auto",
        choices=("auto", "never"),
        source="Krähenbühl et al. copy_from",
    )
    rescale: bool = knob(
        "apply Krähenbühl et al.'s data-dependent rescaling (magic_init -cs) to the whole chain below fc8",
        default=_PAPER["rescale"],
        source="Krähenbühl et al. 2015",
    )
    rescale_iterations: int = knob(
        "with --rescale: at most this many between-layer correction rounds", default=10, source="magic_init's loop"
    )
    rescale_batches: int = knob(
        "with --rescale: training batches whose statistics initialise fc6/fc7",
        default=_PAPER["rescale_batches"],
        source="magic_init -nit",
    )
    # optimisation
    iterations: int = knob("training iterations", default=_PAPER["iterations"], source=_SOURCE)
    batch_size: int = knob("images per training mini-batch", default=_PAPER["batch_size"], source=_SOURCE)
    lr: float = knob("base learning rate (biases learn at twice it)", default=_PAPER["lr"], source=_SOURCE)
    lr_step: int = knob("iterations between learning-rate halvings", default=_PAPER["lr_step"], source=_SOURCE)
    precision: str = knob("autocast precision of forward passes", default=_PAPER["precision"], choices=("fp32", "bf16"))
    workers: int = knob("data-loading worker processes", default=_PAPER["workers"])
    # evaluation
    eval_crops: int = knob(
        "random crops per test image whose logits are summed (0: the centre crop only)",
        default=_PAPER["eval_crops"],
        source=_SOURCE,
    )
    ap: str = knob(
        "AP definition of the primary metrics: krahenbuhl = what Krähenbühl et al.'s evaluation computed with the "
        "scikit-learn of its day (<= 0.18: trapezoidal area under the precision-recall curve, ties broken "
        "pessimistically); krahenbuhl_stepwise = the same call on scikit-learn >= 0.19 (step-wise sum); sklearn = "
        "today's plain average_precision_score. The other krahenbuhl variant and the VOC07 11-point mAP (as the "
        "devkit) are always stored too",
        default="krahenbuhl",
        choices=("krahenbuhl", "krahenbuhl_stepwise", "sklearn"),
    )
    # run
    save_model: bool = knob(
        "save the fine-tuned network (OUT/cls_<method>_seed<N>_final.pt) before evaluating it",
        default=_PAPER["save_model"],
    )
    resume: bool = resume_knob()
    checkpoint_every: int = checkpoint_every_knob()
    # fixed by the protocol
    bias_lr_mult: float = constant(2.0, "biases learn at this multiple of the rate (Caffe lr_mult: 2)", source=_SOURCE)
    lr_gamma: float = constant(0.5, "factor of each learning-rate step", source=_SOURCE)
    momentum: float = constant(0.9, "SGD momentum", source=_SOURCE)
    weight_decay: float = constant(1e-6, "weight decay on weights and biases", source=_SOURCE)
    grad_clip: float = constant(10.0, "gradient clipping at this global L2 norm", source=_SOURCE)
    init_std: float = constant(0.01, "std of the re-initialised fc weights", source=_SOURCE)
    init_bias: float = constant(0.1, "bias of the re-initialised fc layers", source=_SOURCE)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


check_presets(ClassificationConfig, PRESETS)
