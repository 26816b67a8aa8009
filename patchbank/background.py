"""Background removal of an organized point cloud: the preprocessing published with M3DM and Shape-Guided.

The recipe (M3DM's ``utils/preprocessing.py``, applied here to the 224 x 224 cloud the features see):

1. Fit a plane by RANSAC to the valid points of the image's border frame (``border`` pixels wide): on an
   inspection station that frame sees mostly the table or conveyor the part stands on.
2. Every valid point closer than ``plane_distance`` to that plane becomes missing, (0, 0, 0).
3. DBSCAN on the remaining valid points; only the largest cluster is kept, which drops sensor speckle,
   flying pixels and stray objects (the other clusters and DBSCAN's noise become missing).

Where this implementation decides what M3DM leaves open:

- No plane: the plane is removed only when at least ``min_plane_fraction`` of the valid border points lie
  within ``plane_distance`` of the best RANSAC plane. A part that fills the view (no table visible) thus keeps
  its points instead of losing whatever slice of it a plane through three border points happens to cut.
  With fewer than 3 valid border points the plane step is skipped; clustering still runs.
- DBSCAN radius: ``cluster_eps=None`` (default) derives it from the cloud, ``AUTO_EPS_SPACINGS`` times the
  median distance between horizontally or vertically adjacent valid pixels (exact duplicates, which a
  nearest upsampling makes, are ignored). M3DM's fixed 6 mm suits MVTec 3D-AD at full resolution; a radius
  in units of the point spacing works at any resolution and sensor distance.
- Determinism: the bank is built with this function and the service applies it again at scoring time, so
  the same input must give the same output in every process. RANSAC is a small numpy loop driven by a
  fixed-seed generator (no global random state, unlike Open3D's ``segment_plane``), its distances are
  elementwise numpy (no BLAS), and Open3D's ``cluster_dbscan`` has no randomness.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import InputError
from patchbank.preprocess import valid_points

log = logging.getLogger(__name__)

AUTO_EPS_SPACINGS = 4.0  # automatic DBSCAN radius, in median point spacings
RANSAC_SEED = 0  # fixed: the same cloud always gets the same plane
RANSAC_MAX_SCORED = 2000  # border points that score each RANSAC hypothesis (a fixed random subset)


class BackgroundOptions(BaseModel):
    """How :func:`remove_background` finds the background plane and the part's cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    border: int = Field(
        10,
        ge=1,
        le=1000,
        description="width in pixels of the image border frame whose valid points fit the plane",
    )
    plane_distance: float = Field(
        0.005, gt=0, description="metres: points closer than this to the plane become missing (M3DM: 0.005)"
    )
    min_plane_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the plane is removed only when this fraction of the valid border points lies within "
        "plane_distance of it; otherwise the cloud is taken to have no background plane",
    )
    ransac_iterations: int = Field(1000, ge=1, le=100_000, description="RANSAC plane hypotheses (M3DM: 1000)")
    cluster_eps: float | None = Field(
        None,
        gt=0,
        description="metres, DBSCAN radius; None: automatic, AUTO_EPS_SPACINGS (4) times the cloud's median "
        "distance between adjacent valid pixels",
    )
    cluster_min_points: int = Field(
        10,
        ge=1,
        description="DBSCAN: points within cluster_eps (itself included) that make a point a core point",
    )


def border_mask(shape: tuple[int, int], border: int) -> np.ndarray:
    """(H, W) bool: True in the ``border``-pixel frame along the four image edges."""
    mask = np.ones(shape, dtype=bool)
    mask[border:-border, border:-border] = False
    return mask


