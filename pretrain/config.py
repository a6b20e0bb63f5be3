"""The resolved configuration of one ``bench pretrain`` run.

``PretrainConfig`` is the single place a reader can check a run's protocol against the paper: the CLI fills it
from (highest priority first) explicit flags, the preset (``PRESETS`` below, with the method's own preset
overrides), and the method's option defaults.

``paper`` is the AlexNet context encoder of the feature-learning experiments (sources below and in
docs/protocols/pretraining.md). ``cpu`` is the same code sized for 2 CPU cores on the demo dataset (128-px crops,
bf16, 3,000 iterations of 16 rather than 100k of 64; reasons and measurements in
docs/protocols/cpu-preset.md). ``smoke`` runs the same code with toy numbers (under 2 minutes on 2 cores). A method
can replace some of these values through its ``preset_overrides`` (e.g. the 128-px inpainting network); any flag
given on the command line wins over both. It is written to ``config.json`` in the run folder and
stored inside every checkpoint; ``--resume`` checks that the protocol-relevant fields did not change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: fields that may differ between an interrupted run and its ``--resume`` (they do not change the trained weights)
RESUME_MUTABLE_FIELDS: frozenset[str] = frozenset(
    {
        "out",
        "iterations",
        "stop_after",
        "resume",
        "overwrite",
        "preset",
        "workers",
        "device",
        "log_every",
        "sample_every",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "scan_workers",
        "cache_dir",
        "data",
        "voc_root",
    }
)


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        # random region dropout is used for all feature-learning results (Pathak et al. 2016)
        "mask": "random-region",
        # 227x227 input (Pathak et al. 2016); shorter side 256 before the random crop is the Caffe AlexNet
        # convention (the paper does not give it for the AlexNet context encoder)
        "crop_size": 227,
        "resize_short": 256,
        # converges in about 100k iterations (Pathak et al. 2016)
        "iterations": 100_000,
        # official Lua train.lua: batchSize 64, Adam lr 2e-4 (opt.lr), beta1 0.5; see docs/protocols/pretraining.md
        "batch_size": 64,
        "lr": 2e-4,
        "precision": "fp32",
        "workers": 4,
        "log_every": 20,
        "sample_every": 1000,
        "checkpoint_every": 5000,
        "keep_checkpoints": 3,
    },
    "cpu": {
        "mask": "random-region",
        "crop_size": 128,
        "resize_short": 144,
        "iterations": 3000,
        "batch_size": 16,
        # Adam 2e-4 as the paper preset: at 1e-3 most conv2/conv3 channels of the encoder died (82% / 63% after
        # 3,000 iterations) and fine-tuning it did worse on VOC2007 train -> val (docs/protocols/cpu-preset.md)
        "lr": 2e-4,
        "precision": "bf16",
        "workers": 1,
        "log_every": 20,
        "sample_every": 500,
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
    },
    "smoke": {
        "mask": "random-region",
        "crop_size": 227,
        "resize_short": 240,
        "iterations": 20,
        "batch_size": 4,
        "lr": 2e-4,
        "precision": "fp32",
        "workers": 0,
        "log_every": 5,
        "sample_every": 10,
        "checkpoint_every": 10,
        "keep_checkpoints": 2,
    },
}


@dataclass
class PretrainConfig:
    """Every value a pretraining run depends on. Defaults are the ``paper`` preset of the context encoder;
    sources are given in ``PRESETS`` and docs/protocols/pretraining.md."""

    data: str
    out: str
    method: str = "context-encoder"
    preset: str = "paper"
    # region masks (pretrain/masks.py)
    mask: str = "random-region"
    mask_per_batch: bool = False
    voc_root: str | None = None
    # data (pretrain/data.py): shorter side resized, random crop, horizontal flip
    crop_size: int = 227
    resize_short: int = 256
    flip: bool = True
    # schedule and optimiser (Adam, constant learning rate)
    iterations: int = 100_000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    # context-encoder network (pretrain/models/context_encoder.py)
    widths: str = "torchvision"
    dropout: float = 0.5
    decoder_channels: tuple[int, ...] = (128, 64, 64, 32)
    output_align: str = "resize"
    init: str = "default"
    # execution
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    scan_workers: int = 0
    #: pre-resized uint8 image cache for repeated epochs (``pretrain.data.UnlabeledImageDataset``); None = off
    cache_dir: str | None = None
    #: networks and inputs in channels-last memory layout (same arithmetic, faster convolutions; see
    #: docs/performance.md). Not changeable on --resume: the optimizer state keeps the layout it was saved in
    channels_last: bool = True
    # bookkeeping
    log_every: int = 20
    sample_every: int = 1000
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    tensorboard: bool = False
    stop_after: int | None = None
    resume: bool = False
    #: start a new run in a folder that holds an earlier run, replacing its files (never implied by --resume)
    overwrite: bool = False
    #: options a method declares for itself (``PretrainMethod.options``), e.g. the inpainting net's ``lr_d``
    method_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["decoder_channels"] = list(self.decoder_channels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "decoder_channels" in kwargs:
            kwargs["decoder_channels"] = tuple(int(c) for c in kwargs["decoder_channels"])
        return cls(**kwargs)

    def problems(self) -> list[str]:
        """Values that cannot work, as messages naming the flag (empty when the configuration is usable)."""
        out = []
        for name in ("iterations", "batch_size", "crop_size", "resize_short", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) <= 0:
                out.append(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("sample_every", "keep_checkpoints", "workers", "scan_workers"):
            if int(getattr(self, name)) < 0:
                out.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after <= 0:
            out.append(f"--stop-after must be positive, got {self.stop_after}")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            out.append(f"--lr must be positive, got {self.lr}")
        if self.precision not in ("fp32", "bf16"):
            out.append(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if self.mask == "voc-shapes" and not self.voc_root:
            out.append("--mask voc-shapes needs --voc-root (a VOC devkit with VOC2012 SegmentationObject masks)")
        return out

    def resume_conflicts(self, saved: dict[str, Any]) -> list[str]:
        """Fields whose value differs from a saved run's config and would change the trained weights."""
        mine = self.to_dict()
        return sorted(
            f"{k}: run has {saved[k]!r}, now {mine[k]!r}"
            for k in mine
            if k in saved and k not in RESUME_MUTABLE_FIELDS and saved[k] != mine[k]
        )
