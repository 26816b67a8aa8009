"""Drift of a line: the recent good parts' scores against the calibration's (the held-out goods a bank's
thresholds were set on). A drifting line moves its OK scores up towards the threshold before it floods
operators with false alarms; a two-sample Kolmogorov-Smirnov test and the shift of the median (in units of
the calibration scores' spread) show it early. Both samples are compared below the threshold, where the
recent OK scores can lie."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_RECENT = 10  # fewer recent OK parts say nothing


@dataclass(frozen=True)
class DriftStats:
    n_recent: int
    n_calibration: int
    ks: float | None  # the two-sample KS statistic, 0 (same) to 1; None with too few recent parts
    p_value: float | None
    median_recent: float | None
    median_calibration: float
    shift: float | None  # (median recent - median calibration) / the calibration's IQR (std if 0)


def drift_stats(recent_ok: Sequence[float], calibration: Sequence[float], threshold: float) -> DriftStats:
    """Compare the recent OK parts' image scores with the calibration goods' (both at or below
    ``threshold``)."""
    from scipy.stats import ks_2samp

    cal = np.asarray(calibration, dtype=np.float64)
    cal = cal[cal <= threshold] if (cal <= threshold).sum() >= 2 else cal
    rec = np.asarray(recent_ok, dtype=np.float64)
    rec = rec[rec <= threshold]
    med_cal = float(np.median(cal)) if cal.size else float("nan")
    if rec.size < MIN_RECENT or cal.size < 2:
        return DriftStats(rec.size, cal.size, None, None, None, med_cal, None)
    test = ks_2samp(rec, cal)
    q1, q3 = np.quantile(cal, [0.25, 0.75])
    spread = float(q3 - q1) or float(cal.std()) or 1.0
    med_rec = float(np.median(rec))
    return DriftStats(
        rec.size,
        cal.size,
        float(test.statistic),
        float(test.pvalue),
        med_rec,
        med_cal,
        (med_rec - med_cal) / spread,
    )
