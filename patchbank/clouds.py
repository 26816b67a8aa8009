"""Organized point clouds from the files 3D sensors write, as (H, W, 3) float32 metres.

Accepted (see :data:`patchbank.cloud_formats.ACCEPTED`): an xyz TIFF or ``.npy`` (H x W x 3, as MVTec 3D-AD), an organized PLY or
PCD, or a depth image (float TIFF, 16-bit PNG, or H x W ``.npy``) with the camera's :class:`Intrinsics`.
The format is told by the file's first bytes, then by its name's extension; every reader
(:mod:`patchbank.cloud_formats`) checks the size its header declares against ``max_pixels`` before
decoding anything. Every problem is an :class:`InputError` naming the field (a 413 for the size).

Missing points: (0, 0, 0), or NaN in the file (PLY, PCD, TIFF), or depth 0 / not finite; all become
(0, 0, 0). An organized PLY says its grid in its header as PCL's PLY writer, the Stanford range scans and
structured-light sensors do: ``obj_info num_cols W`` and ``obj_info num_rows H``, then either W x H
vertices in row-major order, or the measured points only with a ``range_grid`` element of W x H lists
(each empty or holding its vertex's index). An organized PCD has ``WIDTH W`` and ``HEIGHT H`` (H > 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchbank.cloud_formats import DEFAULT_MAX_PIXELS, READERS, Decoded, detect_format
from patchbank.errors import InputError
from patchbank.preprocess import valid_points

XyzUnit = Literal["m", "mm", "um"]
UNITS: dict[str, float] = {"m": 1.0, "mm": 1e-3, "um": 1e-6}  # metres per unit
UNIT_NAMES = {"m": "metres", "mm": "millimetres", "um": "micrometres"}
INTRINSICS_HINT = (
    "give the camera intrinsics as JSON {fx, fy, cx, cy, depth_scale} (pixels; metres per depth unit): "
    "the request's intrinsics field, build-bank --intrinsics FILE (stored in the bank), or "
    "intrinsics.json in a dataset's category folder"
)


class Intrinsics(BaseModel):
    """A depth camera's pinhole model: a depth ``d`` at column ``u``, row ``v`` (0-based, pixel centres at
    integers as in OpenCV) is the point z = d * depth_scale, x = (u - cx) * z / fx, y = (v - cy) * z / fy."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    fx: float = Field(gt=0, description="focal length along the image's columns, pixels")
    fy: float = Field(gt=0, description="focal length along the image's rows, pixels")
    cx: float = Field(description="principal point's column, pixels (0 = the first column's centre)")
    cy: float = Field(description="principal point's row, pixels (0 = the first row's centre)")
    depth_scale: float = Field(
        gt=0, description="metres per depth unit: 0.001 for a 16-bit PNG in millimetres, 1.0 for metres"
    )
    width: int | None = Field(None, ge=1, description="image width the intrinsics are for (checked if given)")
    height: int | None = Field(
        None, ge=1, description="image height the intrinsics are for (checked if given)"
    )

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "intrinsics") -> Intrinsics:
        """Parse a JSON object; InputError naming ``where`` and the first wrong key."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where} is not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise InputError(f"{where}: {key + ': ' if key else ''}{first['msg']}") from exc

    @classmethod
    def from_file(cls, path: Path) -> Intrinsics:
        """Read a JSON file (see :meth:`from_json`); errors name the file."""
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read intrinsics {path}: {exc.strerror}") from exc
        return cls.from_json(text, str(path))


def organized(xyz: np.ndarray, where: str) -> np.ndarray:
    """An (H, W, 3) float cloud as float32; non-finite points become missing (0, 0, 0)."""
    if xyz.ndim != 3 or xyz.shape[2] != 3 or xyz.shape[0] < 2 or xyz.shape[1] < 2:
        raise InputError(f"{where}: xyz must be an H x W x 3 organized point cloud, got shape {xyz.shape}")
    if not np.issubdtype(xyz.dtype, np.floating):
        raise InputError(f"{where}: xyz must hold float coordinates in metres, got dtype {xyz.dtype}")
    xyz = xyz.astype(np.float32, copy=False)
    if np.isfinite(xyz).all():  # the common case, one fast pass
        return xyz
    xyz = xyz.copy()
    xyz[~np.isfinite(xyz).all(axis=2)] = 0.0
    return xyz


def unproject(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(H, W) depth in depth units -> (H, W, 3) float32 metres by the pinhole model of ``intrinsics``;
    (0, 0, 0) where the depth is 0, negative or not finite (no measurement)."""
    z = np.asarray(depth, dtype=np.float64) * intrinsics.depth_scale
    with np.errstate(invalid="ignore"):
        z[~(np.isfinite(z) & (z > 0))] = 0.0
    h, w = z.shape
    xyz = np.empty((h, w, 3), np.float32)
    xyz[..., 0] = (np.arange(w, dtype=np.float64)[None, :] - intrinsics.cx) / intrinsics.fx * z
    xyz[..., 1] = (np.arange(h, dtype=np.float64)[:, None] - intrinsics.cy) / intrinsics.fy * z
    xyz[..., 2] = z
    return xyz


