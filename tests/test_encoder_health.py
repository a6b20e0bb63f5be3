"""The dead-channel diagnostic of a trained encoder (``pretrain/encoder_health.py``) on real image crops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.encoder_health import dead_channel_fractions, dead_warning, encoder_dead_channels
from pretrain.models.alexnet import CONV_INDEX, alexnet_trunk


def _images(image_folder: Path, n: int = 8) -> torch.Tensor:
    from pretrain.data import build_pretrain_dataset

    dataset = build_pretrain_dataset(str(image_folder), crop_size=96, resize_short=110)
    return torch.stack([dataset[i] for i in range(n)])


def test_a_default_initialised_trunk_has_no_dead_channels_and_killed_ones_are_counted(image_folder: Path) -> None:
    torch.manual_seed(0)
    trunk = alexnet_trunk()
    images = _images(image_folder)
    alive = dead_channel_fractions(trunk, images)
    assert list(alive) == list(CONV_INDEX)
    assert alive["conv1"] == alive["conv2"] == 0.0 and all(f < 0.3 for f in alive.values()), alive
    assert dead_warning(alive) is None
    conv2 = trunk[CONV_INDEX["conv2"]]
    assert isinstance(conv2, nn.Conv2d) and conv2.bias is not None
    with torch.no_grad():  # three quarters of conv2's channels can never be positive
        n = conv2.out_channels * 3 // 4
        conv2.weight[:n] = 0.0
        conv2.bias[:n] = -1.0
    dead = encoder_dead_channels(trunk.state_dict(), "torchvision", images)
    assert dead["conv2"] == pytest.approx(n / conv2.out_channels, abs=1e-3)
    assert dead["conv1"] == alive["conv1"]
    warning = dead_warning(dead)
    assert warning is not None and "conv2 75%" in warning and "--lr" in warning


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        dead_channel_fractions(alexnet_trunk(), torch.zeros(0, 3, 64, 64))
