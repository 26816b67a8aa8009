"""FPFH patch features (BTF): Open3D normals and FPFH on the valid points of the 224 x 224 cloud.

Normals: hybrid KD-tree search (radius 0.1 m, max 30 neighbours); FPFH: radius 0.25 m, max 100 neighbours.
The 33-d descriptors are scattered back to the grid (zeros where a point is missing), then pooled to 28 x 28.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from patchbank.features.base import FeatureExtractor, FeatureSpec, register, to_grid
from patchbank.preprocess import Prepared, valid_points
from patchbank.weights import WeightsIdentity, WeightsRequest

FPFH_DIM = 33


class FPFHOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normal_radius: float = Field(0.1, gt=0, description="normal estimation search radius, metres")
    normal_max_nn: int = Field(30, gt=2, description="normal estimation neighbour cap")
    feature_radius: float = Field(0.25, gt=0, description="FPFH search radius, metres")
    feature_max_nn: int = Field(100, gt=2, description="FPFH neighbour cap")


def fpfh_map(xyz: np.ndarray, opts: FPFHOptions) -> np.ndarray:
    """(H, W, 3) organized cloud -> (33, H, W) float64 FPFH, zeros where a point is missing."""
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


class FPFHExtractor(FeatureExtractor):
    name = "fpfh"

    def __init__(self, options: dict[str, Any]) -> None:
        self.opts = FPFHOptions(**options)
        self.spec = FeatureSpec(method=self.name, options=self.opts.model_dump(), dim=FPFH_DIM)

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, 33, 28, 28) pooled FPFH maps (float64, as the Open3D descriptors)."""
        maps = np.stack([fpfh_map(p.xyz, self.opts) for p in batch])
        return to_grid(torch.from_numpy(maps))


@register("fpfh", FPFHOptions)
def _create_fpfh(
    options: dict[str, Any],
    weights: WeightsRequest | WeightsIdentity | None,
    device: str,
    override: str | None,
) -> FeatureExtractor:
    return FPFHExtractor(options)
