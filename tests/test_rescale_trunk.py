"""`rescale_trunk`: Krähenbühl's between-layer scale correction on the AlexNet trunk alone (det/seg --rescale)."""

from __future__ import annotations

from pathlib import Path

import torch

from transfer.rescale import rescale_trunk
from transfer.weights import load_alexnet_trunk


def _floats(value: object) -> list[float]:
    assert isinstance(value, list), value
    return [float(v) for v in value]


def _float(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)


def test_trunk_layers_change_by_a_scalar_and_ratios_equalise(image_folder: Path) -> None:
    trunk, _ = load_alexnet_trunk("random", seed=0)
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    paths = sorted(p for p in image_folder.rglob("*") if p.is_file())
    report = rescale_trunk(trunk, paths, "minus1to1", seed=0, count=8, size=99)
    assert report["images"] == 8 and report["layers"] == [f"conv{k}" for k in range(1, 6)]
    for idx, scale in zip((0, 3, 6, 8, 10), _floats(report["weight_scale"])):
        w0, w1 = before[f"{idx}.weight"], trunk.state_dict()[f"{idx}.weight"]
        torch.testing.assert_close(w1, w0 * scale, rtol=1e-4, atol=1e-9)  # each layer: one scalar factor
    ratio_before, ratio_after = _floats(report["ratio_before"]), _floats(report["ratio_after"])
    spread_before = max(ratio_before) / min(ratio_before)
    spread_after = max(ratio_after) / min(ratio_after)
    assert spread_after < spread_before and spread_after < 1.1
    # a Gaussian N(0, 0.01) trunk nearly silences conv5; the correction brings its output std towards 1
    assert _float(report["output_std_after"]) > 10 * _float(report["output_std_before"])
