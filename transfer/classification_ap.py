"""Average precision for VOC2007 image classification (one score per image and class).

Labels follow the devkit: ``1`` positive, ``-1`` negative, ``0`` "difficult only" = ignored. Ignored entries are
removed before ranking, so they count neither as true nor as false positives.

Definitions (``method``):

- ``"krahenbuhl"`` (default of the fine-tuning protocol): what Krähenbühl et al.'s ``train_cls.py`` computed when
  the published numbers were made. It calls scikit-learn's ``average_precision_score`` on the non-ignored entries
  with ``1e-5 * label`` subtracted from the scores, so a positive tied with a negative is ranked after it
  (pessimistic ties; here the tie-break is exact, with no epsilon that could reorder scores closer than 1e-5).
  scikit-learn up to 0.18 (the versions of 2014-2016) defined that function as ``auc(recall, precision)`` over
  ``precision_recall_curve``: the **trapezoidal** area through the points ``(0, 1)``, then ``(R_n, P_n)`` at each
  distinct threshold in decreasing order up to the first one that reaches full recall. 0.19 replaced it by the
  step-wise sum below. With pessimistic ties every threshold group is all-positive or all-negative, so the
  trapezoidal area is never larger than the step-wise sum (precision rises within a positive group).
- ``"krahenbuhl_stepwise"``: the same call on scikit-learn 0.19 and later: ``AP = sum_n (R_n - R_{n-1}) P_n``
  over the same pessimistic threshold groups.
- ``"sklearn"``: today's plain ``average_precision_score``: step-wise, tied scores form one threshold (precision
  at the end of the tie group is credited to all positives of the group).
- ``"voc07"``: the VOC2007 devkit's 11-point interpolated AP (``VOCevalcls.m``): mean over the recall levels of
  MATLAB's ``0:0.1:1`` (:mod:`transfer.voc_devkit`) of the best precision at recall ``>= t`` (0 when unreached);
  ties in input order (stable sort, as MATLAB's ``sort``).
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

from transfer.voc_devkit import DEVKIT_RECALL_LEVELS, eleven_point_ap

APMethod = Literal["krahenbuhl", "krahenbuhl_stepwise", "sklearn", "voc07", "voc_area"]
AP_METHODS: tuple[str, ...] = ("krahenbuhl", "krahenbuhl_stepwise", "sklearn", "voc07", "voc_area")
PESSIMISTIC_TIES: frozenset[str] = frozenset({"krahenbuhl", "krahenbuhl_stepwise"})


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


def _threshold_groups(s: np.ndarray, pos: np.ndarray, split_by_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (TP, FP) at the last entry of each threshold group of the ranked entries (scikit-learn's
    ``_binary_clf_curve``); ``split_by_label`` makes a positive/negative tie two groups (the epsilon trick)."""
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    change = np.diff(s) != 0
    if split_by_label:
        change |= np.diff(pos.astype(np.int8)) != 0
    ends = np.r_[np.flatnonzero(change), len(s) - 1]
    return tp[ends], fp[ends]


def _trapezoid_ap(tp: np.ndarray, fp: np.ndarray) -> float:
    """scikit-learn <= 0.18: ``auc(recall, precision)`` over ``precision_recall_curve``, i.e. ``np.trapz`` along the
    curve reversed to decreasing recall, cut at the first full-recall point, with ``(recall 0, precision 1)``
    appended, times -1 (``auc``'s direction for a decreasing x)."""
    precision, recall = tp / (tp + fp), tp / tp[-1]
    last = int(np.searchsorted(tp, tp[-1]))
    x = np.r_[recall[last::-1], 0.0]
    y = np.r_[precision[last::-1], 1.0]
    return float(-(np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def average_precision(scores: np.ndarray, labels: np.ndarray, method: APMethod = "krahenbuhl") -> float:
    """AP of one class: ``scores [N]`` (higher = more confident), ``labels [N]`` in {1, 0 ignore, -1}."""
    if method not in AP_METHODS:
        raise ValueError(f"unknown AP method {method!r}; choose one of {AP_METHODS}")
    pessimistic = method in PESSIMISTIC_TIES
    s, pos = _ranked(scores, labels, pessimistic=pessimistic)
    if not pos.any():
        return math.nan
    if method in ("krahenbuhl", "krahenbuhl_stepwise", "sklearn"):
        tp, fp = _threshold_groups(s, pos, split_by_label=pessimistic)
        if method == "krahenbuhl":
            return _trapezoid_ap(tp, fp)
        precision, recall = tp / (tp + fp), tp / tp[-1]
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(~pos, dtype=np.float64)
    precision, recall = tp / (tp + fp), tp / tp[-1]
    if method == "voc07":
        return eleven_point_ap(recall, precision, DEVKIT_RECALL_LEVELS)
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