def read_cloud(
    data: bytes, filename: str | None, field: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """What a file holds (:class:`Decoded`), its format told by :func:`detect_format`; its declared size
    is checked against ``max_pixels`` before its data is decoded."""
    if not data:
        raise InputError(f"{field} is empty")
    return READERS[detect_format(data, filename, field)](data, field, max_pixels)


def to_xyz(
    cloud: Decoded, field: str, intrinsics: Intrinsics | None = None, unit: XyzUnit | None = None
) -> np.ndarray:
    """(H, W, 3) float32 metres, (0, 0, 0) = missing, from what a file holds.

    ``intrinsics`` turn a depth image into points (its ``depth_scale`` gives metres); ``unit`` is the unit
    of an xyz cloud's coordinates (converted to metres), refused for a depth image, whose unit is its
    intrinsics' ``depth_scale``. Refuses a cloud without any valid point."""
    if cloud.kind == "depth":
        if unit is not None:
            raise InputError(
                f"xyz_unit={unit} applies to xyz clouds, but {field} is {cloud.description}: its unit is "
                "the intrinsics' depth_scale (metres per depth unit); leave xyz_unit out"
            )
        xyz = _depth_to_xyz(cloud, intrinsics, field)
    else:
        xyz = organized(cloud.array, field)
        if unit is not None and UNITS[unit] != 1.0:
            xyz = (xyz.astype(np.float64) * UNITS[unit]).astype(np.float32)
    if not valid_points(xyz).any():
        raise InputError(f"{field} has no valid points: every point is missing (0, 0, 0) or not finite")
    return xyz


def decode_cloud(
    data: bytes,
    filename: str | None = None,
    field: str = "xyz",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    intrinsics: Intrinsics | None = None,
    unit: XyzUnit | None = None,
) -> np.ndarray:
    """Any accepted file's bytes -> (H, W, 3) float32 metres: :func:`read_cloud` then :func:`to_xyz`."""
    return to_xyz(read_cloud(data, filename, field, max_pixels), field, intrinsics, unit)


def _depth_to_xyz(cloud: Decoded, intrinsics: Intrinsics | None, field: str) -> np.ndarray:
    depth = cloud.array
    h, w = depth.shape
    if intrinsics is None:
        raise InputError(
            f"{field}: xyz must be an H x W x 3 organized point cloud, got shape {depth.shape}, "
            f"{cloud.description}: turning it into points needs the camera intrinsics; {INTRINSICS_HINT}"
        )
    if (intrinsics.width, intrinsics.height) not in ((None, None), (w, h)):
        raise InputError(
            f"{field} is a {w} x {h} depth image but the intrinsics are for {intrinsics.width} x "
            f"{intrinsics.height} images"
        )
    if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        raise InputError(f"{field}: a depth image holds numbers, got dtype {depth.dtype}")
    return unproject(depth, intrinsics)
