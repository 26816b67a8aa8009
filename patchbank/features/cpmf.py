"""CPMF: point features from a 2D backbone looking at renders of the cloud, beside FPFH.

CPMF (Cao, Xu, Shen: "Complementary Pseudo Multimodal Feature for Point Cloud Anomaly Detection", Pattern
Recognition 2024) renders the point cloud from several viewpoints, runs a pretrained 2D CNN on each render,
carries every point's features back from the pixel it lands on, averages them over the views, and joins
them with the point's handcrafted FPFH; a PatchCore bank is built on the result. Here the points are the
organized cloud's (S x S, zeros = missing), so the features go back onto its grid and are pooled to the
28 x 28 patches every extractor scores (``to_grid``).

What the paper leaves open (it renders meshes with Open3D's visualiser), and how it is decided here:

- Renders: orthographic projections of the valid points, centred on their mean and scaled so that the
  ``RADIUS_QUANTILE`` quantile of their distances from it reaches ``FILL`` of the half-image, whatever the
  sensor's units. The identity view is the sensor's own (x right, y down, looking along +z); the others
  tilt the cloud about its centre (:func:`view_rotations`).
- A torch z-buffer: every point covers a ``splat`` x ``splat`` pixel square, the nearest point wins a pixel
  (``scatter_reduce`` amin on depth, ties to the higher point index, so the result is deterministic on a
  GPU too). No display and no OpenGL: plain tensor operations on the extractor's device.
- Shading: the grey level of a pixel is the Lambertian term ``|n . LIGHT|`` of its point (normals from the
  organized grid's central differences, oriented towards the camera); background 0; grey replicated to
  three channels and given to the ``rgb`` extractor, which normalises it as it normalises photographs.
- Back-projection: each point samples the ``rgb`` extractor's own pooled 28 x 28 maps of a render
  (``grid_maps``: the renders get the local aggregation photographs get), bilinear at the point's
  continuous pixel position; the per-point maps are then pooled to patches with ``to_grid``. A point
  counts in a view only when it is visible there: its depth within ``VISIBILITY_PIXELS`` x ``splat``
  pixels of the z-buffer's depth at its own pixel. Its feature is the mean over the views that see it, or
  over all views when none does.
- Joining with FPFH: per-patch concatenation (render features first), each modality divided by its spread
  on the training patches (fitted by :meth:`CPMFExtractor.fit`, as ``rgb+fpfh`` with
  ``normalise="modality"``) and recorded in the spec.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from patchbank.errors import InputError
from patchbank.features.base import (
    FeatureSpec,
    register_extractor,
    to_grid,
)
from patchbank.features.concat import Scale, WithRGBPart, divide_modalities, fit_scales
from patchbank.features.fpfh import FPFHExtractor, FPFHOptions
from patchbank.features.rgb import RGBExtractor, RGBOptions
from patchbank.preprocess import Prepared

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RADIUS_QUANTILE = 0.99  # a robust extent of the cloud: a few stray points do not shrink the object
FILL = 0.9  # that extent reaches 90% of the half-image, so tilted views stay inside the render
VISIBILITY_PIXELS = 2.0  # depth tolerance of the visibility test, in pixels per splat pixel
LIGHT = (-1.0, -1.0, -2.0)  # towards the light, in the view's frame: from the camera's side, upper left
# Tilt axes in the image plane, by azimuth (degrees from +x): the four axis-aligned tilts, then diagonals.
AZIMUTHS = (0.0, 180.0, 90.0, 270.0, 45.0, 225.0, 135.0, 315.0)
MAX_VIEWS = 1 + len(AZIMUTHS)


class CPMFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rgb: RGBOptions = Field(
        default_factory=RGBOptions, description="options of the 2D backbone run on the renders"
    )
    fpfh: FPFHOptions | None = Field(
        default_factory=FPFHOptions,
        description="options of the FPFH joined to the render features; None: render features only",
    )
    views: int = Field(
        6,
        ge=1,
        le=MAX_VIEWS,
        description="renders per cloud: the sensor's view, then tilts about x and y (+-), then diagonals",
    )
    tilt_degrees: float = Field(30.0, gt=0, lt=90, description="tilt of every view but the first, degrees")
    render_size: int = Field(224, ge=32, le=1024, description="side length of the renders, pixels")
    splat: int = Field(2, ge=1, le=8, description="side of the pixel square each point covers in a render")
    scales: tuple[Scale, Scale] | None = Field(
        None,
        description="fitted: each modality's spread on the training patches (renders, fpfh)",
        json_schema_extra={"cli": False},
    )

    @field_validator("scales")
    @classmethod
    def _scales_need_fpfh(
        cls, scales: tuple[float, float] | None, info: ValidationInfo
    ) -> tuple[float, float] | None:
        if scales is not None and info.data.get("fpfh") is None:
            raise ValueError("scales are only used with fpfh")
        return scales


@dataclass(frozen=True)
class Renders:
    """A batch of clouds rendered from every view, and where each point of the organized cloud lands.

    images: (B, V, R, R) float32 grey shading in [0, 1], 0 where no point is drawn; depth: (B, V, R, R)
    the z-buffer (view-frame units, +inf where no point is drawn); pixels: (B, V, N, 2) each point's
    continuous pixel position (x = column, y = row; pixel i spans [i, i + 1)); visible: (B, V, N) bool;
    valid: (B, N) bool. N = S * S points, in the organized cloud's row-major order.
    """

    images: torch.Tensor
    depth: torch.Tensor
    pixels: torch.Tensor
    visible: torch.Tensor
    valid: torch.Tensor


def view_rotations(views: int, tilt_degrees: float) -> np.ndarray:
    """(views, 3, 3) float64 rotations, deterministic: the identity, then tilts by ``tilt_degrees`` about
    in-plane axes at the azimuths of ``AZIMUTHS`` (+x, -x, +y, -y, then the diagonals), by Rodrigues."""
    if not 1 <= views <= MAX_VIEWS:
        raise InputError(f"views must be between 1 and {MAX_VIEWS}, got {views}")
    theta = math.radians(tilt_degrees)
    out = [np.eye(3)]
    for az in AZIMUTHS[: views - 1]:
        x, y = math.cos(math.radians(az)), math.sin(math.radians(az))
        k = np.array([[0.0, 0.0, y], [0.0, 0.0, -x], [-y, x, 0.0]])  # cross-product matrix of (x, y, 0)
        out.append(np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k))
    return np.stack(out)


def grid_normals(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) unit normals of an organized cloud, oriented towards the camera (z <= 0).

    The cross product of the differences along the columns and along the rows: central where both
    neighbours are valid, one-sided where one is; (0, 0, -1) where a direction has no valid neighbour.
    ``valid``: (B, S, S) bool. Invalid points get a normal too, never used."""
    import torch

    pad = torch.nn.functional.pad
    xp = pad(xyz.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    vp = pad(valid, (1, 1, 1, 1))

    def difference(after: tuple[slice, slice], before: tuple[slice, slice]) -> torch.Tensor:
        va, vb = vp[:, after[0], after[1]], vp[:, before[0], before[1]]
        pa, pb = xp[:, after[0], after[1]], xp[:, before[0], before[1]]
        d = torch.where((va & vb)[..., None], pa - pb, torch.zeros_like(xyz))
        d = torch.where((va & ~vb)[..., None], pa - xyz, d)
        return torch.where((~va & vb)[..., None], xyz - pb, d)

    inner = slice(1, -1)
    du = difference((inner, slice(2, None)), (inner, slice(None, -2)))
    dv = difference((slice(2, None), inner), (slice(None, -2), inner))
    n = torch.linalg.cross(du, dv, dim=-1)
    length = n.norm(dim=-1, keepdim=True)
    facing = torch.tensor([0.0, 0.0, -1.0], dtype=xyz.dtype, device=xyz.device).expand_as(n)
    n = torch.where(length > 0, n / length.clamp(min=torch.finfo(xyz.dtype).tiny), facing)
    return torch.where(n[..., 2:] > 0, -n, n)


def unit_frame(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) the valid points centred on their mean and scaled so that the ``RADIUS_QUANTILE``
    quantile of their distances from it is ``FILL``: the render frame, where [-1, 1] spans the image.
    Invalid points become 0; a cloud without valid points stays all zeros."""
    import torch

    w = valid[..., None].to(xyz.dtype)
    count = w.sum(dim=(1, 2)).clamp(min=1)
    centre = (xyz * w).sum(dim=(1, 2)) / count
    centred = (xyz - centre[:, None, None]) * w
    dist = centred.norm(dim=-1).masked_fill(~valid, float("nan")).flatten(1)
    radius = torch.nanquantile(dist, RADIUS_QUANTILE, dim=1)
    radius = torch.where(torch.isfinite(radius) & (radius > 0), radius, torch.ones_like(radius))
    return centred * (FILL / radius)[:, None, None, None]


def render_view(
    points: torch.Tensor, normals: torch.Tensor, valid: torch.Tensor, size: int, splat: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthographic render of points already in the view's frame ([-1, 1] spans the image, depth = z,
    smaller is nearer). points, normals: (B, N, 3); valid: (B, N) bool.

    Returns images (B, R, R) (``|n . LIGHT|`` of each pixel's nearest point, 0 where none), the z-buffer
    depth (B, R, R) (+inf where none), pixels (B, N, 2) (continuous x, y) and visible (B, N) (valid, inside,
    and within the depth tolerance of the z-buffer at its own pixel)."""
    import torch

    b, n, _ = points.shape
    dev, dtype = points.device, points.dtype
    pixels = (points[..., :2] + 1) * (size / 2)
    depth = points[..., 2]
    offsets = torch.arange(splat, device=dev)
    dy, dx = (o.reshape(-1) for o in torch.meshgrid(offsets, offsets, indexing="ij"))
    start = torch.floor(pixels - (splat - 1) / 2).long()
    cx, cy = start[..., 0:1] + dx, start[..., 1:2] + dy  # (B, N, splat^2)
    inside = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size) & valid[..., None]
    image_base = (torch.arange(b, device=dev) * size * size)[:, None, None]
    nowhere = b * size * size  # one extra pixel takes the candidates outside the image (no boolean indexing)
    target = torch.where(inside, image_base + cy * size + cx, nowhere).reshape(-1)
    cand_depth = torch.where(inside, depth[..., None], math.inf).reshape(-1)

    zbuf = torch.full((nowhere + 1,), math.inf, dtype=dtype, device=dev)
    zbuf = zbuf.scatter_reduce(0, target, cand_depth, "amin")
    nearest = (cand_depth == zbuf[target]) & inside.reshape(-1)
    cand_point = torch.arange(b * n, device=dev).reshape(b, n, 1).expand_as(cx).reshape(-1)
    winner = torch.full((nowhere + 1,), -1, dtype=torch.long, device=dev)
    winner = winner.scatter_reduce(0, target, torch.where(nearest, cand_point, -1), "amax")[:nowhere]
    zbuf = zbuf[:nowhere]

    light = torch.tensor(LIGHT, dtype=dtype, device=dev)
    shade = (normals @ (light / light.norm())).abs().reshape(-1)
    images = torch.where(winner >= 0, shade[winner.clamp(min=0)], torch.zeros_like(zbuf))

    own = torch.floor(pixels).long()
    own_inside = valid & (own >= 0).all(dim=-1) & (own < size).all(dim=-1)
    own_index = (image_base[..., 0] + own[..., 1] * size + own[..., 0]).clamp(0, b * size * size - 1)
    tolerance = VISIBILITY_PIXELS * splat * 2 / size
    visible = own_inside & (depth - zbuf[own_index] <= tolerance)
    return images.reshape(b, size, size), zbuf.reshape(b, size, size), pixels, visible


