"""Classification AP on hand-worked cases, and agreement with scikit-learn where the definitions coincide."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve

from transfer.classification_ap import average_precision, mean_average_precision


def legacy_sklearn_ap(y: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn <= 0.18's average_precision_score: auc(recall, precision) over precision_recall_curve (today's
    precision_recall_curve yields the same points, plus full-recall points that add no area)."""
    precision, recall, _ = precision_recall_curve(y, scores)
    return float(auc(recall, precision))


def test_hand_worked_ranking() -> None:
    # ranking: + - + -  -> P at the two positives: 1/1, 2/3 -> step-wise AP = (1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([1, -1, 1, -1])
    for method in ("krahenbuhl_stepwise", "sklearn", "voc_area"):
        assert average_precision(scores, labels, method) == pytest.approx((1 + 2 / 3) / 2)
    # scikit-learn <= 0.18: trapezoids through (R, P) = (0, 1), (.5, 1), (.5, .5), (1, 2/3):
    # .5 * (1 + 1) / 2 + 0 + .5 * (.5 + 2/3) / 2 = 19/24 (its docstring example, [0, 0, 1, 1] scored
    # [.1, .4, .35, .8], is this ranking and printed 0.79...)
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx(19 / 24)
    assert average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([-1, -1, 1, 1])) == pytest.approx(19 / 24)
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
    assert average_precision(scores, labels, "krahenbuhl_stepwise") == pytest.approx((0.5 + 2 / 3) / 2)
    # ... which is Krähenbühl's eps trick: today's sklearn on scores - 1e-5 * label
    eps_scores = scores - 1e-5 * (labels > 0)
    eps = average_precision_score(labels > 0, eps_scores)
    assert average_precision(scores, labels, "krahenbuhl_stepwise") == pytest.approx(eps)
    # trapezoids through (0, 1), (0, 0) [the negative], (.5, .5), (1, 2/3): 0 + .5 * .5 / 2 + .5 * (.5 + 2/3) / 2
    want = 0.5 * 0.5 / 2 + 0.5 * (0.5 + 2 / 3) / 2
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx(want)
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx(legacy_sklearn_ap(labels > 0, eps_scores))
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


def test_a_negative_ranked_first_halves_the_first_trapezoid() -> None:
    # ranking - +: step-wise credits the positive with precision 1/2 over recall 0..1; the trapezoid runs from
    # (0, 0) to (1, 1/2) and gives 1/4 (scikit-learn <= 0.18)
    scores, labels = np.array([0.9, 0.1]), np.array([-1, 1])
    assert average_precision(scores, labels, "krahenbuhl_stepwise") == pytest.approx(0.5)
    assert average_precision(scores, labels, "krahenbuhl") == pytest.approx(0.25)


def test_matches_sklearn_without_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.normal(size=50)
        labels = rng.choice([-1, 0, 1], size=50, p=[0.6, 0.1, 0.3])
        keep = labels != 0
        want = average_precision_score(labels[keep] > 0, scores[keep])
        for method in ("krahenbuhl_stepwise", "sklearn"):
            assert average_precision(scores, labels, method) == pytest.approx(want)
        legacy = average_precision(scores, labels, "krahenbuhl")
        assert legacy == pytest.approx(legacy_sklearn_ap(labels[keep] > 0, scores[keep]))
        assert legacy <= want + 1e-12  # the trapezoids never exceed the step-wise sum


def test_voc07_uses_the_devkit_thresholds_where_recall_lands_on_one() -> None:
    # 5 positives: + + + (recall 3/5 = 0.6 at precision 1), five negatives, + +  (precision 4/9, 5/10)
    labels = np.array([1, 1, 1, -1, -1, -1, -1, -1, 1, 1])
    scores = -np.arange(10.0)
    # devkit 0:0.1:1 holds 0.6 exactly: levels 0..0.6 (7) -> 1, 0.7..1 (4) -> 1/2
    assert average_precision(scores, labels, "voc07") == pytest.approx((7 + 4 * 0.5) / 11)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="labels must be"):
        average_precision(np.zeros(2), np.array([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, -1]))
