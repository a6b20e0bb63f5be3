"""Presets of ``bench pretrain``. Keys are ``PretrainConfig`` fields (= argparse destinations).

``paper`` is the AlexNet context encoder of the feature-learning experiments (paper Sec. 3.1, 5.2; sources below and in
docs/protocols/pretraining.md). ``cpu`` is the same code sized for 2 CPU cores on the demo dataset
(128-px crops, bf16, a higher Adam lr for a run of thousands rather than 100k iterations; reasons and measurements
in docs/protocols/cpu-preset.md). ``smoke`` runs the same code with toy numbers (under 2 minutes on 2 cores).
A method can replace some of these values through its ``preset_overrides`` (e.g. the 128-px inpainting network);
any flag given on the command line wins over both.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        # paper Sec. 5.2: random region dropout is used for all feature-learning results
        "mask": "random-region",
        # paper Sec. 3.1: 227x227 input; shorter side 256 before the random crop is the Caffe AlexNet convention
        # (the paper does not give it for the AlexNet context encoder)
        "crop_size": 227,
        "resize_short": 256,
        # paper Sec. 5.2: converges in about 100k iterations
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
        "lr": 1e-3,
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