def render_clouds(xyz: torch.Tensor, rotations: torch.Tensor, size: int, splat: int) -> Renders:
    """Render organized clouds (B, S, S, 3) (zeros = missing) from every view of ``rotations`` (V, 3, 3),
    rotating points and normals about the cloud's centre."""
    import torch

    b = xyz.shape[0]
    valid = (xyz != 0).all(dim=-1)
    normals = grid_normals(xyz, valid).reshape(b, -1, 3)
    points = unit_frame(xyz, valid).reshape(b, -1, 3)
    flat_valid = valid.reshape(b, -1)
    parts = [render_view(points @ r.T, normals @ r.T, flat_valid, size, splat) for r in rotations]
    images, depth, pixels, visible = (torch.stack(p, dim=1) for p in zip(*parts, strict=True))
    return Renders(images=images, depth=depth, pixels=pixels, visible=visible, valid=flat_valid)


def back_project(maps: torch.Tensor, pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, N) features of a render's maps (B, C, h, w) at the points' continuous pixel positions
    (B, N, 2) in a size x size render: bilinear, the maps spanning the render (edges clamped)."""
    import torch

    grid = (pixels / size * 2 - 1).to(maps.dtype)[:, None]  # (B, 1, N, 2), align_corners=False coordinates
    out = torch.nn.functional.grid_sample(
        maps, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[:, :, 0]


def view_weights(visible: torch.Tensor) -> torch.Tensor:
    """(B, V, N) each point's weight in each view: 1 / (views that see it) in those views, 0 in the others;
    1 / V in every view for a point that no view sees. visible: (B, V, N) bool."""
    import torch

    seen = visible.to(torch.float32)
    count = seen.sum(dim=1, keepdim=True)
    return torch.where(count > 0, seen / count.clamp(min=1), 1.0 / visible.shape[1])


def pool_views(maps: torch.Tensor, pixels: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, N) each point's features: ``back_project`` of every view's maps, summed with the points'
    ``weights`` (see :func:`view_weights`). maps: (B, V, C, h, w); pixels: (B, V, N, 2); weights: (B, V, N).
    One view at a time, accumulated in place: the (B, C, N) tensors are the large ones."""
    out = back_project(maps[:, 0], pixels[:, 0], size).mul_(weights[:, 0, None])
    for v in range(1, maps.shape[1]):
        out.addcmul_(back_project(maps[:, v], pixels[:, v], size), weights[:, v, None])
    return out


