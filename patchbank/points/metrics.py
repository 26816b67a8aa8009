"""Metrics of 3D-only banks: object AUROC, point AUROC and point AU-PRO.

The first two are Real3D-AD's own (its baselines' evaluation): ``roc_auc_score`` on one score per test cloud,
and on every point of every test cloud pooled. Real3D-AD reports no AU-PRO; this one mirrors the image AU-PRO
of :mod:`patchbank.metrics` with point regions in place of pixel regions:

- regions: the connected components of each cloud's defective points, two defective points being connected
  when they lie within ``RADIUS_FACTOR`` times the cloud's sampling spacing (the median distance from a point
  to its nearest neighbour, measured on up to ``SPACING_SAMPLE`` of its points);
- the curve: 100 thresholds from the sorted scores of the good points of all clouds (good clouds' and the
  good points of defective ones), FPR over those points, per-region overlap the fraction of the region's
  points strictly above the threshold, all regions weighing the same
  (:func:`patchbank.metrics.region_pro_curve`);
- integrated to FPR 0.3 and divided by 0.3 (:func:`patchbank.metrics.trapezoid`).

Every malformed argument raises :class:`patchbank.errors.InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from patchbank.errors import InputError
from patchbank.metrics import (
    _binary_array,
    _require_both_classes,
    _score_array,
    check_integration_limit,
    image_auroc,
    region_pro_curve,
    trapezoid,
)

RADIUS_FACTOR = 2.0
SPACING_SAMPLE = 20_000
_SEED = 0


def object_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of (N,) object scores against (N,) labels (0 good, 1 defective): :func:`image_auroc`."""
    return image_auroc(labels, scores)


def _pooled(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every cloud's (N_i,) labels and scores, checked to match, concatenated (bool, float64)."""
    if len(labels) != len(scores) or not labels:
        raise InputError(
            f"point metrics need one label and one score array per cloud; got {len(labels)} and {len(scores)}"
        )
    ys, ss = [], []
    for i, (y, s) in enumerate(zip(labels, scores, strict=True)):
        y, s = _binary_array(y, f"labels of cloud {i}"), _score_array(s, f"point scores of cloud {i}")
        if y.ndim != 1 or y.shape != s.shape:
            raise InputError(f"cloud {i}: {y.shape} labels but {s.shape} point scores")
        ys.append(y)
        ss.append(s)
    return np.concatenate(ys), np.concatenate(ss)


def point_auroc(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> float:
    """AUROC of every point of every cloud pooled: ``labels``/``scores`` one (N_i,) array per cloud."""
    from sklearn.metrics import roc_auc_score

    y, s = _pooled(labels, scores)
    _require_both_classes(y, "point AUROC", "points")
    return float(roc_auc_score(y, s))


def sampling_spacing(points: np.ndarray) -> float:
    """A cloud's sampling spacing: the median distance from a point to its nearest other point, over up to
    :data:`SPACING_SAMPLE` of its points (seeded)."""
    from scipy.spatial import cKDTree

    xyz = np.asarray(points, dtype=np.float64)
    if len(xyz) < 2:
        raise InputError("a sampling spacing needs two points or more")
    probe = xyz
    if len(xyz) > SPACING_SAMPLE:
        probe = xyz[np.random.default_rng(_SEED).choice(len(xyz), SPACING_SAMPLE, replace=False)]
    distances, _ = cKDTree(xyz).query(probe, k=2)
    return float(np.median(distances[:, 1]))


def point_regions(points: np.ndarray, labels: np.ndarray, radius_factor: float = RADIUS_FACTOR) -> np.ndarray:
    """(N,) int32 region of each of a cloud's (N, 3) points: 0 for good points, 1..R for the connected
    components of its defective points (``labels`` True), linked within ``radius_factor`` x its spacing."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    xyz = np.asarray(points, dtype=np.float64)
    y = _binary_array(labels, "point labels")
    if xyz.ndim != 2 or xyz.shape[1] != 3 or y.shape != (len(xyz),):
        raise InputError(f"point regions need (N, 3) points and (N,) labels; got {xyz.shape} and {y.shape}")
    regions = np.zeros(len(xyz), dtype=np.int32)
    bad = np.flatnonzero(y)
    if not bad.size:
        return regions
    radius = radius_factor * sampling_spacing(xyz)
    pairs = cKDTree(xyz[bad]).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(bad.size, bad.size))
    _, component = connected_components(graph, directed=False)
    regions[bad] = component + 1
    return regions


def point_pro_curve(
    regions: Sequence[np.ndarray], scores: Sequence[np.ndarray], num_thresholds: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve over the regions of several clouds (each (N_i,) from :func:`point_regions`) and their
    (N_i,) point scores: (fprs, pros) as :func:`patchbank.metrics.pro_curve`."""
    if len(regions) != len(scores) or not regions:
        raise InputError(
            f"point AU-PRO needs one region array per score array; got {len(regions)} and {len(scores)}"
        )
    labeled, pooled, offset = [], [], 0
    for i, (r, s) in enumerate(zip(regions, scores, strict=True)):
        r = np.asarray(r)
        s = _score_array(s, f"point scores of cloud {i}")
        if r.ndim != 1 or r.shape != s.shape or not np.issubdtype(r.dtype, np.integer) or (r < 0).any():
            raise InputError(f"cloud {i}: regions must be (N,) non-negative integers matching its scores")
        labeled.append(np.where(r > 0, r.astype(np.int64) + offset, 0))
        pooled.append(s)
        offset += int(r.max(initial=0))
    return region_pro_curve(np.concatenate(labeled), np.concatenate(pooled), offset, num_thresholds, "point")


def point_au_pro_regions(
    regions: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    integration_limit: float = 0.3,
    num_thresholds: int = 100,
) -> float:
    """AU-PRO of clouds whose regions are known: the curve of :func:`point_pro_curve` integrated to
    ``integration_limit`` and divided by it."""
    limit = check_integration_limit(integration_limit)
    fprs, pros = point_pro_curve(regions, scores, num_thresholds)
    return trapezoid(fprs, pros, x_max=limit) / limit


def point_au_pro(
    clouds: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    integration_limit: float = 0.3,
    num_thresholds: int = 100,
) -> float:
    """AU-PRO of point scores: per cloud its (N_i, 3) points, (N_i,) labels and (N_i,) scores."""
    if not len(clouds) == len(labels) == len(scores):
        raise InputError("point AU-PRO needs as many clouds, label arrays and score arrays")
    regions = [point_regions(c, y) for c, y in zip(clouds, labels, strict=True)]
    return point_au_pro_regions(regions, scores, integration_limit, num_thresholds)
