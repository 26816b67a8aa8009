"""Writing an organized cloud (H, W, 3) float32 metres in each format :mod:`patchbank.clouds` reads.

Missing points (any coordinate 0, as the scorer counts them) are written as NaN in PLY and PCD, as
(0, 0, 0) in TIFF and ``.npy``, and as depth 0 in depth images, so a cloud reads back with the same valid
points. A depth image stores z / depth_scale (rounded for a 16-bit PNG); it gives back x and y only when the
cloud was seen by a pinhole camera with these intrinsics (see :func:`patchbank.convert.fit_intrinsics`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import tifffile
from PIL import Image

from patchbank.clouds import Intrinsics
from patchbank.errors import InputError
from patchbank.preprocess import valid_points

PNG_MAX = np.iinfo(np.uint16).max


def depth_units(xyz: np.ndarray, intrinsics: Intrinsics, integer: bool = False) -> np.ndarray:
    """(H, W) depth in the intrinsics' units: z / depth_scale, 0 where a point is missing; ``integer``:
    rounded to uint16 (InputError when the farthest point does not fit)."""
    z = np.where(valid_points(xyz), xyz[..., 2].astype(np.float64), 0.0) / intrinsics.depth_scale
    if not integer:
        return z.astype(np.float32)
    units = np.rint(z)
    if units.max() > PNG_MAX or units.min() < 0:
        raise InputError(
            f"depth up to {z.max() * intrinsics.depth_scale:.4g} m needs {units.max():.0f} units at "
            f"depth_scale {intrinsics.depth_scale:g} m; a 16-bit PNG holds 0..65535: use a larger depth_scale"
        )
    return units.astype(np.uint16)


def _missing_as_nan(xyz: np.ndarray) -> np.ndarray:
    out = np.asarray(xyz, np.float32).copy()
    out[~valid_points(out)] = np.nan
    return out


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _png(depth: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(depth).save(buf, format="PNG")
    return buf.getvalue()


def ply_bytes(xyz: np.ndarray, text: bool = False) -> bytes:
    """An organized PLY: W x H vertices in row-major order, ``obj_info num_cols W`` / ``num_rows H``."""
    from plyfile import PlyData, PlyElement

    h, w, _ = xyz.shape
    points = _missing_as_nan(xyz).reshape(-1, 3)
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    ply = PlyData(
        [PlyElement.describe(vertex, "vertex")],
        text=text,
        byte_order="<",
        comments=["organized point cloud, metres; NaN = no measurement"],
        obj_info=[f"num_cols {w}", f"num_rows {h}"],
    )
    buf = io.BytesIO()
    ply.write(buf)
    return buf.getvalue()


def pcd_bytes(xyz: np.ndarray, encoding: str = "binary") -> bytes:
    """An organized PCD: WIDTH W, HEIGHT H, fields x y z float32, NaN = no measurement."""
    from pypcd4 import Encoding, PointCloud

    h, w, _ = xyz.shape
    cloud = PointCloud.from_xyz_points(_missing_as_nan(xyz).reshape(-1, 3))
    cloud.metadata = cloud.metadata.derive(width=w, height=h)
    buf = io.BytesIO()
    cloud.save(buf, encoding=Encoding(encoding))
    return buf.getvalue()


ENCODERS: dict[str, Callable[[np.ndarray, Intrinsics | None], bytes]] = {
    "tiff": lambda xyz, _: _tiff(np.asarray(xyz, np.float32)),
    "npy": lambda xyz, _: _npy(np.asarray(xyz, np.float32)),
    "ply": lambda xyz, _: ply_bytes(xyz),
    "ply-ascii": lambda xyz, _: ply_bytes(xyz, text=True),
    "pcd": lambda xyz, _: pcd_bytes(xyz),
    "pcd-ascii": lambda xyz, _: pcd_bytes(xyz, "ascii"),
    "depth-tiff": lambda xyz, cam: _tiff(depth_units(xyz, _need(cam))),
    "depth-npy": lambda xyz, cam: _npy(depth_units(xyz, _need(cam))),
    "depth-png": lambda xyz, cam: _png(depth_units(xyz, _need(cam), integer=True)),
}
SUFFIX = {
    "tiff": ".tiff",
    "npy": ".npy",
    "ply": ".ply",
    "pcd": ".pcd",
    "depth-tiff": ".tiff",
    "depth-png": ".png",
}
SUFFIX |= {"ply-ascii": ".ply", "pcd-ascii": ".pcd", "depth-npy": ".npy"}


def _need(intrinsics: Intrinsics | None) -> Intrinsics:
    if intrinsics is None:
        raise InputError("a depth image is written with the camera's intrinsics (its depth_scale)")
    return intrinsics


def encode_cloud(xyz: np.ndarray, fmt: str, intrinsics: Intrinsics | None = None) -> bytes:
    """(H, W, 3) float32 metres -> the bytes of a ``fmt`` file (one of :data:`ENCODERS`); depth formats
    store z in the units of ``intrinsics.depth_scale``."""
    if fmt not in ENCODERS:
        raise InputError(f"unknown cloud format {fmt!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[fmt](xyz, intrinsics)
