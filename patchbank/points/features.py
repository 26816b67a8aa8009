"""Point-neighbourhood features of unorganized clouds, by name (:data:`POINT_EXTRACTORS`): ``point-fpfh``.

A 3D-only bank's patches are point neighbourhoods instead of the image grid's cells. ``point-fpfh`` turns an
(N, 3) cloud of any unit into M centres, their 33-d features and each centre's scoring neighbours:

1. frame and scale: the cloud is expressed in its principal frame (centroid, principal axes); ``r`` = the RMS
   distance of the points from the centroid, a size rotation and translation keep; the voxel is
   ``voxel_fraction * r``, so a cloud in millimetres and the same cloud in metres get the same voxels in their
   own unit;
2. voxel downsampling in that frame, on a grid whose cells are centred on the centroid (the mean of the points
   in each cell), to at most ``max_points`` points (beyond, a seeded random subset): only these are
   featurised, whatever N is;
3. normals (Open3D, hybrid search of ``normal_radius`` voxels, ``normal_max_nn``), each oriented away from the
   centroid;
4. FPFH per point (Open3D, ``feature_radius`` voxels, ``feature_max_nn``), 33-d; the radii default to BTF's
   and Real3D-AD's baselines (2 and 5 voxels; the default voxel, 0.05 r, is about their 0.5 mm on
   Real3D-AD's parts);
5. M = ``n_centres`` centres by farthest point sampling of the downsampled points (Open3D), started at the
   point farthest from the centroid; each centre's feature is the mean FPFH of its ``group_size`` nearest
   downsampled points (the grouping of M3DM and Reg3D-AD), and its ``score_neighbours`` nearest centres
   (itself first) are those the scorer averages its score over (:mod:`patchbank.points.scorer`).

Registration. Real3D-AD's test clouds lie in arbitrary poses; its own baselines (BTF-FPFH, PatchCore,
Reg3D-AD) first register every test cloud onto a training prototype (FPFH + RANSAC, then ICP), a search per
cloud that can settle on a wrong pose of a symmetric part. Here nothing is registered. FPFH describes a point
by angles between normals and the offsets to its neighbours, which a rotation or a translation leaves
unchanged, provided each normal's sign is chosen by a rule that turns with the cloud: Open3D's normals have an
arbitrary sign, and orienting every one away from the centroid is such a rule. The sampling turns with the
cloud as well: the voxel grid lies in the principal frame (the axes' signs do not matter, the grid being
symmetric about the centroid) and the centres' sampling starts at a point defined by the geometry. So a test
cloud is compared with the prototypes in whatever pose it arrives, and a rotated copy of a cloud gets the
same features, up to float rounding at cell boundaries and to the frame's freedom where two principal
variances are equal (a part symmetric about an axis): there the grid turns about that axis and the centres
are other, equally dense ones, whose features agree with their neighbours' to within the voxel's noise
(``tests/unit/test_points_features.py``; ``patchbank rotation`` measures the object AUROC of aligned and
randomly posed test sets of the same clouds). Where the surface is not star-shaped from its centroid (a
torus's inner side), orientation flips along the curve where the surface turns edge-on to the centroid; that
curve is the same in every pose, so good parts still match the prototypes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.errors import InputError
from patchbank.features.base import FeatureSpec
from patchbank.registry import Part, Registry

FPFH_DIM = 33
SUBSET_SEED = 0  # the random subset of a downsampled cloud still over max_points


@dataclass(frozen=True)
class PointFeatures:
    """One cloud's patches: ``centres`` (M, 3) float32 in the cloud's coordinates, ``features`` (M, D) float32,
    ``neighbours`` (M, K) int64 the centres whose scores make each centre's (itself first, then its nearest:
    the scorer averages over them), ``voxel`` the voxel size used (the cloud's unit) and ``n_points`` the
    downsampled points featurised."""

    centres: np.ndarray
    features: np.ndarray
    neighbours: np.ndarray
    voxel: float
    n_points: int


class PointExtractor(Part, ABC):
    """Turns an (N, 3) cloud into :class:`PointFeatures`; ``spec`` records the name and every option."""

    options_model: ClassVar[type[BaseModel]]
    spec: FeatureSpec

    @abstractmethod
    def extract(self, points: np.ndarray) -> PointFeatures:
        """The patches of one (N, 3) finite float cloud."""

    @property
    @abstractmethod
    def max_centres(self) -> int:
        """The most centres one cloud gets (a bank's vector ids are cloud * max_centres + centre)."""

    @property
    def dim(self) -> int:
        return self.spec.dim


POINT_EXTRACTORS: Registry[type[PointExtractor]] = Registry("point feature extractor")
register_point_extractor = POINT_EXTRACTORS.register


class PointFPFHOptions(BaseModel):
    """``point-fpfh``'s options; lengths are multiples of the voxel, itself a fraction of the cloud's size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voxel_fraction: float = Field(
        0.05,
        gt=0,
        le=1,
        description="voxel size as a fraction of the cloud's RMS radius about its centroid (rotation invariant)",
    )
    max_points: int = Field(
        20_000, ge=100, description="downsampled points featurised at most (a seeded random subset beyond)"
    )
    normal_radius: float = Field(2.0, gt=0, description="normal estimation search radius, voxels")
    normal_max_nn: int = Field(30, gt=2, description="normal estimation neighbour cap")
    feature_radius: float = Field(5.0, gt=0, description="FPFH search radius, voxels")
    feature_max_nn: int = Field(100, gt=2, description="FPFH neighbour cap")
    n_centres: int = Field(
        2048, ge=1, description="patch centres per cloud (farthest point sampling of the downsampled points)"
    )
    group_size: int = Field(
        32, ge=1, description="downsampled points averaged into each centre's feature (its nearest)"
    )
    score_neighbours: int = Field(
        16,
        ge=1,
        description="centres whose distances are averaged into each centre's score (itself and its nearest): "
        "the point scores' smoothing, as the image path blurs its map (1: none)",
    )


def rms_radius(points: np.ndarray) -> float:
    """The RMS distance of (N, 3) points from their centroid: a size that rotation and translation keep."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(((p - p.mean(axis=0)) ** 2).sum(axis=1).mean()))


def oriented_normals(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N, 3) normals flipped where they point towards the origin (the cloud's centroid: the points are
    centred on it)."""
    outward = (points * normals).sum(axis=1) >= 0
    return np.where(outward[:, None], normals, -normals)


def principal_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centroid (3,) and the principal axes (3, 3), columns by decreasing variance, of (N, 3) points: a
    frame that turns with the cloud (up to each axis's sign, and their order where two variances are equal)."""
    p = np.asarray(points, dtype=np.float64)
    origin = p.mean(axis=0)
    q = p - origin
    _, axes = np.linalg.eigh(q.T @ q)
    return origin, axes[:, ::-1].copy()


def voxel_means(points: np.ndarray, voxel: float) -> np.ndarray:
    """(n, 3) float64 mean of the (N, 3) points in each occupied cell of a grid of ``voxel``-sized cells
    centred on the origin (so that flipping an axis maps the grid onto itself), in the order of the cells."""
    keys = np.floor(points / voxel + 0.5).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = [int(d) + 1 for d in keys.max(axis=0)]
    if dims[0] * dims[1] * dims[2] < 2**62:  # one int64 per cell: a 1-D unique, 20x faster than by rows
        _, cell = np.unique((keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2], return_inverse=True)
    else:  # a grid that large is outliers far away: the cells by rows
        _, cell = np.unique(keys, axis=0, return_inverse=True)
    cell = cell.ravel()
    counts = np.bincount(cell)
    return np.stack([np.bincount(cell, weights=points[:, k]) for k in range(3)], axis=1) / counts[:, None]


@dataclass(frozen=True)
class Downsampled:
    """A cloud's downsampled ``points`` (n, 3) float64 in its principal frame (``origin`` its centroid,
    ``axes`` (3, 3) its principal axes as columns: cloud = points @ axes.T + origin) and the ``voxel`` size."""

    points: np.ndarray
    voxel: float
    origin: np.ndarray
    axes: np.ndarray


@register_point_extractor("point-fpfh")
class PointFPFHExtractor(PointExtractor):
    """FPFH of voxel-downsampled points with centroid-oriented normals, pooled around farthest-point centres
    (module docstring)."""

    options_model = PointFPFHOptions

    def __init__(self, options: PointFPFHOptions | None = None) -> None:
        self.opts = options or PointFPFHOptions()
        self.spec = FeatureSpec(extractor=self.name, options=self.opts.model_dump(mode="json"), dim=FPFH_DIM)

    @property
    def max_centres(self) -> int:
        return self.opts.n_centres

    def downsample(self, points: np.ndarray) -> Downsampled:
        """The points featurised, in the cloud's principal frame (module docstring, steps 1 and 2)."""
        radius = rms_radius(points)
        if not radius > 0:
            raise InputError("a cloud whose points all coincide has no surface to describe")
        voxel = self.opts.voxel_fraction * radius
        origin, axes = principal_frame(points)
        down = voxel_means((np.asarray(points, dtype=np.float64) - origin) @ axes, voxel)
        if len(down) > self.opts.max_points:
            keep = np.random.default_rng(SUBSET_SEED).choice(len(down), self.opts.max_points, replace=False)
            down = down[np.sort(keep)]
        return Downsampled(down, voxel, origin, axes)

    def describe(self, down: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3) centres and (M, 33) float32 features of (n, 3) downsampled points centred on their cloud's
        centroid (module docstring, steps 3 to 5): unchanged, centres rotated, when ``down`` is rotated."""
        import open3d as o3d
        from scipy.spatial import cKDTree

        o = self.opts
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(down))
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(o.normal_radius * voxel, o.normal_max_nn))
        cloud.normals = o3d.utility.Vector3dVector(oriented_normals(down, np.asarray(cloud.normals)))
        fpfh = o3d.pipelines.registration.compute_fpfh_feature(
            cloud, o3d.geometry.KDTreeSearchParamHybrid(o.feature_radius * voxel, o.feature_max_nn)
        )
        per_point = np.asarray(fpfh.data, dtype=np.float32).T  # (n, 33)
        start = int(np.argmax((down * down).sum(axis=1)))  # the point farthest from the centroid
        sampled = cloud.farthest_point_down_sample(min(o.n_centres, len(down)), start)
        centres = np.asarray(sampled.points)
        k = min(o.group_size, len(down))
        _, groups = cKDTree(down).query(centres, k=k)
        return centres, per_point[np.asarray(groups).reshape(len(centres), k)].mean(axis=1)

    def extract(self, points: np.ndarray) -> PointFeatures:
        from scipy.spatial import cKDTree

        d = self.downsample(points)
        centres, features = self.describe(d.points, d.voxel)
        k = min(self.opts.score_neighbours, len(centres))
        _, neighbours = cKDTree(centres).query(centres, k=k)
        return PointFeatures(
            centres=(centres @ d.axes.T + d.origin).astype(np.float32),
            features=features,
            neighbours=np.asarray(neighbours, dtype=np.int64).reshape(len(centres), k),
            voxel=d.voxel,
            n_points=len(d.points),
        )


def create_point_extractor(name: str, options: dict[str, Any] | None = None) -> PointExtractor:
    """Build a registered point extractor from its options (defaults for the rest); InputError for an unknown
    name or option."""
    return POINT_EXTRACTORS.get(name)(POINT_EXTRACTORS.options(name, options))  # type: ignore[call-arg]


def list_point_extractors() -> list[str]:
    return POINT_EXTRACTORS.names()
