"""The FCN segmentation protocol's settings (Long et al. 2015; the released FCN-AlexNet, VOC2012 train -> val) and
its presets.

``paper``: the released FCN-AlexNet solver (fcn.berkeleyvision.org/voc-fcn-alexnet/solver.prototxt and net.py):
fixed lr 1e-4 for the normalised softmax loss, momentum 0.9, weight decay 5e-4, ``iter_size: 20`` single images per
update (batch 20 here), ``max_iter: 100000``; fc6/fc7 with 4096 maps.
``cpu``: the same protocol sized for 2 CPU cores on the demo dataset: FCN-8s (FCN-32s stays at background on held-out
images at this budget), 400 updates of 2 images at lr 0.01 with Krähenbühl's rescaling (trunk and fc6/fc7), fc6/fc7
512 maps, bf16 (docs/protocols/cpu-preset.md).
``smoke``: the same code at CPU scale on the small VOC-layout demo tree (a few minutes on 2 cores): 20 updates of 2
images, narrow fc layers, a larger lr so that the loss visibly moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transfer.config import check_presets, checkpoint_every_knob, input_norm_knob, knob, resume_knob

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rescale": False,
        "iterations": 100_000,
        "lr": 1e-4,
        "batch_size": 20,
        "workers": 4,
        "precision": "fp32",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "loss_norm": "valid",
        "fc_width": 4096,
        "variant": "32s",
    },
    "cpu": {
        "rescale": True,
        "iterations": 400,
        "lr": 1e-2,
        "batch_size": 2,
        "workers": 1,
        "precision": "bf16",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "loss_norm": "valid",
        "fc_width": 512,
        "variant": "8s",
    },
    "smoke": {
        "rescale": False,
        "iterations": 20,
        "lr": 1e-3,
        "batch_size": 2,
        "workers": 0,
        "precision": "fp32",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "loss_norm": "valid",
        "fc_width": 256,
        "variant": "32s",
    },
}
_PAPER = PRESETS["paper"]
#: settings that may change between an interrupted run and its --resume (they do not change the trained weights)
RESUME_MUTABLE = frozenset(
    {"iterations", "workers", "resume", "checkpoint_every", "save_model", "save_predictions", "progress"}
)
_SOLVER = "FCN-AlexNet solver.prototxt"


@dataclass(frozen=True)
class SegmentationConfig:
    """Every setting of one FCN run; a preset sets the scale of training, the rest is the protocol."""

    # data
    train_split: str = knob("training split", default="train", source="FCN: VOC2012 train (+ SBD)")
    eval_split: str = knob("evaluation split (held out)", default="val", source="FCN: VOC2012 val")
    sbd_root: str | None = knob(
        "SBD 'dataset' folder (cls/*.mat, img/, train.txt, val.txt) whose extra annotations join the training set; "
        "images in the evaluation split are removed; VOC2012 train only when not given",
        default=None,
        metavar="DIR",
    )
    input_norm: str = input_norm_knob()
    crop_size: int | None = knob(
        "train on random square crops of this size (padded with ignore where the image is smaller) so that images "
        "can be stacked; not given: whole images, as FCN trains",
        default=None,
    )
    flip: bool = knob("horizontal-flip augmentation with p=0.5", default=True)
    # network
    variant: str = knob(
        "FCN-32s (FCN-AlexNet as released, the usual choice), or skip variants fusing relu5 (16s) and also relu2 "
        "(8s) scores",
        default=_PAPER["variant"],
        choices=("32s", "16s", "8s"),
        source="Long et al. 2015",
    )
    fc_width: int = knob("maps of the fc6 (6x6) and fc7 (1x1) convolutions", default=_PAPER["fc_width"],
                         source="AlexNet: 4096")  # fmt: skip
    learn_upsampling: bool = knob(
        "learn the bilinear-initialised up-sampling (otherwise it is frozen, lr_mult 0 as in the released FCNs)",
        default=False,
    )
    rescale: bool = knob(
        "apply Krähenbühl et al.'s data-dependent rescaling (magic_init) to the trunk and fc6/fc7, on training images",
        default=_PAPER["rescale"],
    )
    fcn_weights: str | None = knob(
        "start from a saved FCN (fcn.safetensors of an earlier run, see --save-model); with --iterations 0 the run "
        "only evaluates it",
        default=None,
        metavar="FILE",
    )
    # optimisation
    iterations: int = knob("training updates (0: evaluate only)", default=_PAPER["iterations"], source=_SOLVER)
    batch_size: int = knob("images per update", default=_PAPER["batch_size"], source=f"{_SOLVER} iter_size")
    lr: float = knob("fixed learning rate (score biases learn at twice it)", default=_PAPER["lr"], source=_SOLVER)
    momentum: float = knob("SGD momentum", default=_PAPER["momentum"], source=_SOLVER)
    weight_decay: float = knob("weight decay", default=_PAPER["weight_decay"], source=_SOLVER)
    loss_norm: str = knob(
        "per-image loss: mean over labelled pixels ('valid', Caffe normalize:true, FCN-AlexNet with lr 1e-4) or "
        "their sum ('none', normalize:false, FCN-VGG's lr 1e-10 / momentum 0.99 / batch 1)",
        default=_PAPER["loss_norm"],
        choices=("valid", "none"),
        source="FCN-AlexNet net.py",
    )
    precision: str = knob("autocast precision of forward passes", default=_PAPER["precision"], choices=("fp32", "bf16"))
    workers: int = knob("data-loading worker processes", default=_PAPER["workers"])
    # run
    save_predictions: bool = knob(
        "write each evaluation prediction as a VOC palette PNG into OUT/predictions/", default=False
    )
    save_model: bool = knob("write the trained FCN as OUT/fcn.safetensors (about 230 MB at 4096)", default=False)
    engine: str = knob(
        "native: the suite's FCN; mmseg: the same protocol through mmsegmentation (needs the mmseg extra, FCN-32s "
        "only, one process; docs/protocols/segmentation.md)",
        default="native",
        choices=("native", "mmseg"),
    )
    resume: bool = resume_knob()
    checkpoint_every: int = checkpoint_every_knob()
    progress: bool = True  # progress bars (off in library use)

    def protocol_id(self) -> str:
        return f"fcn{self.variant}-voc2012"

    def description(self) -> str:
        sbd = " + SBD (VOC2012 val removed)" if self.sbd_root else ""
        return (
            f"FCN-{self.variant} (Long et al. 2015) on the transferred AlexNet conv1-5, fc6/fc7 as re-initialised "
            f"convolutions ({self.fc_width} maps); trained on VOC2012 {self.train_split}{sbd}: per-pixel "
            f"cross-entropy (255 ignored, loss normalisation '{self.loss_norm}'), SGD lr {self.lr:g} "
            f"momentum {self.momentum:g} wd {self.weight_decay:g}, batch {self.batch_size}, {self.iterations} "
            f"iterations; evaluated on VOC2012 {self.eval_split} whole images: one confusion matrix over all pixels, "
            "mean IoU over the 21 classes (classes absent from truth and prediction left out, as FCN's nanmean)"
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


check_presets(SegmentationConfig, PRESETS)
