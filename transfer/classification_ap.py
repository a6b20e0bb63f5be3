"""Average precision for VOC2007 image classification (one score per image and class).

Labels follow the devkit: ``1`` positive, ``-1`` negative, ``0`` "difficult only" = ignored. Ignored entries are
removed before ranking, so they count neither as true nor as false positives.

Definitions (``method``):

- ``"krahenbuhl"`` (default of the fine-tuning protocol): scikit-learn's ``average_precision_score`` on the
  non-ignored entries, ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, with exact ties broken
  *pessimistically* (a positive tied with a negative is ranked after it). This is what Krähenbühl et al.'s
  ``voc-classification`` evaluation does by subtracting ``1e-5 * label`` from the scores before calling scikit-learn;
  here the tie-break is exact (no epsilon that could reorder scores closer than 1e-5).
- ``"sklearn"``: plain ``average_precision_score``: tied scores form one threshold (precision at the end of the tie
  group is credited to all positives of the group).
- ``"voc07"``: the VOC2007 devkit's 11-point interpolated AP (``VOCevalcls.m``): mean over recall levels
  ``t = 0, 0.1, ..., 1`` of the best precision at recall ``>= t`` (0 when unreached); ties in input order
  (stable sort, as MATLAB's ``sort``). Offered for reference.
- ``"voc_area"``: the VOC2010+ area under the monotone precision envelope (all recall points), which Goyal et al.'s
  SVM benchmark reports; ties in input order.

A class without positive (label 1) entries has no defined AP: ``NaN`` is returned, and ``mean_average_precision``
leaves such classes out of the mean and lists them (the VOC2007 test set has positives for every class, so this only
happens on small or custom data).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

APMethod = Literal["krahenbuhl", "sklearn", "voc07", "voc_area"]
AP_METHODS: tuple[str, ...] = ("krahenbuhl", "sklearn", "voc07", "voc_area")


def _ranked(scores: np.ndarray, labels: np.ndarray, pessimistic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores and positive flags of the non-ignored entries, sorted by descending score."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    bad = np.setdiff1d(np.unique(y), [-1, 0, 1])
    if bad.size:
        raise ValueError(f"labels must be 1, 0 (ignore) or -1, got {bad.tolist()}")
    keep = y != 0
    s, pos = s[keep], y[keep] > 0
    # lexsort: last key is primary; pessimistic puts negatives (False) before positives within a tie
    order = np.lexsort((pos, -s)) if pessimistic else np.argsort(-s, kind="stable")
    return s[order], pos[order]


def average_precision(scores: np.ndarray, labels: np.ndarray, method: APMethod = "krahenbuhl") -> float:
    """AP of one class: ``scores [N]`` (higher = more confident), ``labels [N]`` in {1, 0 ignore, -1}."""
    if method not in AP_METHODS:
        raise ValueError(f"unknown AP method {method!r}; choose one of {AP_METHODS}")
    s, pos = _ranked(scores, labels, pessimistic=method == "krahenbuhl")
    if not pos.any():
        return math.nan
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    if method in ("krahenbuhl", "sklearn"):
        change = np.diff(s) != 0
        if method == "krahenbuhl":
            change |= np.diff(pos.astype(np.int8)) != 0
        ends = np.r_[np.flatnonzero(change), len(s) - 1]  # last entry of each threshold group
        tp, fp = tp[ends], fp[ends]
        precision, recall = tp / (tp + fp), tp / tp[-1]
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    precision, recall = tp / (tp + fp), tp / tp[-1]
    if method == "voc07":
        levels = np.linspace(0.0, 1.0, 11)
        return float(np.mean([precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in levels]))
    # voc_area: precision envelope, summed over the recall steps
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * envelope))


def mean_average_precision(
    scores: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...] | list[str],
    method: APMethod = "krahenbuhl",
) -> tuple[float, dict[str, float], list[str]]:
    """``scores [N, C]``, ``labels [N, C]`` -> (mAP over classes with positives, {class: AP}, classes without
    positives). APs are fractions in [0, 1] (callers convert to percent for records)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape or scores.shape[1] != len(classes):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, {len(classes)}]")
    per_class = {c: average_precision(scores[:, k], labels[:, k], method) for k, c in enumerate(classes)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    undefined = [c for c, v in per_class.items() if math.isnan(v)]
    return (float(np.mean(defined)) if defined else math.nan), per_class, undefined
