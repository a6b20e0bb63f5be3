"""The input convention of an AlexNet trunk, shared by every transfer harness.

``bench pretrain`` trains on RGB in [-1, 1] (``minus1to1``, the official Lua code's range); torchvision's ImageNet
AlexNet expects its mean/std (``imagenet``); Caffe models expect BGR minus the Caffe mean (``caffe``). ``auto``
(the ``--input-norm`` default) picks ``imagenet`` for torchvision state dicts and ``minus1to1`` for everything else,
so a trunk always sees inputs in the range it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

INPUT_NORMS: tuple[str, ...] = ("minus1to1", "imagenet", "caffe")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)


def resolve_input_norm(spec: str, weights_kind: str) -> str:
    """``auto`` -> ``imagenet`` for torchvision weights (``WeightsInfo.kind``), else ``minus1to1``."""
    if spec == "auto":
        return "imagenet" if weights_kind == "torchvision" else "minus1to1"
    if spec not in INPUT_NORMS:
        raise ValueError(f"unknown input normalisation {spec!r}; choose auto or one of {INPUT_NORMS}")
    return spec


def normalize_array(rgb: np.ndarray, norm: str) -> np.ndarray:
    """RGB uint8 (or 0..255 float) array [H, W, 3] -> float32 [H, W, 3] in the trunk's convention."""
    arr = np.asarray(rgb, dtype=np.float32)
    if norm == "minus1to1":
        return arr / 127.5 - 1.0
    if norm == "imagenet":
        return (arr / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if norm == "caffe":
        return arr[..., ::-1] - CAFFE_BGR_MEAN
    raise ValueError(f"unknown input normalisation {norm!r}; choose one of {INPUT_NORMS}")


def normalize_image(image: Image.Image, norm: str) -> torch.Tensor:
    """PIL RGB image -> float tensor [3, H, W] in the trunk's convention."""
    arr = normalize_array(np.asarray(image, dtype=np.uint8), norm)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
