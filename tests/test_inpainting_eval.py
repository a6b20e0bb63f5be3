"""Table 1 evaluation: metrics on hand-computed arrays, the baselines, `bench inpaint-eval` and `bench inpaint`."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.cli import main as bench
from pretrain.inpainting_eval import (
    EvalProtocol,
    HOGNearestNeighbour,
    InpaintEvalError,
    build_baseline,
    centre_hole,
    centre_region,
    context_block_mask,
    crop_for_eval,
    load_mask_file,
    mean_fill,
    psnr_from_mse,
    region_errors,
    summarize,
)
from transfer.records import read_record


def test_region_errors_equal_hand_computed_values() -> None:
    original = np.zeros((2, 2, 1), np.float32)
    completed = np.array([[[0.5], [0.1]], [[0.0], [1.0]]], np.float32)
    region = np.array([[True, True], [False, False]])
    got = region_errors(completed, original, region)
    assert got["L1"] == pytest.approx((0.5 + 0.1) / 2)
    assert got["L2"] == pytest.approx((0.25 + 0.01) / 2)
    assert got["PSNR"] == pytest.approx(10 * math.log10(1 / 0.13))
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(0.0) == pytest.approx(100.0)  # floored
    rows = [
        {f"{m}_{r}": v for r in ("center", "hole") for m, v in (("L1", 0.1), ("L2", 0.01), ("PSNR", 20.0))},
        {f"{m}_{r}": v for r in ("center", "hole") for m, v in (("L1", 0.3), ("L2", 0.1), ("PSNR", 10.0))},
    ]
    s = summarize(rows)
    assert s["L1_hole"] == pytest.approx(0.2) and s["L2_center"] == pytest.approx(0.055)
    assert s["PSNR_hole"] == pytest.approx(15.0)  # mean of per-image PSNR
    assert s["PSNR_pooled_hole"] == pytest.approx(10 * math.log10(1 / 0.055))  # PSNR of the mean MSE


def test_hole_and_region_geometry() -> None:
    region, hole = centre_region(128), centre_hole(128, overlap=7)
    assert region.sum() == 64 * 64 and region[32, 32] and not region[31, 32] and region[95, 95]
    assert hole.sum() == 50 * 50 and hole[39, 39] and not hole[38, 39] and hole[88, 88] and not hole[89, 88]
    assert np.array_equal(centre_hole(128, 0), region)


def test_mean_fill_uses_the_visible_colour() -> None:
    image = np.full((128, 128, 3), 0.25, np.float32)
    hole = centre_hole(128, 0)
    image[hole] = 0.9
    out = mean_fill(image, hole)
    assert np.allclose(out[hole], 0.25) and np.array_equal(out[~hole], image[~hole])


def test_every_baseline_keeps_the_context_and_fills_the_hole() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    smooth = np.stack([yy, xx, 0.5 * (yy + xx)], -1).astype(np.float32)
    hole = centre_hole(128, 4)
    train = [np.clip(smooth + rng.normal(0, 0.02, smooth.shape), 0, 1).astype(np.float32) for _ in range(3)]
    for name in ("mean", "telea", "ns", "biharmonic", "nn"):
        fill = build_baseline(name, train)
        out = fill(smooth, hole)
        assert np.array_equal(out[~hole], smooth[~hole]), name
        err = region_errors(out, smooth, hole)
        if name != "mean":
            assert err["L2"] < 0.01, (name, err)
    # a smooth ramp is easy for diffusion methods and hard for the mean colour
    assert region_errors(build_baseline("biharmonic")(smooth, hole), smooth, hole)["L2"] < 1e-4


def _periodic_texture() -> np.ndarray:
    """Three colour gratings (periods 16, 12 and 20 px): a hole in it is easy to fill from the context by copying or
    by extrapolating its frequencies, and hard for one mean colour."""
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    channels = [np.sin(2 * np.pi * xx / 16), np.sin(2 * np.pi * yy / 12), np.sin(2 * np.pi * (xx + yy) / 20)]
    return np.stack([0.5 + 0.4 * c for c in channels], -1).astype(np.float32)


@pytest.mark.parametrize(
    "baseline", ["shiftmap", "fsr-fast", pytest.param("fsr-best", marks=pytest.mark.slow)]
)  # fsr-best: about 20 s per image on 2 busy cores
def test_xphoto_baselines_fill_the_hole_from_the_context_and_beat_mean_fill_on_texture(baseline: str) -> None:
    texture = _periodic_texture()
    hole = centre_hole(128, 7)
    fill = build_baseline(baseline)
    out = fill(texture, hole)
    assert out.shape == texture.shape and out.dtype == np.float32
    assert np.array_equal(out[~hole], texture[~hole])
    assert np.all((out >= 0) & (out <= 1))
    # the hole's own pixels never reach the result: garbage there gives the same completion
    spoiled = texture.copy()
    spoiled[hole] = 1.0
    assert np.array_equal(fill(spoiled, hole), out)
    assert not np.allclose(out[hole], 1.0)  # and it is really filled, not left as it came
    psnr = region_errors(out, texture, hole)["PSNR"]
    mean_psnr = region_errors(mean_fill(texture, hole), texture, hole)["PSNR"]
    assert psnr > mean_psnr + 3.0, (baseline, psnr, mean_psnr)


def test_shiftmap_copies_a_periodic_texture_almost_exactly() -> None:
    texture = _periodic_texture()
    hole = centre_hole(128, 0)
    assert region_errors(build_baseline("shiftmap")(texture, hole), texture, hole)["PSNR"] > 40.0


def test_baseline_choices_of_the_cli_are_the_library_baselines() -> None:
    from benchmarks.commands.inpaint_eval import BASELINE_CHOICES
    from benchmarks.tables import METHOD_LABELS
    from pretrain.inpainting_eval import BASELINES

    assert BASELINE_CHOICES == BASELINES
    assert all(f"baseline-{b}" in METHOD_LABELS for b in BASELINES)  # every one gets its Table 1 label


def test_nearest_neighbour_finds_an_exact_match() -> None:
    rng = np.random.default_rng(1)
    db = [rng.random((128, 128, 3)).astype(np.float32) for _ in range(4)]
    hole = centre_hole(128, 0)
    nn = HOGNearestNeighbour(db)
    query = db[2].copy()
    query[hole] = 0.5  # the query's hole content is unknown: matching must use the context only
    assert nn.match(query, hole) == 4  # database = crops and their mirrors: index 2 * 2
    assert np.allclose(nn(query, hole), db[2])
    keep = context_block_mask(hole)
    assert keep.shape == (15, 15) and not keep[7, 7] and keep[0, 0] and not keep[2, 7] and keep[1, 7]


def test_crop_is_deterministic_and_upscales_small_images() -> None:
    big = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))
    a = crop_for_eval(big, EvalProtocol(resize_short=350))
    assert a.shape == (128, 128, 3) and np.array_equal(a, crop_for_eval(big, EvalProtocol(resize_short=350)))
    native = crop_for_eval(big, EvalProtocol(resize_short=0))
    assert np.allclose(native, np.asarray(big, np.float32)[86:214, 136:264] / 255.0)
    with pytest.warns(UserWarning, match="smaller than 128"):
        small = crop_for_eval(big.resize((100, 80)), EvalProtocol(resize_short=0), name="tiny.png")
    assert small.shape == (128, 128, 3)


def test_mask_file_errors_name_the_file(tmp_path: Path) -> None:
    wrong = tmp_path / "mask64.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(wrong)
    with pytest.raises(InpaintEvalError, match=r"mask64\.png: mask is 64x64, expected 128x128"):
        load_mask_file(wrong)
    good = tmp_path / "mask.png"
    arr = np.zeros((128, 128), np.uint8)
    arr[40:60, 50:70] = 255
    Image.fromarray(arr).save(good)
    assert load_mask_file(good).sum() == 400


@pytest.mark.parametrize("baseline", ["mean", "telea", "ns", "biharmonic", "shiftmap", "fsr-fast", "nn"])
def test_inpaint_eval_cli_runs_every_baseline(
    baseline: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["inpaint-eval", "--baseline", baseline, "--images", str(image_folder / "a"), "--out", str(tmp_path)]
    args += ["--limit", "4", "--train-images", str(image_folder / "b")]
    assert bench(args) == 0
    out = capsys.readouterr().out
    assert "mean L1 (%)" in out and "hole" in out
    (record_path,) = tmp_path.glob("*.json")
    record = read_record(record_path)
    assert record["task"] == "inpaint" and record["dataset"] == "a" and record["primary_metric"] == "PSNR_hole"
    assert set(record["metrics"]) == {f"{m}_{r}" for m in ("L1", "L2", "PSNR") for r in ("center", "hole")}
    assert 0 < record["metrics"]["L2_hole"] < 100 and record["metrics"]["PSNR_hole"] > 0
    with open(record_path.with_name(record_path.stem + "_per_image.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and rows[0]["image"].endswith((".jpg", ".png"))
    # the record stores percent: the mean of the per-image fractions x 100
    assert record["metrics"]["L1_hole"] == pytest.approx(100 * np.mean([float(r["L1_hole"]) for r in rows]))
    if baseline in ("shiftmap", "fsr-fast"):
        assert record["config"]["xphoto_algorithm"] == {"shiftmap": "INPAINT_SHIFTMAP"}.get(
            baseline, "INPAINT_FSR_FAST"
        )


def test_inpaint_eval_nn_needs_training_images(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--train-images"):
        bench(["inpaint-eval", "--baseline", "nn", "--images", str(image_folder), "--out", str(tmp_path)])


@pytest.fixture()
def small_generator_file(tmp_path: Path) -> Path:
    """A generator state dict with a 16-d code (a real, untrained InpaintingGenerator; small for speed)."""
    from pretrain.models.inpainting import InpaintingGenerator

    torch.manual_seed(0)
    path = tmp_path / "generator.pt"
    torch.save(InpaintingGenerator(bottleneck=16).state_dict(), path)
    return path


def test_inpaint_eval_and_inpaint_with_weights(
    small_generator_file: Path, image_folder: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    out = tmp_path / "eval"
    assert (
        bench(
            [
                "inpaint-eval",
                "--weights",
                str(small_generator_file),
                "--images",
                str(image_folder / "a"),
                "--out",
                str(out),
                "--limit",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = read_record(next(out.glob("*.json")))
    assert record["weights"]["method"] == "inpainting" and record["config"]["overlap"] == 7
    images = sorted((image_folder / "a").glob("*"))[:2]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cli",
            "inpaint",
            *map(str, images),
            "--weights",
            str(small_generator_file),
            "--out",
            str(tmp_path / "filled"),
            "--device",
            "cpu",
        ],
        env=subprocess_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    grid = Image.open(tmp_path / "filled" / "grid.png")
    assert grid.size == (3 * 128, 2 * 128)
    filled = np.asarray(Image.open(tmp_path / "filled" / f"0000_{images[0].stem}.png"))
    assert filled.shape == (128, 128, 3)


def test_inpaint_bad_mask_is_a_clear_error(small_generator_file: Path, image_folder: Path, tmp_path: Path) -> None:
    image = next(iter(sorted((image_folder / "a").glob("*"))))
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(wrong)
    with pytest.raises(SystemExit, match=r"wrong\.png: mask is 100x100, expected 128x128"):
        bench(
            [
                "inpaint",
                str(image),
                "--weights",
                str(small_generator_file),
                "--out",
                str(tmp_path / "o"),
                "--mask",
                str(wrong),
                "--device",
                "cpu",
            ]
        )
    outside = tmp_path / "outside.png"
    arr = np.zeros((128, 128), np.uint8)
    arr[:10, :10] = 255
    Image.fromarray(arr).save(outside)
    with pytest.raises(SystemExit, match=r"outside\.png: the mask has pixels outside the central 64x64"):
        bench(
            [
                "inpaint",
                str(image),
                "--weights",
                str(small_generator_file),
                "--out",
                str(tmp_path / "o"),
                "--mask",
                str(outside),
                "--device",
                "cpu",
            ]
        )
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(SystemExit, match=r"other\.pt: no entry 'encoder\.0\.weight' \(expected shape"):
        bench(["inpaint", str(image), "--weights", str(other), "--out", str(tmp_path / "o"), "--device", "cpu"])


def test_record_metrics_are_json_numbers(image_folder: Path, tmp_path: Path) -> None:
    assert (
        bench(
            [
                "inpaint-eval",
                "--baseline",
                "mean",
                "--images",
                str(image_folder),
                "--out",
                str(tmp_path),
                "--limit",
                "2",
                "--overlap",
                "0",
            ]
        )
        == 0
    )
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    m = record["metrics"]
    assert m["L2_center"] == pytest.approx(m["L2_hole"])  # overlap 0: the hole is the whole centre
    assert "PSNR_pooled_hole" in record["extra"]["pooled_psnr"]