@register_extractor("cpmf")
class CPMFExtractor(WithRGBPart):
    """Render features of the ``rgb`` backbone (its dim) and, unless ``fpfh`` is None, FPFH (33)."""

    options_model = CPMFOptions

    def __init__(self, options: CPMFOptions, rgb: RGBExtractor, device: str) -> None:
        import torch

        self.opts = options
        self.rgb = rgb
        self.device = torch.device(device)
        self.fpfh = None if options.fpfh is None else FPFHExtractor(options.fpfh, device)
        self.weights = rgb.weights
        self.image_size = rgb.image_size
        self.rotations = torch.from_numpy(view_rotations(options.views, options.tilt_degrees)).to(
            self.device, torch.float32
        )
        dim = rgb.dim + (0 if self.fpfh is None else self.fpfh.dim)
        self.spec = FeatureSpec(extractor=self.name, options=options.model_dump(mode="json"), dim=dim)

    def render(self, batch: Sequence[Prepared]) -> Renders:
        """The batch's clouds rendered from every view, on the extractor's device."""
        import torch

        xyz = torch.from_numpy(np.stack([p.xyz for p in batch])).to(self.device, torch.float32)
        return render_clouds(xyz, self.rotations, self.opts.render_size, self.opts.splat)

    def point_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, C, S, S) float32 render features of every point of the organized clouds, zeros where a point
        is missing: the ``rgb`` extractor's maps of all B x V renders (one batch), pooled over the views."""
        renders = self.render(batch)
        b, v, r = renders.images.shape[:3]
        grey = renders.images.reshape(b * v, 1, r, r).expand(-1, 3, -1, -1).cpu().numpy()
        shots = [Prepared(rgb=img, xyz=batch[i // v].xyz, input_size=(r, r)) for i, img in enumerate(grey)]
        maps = self.rgb.grid_maps(shots).float()
        maps = maps.reshape(b, v, *maps.shape[1:])
        weights = view_weights(renders.visible) * renders.valid[:, None]
        feats = pool_views(maps, renders.pixels, weights, r)
        return feats.reshape(b, -1, *batch[0].xyz.shape[:2])

    def grid_maps(self, batch: Sequence[Prepared]) -> torch.Tensor:
        """(B, D, 28, 28) the raw concatenation, float64 (before any per-modality scaling, which
        :meth:`extract` applies)."""
        import torch

        renders = to_grid(self.point_maps(batch)).to(torch.float64)
        if self.fpfh is None:
            return renders
        return torch.cat([renders, self.fpfh.grid_maps(batch).to(renders.device)], dim=1)

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Divided per modality once scales are set (fitted, or recorded in the options of a rebuilt
        extractor)."""
        if self.opts.scales is None:
            return features
        return divide_modalities(features, self.rgb.dim, self.opts.scales)

    def fit(self, features: np.ndarray) -> np.ndarray:
        """With FPFH and no scales yet: each modality's spread on the training patches
        (:func:`modality_spread`, floored at ``SPREAD_FLOOR``) becomes its scale, recorded in ``spec``; the
        features come back divided by it. Otherwise they are already as ``extract`` returns them."""
        if self.fpfh is None or self.opts.scales is not None:
            return features
        if features.ndim != 3 or features.shape[-1] != self.dim:
            raise InputError(f"fit expects (N, patches, {self.dim}) features, got {features.shape}")
        split = self.rgb.dim
        scales = fit_scales(features.reshape(-1, self.dim), split)
        log.info("cpmf per-modality scales: renders %.6g, fpfh %.6g", *scales)
        self.opts = self.opts.model_copy(update={"scales": scales})
        self.spec = self.spec.model_copy(update={"options": self.opts.model_dump(mode="json")})
        return divide_modalities(features, split, scales)
