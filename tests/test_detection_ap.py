"""VOC devkit detection AP on hand-worked cases (expected values computed by hand in the comments)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from transfer.detection_ap import (
    ClassDetections,
    GroundTruth,
    evaluate_detections,
    match_detections,
    voc07_11point_ap,
    voc_detection_ap,
)

G1 = [0, 0, 9, 9]
G2 = [20, 20, 29, 29]
FAR = [50, 50, 59, 59]


def gt(boxes: Sequence[Sequence[float]], difficult: list[bool] | None = None) -> GroundTruth:
    return GroundTruth(np.array(boxes, float).reshape(-1, 4), np.array(difficult or [False] * len(boxes)))


def dets(items: Sequence[tuple[str, float, Sequence[float]]]) -> ClassDetections:
    return ClassDetections(
        [i for i, _, _ in items], np.array([s for _, s, _ in items]), np.array([b for *_, b in items])
    )


def test_duplicate_detection_is_a_false_positive() -> None:
    truth = {"a": gt([G1, G2])}
    d = dets([("a", 0.9, G1), ("a", 0.8, G1), ("a", 0.7, FAR), ("a", 0.6, G2)])
    tp, fp, npos = match_detections(d, truth)
    assert tp.tolist() == [1, 0, 0, 1] and fp.tolist() == [0, 1, 1, 0] and npos == 2
    # recall .5 .5 .5 1, precision 1 .5 1/3 .5: t = 0..0.5 (6 points) -> 1, t = 0.6..1 (5 points) -> .5
    assert voc_detection_ap(d, truth) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    # envelope: precision 1 up to recall .5, .5 up to 1 -> .5 * 1 + .5 * .5
    assert voc_detection_ap(d, truth, use_07_metric=False) == pytest.approx(0.75)


def test_difficult_matches_are_neither_true_nor_false_positives() -> None:
    truth = {"a": gt([G1, G2], [False, True])}
    d = dets([("a", 0.9, G2), ("a", 0.8, G1), ("a", 0.7, G2)])
    tp, fp, npos = match_detections(d, truth)
    assert npos == 1  # the difficult box does not count as a positive
    assert tp.tolist() == [0, 1, 0] and fp.tolist() == [0, 0, 0]
    # recall 0 1 1, precision 0 1 1 -> every recall threshold reaches precision 1
    assert voc_detection_ap(d, truth) == pytest.approx(1.0)
    # without the difficult box those detections are false positives: precision 0, .5, 1/3 -> AP .5
    assert voc_detection_ap(d, {"a": gt([G1])}) == pytest.approx(0.5)


def test_class_without_detections_scores_zero_and_class_without_ground_truth_is_left_out() -> None:
    truth = {"cat": {"a": gt([G1])}, "dog": {"a": gt([])}, "cow": {"a": gt([G2])}}
    detections = {"cow": dets([("a", 0.5, G2)])}
    assert voc_detection_ap(ClassDetections.empty(), truth["cat"]) == 0.0
    assert math.isnan(voc_detection_ap(dets([("a", 0.5, G1)]), truth["dog"]))
    result = evaluate_detections(detections, truth, ["cat", "dog", "cow"])
    assert result["ap07"] == {"cat": 0.0, "cow": pytest.approx(100.0)}
    assert result["classes_without_gt"] == ["dog"]
    assert result["mAP"] == pytest.approx(50.0)  # mean over cat and cow only


def test_ties_keep_the_given_order_as_matlabs_stable_sort() -> None:
    truth = {"a": gt([G1]), "b": gt([])}
    fp_first = dets([("b", 0.5, G1), ("a", 0.5, G1)])
    tp_first = dets([("a", 0.5, G1), ("b", 0.5, G1)])
    # FP then TP: recall 0 1, precision 0 .5 -> .5 at every threshold
    assert voc_detection_ap(fp_first, truth) == pytest.approx(0.5)
    # TP then FP: precision 1 at recall 1 -> 1
    assert voc_detection_ap(tp_first, truth) == pytest.approx(1.0)


def test_iou_uses_the_devkits_inclusive_pixel_convention() -> None:
    truth = {"a": gt([[0, 0, 9, 19]])}
    # inclusive: 10x10 inside 10x20 -> IoU 100 / 200 = 0.5 (a hit); exclusive areas would give 81 / 171 < 0.5
    assert match_detections(dets([("a", 1.0, G1)]), truth)[0].tolist() == [1]
    # py-faster-rcnn's voc_eval tests ovmax > 0.5: the same detection is a false positive there
    tp, fp, _ = match_detections(dets([("a", 1.0, G1)]), truth, convention="py-faster-rcnn")
    assert tp.tolist() == [0] and fp.tolist() == [1]
    assert voc_detection_ap(dets([("a", 1.0, G1)]), truth) == pytest.approx(1.0)
    assert voc_detection_ap(dets([("a", 1.0, G1)]), truth, convention="py-faster-rcnn") == 0.0


def test_eleven_point_thresholds_round_like_the_devkit() -> None:
    # MATLAB's 0:0.1:1 makes the fourth level 0.30000000000000004, so recall exactly 0.3 only reaches 0, .1, .2
    for convention in ("devkit", "py-faster-rcnn"):
        assert voc07_11point_ap(np.array([0.3]), np.array([1.0]), convention) == pytest.approx(3 / 11)
        assert voc07_11point_ap(np.array([0.5]), np.array([1.0]), convention) == pytest.approx(6 / 11)
    # ... but its 7th level is 0.6 itself (1 - 4 * 0.1), where np.arange has 0.6000000000000001
    assert voc07_11point_ap(np.array([0.6]), np.array([1.0])) == pytest.approx(7 / 11)
    assert voc07_11point_ap(np.array([0.6]), np.array([1.0]), "py-faster-rcnn") == pytest.approx(6 / 11)


def test_recall_landing_on_a_level_through_the_matching() -> None:
    # five objects in five images; detections hit three of them (recall 3/5), then two false positives
    truth = {f"i{k}": gt([G1]) for k in range(5)}
    d = dets([(f"i{k}", 1.0 - 0.1 * k, G1) for k in range(3)] + [("i3", 0.2, FAR), ("i4", 0.1, FAR)])
    # devkit: levels 0..0.6 (7 of 11) reach precision 1; py-faster-rcnn: 0..0.5 (6 of 11)
    assert voc_detection_ap(d, truth) == pytest.approx(7 / 11)
    assert voc_detection_ap(d, truth, convention="py-faster-rcnn") == pytest.approx(6 / 11)
    result = evaluate_detections({"c": d}, {"c": truth}, ["c"])
    assert result["mAP"] == pytest.approx(700 / 11) and result["mAP_py_faster_rcnn"] == pytest.approx(600 / 11)
    with pytest.raises(ValueError, match="unknown AP convention"):
        match_detections(d, truth, convention="matlab")  # type: ignore[arg-type]


def test_detection_in_an_image_without_ground_truth_is_a_false_positive() -> None:
    truth = {"a": gt([G1])}
    tp, fp, _ = match_detections(dets([("z", 0.9, G1), ("a", 0.1, G1)]), truth)
    assert tp.tolist() == [0, 1] and fp.tolist() == [1, 0]
