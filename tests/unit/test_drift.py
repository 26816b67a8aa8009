"""The drift statistics: recent OK scores against the calibration goods'."""

from __future__ import annotations

import numpy as np

from patchbank.drift import MIN_RECENT, drift_stats


def test_the_same_line_shows_no_drift_and_a_shifted_one_does() -> None:
    rng = np.random.default_rng(0)
    calibration = rng.normal(1.0, 0.1, 200)
    same = drift_stats(rng.normal(1.0, 0.1, 100), calibration, threshold=1.4)
    moved = drift_stats(rng.normal(1.15, 0.1, 100), calibration, threshold=1.4)
    assert same.ks is not None and moved.ks is not None and same.shift is not None and moved.shift is not None
    assert same.p_value is not None and same.p_value > 0.01 and abs(same.shift) < 0.5
    assert moved.p_value is not None and moved.p_value < 1e-6 and moved.ks > 0.4 and moved.shift > 0.8


def test_scores_above_the_threshold_and_too_few_parts_are_left_out() -> None:
    calibration = np.linspace(0.5, 1.5, 50)
    few = drift_stats([0.9] * (MIN_RECENT - 1) + [5.0], calibration, threshold=1.2)
    assert few.n_recent == MIN_RECENT - 1 and few.ks is None and few.shift is None
    assert few.n_calibration == int((calibration <= 1.2).sum())
