"""Shared fixtures: tiny but real data (JPEG/PNG/XML files) made on the fly; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", "/nonexistent-no-downloads")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOC-layout tree (VOC2007 + VOC2012) of real JPEG, XML and palette-PNG files, shared by a session.

    Tests must not modify it; copy it (``shutil.copytree``) to damage files.
    """
    from benchmarks.demo_data import make_voc_tree

    return make_voc_tree(tmp_path_factory.mktemp("voc"), seed=0)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder (with subfolders) of 24 natural-photograph crops as JPEG and PNG files."""
    from benchmarks.demo_data import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), count=24, seed=0)


@pytest.fixture(scope="session")
def fit_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VOC2007 + VOC2012 tree of 200x150 images for the learning checks (tests/test_learning.py and the
    engines' checks), the same for every engine."""
    from benchmarks.demo_data import make_voc_tree

    return make_voc_tree(
        tmp_path_factory.mktemp("fit-voc"),
        splits_2007={"train": 32, "val": 8, "test": 32},
        splits_2012={"train": 24, "val": 8},
        image_size=(200, 150),
        seed=3,
    )


def fit_detection_split(root: Path, work: Path) -> tuple[list, list]:
    """VOC2007 train of a learning-check tree with selective-search proposals from the real proposal code (cached in
    ``work``, cap 300), as both detection engines' learning checks use it: ``(images with training RoIs at 64 RoIs
    per image, all images)``."""
    from transfer.detection.data import RoISampler, has_training_rois, load_detection_split
    from transfer.detection.proposals import ProposalCache, compute_proposals
    from transfer.voc import image_path, read_image_set, resolve_year_dir

    year_dir = resolve_year_dir(root, "2007")
    cache = ProposalCache(work / "proposals", "fast")
    compute_proposals({i: image_path(year_dir, i) for i in read_image_set(year_dir, "train")}, cache, progress=False)
    images, _ = load_detection_split(year_dir, "train", lambda i, w, h: cache.load(i)[:300])
    return [im for im in images if has_training_rois(im, RoISampler(rois_per_image=64))], images


@pytest.fixture()
def subprocess_env() -> dict[str, str]:
    """Environment for subprocesses (torchrun, the CLI) that puts this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env
