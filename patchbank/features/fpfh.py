"""FPFH patch features (BTF): normals and FPFH on the valid points of the 224 x 224 cloud.

Normals: hybrid search (radius 0.1 m, max 30 neighbours); FPFH: radius 0.25 m, max 100 neighbours. The 33-d
descriptors are scattered back to the grid (zeros where a point is missing), then pooled to 28 x 28.

Where the neighbours come from (``neighbours``):

- ``grid`` (default): the nearest points among a (2 window + 1)^2 pixel window of the organized cloud, then
  Open3D's normal and FPFH arithmetic ported exactly; a numba kernel on the CPU (about 6x faster than
  Open3D on 2 cores), plain torch on a GPU. Equal to ``kdtree`` wherever the window holds a point's true
  nearest neighbours, which on a camera's organized cloud is nearly everywhere (``bench`` prints the metrics
  of both).
- ``kdtree``: Open3D's KD-tree, BTF's recipe as published (the reference path).

``background`` (off by default) first removes the background plane and stray clusters from every cloud
(M3DM's preprocessing, :mod:`patchbank.background`), the same way for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchbank.background import BackgroundOptions, remove_background
from patchbank.features.base import (
    FeatureExtractor,
    FeatureSpec,
    grid_support,
    pool_matrix,
    register_extractor,
    to_grid,
    to_patches,
)
from patchbank.preprocess import Prepared, valid_points

if TYPE_CHECKING:
    import torch

FPFH_DIM = 33


class FPFHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normal_radius: float = Field(0.1, gt=0, description="normal estimation search radius, metres")
    normal_max_nn: int = Field(30, gt=2, description="normal estimation neighbour cap")
    feature_radius: float = Field(0.25, gt=0, description="FPFH search radius, metres")
    feature_max_nn: int = Field(100, gt=2, description="FPFH neighbour cap")
    neighbours: Literal["grid", "kdtree"] = Field(
        "grid", description="grid: nearest points in a pixel window (fast); kdtree: Open3D's KD-tree (BTF)"
    )
    window: int = Field(10, ge=1, le=32, description="grid: half-width of the pixel window")
    background: BackgroundOptions | None = Field(
        None, description="remove the background plane before FPFH (RANSAC + DBSCAN); None keeps every point"
    )


def fpfh_map(xyz: np.ndarray, opts: FPFHOptions) -> np.ndarray:
    """(H, W, 3) organized cloud -> (33, H, W) float64 FPFH by Open3D, zeros where a point is missing."""
    import open3d as o3d

    h, w, _ = xyz.shape
    flat = xyz.reshape(-1, 3)
    valid = np.flatnonzero(valid_points(flat))
    full = np.zeros((h * w, FPFH_DIM), dtype=np.float64)
    if valid.size:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(flat[valid].astype(np.float64)))
        pcd.estimate_normals(
            o3d.geometry.KDTreeSearchParamHybrid(radius=opts.normal_radius, max_nn=opts.normal_max_nn)
        )
        fpfh = o3d.pipelines.registration.compute_fpfh_feature(
            pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=opts.feature_radius, max_nn=opts.feature_max_nn)
        )
        full[valid] = np.asarray(fpfh.data).T
    return full.reshape(h, w, FPFH_DIM).transpose(2, 0, 1)


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@register_extractor("fpfh")
class FPFHExtractor(FeatureExtractor):
    """FPFH on the CPU (Open3D or numba) or, for ``grid`` on a CUDA device or without numba, in torch.

    Given the patches on the part (a bank that scores the part only), the numba kernel computes only the
    points those patches pool and what they depend on (equal to the full computation there); every backend
    gives zeros for the other patches."""

    options_model = FPFHOptions
    uses_part = True

    def __init__(self, options: FPFHOptions | None = None, device: str = "cpu") -> None:
        import torch

        self.opts = options or FPFHOptions()
        self.spec = FeatureSpec(extractor=self.name, options=self.opts.model_dump(mode="json"), dim=FPFH_DIM)
        self.device = torch.device(device)
        self.backend = self._backend()

    def _backend(self) -> str:
        if self.opts.neighbours == "kdtree":
            return "open3d"
        return "numba" if self.device.type == "cpu" and _numba_available() else "torch"

    def clouds(self, batch: Sequence[Prepared]) -> list[np.ndarray]:
        """The (S, S, 3) clouds FPFH sees: the samples' own, or with their background removed."""
        bg = self.opts.background
        return [p.xyz if bg is None else remove_background(p.xyz, bg) for p in batch]

    def extract(self, batch: Sequence[Prepared], part: np.ndarray | None = None) -> np.ndarray:
        return self.adapt(to_patches(self.grid_maps(batch, part)))

    def grid_maps(self, batch: Sequence[Prepared], part: np.ndarray | None = None) -> torch.Tensor:
        """(B, 33, 28, 28) pooled FPFH maps, float64 (as Open3D's descriptors), on the extractor's device;
        ``part``: (B, 784) bool, the patches computed (zeros elsewhere; None: all)."""
        import torch

        o = self.opts
        args = (o.normal_radius, o.normal_max_nn, o.feature_radius, o.feature_max_nn, o.window)
        clouds = self.clouds(batch)
        if self.backend == "torch":
            from patchbank.features.fpfh_torch import grid_fpfh_torch

            xyz = torch.from_numpy(np.stack(clouds)).to(self.device, torch.float64)
            grids = to_grid(grid_fpfh_torch(xyz, *args))
        elif self.backend == "numba":
            from patchbank.features.fpfh_numba import pooled_fpfh

            wanted = (
                [None] * len(clouds)
                if part is None
                else [grid_support(k, len(c)) for k, c in zip(part, clouds, strict=True)]
            )
            pool = [pool_matrix(n) for n in clouds[0].shape[:2]]  # to_grid's, without the (33, S, S) maps
            grids = torch.from_numpy(
                np.stack(
                    [pooled_fpfh(xyz, *args, *pool, wanted=w) for xyz, w in zip(clouds, wanted, strict=True)]
                )
            )
        else:
            grids = to_grid(torch.from_numpy(np.stack([fpfh_map(xyz, o) for xyz in clouds])))
        if part is None:
            return grids
        on = torch.from_numpy(np.asarray(part, dtype=bool)).to(grids.device)
        return grids * on.view(len(clouds), 1, *grids.shape[2:])
