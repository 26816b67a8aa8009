"""Anomaly-detection metrics: image AUROC, pixel AUROC and AU-PRO.

The numbers are the ones the BTF reference evaluation (3D-ADS ``utils/au_pro_util.py``, itself taken from the
official MVTec 3D-AD evaluation code) produces, computed with vectorised NumPy instead of per-threshold loops:

* :func:`image_auroc` / :func:`pixel_auroc` are scikit-learn's ``roc_auc_score`` on per-sample scores and on
  all pixels of all maps pooled together.
* :func:`pro_curve` samples the per-region-overlap curve at ``num_thresholds`` thresholds taken from the
  sorted scores of the anomaly-free pixels; every 8-connected component of every ground-truth mask is one
  region and all regions weigh the same.
* :func:`au_pro` integrates that curve with :func:`trapezoid` up to a false-positive-rate limit (0.3 by
  default) and normalises by the limit, so a perfect map scores 1.0.

Every malformed argument raises :class:`patchbank.errors.InputError`.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from patchbank.errors import InputError

__all__ = [
    "au_pro",
    "check_integration_limit",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "region_pro_curve",
    "trapezoid",
]

# Upper bound on the (regions x thresholds) count matrix built at once in pro_curve; bounds memory to ~32 MiB
# per array even for pathological masks made of hundreds of thousands of tiny regions.
_MAX_COUNT_CELLS = 1 << 22

# Connectivity for labelling a stack of masks at once: 8-connected inside each (H, W) slice, no links between
# slices, so every component belongs to exactly one image (same regions as labelling each mask with a 3x3 ones
# structure, in the same order).
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = True


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of per-image anomaly scores.

    Args:
        labels: (N,) ground truth per sample, 0 = good, 1 = anomalous (bool or integer).
        scores: (N,) anomaly score per sample, higher = more anomalous; must be finite.

    Returns:
        ``sklearn.metrics.roc_auc_score(labels, scores)``; a tie between a good and an anomalous score
        counts 1/2.

    Raises:
        InputError: shapes differ or are not 1-D, labels are not in {0, 1}, a score is not finite, or only one
            class is present.
    """
    y = _binary_array(labels, "image labels")
    s = _score_array(scores, "image scores")
    if y.ndim != 1 or s.ndim != 1:
        raise InputError(f"image AUROC needs 1-D labels and scores; got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise InputError(f"image AUROC got {y.size} labels but {s.size} scores")
    _require_both_classes(y, "image AUROC", "samples")
    return float(roc_auc_score(y, s))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Area under the ROC curve of anomaly-map pixels, all pixels of all maps pooled.

    Args:
        masks: (N, H, W) ground-truth masks, True / 1 = anomalous pixel (bool or {0, 1} numbers).
        maps: (N, H, W) anomaly maps, higher = more anomalous; must be finite.

    Returns:
        ``sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel())``.

    Raises:
        InputError: shapes differ or are not (N, H, W), masks are not binary, a score is not finite, or the
            masks hold only good or only anomalous pixels.
    """
    m, a = _masks_and_maps(masks, maps, "pixel AUROC")
    y = m.ravel()
    _require_both_classes(y, "pixel AUROC", "pixels")
    return float(roc_auc_score(y, a.ravel()))


def pro_curve(
    masks: np.ndarray, maps: np.ndarray, num_thresholds: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve, exactly as the MVTec 3D-AD / BTF reference samples it.

    Regions are the 8-connected components of each mask. With ``ok`` the ascending scores of the ``n``
    anomaly-free pixels of all maps, the thresholds are ``ok[pos]`` for
    ``pos = np.linspace(0, n - 1, num_thresholds, dtype=int)``; at each one
    ``fpr = 1 - (pos + 1) / n`` and ``pro`` is the mean over regions of the fraction of the region's pixels
    scoring strictly above the threshold. The point (1.0, 1.0) is prepended before reversing to ascending FPR.

    Args:
        masks: (N, H, W) ground-truth masks, True / 1 = anomalous pixel (bool or {0, 1} numbers).
        maps: (N, H, W) anomaly maps, higher = more anomalous; must be finite.
        num_thresholds: number of thresholds sampled (at least 2); positions may repeat when there are fewer
            anomaly-free pixels than thresholds, as in the reference.

    Returns:
        fprs: (num_thresholds + 1,) float64 false-positive rates, ascending, from 0.0 to 1.0.
        pros: (num_thresholds + 1,) float64 PRO values matching ``fprs``.

    Raises:
        InputError: malformed masks / maps, no ground-truth region, no anomaly-free pixel, or fewer than two
            thresholds.
    """
    _check_num_thresholds(num_thresholds)
    m, a = _masks_and_maps(masks, maps, "AU-PRO")

    labeled, num_regions = ndimage.label(m, structure=_STACK_STRUCTURE)
    if num_regions == 0:
        raise InputError("AU-PRO needs at least one ground-truth region; every mask is empty")
    return region_pro_curve(labeled.ravel(), a.ravel(), num_regions, num_thresholds, "pixel")


