"""MATLAB's colon operator and the devkit's 11-point sum (values MATLAB users have published for ``0:0.1:x``)."""

from __future__ import annotations

import numpy as np
import pytest

from transfer.voc_devkit import DEVKIT_RECALL_LEVELS, NUMPY_RECALL_LEVELS, eleven_point_ap, matlab_colon


def test_colon_elements_as_matlab_builds_them() -> None:
    levels = matlab_colon(0.0, 0.1, 1.0)
    literals = np.array([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # MATLAB: (0:.1:1) == [0 0.1 ... 1] is true everywhere except the 4th element, which is 0.3 + 5.55e-17
    assert (levels == literals).tolist() == [True] * 3 + [False] + [True] * 7
    assert levels[3] - 0.3 == pytest.approx(5.5511e-17, rel=1e-4)
    # MATLAB: x = 0:0.1:0.3; y = 0:0.1:0.4; x - y(1:end-1) = 1e-16 * [0 0 -0.2776 -0.5551]
    x, y = matlab_colon(0.0, 0.1, 0.3), matlab_colon(0.0, 0.1, 0.4)
    assert np.allclose((x - y[:-1]) / 1e-16, [0, 0, -0.2776, -0.5551], atol=1e-4)
    assert x[-1] == 0.3 and len(matlab_colon(1.0, 0.5, 4.0)) == 7 and matlab_colon(5.0, 1.0, 4.0).size == 0


def test_numpy_thresholds_differ_at_six_and_seven_tenths() -> None:
    differ = np.flatnonzero(DEVKIT_RECALL_LEVELS != NUMPY_RECALL_LEVELS).tolist()
    assert differ == [6, 7] and NUMPY_RECALL_LEVELS[6] > 0.6 and DEVKIT_RECALL_LEVELS[6] == 0.6


def test_recall_exactly_on_a_threshold() -> None:
    for recall, devkit_levels, numpy_levels in ((3 / 5, 7, 6), (7 / 10, 8, 7), (3 / 10, 3, 3), (1 / 2, 6, 6)):
        assert eleven_point_ap(np.array([recall]), np.array([1.0])) == pytest.approx(devkit_levels / 11)
        assert eleven_point_ap(np.array([recall]), np.array([1.0]), NUMPY_RECALL_LEVELS) == pytest.approx(
            numpy_levels / 11
        )


def test_nan_precision_is_skipped_like_matlabs_max() -> None:
    # 0/0 before the first counted item: max skips it, the later precision 1 is found at recall 0 and 1
    assert eleven_point_ap(np.array([0.0, 1.0]), np.array([np.nan, 1.0])) == pytest.approx(1.0)
