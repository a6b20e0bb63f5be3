"""Selective-search proposals: cleaning, the on-disk cache (written, reused, resumed), workers, R-CNN .mat import."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from transfer.detection.proposals import (
    ProposalCache,
    ProposalError,
    clean_boxes,
    compute_proposals,
    import_rcnn_mat,
    load_rcnn_mat,
    proposals_for_image,
)
from transfer.voc import image_path, read_image_set, resolve_year_dir


def fixture_images(voc_root: Path, n: int) -> dict[str, Path]:
    year_dir = resolve_year_dir(voc_root, "2007")
    return {i: image_path(year_dir, i) for i in read_image_set(year_dir, "test")[:n]}


def test_clean_boxes_clips_dedupes_and_drops_degenerate_keeping_rank_order() -> None:
    raw = np.array(
        [
            [5, 5, 20, 20],
            [-3, 0, 10, 10],  # clipped to x1 = 0
            [5, 5, 20, 20],  # duplicate of the first
            [7, 7, 7, 30],  # 1 px wide: degenerate
            [30, 2, 90, 60],  # clipped to the 50x40 image
        ],
        np.float32,
    )
    out = clean_boxes(raw, width=50, height=40)
    assert out.tolist() == [[5, 5, 20, 20], [0, 0, 10, 10], [30, 2, 49, 39]]
    assert clean_boxes(np.zeros((0, 4)), 10, 10).shape == (0, 4)


def test_proposals_for_image_gives_valid_boxes(voc_root: Path) -> None:
    path = next(iter(fixture_images(voc_root, 1).values()))
    boxes = proposals_for_image(path, "fast")
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
    assert (boxes[:, 2] >= boxes[:, 0] + 1).all() and (boxes[:, 3] >= boxes[:, 1] + 1).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_cache_is_written_then_reused_and_an_interrupted_pass_resumes(voc_root: Path, tmp_path: Path) -> None:
    images = fixture_images(voc_root, 3)
    cache = ProposalCache(tmp_path / "props", "fast")
    first = compute_proposals(images, cache, workers=1, progress=False)
    assert (first.computed, first.cached, first.failed) == (3, 0, {})
    mtimes = {i: cache.path(i).stat().st_mtime_ns for i in images}
    saved = {i: cache.load(i) for i in images}

    second = compute_proposals(images, cache, workers=1, progress=False)
    assert (second.computed, second.cached) == (0, 3)
    assert {i: cache.path(i).stat().st_mtime_ns for i in images} == mtimes

    lost = next(iter(images))  # an interrupted pass: one file never written
    cache.path(lost).unlink()
    third = compute_proposals(images, cache, workers=1, progress=False)
    assert (third.computed, third.cached) == (1, 2)
    np.testing.assert_array_equal(cache.load(lost), saved[lost])
    assert not list(cache.folder.glob("*.tmp"))  # atomic writes leave no temporary files


def test_worker_processes_match_in_process_results_and_bad_images_are_reported(voc_root: Path, tmp_path: Path) -> None:
    images = fixture_images(voc_root, 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    serial = ProposalCache(tmp_path / "serial", "fast")
    compute_proposals(images, serial, workers=1, progress=False)
    parallel = ProposalCache(tmp_path / "parallel", "fast")
    stats = compute_proposals({**images, "broken": bad}, parallel, workers=2, progress=False)
    assert stats.computed == 2 and list(stats.failed) == ["broken"] and "broken.jpg" in stats.failed["broken"]
    for i in images:
        np.testing.assert_array_equal(parallel.load(i), serial.load(i))


def test_cache_files_get_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    """A shared proposal cache must be readable by the group's other users (mkstemp alone makes files 0600)."""
    cache = ProposalCache(tmp_path, "fast")
    old = os.umask(0o022)
    try:
        path = cache.save("x", np.array([[0, 0, 9, 9]], dtype=np.float32))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    np.testing.assert_array_equal(cache.load("x"), [[0, 0, 9, 9]])


def test_corrupt_cache_file_names_the_file(tmp_path: Path) -> None:
    cache = ProposalCache(tmp_path, "fast")
    cache.folder.mkdir(parents=True)
    cache.path("x").write_bytes(b"garbage")
    with pytest.raises(ProposalError, match=r"x\.npy"):
        cache.load("x")


def test_rcnn_mat_import_converts_one_based_yxyx(tmp_path: Path) -> None:
    boxes = np.empty(2, dtype=object)
    boxes[0] = np.array([[11, 21, 30, 40], [1, 1, 5, 5], [1, 1, 5, 5]], np.float64)  # y1 x1 y2 x2, 1-based
    boxes[1] = np.zeros((0, 4))
    names = np.empty(2, dtype=object)
    names[:] = ["000005", "000007"]
    mat = tmp_path / "voc_2007_test.mat"
    scipy.io.savemat(mat, {"boxes": boxes, "images": names})
    loaded = load_rcnn_mat(mat)
    assert loaded["000005"].tolist()[0] == [20.0, 10.0, 39.0, 29.0]
    assert loaded["000007"].shape == (0, 4)
    cache = ProposalCache(tmp_path / "cache", "rcnn")
    assert import_rcnn_mat(mat, cache, {"000005": (100, 100), "000007": (50, 50)}) == 2
    assert cache.load("000005").tolist() == [[20.0, 10.0, 39.0, 29.0], [0.0, 0.0, 4.0, 4.0]]  # duplicate removed
    assert cache.folder.name == "rcnn-mat"
    with pytest.raises(ProposalError, match=r"missing\.mat"):
        load_rcnn_mat(tmp_path / "missing.mat")


def test_cache_survives_a_copy(voc_root: Path, tmp_path: Path) -> None:
    """A cache folder moved elsewhere (e.g. shared via --proposals) is found again without recomputing."""
    images = fixture_images(voc_root, 1)
    compute_proposals(images, ProposalCache(tmp_path / "a", "fast"), workers=1, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    stats = compute_proposals(images, ProposalCache(tmp_path / "b", "fast"), workers=1, progress=False)
    assert (stats.computed, stats.cached) == (0, 1)