def plane_distances(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(N,) distances of (N, 3) points to the plane (a, b, c, d) with unit normal; elementwise (no BLAS)."""
    return np.abs(points[:, 0] * plane[0] + points[:, 1] * plane[1] + points[:, 2] * plane[2] + plane[3])


def _refit(points: np.ndarray) -> np.ndarray:
    """Least-squares plane (a, b, c, d), unit normal, through (N >= 3, 3) points: smallest eigenvector of the
    covariance. Sums are plain numpy reductions so the result does not depend on BLAS threading."""
    centre = points.mean(axis=0)
    c = points - centre
    cov = (c[:, :, None] * c[:, None, :]).sum(axis=0)
    normal = np.linalg.eigh(cov)[1][:, 0]
    return np.append(normal, -(normal * centre).sum())


def fit_plane(points: np.ndarray, distance: float, iterations: int) -> tuple[np.ndarray, float] | None:
    """RANSAC plane of (N, 3) float64 points: (plane (a, b, c, d), fraction of points within ``distance``).

    Hypotheses from random triples (fixed seed) are scored on at most ``RANSAC_MAX_SCORED`` points; the best
    one's inliers among all points are refitted by least squares. None when N < 3 or every triple is
    degenerate (collinear or repeated points).
    """
    n = len(points)
    if n < 3:
        return None
    rng = np.random.default_rng(RANSAC_SEED)
    scored = points if n <= RANSAC_MAX_SCORED else points[rng.choice(n, RANSAC_MAX_SCORED, replace=False)]
    triples = points[rng.integers(0, n, size=(iterations, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    norms = np.sqrt((normals * normals).sum(axis=1))
    ok = norms > 1e-12
    if not ok.any():
        return None
    normals = normals[ok] / norms[ok, None]
    offsets = -(normals * triples[ok, 0]).sum(axis=1)
    best = int(np.argmax(_inlier_counts(scored, normals, offsets, distance)))
    plane = np.append(normals[best], offsets[best])
    inliers = plane_distances(points, plane) < distance
    if inliers.sum() >= 3:
        plane = _refit(points[inliers])
    return plane, float((plane_distances(points, plane) < distance).mean())


def _inlier_counts(
    points: np.ndarray, normals: np.ndarray, offsets: np.ndarray, distance: float
) -> np.ndarray:
    """(K,) number of (N, 3) points within ``distance`` of each of K planes; in float32 (its ~1e-7 m error is
    immaterial against millimetre thresholds), by a numba kernel with numpy's elementwise arithmetic
    (:mod:`patchbank.plane_numba`)."""
    from patchbank.plane_numba import inlier_counts

    return inlier_counts(points, normals, offsets, distance)


def point_spacing(xyz: np.ndarray, valid: np.ndarray) -> float | None:
    """Median 3D distance between horizontally or vertically adjacent valid pixels, ignoring exact duplicates;
    None when no such pair exists."""
    gaps = []
    for a, b, ok in (
        (xyz[:, 1:], xyz[:, :-1], valid[:, 1:] & valid[:, :-1]),
        (xyz[1:], xyz[:-1], valid[1:] & valid[:-1]),
    ):
        d = a[ok].astype(np.float64) - b[ok]
        gaps.append(np.sqrt((d * d).sum(axis=1)))
    dist = np.concatenate(gaps)
    dist = dist[dist > 0]
    return float(np.median(dist)) if dist.size else None


def largest_cluster(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """(N,) bool: the points of the largest DBSCAN cluster (Open3D) of (N, 3) float64 points; all False when
    DBSCAN finds no cluster. Ties go to the lowest label, i.e. the cluster reached first in point order."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    labels = np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False))
    if labels.size == 0 or labels.max() < 0:
        return np.zeros(len(points), dtype=bool)
    return labels == int(np.argmax(np.bincount(labels[labels >= 0])))


def remove_background(xyz: np.ndarray, opts: BackgroundOptions) -> np.ndarray:
    """A copy of the (H, W, 3) organized cloud (metres, (0, 0, 0) = missing) with the background plane and
    every point outside the largest remaining cluster set to (0, 0, 0), as are the input's invalid points.

    Deterministic: the same input and options give a bit-identical output in every call and process.
    """
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InputError(f"an organized point cloud is (H, W, 3); got shape {xyz.shape}")
    out = np.array(xyz, copy=True)
    valid = valid_points(out)
    points = out.astype(np.float64)
    border = valid & border_mask(valid.shape, opts.border)
    fit = fit_plane(points[border], opts.plane_distance, opts.ransac_iterations)
    if fit is None:
        log.debug("background: %d valid border points, no plane fitted", int(border.sum()))
    elif fit[1] < opts.min_plane_fraction:
        log.debug("background: best plane holds %.0f%% of the border points, taken as no plane", 100 * fit[1])
    else:
        keep = plane_distances(points[valid], fit[0]) >= opts.plane_distance
        valid[valid] = keep
    eps = opts.cluster_eps if opts.cluster_eps is not None else _auto_eps(out, valid_points(out))
    if eps is not None and valid.any():
        valid[valid] = largest_cluster(points[valid], eps, opts.cluster_min_points)
    out[~valid] = 0
    return out


def _auto_eps(xyz: np.ndarray, valid: np.ndarray) -> float | None:
    """The automatic DBSCAN radius, or None (clustering skipped) when the cloud has no two adjacent points."""
    spacing = point_spacing(xyz, valid)
    if spacing is None:
        log.debug("background: no adjacent valid pixels, clustering skipped")
        return None
    return AUTO_EPS_SPACINGS * spacing
