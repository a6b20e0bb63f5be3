"""Floating-point details of the PASCAL VOC MATLAB devkit that decide AP values at the last digit.

The VOC2007 devkit (``VOCevalcls.m``, ``VOCevaldet.m``) computes the 11-point AP as::

    ap=0;
    for t=0:0.1:1
        p=max(prec(rec>=t)); if isempty(p), p=0; end
        ap=ap+p/11;
    end

Two details matter when a recall lands exactly on a threshold:

- MATLAB's colon operator does not build ``0:0.1:1`` as ``start + k * step`` (what ``np.arange`` and
  ``np.linspace`` do). MathWorks documents that the first half of the vector is ``start + k * step`` and the second
  half ``stop - k * step`` (symmetric about the middle, both ends exact). So the devkit's thresholds are
  ``0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1`` while ``np.arange(0, 1.1, 0.1)`` (used by
  py-faster-rcnn's ``voc_eval.py``) has ``0.6000000000000001`` and ``0.7000000000000001`` in the 7th and 8th place.
  A recall of exactly 3/5 or 7/10 reaches the devkit's threshold but not numpy's; a recall of exactly 3/10 reaches
  neither.
- The devkit adds ``p/11`` eleven times instead of dividing the sum by 11 (a difference in the last bit only).
"""

from __future__ import annotations

import math

import numpy as np


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """The elements of MATLAB's ``start:step:stop`` (``step > 0``), computed as MATLAB computes them.

    Following MathWorks' description of the built-in (its ``colonop`` demonstration): with
    ``tol = 2 eps max(|start|, |stop|)``, the number of intervals is ``n = round((stop - start) / step)``, less one
    when ``start + n * step`` overshoots ``stop`` by more than ``tol`` (integer start and step count exactly); the
    right end is ``stop`` when ``start + n * step`` is within ``tol`` of it, else ``start + n * step``. Elements
    ``k <= n/2`` are ``start + k * step``, the others ``end - (n - k) * step``, and for an even ``n`` the middle one
    is ``(start + end) / 2``.
    """
    if not step > 0:
        raise ValueError(f"matlab_colon needs a positive step, got {step}")
    tol = 2.0 * np.finfo(np.float64).eps * max(abs(start), abs(stop))
    if start == math.floor(start) and step == math.floor(step):
        n = math.floor((stop - start) / step) if step != 1 else math.floor(stop) - int(start)
    else:
        n = round((stop - start) / step)
        if start + n * step - stop > tol:
            n -= 1
    if n < 0:
        return np.zeros(0, np.float64)
    end = stop if start + n * step - stop > -tol else start + n * step
    out = np.empty(n + 1, np.float64)
    for k in range(n // 2 + 1):
        out[k] = start + k * step
        out[n - k] = end - k * step
    if n % 2 == 0:
        out[n // 2] = (start + end) / 2.0
    return out


#: The devkit's ``0:0.1:1``.
DEVKIT_RECALL_LEVELS: np.ndarray = matlab_colon(0.0, 0.1, 1.0)
#: py-faster-rcnn's ``np.arange(0., 1.1, 0.1)`` (numpy builds ``0 + k * 0.1``).
NUMPY_RECALL_LEVELS: np.ndarray = np.arange(0.0, 1.1, 0.1)


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray, levels: np.ndarray = DEVKIT_RECALL_LEVELS) -> float:
    """Mean over ``levels`` of the highest precision at ``recall >= t`` (0 when no recall reaches ``t``), summed as
    the devkit sums it (``ap = ap + p / 11``). ``precision`` may hold NaN (0/0 before the first counted item);
    MATLAB's ``max`` skips NaN, and so does this. Where every selected precision is NaN MATLAB's ``max`` returns
    NaN (an AP of NaN); this returns 0 there (only possible when no item at all was counted)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    ap = 0.0
    for t in levels:
        reached = precision[(recall >= t) & ~np.isnan(precision)]
        p = float(reached.max()) if reached.size else 0.0
        ap = ap + p / float(len(levels))
    return ap
