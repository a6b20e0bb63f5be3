"""Classification AP on hand-worked cases, and agreement with scikit-learn where the definitions coincide."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from transfer.classification_ap import average_precision, mean_average_precision


def test_hand_worked_ranking() -> None:
    # ranking: + - + -  -> P at the two positives: 1/1, 2/3 -> AP = (1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([1, -1, 1, -1])
    for method in ("krahenbuhl", "sklearn", "voc_area"):
        assert average_precision(scores, labels, method) == pytest.approx((1 + 2 / 3) / 2)
    # 11-point: recall 0..0.5 -> best precision 1; 0.6..1.0 -> 2/3
    assert average_precision(scores, labels, "voc07") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_ties() -> None:
    # one positive tied with one negative at the top, then a positive
    scores = np.array([0.5, 0.5, 0.2])
    labels = np.array([1, -1, 1])
    # sklearn groups the tie: at threshold 0.5 recall 1/2, precision 1/2; at 0.2 recall 1, precision 2/3
    assert average_precision(scores, labels, "sklearn") == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(scores, labels, "sklearn") == pytest.approx(average_precision_score(labels > 0, scores))
    # pessimistic: the negative first -> positives at ranks 2 and 3: (1/2 + 2/3) / 2
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx((0.5 + 2 / 3) / 2)
    # ... which is Krähenbühl's eps trick: sklearn on scores - 1e-5 * label
    eps = average_precision_score(labels > 0, scores - 1e-5 * (labels > 0))
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx(eps)
    # all tied: every method that groups gives the positive rate
    assert average_precision(np.zeros(4), np.array([1, -1, -1, 1]), "sklearn") == pytest.approx(0.5)


def test_difficult_ignored_and_all_negative() -> None:
    scores = np.array([0.9, 0.8, 0.7])
    # the difficult (0) item ranked first must not count as a false positive
    assert average_precision(scores, np.array([0, 1, -1])) == pytest.approx(1.0)
    assert math.isnan(average_precision(scores, np.array([-1, 0, -1])))
    labels = np.array([[1, -1], [-1, -1], [1, 0]])
    s = np.array([[0.9, 0.1], [0.1, 0.5], [0.8, 0.9]])
    m, per_class, undefined = mean_average_precision(s, labels, ("a", "b"))
    assert per_class["a"] == pytest.approx(1.0) and math.isnan(per_class["b"])
    assert undefined == ["b"] and m == pytest.approx(1.0)  # the class without positives is left out of the mean


def test_matches_sklearn_without_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.normal(size=50)
        labels = rng.choice([-1, 0, 1], size=50, p=[0.6, 0.1, 0.3])
        keep = labels != 0
        want = average_precision_score(labels[keep] > 0, scores[keep])
        for method in ("krahenbuhl", "sklearn"):
            assert average_precision(scores, labels, method) == pytest.approx(want)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="labels must be"):
        average_precision(np.zeros(2), np.array([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, -1]))
