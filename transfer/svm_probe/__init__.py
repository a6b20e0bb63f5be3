"""Frozen-feature VOC2007 linear SVM probes (Goyal et al. 2019, "Scaling and Benchmarking Self-Supervised Visual
Representation Learning", VOC07 SVM benchmark), protocol ``voc07-svm`` version 1.

The protocol, line by line:

- features: the frozen trunk (eval mode, no gradients) on each image resized so that its shorter side is
  ``image_size`` (227) and centre-cropped to ``image_size`` x ``image_size``; no augmentation;
- layers: the ReLU outputs of conv1..conv5 and pool5; each is adaptively average-pooled to a square grid
  ``g = max(1, round(sqrt(9216 / C)))`` for its C channels, giving about 9k values (torchvision widths:
  conv1 64x12x12 = 9216, conv2 192x7x7 = 9408, conv3 384x5x5 = 9600, conv4 256x6x6 = 9216, conv5 256x6x6 = 9216,
  pool5 256x6x6 = 9216; Caffe widths: 96x10x10, 256x6x6, 384x5x5, 384x5x5, 256x6x6 as Goyal et al.); the pooling
  type is an option (``avg`` default, ``max``);
- each feature vector is L2-normalised (Goyal et al.'s ``normalize_features``: ``x / (||x|| + 1e-5)``);
- one ``sklearn.svm.LinearSVC`` per class and layer (squared hinge, L2 penalty, dual, tol 1e-4, max_iter 2000,
  intercept_scaling 1, class_weight {1: 2, -1: 1}, as Goyal et al.); training labels: 1 positive, -1 negative, and
  difficult-only (0) treated as negative, as Goyal et al. do;
- cost ``C`` per class and layer: chosen by 3-fold cross-validation on trainval only (``StratifiedKFold(3)``, no
  shuffling, as ``cross_val_score(cv=3)``; mean AP over folds, scikit-learn AP as their ``scoring=
  'average_precision'``; folds without positives skipped; ties -> the first cost in grid order, as ``np.argmax``)
  from the fixed 26-value grid ``PAPER_COSTS``; the final SVM is refit on all of trainval with that cost;
- test: AP per class on VOC2007 test with difficult (0) entries ignored; the AP definition is ``voc_area`` (the
  area under the monotone precision envelope, Goyal et al.'s ``calculate_ap``; transfer/classification_ap.py);
  mAP over classes with test positives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pretrain.models.alexnet import LAYER_OUTPUT_INDEX
from transfer.classification import VOCItem
from transfer.classification_ap import average_precision
from transfer.engine import autocast
from transfer.input_norm import normalize_image
from transfer.voc import load_image

PROTOCOL_ID = "voc07-svm"
PROTOCOL_VERSION = 1
#: Goyal et al.'s VOC07 cost grid, in their order: the ``--costs_list`` of their VOC07 runs (1e-7 .. 1e2) followed by
#: the ``0.5 ** k`` (k = 4..19) that their ``svm_helper.parse_cost_list`` always appends
PAPER_COSTS: tuple[float, ...] = (
    *(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
    *(0.5**k for k in range(4, 20)),
)
PROBE_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5")
TARGET_DIMS = 9216


@dataclass
class SVMProtocol:
    """Everything that defines a probe number; printed with the result and stored in the record."""

    costs: tuple[float, ...] = PAPER_COSTS
    layers: tuple[str, ...] = PROBE_LAYERS
    image_size: int = 227
    pooling: str = "avg"
    target_dims: int = TARGET_DIMS
    folds: int = 3
    class_weight_positive: float = 2.0
    max_iter: int = 2000
    tol: float = 1e-4
    ap_method: str = "voc_area"
    cv_ap_method: str = "sklearn"
    difficult_in_training: str = "negative"
    id: str = PROTOCOL_ID
    version: int = PROTOCOL_VERSION
    grids: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["costs"] = list(self.costs)
        d["layers"] = list(self.layers)
        return d

    def describe(self) -> str:
        grid = ", ".join(f"{k} {g}x{g}" for k, g in self.grids.items())
        costs = ",".join(f"{c:.3g}" for c in self.costs)
        return (
            f"{self.id} v{self.version}: frozen trunk, {self.image_size}px centre crop, {self.pooling}-pooled to "
            f"~{self.target_dims} dims ({grid}), L2-normalised, LinearSVC per class (class_weight 1:"
            f"{self.class_weight_positive:g}), cost by {self.folds}-fold CV on trainval from [{costs}], "
            f"difficult=negative in training and ignored in test AP ({self.ap_method}; CV AP {self.cv_ap_method})"
        )


def pool_grid(channels: int, target_dims: int = TARGET_DIMS) -> int:
    """Side of the square pooling grid that gives about ``target_dims`` values for ``channels`` maps."""
    return max(1, round(math.sqrt(target_dims / channels)))


class VOCCentreCrops(Dataset):
    """``(image [3, S, S], index)``: shorter side resized to S, centre crop."""

    def __init__(self, items: list[VOCItem], image_size: int, input_norm: str) -> None:
        self.items, self.size, self.norm = items, image_size, input_norm

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        im = load_image(self.items[i].path)
        w, h = im.size
        s = self.size / min(w, h)
        im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.Resampling.BILINEAR)
        x, y = (im.width - self.size) // 2, (im.height - self.size) // 2
        return normalize_image(im.crop((x, y, x + self.size, y + self.size)), self.norm), i


@torch.no_grad()
def extract_features(
    trunk: nn.Sequential,
    loader: DataLoader,
    protocol: SVMProtocol,
    device: torch.device,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """-> {layer: float32 [N, D]} of L2-normalised pooled features, in dataset order. Fills ``protocol.grids``."""
    trunk = trunk.to(device).eval()
    want = {LAYER_OUTPUT_INDEX[name]: name for name in protocol.layers}
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in protocol.layers}
    pool = F.adaptive_avg_pool2d if protocol.pooling == "avg" else F.adaptive_max_pool2d
    for images, _ in loader:
        x = images.to(device)
        with autocast(device, precision):
            for i, layer in enumerate(trunk):
                x = layer(x)
                if i in want:
                    name = want[i]
                    g = protocol.grids.setdefault(name, pool_grid(x.shape[1], protocol.target_dims))
                    f = torch.flatten(pool(x.float(), g), 1)
                    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
                    chunks[name].append(f.cpu().numpy().astype(np.float32))
                if i >= max(want):
                    break
        if progress is not None:
            progress(images.shape[0])
    return {name: np.concatenate(c) for name, c in chunks.items()}


def _svm(cost: float, protocol: SVMProtocol, seed: int) -> Any:
    return LinearSVC(
        C=cost,
        class_weight={1: protocol.class_weight_positive, -1: 1.0},
        intercept_scaling=1.0,
        penalty="l2",
        loss="squared_hinge",
        dual=True,
        tol=protocol.tol,
        max_iter=protocol.max_iter,
        random_state=seed,
    )


def choose_cost(features: np.ndarray, y: np.ndarray, protocol: SVMProtocol, seed: int) -> tuple[float, list[float]]:
    """Cost with the best mean k-fold AP on the training set (``y`` in {1, -1}); -> (cost, mean AP per cost)."""
    n_pos = int((y > 0).sum())
    folds = min(protocol.folds, n_pos, int((y < 0).sum()))
    if folds < 2:
        return protocol.costs[len(protocol.costs) // 2], [math.nan] * len(protocol.costs)
    splits = list(StratifiedKFold(n_splits=folds, shuffle=False).split(features, y))
    means = []
    for cost in protocol.costs:
        aps = []
        for tr, va in splits:
            if len(np.unique(y[tr])) < 2 or not (y[va] > 0).any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = _svm(cost, protocol, seed).fit(features[tr], y[tr])
            aps.append(average_precision(clf.decision_function(features[va]), y[va], protocol.cv_ap_method))  # type: ignore[arg-type]
        means.append(float(np.mean(aps)) if aps else math.nan)
    finite = [(m, -i) for i, m in enumerate(means) if not math.isnan(m)]  # max: best AP, then the earliest cost
    best = protocol.costs[-max(finite)[1]] if finite else protocol.costs[len(protocol.costs) // 2]
    return best, means


def _probe_class(
    train_x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, protocol: SVMProtocol, seed: int
) -> tuple[float, float]:
    if not (y > 0).any():
        return math.nan, math.nan
    cost, _ = choose_cost(train_x, y, protocol, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = _svm(cost, protocol, seed).fit(train_x, y)
    return average_precision(clf.decision_function(test_x), test_y, protocol.ap_method), cost  # type: ignore[arg-type]


def probe_layer(
    train_x: np.ndarray,
    train_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    classes: tuple[str, ...],
    protocol: SVMProtocol,
    seed: int = 0,
    jobs: int = 1,
) -> tuple[dict[str, float], dict[str, float]]:
    """Train one SVM per class on ``train_x [N, D]`` (labels [N, C] in {1, 0, -1}) and score ``test_x``.

    -> ({class: test AP (fraction; NaN when the class has no test or no training positive)}, {class: chosen cost}).
    Difficult-only (0) training labels count as negatives (Goyal et al.). ``jobs`` > 1 runs classes in parallel
    processes (joblib)."""
    ys = [np.where(train_labels[:, k] > 0, 1, -1) for k in range(len(classes))]
    args = [(train_x, ys[k], test_x, test_labels[:, k], protocol, seed) for k in range(len(classes))]
    if jobs > 1:
        results = Parallel(n_jobs=jobs)(delayed(_probe_class)(*a) for a in args)
    else:
        results = [_probe_class(*a) for a in args]
    aps = {c: r[0] for c, r in zip(classes, results)}
    costs = {c: r[1] for c, r in zip(classes, results)}
    return aps, costs
