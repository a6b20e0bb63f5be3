"""Frozen-feature VOC2007 SVM probes: pooling grid, features, cost selection and a smoke run of the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.cli import main
from pretrain.models.alexnet import alexnet_trunk
from transfer.classification import load_classification_items
from transfer.records import read_record
from transfer.svm_probe import SVMProtocol, VOCCentreCrops, choose_cost, extract_features, pool_grid, probe_layer
from transfer.voc import VOC_CLASSES, resolve_year_dir


def test_paper_cost_grid() -> None:
    from transfer.svm_probe import PAPER_COSTS

    assert len(PAPER_COSTS) == 26 and PAPER_COSTS[:2] == (1e-7, 1e-6) and PAPER_COSTS[9] == 100.0
    assert PAPER_COSTS[10] == 0.0625 and PAPER_COSTS[-1] == 0.5**19


def test_pool_grid_gives_about_9k_dims() -> None:
    assert [pool_grid(c) for c in (64, 192, 384, 256)] == [12, 7, 5, 6]
    assert [pool_grid(c) for c in (96, 256, 384)] == [10, 6, 5]  # Goyal et al.'s Caffe AlexNet grids
    for c in (64, 96, 192, 256, 384):
        assert 8000 < c * pool_grid(c) ** 2 < 10500


def test_features_are_pooled_and_normalised(voc_root: Path) -> None:
    items, _ = load_classification_items(resolve_year_dir(voc_root, "2007"), "test", VOC_CLASSES)
    protocol = SVMProtocol(image_size=67, layers=("conv1", "conv3", "pool5"))
    loader = DataLoader(VOCCentreCrops(items[:5], 67, "minus1to1"), batch_size=2)
    trunk = alexnet_trunk()
    feats = extract_features(trunk, loader, protocol, torch.device("cpu"))
    assert {k: v.shape for k, v in feats.items()} == {"conv1": (5, 9216), "conv3": (5, 9600), "pool5": (5, 9216)}
    assert protocol.grids == {"conv1": 12, "conv3": 5, "pool5": 6}
    assert np.allclose(np.linalg.norm(feats["conv3"], axis=1), 1.0, atol=1e-3)
    assert not any(p.requires_grad and p.grad is not None for p in trunk.parameters())


def test_cost_selection_and_probe_use_train_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.where(x[:, 0] > 0.3, 1, -1)
    protocol = SVMProtocol(costs=(1e-7, 1.0, 100.0))
    cost, means = choose_cost(x, y, protocol, seed=0)
    assert len(means) == 3 and all(np.isfinite(means)) and means[1] > 0.9
    assert cost == protocol.costs[int(np.argmax(means))]  # the first best in grid order (np.argmax)
    labels = np.stack([np.where(y > 0, 1, -1), -np.ones(60, dtype=int)], axis=1)
    labels[0, 0] = 0  # a difficult-only label counts as negative in training
    test_x = rng.normal(size=(20, 4)).astype(np.float32)
    test_labels = np.stack([np.where(test_x[:, 0] > 0.3, 1, -1), np.where(test_x[:, 1] > 0, 1, -1)], axis=1)
    aps, costs = probe_layer(x, labels, test_x, test_labels, ("a", "b"), protocol)
    assert aps["a"] > 0.9
    assert math.isnan(aps["b"]) and math.isnan(costs["b"])  # no training positive: no SVM, no AP


def test_smoke_svm_probe_writes_record(voc_root: Path, tmp_path: Path) -> None:
    argv = ["transfer", "--task", "svm", "--voc-root", str(voc_root), "--weights", "random", "--out",
            str(tmp_path), "--preset", "smoke", "--layers", "conv2,conv5"]  # fmt: skip
    assert main(argv) == 0
    (path,) = tmp_path.glob("*.json")
    rec = read_record(path)
    assert rec["task"] == "svm" and rec["protocol"]["id"] == "voc07-svm" and rec["protocol"]["version"] == 1
    assert "0.1,10" in rec["protocol"]["description"] and "conv5 6x6" in rec["protocol"]["description"]
    assert rec["config"]["protocol"]["costs"] == [0.1, 10.0]
    assert set(rec["metrics"]) == {"mAP", "mAP_conv2", "mAP_conv5"}
    assert rec["metrics"]["mAP"] == rec["metrics"]["mAP_conv5"]
    items, _ = load_classification_items(resolve_year_dir(voc_root, "2007"), "test", VOC_CLASSES)
    with_positives = {c for k, c in enumerate(VOC_CLASSES) if any(i.labels[k] > 0 for i in items)}
    assert set(rec["per_class"]) == {"AP_conv2", "AP_conv5"} and set(rec["per_class"]["AP_conv5"]) == with_positives
    assert set(rec["extra"]["chosen_costs"]["conv5"].values()) <= {0.1, 10.0}


def test_two_process_torchrun_gives_the_same_map(
    voc_root: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """2 gloo ranks extract the features of half the images each and fit the SVMs of half the classes each; the
    gathered features and APs must equal a single process's."""
    import subprocess
    import sys

    REPO_ROOT = Path(__file__).resolve().parent.parent

    common = ["benchmarks.cli", "transfer", "--task", "svm", "--voc-root", str(voc_root), "--weights", "random"]
    common += ["--preset", "smoke", "--layers", "conv2,conv5", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    records = {}
    for name, launcher in (("one", [sys.executable, "-m"]), ("two", torchrun)):
        cmd = [*launcher, *common, "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (path,) = (tmp_path / name).glob("*.json")
        records[name] = read_record(path)
    one, two = records["one"], records["two"]
    assert one["config"]["world_size"] == 1 and two["config"]["world_size"] == 2
    assert two["metrics"] == one["metrics"] and two["per_class"] == one["per_class"]
    assert two["extra"]["chosen_costs"] == one["extra"]["chosen_costs"]
