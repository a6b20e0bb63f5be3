"""``bench speed``: the engine's measurements and report structure on cheap workloads (no wall-clock thresholds:
only that the numbers exist, are finite and positive and hang together), and the pre-resized image cache."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.hot_paths import HOT_PATHS
from benchmarks.speed import count_flops, format_table, run_worker


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_every_targeted_hot_path_is_registered() -> None:
    for name in ("ce_step", "inpaint_step", "data_loader", "cls_step", "det_step", "fcn_step", "proposals"):
        assert name in HOT_PATHS, name
    assert HOT_PATHS["ce_step"][2] == ("fp32", "bf16")


def test_count_flops_counts_a_matrix_product() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_worker_measures_peak_and_a_hot_path_in_process() -> None:
    peak = run_worker("peak:matmul", "fp32", "cpu", quick=True)
    assert peak["gflop_per_step"] == pytest.approx(2 * 1024**3 / 1e9)
    assert _finite_positive(peak["gflop_per_s"]) and peak["aggregate"] == "min"
    masks = run_worker("masks", "n/a", "cpu", quick=True)
    assert masks["images_per_step"] == 16 and masks["steps"] >= 3
    assert _finite_positive(masks["images_per_s"]) and _finite_positive(masks["median_step_s"])
    assert masks["images_per_s"] == pytest.approx(16 / masks["median_step_s"])
    assert masks["gflop_per_s"] is None  # count_flops=False: mask drawing is not matrix arithmetic
    assert masks["peak_rss_mb"] >= masks["baseline_rss_mb"] > 0


def test_ce_convs_runs_exactly_the_convolutions_of_ce_step() -> None:
    """The ceiling row: the same convolution FLOPs as the full step, less only the channel-wise FC (a bmm) and the
    small matrix products that resize the random-region masks."""
    import benchmarks.hot_paths as hp
    from pretrain.sampling import derive_seed

    cpu = torch.device("cpu")
    step_flops = count_flops(hp.ce_step(cpu, "fp32", True).step)
    convs = hp.ce_convs(cpu, "fp32", True)
    assert convs.images_per_step == 16 and "11 convolutions" in convs.note
    channel_fc = 3 * 2 * 16 * 256 * 36 * 36  # forward, input gradient and weight gradient of [16, 256, 36] x [36, 36]
    method, config = hp._pretrain_method("context-encoder", cpu, "fp32", batch_size=16, mask="random-region")
    images = torch.zeros(16, 3, config.crop_size, config.crop_size)
    mask_seed = derive_seed(config.seed, "mask", 0, 0)  # the first step's mask (iteration 0, rank 0)
    mask_flops = count_flops(lambda: method.sample_mask(images, torch.Generator().manual_seed(mask_seed)))
    assert count_flops(convs.step) == step_flops - channel_fc - mask_flops


def test_bench_speed_quick_writes_report(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """The real CLI (subprocess-isolated measurements): peaks + one cheap hot path, table on screen, JSON file."""
    from benchmarks.cli import main

    out = tmp_path / "speed.json"
    old = dict(os.environ)
    os.environ.update(subprocess_env)  # the measuring subprocesses import this checkout
    try:
        rc = main(["speed", "--quick", "--only", "masks", "--threads", "1", "--json", str(out)])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["device"] == "cpu" and report["threads"] == 1
    assert set(report["peak_gflop_per_s"]) == {"fp32", "bf16"}
    assert all(_finite_positive(v) for v in report["peak_gflop_per_s"].values())
    rows = {(r["name"], r["precision"]): r for r in report["results"]}
    assert set(rows) == {
        ("peak:matmul", "fp32"),
        ("peak:matmul", "bf16"),
        ("peak:conv", "fp32"),
        ("peak:conv", "bf16"),
        ("masks", "n/a"),
    }
    for (name, prec), r in rows.items():
        assert "error" not in r, r
        if name.startswith("peak:"):
            # the best peak of a precision is 100% of itself, the others at most that
            assert 0 < r["mfu"] <= 1.0 + 1e-9
            assert r["gflop_per_s"] <= report["peak_gflop_per_s"][prec] + 1e-6
    assert _finite_positive(rows[("masks", "n/a")]["images_per_s"])
    assert "environment" in report and report["measured_at"]


def test_table_shows_error_rows_and_feed_ratios() -> None:
    from benchmarks.speed import _add_feed_ratios

    base: dict[str, Any] = {"steps": 3, "median_step_s": 0.5, "gflop_per_step": None, "gflop_per_s": None, "mfu": None}
    base |= {"peak_rss_mb": 100.0, "baseline_rss_mb": 50.0, "note": "", "feeds": None}
    rows: list[dict[str, Any]] = [
        {**base, "name": "ce_step", "precision": "bf16", "images_per_step": 16, "images_per_s": 40.0},
        {**base, "name": "ce_step", "precision": "fp32", "images_per_step": 16, "images_per_s": 20.0},
        {**base, "name": "data_loader", "precision": "jpeg", "images_per_step": 16, "images_per_s": 100.0}
        | {"feeds": "ce_step"},
        {"name": "det_step", "precision": "fp32", "error": "Traceback ...\nRuntimeError: out of memory"},
    ]
    _add_feed_ratios(rows)
    assert rows[2]["feed_ratio"] == pytest.approx(2.5)  # against the fastest ce_step precision
    report = {"results": rows, "peak_gflop_per_s": {"fp32": 1.0}, "device": "cpu", "quick": True}
    table = format_table(report)
    assert "det_step" in table and "ERROR: RuntimeError: out of memory" in table and "2.5x the ce_step rate" in table


# ----------------------------------------------------------------------------------------------- the image cache


def test_image_cache_gives_identical_crops_and_is_reused(image_folder: Path, tmp_path: Path) -> None:
    from pretrain.data import UnlabeledImageDataset, find_images
    from pretrain.sampling import SampleKey, SeededDataset

    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    paths = find_images(folder)
    plain = SeededDataset(UnlabeledImageDataset(paths, crop_size=64, resize_short=80))
    cache = tmp_path / "cache"
    cached_ds = UnlabeledImageDataset(paths, crop_size=64, resize_short=80, cache_dir=cache)
    cached = SeededDataset(cached_ds)
    assert cached_ds.build_cache() == len(paths)
    assert len(list(cache.glob("*.npy"))) == len(paths)
    assert cached_ds.build_cache() == 0  # nothing left to build
    for i in range(len(paths)):
        for seed in (1, 2, 3):
            a, b = plain[SampleKey(i, 0, seed)], cached[SampleKey(i, 0, seed)]
            assert a.shape == (3, 64, 64) and torch.equal(a, b)
    # an edited image gets a new entry instead of the stale one
    target = paths[0]
    before = cached_ds.cache_path(0)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert cached_ds.cache_path(0) != before
    # a different resize setting never reads another setting's entries
    other = UnlabeledImageDataset(paths, crop_size=64, resize_short=96, cache_dir=cache)
    assert other.cache_path(1) != cached_ds.cache_path(1)
    assert SeededDataset(other)[SampleKey(1, 0, 5)].shape == (3, 64, 64)


def test_bench_pretrain_cache_dir_fills_the_cache(image_folder: Path, tmp_path: Path) -> None:
    from benchmarks.cli import main

    cache = tmp_path / "cache"
    args = ["pretrain", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--preset", "smoke"]
    args += ["--iterations", "2", "--batch-size", "2", "--crop-size", "64", "--resize-short", "72"]
    args += ["--device", "cpu", "--sample-every", "0", "--cache-dir", str(cache)]
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["cache_dir"] == str(cache) and config["channels_last"] is True
    entries = list(cache.glob("*.npy"))
    assert 1 <= len(entries) <= 4  # the 2 x 2 images the run loaded (fewer when the sampler drew one twice)
    arr = np.load(entries[0])
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) == 72


def test_speed_help_names_every_hot_path() -> None:
    from benchmarks.commands.speed import DESCRIPTION

    assert len(HOT_PATHS) >= 11
    for name in HOT_PATHS:
        assert f" {name}" in DESCRIPTION, f"bench speed --help does not name the hot path {name}"
