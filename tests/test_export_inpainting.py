"""`bench export` of an inpainting run writes the generator in the Lua code's convolutional layout."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.cli import main
from pretrain.inpainting import load_generator


def test_export_of_an_inpainting_run_writes_the_conv_layout_generator(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["pretrain", "--method", "inpainting", "--preset", "smoke", "--data", str(image_folder), "--out", str(run)]
    assert main([*args, "--iterations", "1", "--batch-size", "2", "--bottleneck", "40", "--workers", "0"]) == 0
    assert main(["export", str(run)]) == 0
    exported = run / "generator.safetensors"
    state = load_file(str(exported))
    conv_keys = [k for k, v in state.items() if v.ndim == 4 and v.shape[0] == 40 and v.shape[2:] == (4, 4)]
    assert conv_keys, "the 4x4 bottleneck convolutions should be in the export"
    trained = load_generator(run).generator.eval()
    reloaded = load_generator(exported).generator.eval()
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained(x), rtol=1e-4, atol=1e-5)
    again = tmp_path / "again.safetensors"
    assert main(["export", str(run), "--output", str(again)]) == 0
    assert again.read_bytes() == exported.read_bytes()  # the header is written in a fixed order