def region_pro_curve(
    labeled: np.ndarray,
    scores: np.ndarray,
    num_regions: int,
    num_thresholds: int = 100,
    unit: str = "element",
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve of :func:`pro_curve` once the regions are known, whatever they are regions of (pixels,
    or points: :mod:`patchbank.points.metrics`).

    Args:
        labeled: (P,) int region of each element, 0 = anomaly-free, 1..num_regions = that region.
        scores: (P,) float64 finite anomaly score of each element.
        num_regions: the number of regions (the largest label), at least 1.
        num_thresholds: number of thresholds sampled (at least 2).
        unit: what an element is, for messages (pixel, point).

    Returns:
        fprs, pros as :func:`pro_curve`.

    Raises:
        InputError: no region, no anomaly-free element, or fewer than two thresholds.
    """
    _check_num_thresholds(num_thresholds)
    if num_regions < 1:
        raise InputError(f"AU-PRO needs at least one ground-truth region of {unit}s")
    ok_scores = scores[labeled == 0]
    n_ok = ok_scores.size
    if n_ok == 0:
        raise InputError(f"AU-PRO needs at least one anomaly-free {unit}; every {unit} is anomalous")

    # Only the order statistics at the sampled positions are needed: partition instead of a full sort.
    positions = np.linspace(0, n_ok - 1, num=int(num_thresholds), dtype=np.int64)  # (T,), non-decreasing
    ok_scores.partition(np.unique(positions))  # in place; ok_scores is a fresh copy
    thresholds = ok_scores[positions]  # (T,) == np.sort(ok)[positions]
    fprs = 1.0 - (positions + 1) / n_ok  # (T,)

    pros = _mean_region_overlap(labeled, scores, num_regions, thresholds)  # (T,)

    fprs = np.concatenate(([1.0], fprs))[::-1].copy()
    pros = np.concatenate(([1.0], pros))[::-1].copy()
    return fprs, pros


def au_pro(
    masks: np.ndarray, maps: np.ndarray, integration_limit: float = 0.3, num_thresholds: int = 100
) -> float:
    """Normalised area under the PRO curve up to a false-positive-rate limit.

    ``trapezoid(fprs, pros, x_max=integration_limit) / integration_limit`` on the curve of :func:`pro_curve`,
    which is what the BTF reference reports as AU-PRO (0.3 limit, 100 thresholds by default).

    Args:
        masks: (N, H, W) ground-truth masks, True / 1 = anomalous pixel (bool or {0, 1} numbers).
        maps: (N, H, W) anomaly maps, higher = more anomalous; must be finite.
        integration_limit: FPR limit of the integral, in (0, 1].
        num_thresholds: number of thresholds sampled for the curve (at least 2).

    Returns:
        AU-PRO in [0, 1]; 1.0 when every region pixel scores above every anomaly-free pixel.

    Raises:
        InputError: as :func:`pro_curve`, or an integration limit outside (0, 1].
    """
    limit = check_integration_limit(integration_limit)
    fprs, pros = pro_curve(masks, maps, num_thresholds=num_thresholds)
    return trapezoid(fprs, pros, x_max=limit) / limit


def check_integration_limit(integration_limit: float) -> float:
    """The AU-PRO integration limit as a float in (0, 1]; InputError otherwise (NaN included)."""
    limit = float(integration_limit)
    if not 0.0 < limit <= 1.0:  # also rejects NaN
        raise InputError(f"AU-PRO integration_limit must be in (0, 1]; got {integration_limit!r}")
    return limit


def _check_num_thresholds(num_thresholds: int) -> None:
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, numbers.Integral):
        raise InputError(f"num_thresholds must be an integer; got {num_thresholds!r}")
    if num_thresholds < 2:
        raise InputError(f"num_thresholds must be at least 2; got {num_thresholds}")


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal integral of a sampled curve, optionally cut at ``x_max`` (MVTec reference semantics).

    Points where ``x`` or ``y`` is not finite are dropped (with a ``RuntimeWarning``). If ``x_max`` is given
    and is not one of the samples, ``y`` at ``x_max`` is linearly interpolated between its two neighbours
    (``x[ins - 1] < x_max < x[ins]``, ``ins`` the right insertion index) and the last partial trapezoid is
    added; samples beyond ``x_max`` are ignored. Repeated ``x`` values are allowed; their order in ``y``
    matters, as in the reference.

    Args:
        x: (K,) sample positions, ascending.
        y: (K,) curve values at ``x``.
        x_max: upper integration bound; must lie within ``[min(x), max(x)]`` of the finite samples.

    Returns:
        Area under the curve (0.0 for fewer than two points in range).

    Raises:
        InputError: ``x`` and ``y`` are not 1-D of the same length, ``x`` is not ascending, or ``x_max`` lies
            outside the sampled range.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise InputError(
            f"trapezoid needs 1-D x and y of the same length; got shapes {xs.shape} and {ys.shape}"
        )
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.all():
        warnings.warn(
            f"trapezoid: ignoring {int((~finite).sum())} non-finite point(s)", RuntimeWarning, stacklevel=2
        )
        xs = xs[finite]
        ys = ys[finite]
    if np.any(np.diff(xs) < 0):
        raise InputError("trapezoid needs x sorted in ascending order")

    correction = 0.0
    if x_max is not None:
        x_max = float(x_max)
        if not np.any(xs == x_max):
            ins = int(np.searchsorted(xs, x_max, side="right"))  # == bisect.bisect_right on sorted xs
            if not 0 < ins < xs.size:
                lo, hi = (float(xs[0]), float(xs[-1])) if xs.size else (float("nan"), float("nan"))
                raise InputError(f"trapezoid x_max={x_max!r} lies outside the sampled range [{lo}, {hi}]")
            x0, x1, y0, y1 = xs[ins - 1], xs[ins], ys[ins - 1], ys[ins]
            y_interp = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            correction = 0.5 * (y_interp + y0) * (x_max - x0)
        keep = xs <= x_max
        xs = xs[keep]
        ys = ys[keep]

    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])) + correction)


def _mean_region_overlap(
    labeled: np.ndarray, scores: np.ndarray, num_regions: int, thresholds: np.ndarray
) -> np.ndarray:
    """Mean over regions of the fraction of region pixels scoring above each threshold.

    Each region pixel is counted once at the first threshold it does not exceed (``searchsorted``, left side,
    so ``score <= threshold`` counts as below); a cumulative sum over thresholds then gives, per region, the
    exact integer number of pixels at or below every threshold. Regions are processed in row blocks so the
    (regions x thresholds) count matrix stays bounded.

    Args:
        labeled: (P,) region label per pixel, 0 = anomaly-free, 1..num_regions = region.
        scores: (P,) anomaly score per pixel.
        num_regions: number of regions (largest label), at least 1.
        thresholds: (T,) non-decreasing thresholds.

    Returns:
        (T,) float64 mean overlap ``mean_r(1 - below_r(t) / size_r)`` per threshold.
    """
    num_t = thresholds.size
    in_region = labeled > 0
    region = labeled[in_region].astype(np.int64) - 1  # (Q,) 0-based region index
    first_below = np.searchsorted(thresholds, scores[in_region], side="left")  # (Q,) in [0, T]

    order = np.argsort(region, kind="stable")
    region = region[order]
    first_below = first_below[order]
    sizes = np.bincount(region, minlength=num_regions)  # (R,) every label occurs at least once
    bounds = np.concatenate(([0], np.cumsum(sizes)))  # (R + 1,) pixel ranges per region

    rows = max(1, _MAX_COUNT_CELLS // (num_t + 1))
    overlap_sum = np.zeros(num_t, dtype=np.float64)
    for r0 in range(0, num_regions, rows):
        r1 = min(num_regions, r0 + rows)
        lo, hi = bounds[r0], bounds[r1]
        key = (region[lo:hi] - r0) * (num_t + 1) + first_below[lo:hi]
        newly_below = np.bincount(key, minlength=(r1 - r0) * (num_t + 1)).reshape(r1 - r0, num_t + 1)
        below = np.cumsum(newly_below[:, :num_t], axis=1)  # (rows, T) pixels <= each threshold
        overlap_sum += (1.0 - below / sizes[r0:r1, None]).sum(axis=0)
    return overlap_sum / num_regions


def _masks_and_maps(masks: np.ndarray, maps: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a stack of masks and anomaly maps.

    Args:
        masks: (N, H, W) bool or {0, 1} numbers.
        maps: (N, H, W) finite real scores.
        metric: metric name for error messages.

    Returns:
        masks as (N, H, W) bool and maps as (N, H, W) float64.
    """
    m = _binary_array(masks, f"{metric} masks")
    a = _score_array(maps, f"{metric} maps")
    if m.ndim != 3 or a.ndim != 3:
        raise InputError(f"{metric} needs (N, H, W) masks and maps; got shapes {m.shape} and {a.shape}")
    if m.shape != a.shape:
        raise InputError(f"{metric} masks {m.shape} and maps {a.shape} differ in shape")
    if m.size == 0:
        raise InputError(f"{metric} got empty masks and maps of shape {m.shape}")
    return m, a


def _binary_array(values: np.ndarray, what: str) -> np.ndarray:
    """Return ``values`` as a bool array, requiring every entry to be 0/1 (or False/True)."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what} must be bool or 0/1 numbers; got dtype {arr.dtype}")
    is_one = arr == 1
    if not np.all(is_one | (arr == 0)):
        bad = np.unique(arr[~(is_one | (arr == 0))])[:5]
        raise InputError(f"{what} must contain only 0 and 1; found {bad.tolist()}")
    return is_one


def _score_array(values: np.ndarray, what: str) -> np.ndarray:
    """Return ``values`` as a float64 array, requiring real, finite entries."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what} must be real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} contain {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    return arr


def _require_both_classes(labels: np.ndarray, metric: str, unit: str) -> None:
    """Raise InputError unless the bool ``labels`` hold at least one False and one True."""
    num_bad = int(labels.sum())
    if num_bad == 0 or num_bad == labels.size:
        only = "anomalous" if num_bad else "good"
        raise InputError(
            f"{metric} needs both good and anomalous {unit}; got only {labels.size} {only} {unit}"
        )
