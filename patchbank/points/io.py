"""Reading unorganized point clouds (a 3D-only bank's input) and Real3D-AD's per-point labels.

Clouds: PCD (ascii, binary or binary_compressed, through pypcd4), PLY (its vertices; faces and other elements
are ignored) or an (N, 3) ``.npy`` (never unpickled), picked by the magic bytes, else the file name's
extension. The point count is checked from the header before any data is decoded: above ``max_points`` the
answer is a :class:`~patchbank.errors.PayloadTooLargeError` (413), so a few kilobytes cannot claim gigabytes.
Organized files (PCD HEIGHT > 1, PLY with a grid) are read as the list of their points, row by row.

The rule for points that are not finite (NaN or infinite coordinates): the cloud is refused
(:class:`~patchbank.errors.InputError` naming the field, how many and the first one). A 3D-only bank answers
one score per point of the file, in the file's order; dropping points would shift that correspondence, so
the sender removes them (a sensor's organized cloud keeps NaN for missing pixels: send only the measured
points). Coordinates are kept in the file's unit (the features are scale-adaptive).

Labels (Real3D-AD's ``gt/<stem>.txt``): one point per line, ``x y z label`` separated by spaces (tabs or
commas are read too), label 0 = good, anything above 0 = anomalous (the dataset writes 0 and 1).
Library messages are passed on without memory addresses or server paths (:func:`patchbank.cloud_formats.clean`).
"""

from __future__ import annotations

import io

import numpy as np

from patchbank.cloud_formats import (
    KIND_NAMES,
    UnreadableCloud,
    clean,
    detect_format,
    npy_shape,
    pcd_header,
    pcd_xyz,
    ply_header,
    ply_vertices,
)
from patchbank.errors import InputError, PayloadTooLargeError

POINT_FORMATS = ("pcd", "ply", "npy")
POINTS_ACCEPTED = (
    "an unorganized point cloud: PCD (ascii, binary or binary_compressed), PLY or an (N, 3) .npy"
)
DEFAULT_MAX_POINTS = 16_000_000  # 192 MB of float32 xyz; Real3D-AD's largest prototype has 2.7 million points
MIN_POINTS = 64  # fewer points hold no surface to inspect (and no neighbourhood for FPFH)
LABEL_COLUMNS = 4  # x y z label


def check_points(count: int, max_points: int, field: str) -> None:
    """PayloadTooLargeError (413) naming the limit when a cloud declares more than ``max_points`` points."""
    if count > max_points:
        raise PayloadTooLargeError(
            f"{field} declares {count:,} points; the limit is {max_points:,} points per cloud"
        )


def _finite(xyz: np.ndarray, field: str) -> np.ndarray:
    """(N, 3) float32 of a decoded cloud: InputError for too few points or any that is not finite."""
    n = len(xyz)
    if n < MIN_POINTS:
        raise InputError(f"{field} has {n} points; a cloud needs at least {MIN_POINTS}")
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise InputError(
            f"{field} has {int(bad.sum()):,} of {n:,} points that are not finite (NaN or inf), the first at "
            f"index {int(np.argmax(bad))}: send only measured points (scores come back one per point of "
            "the file, in its order)"
        )
    return xyz.astype(np.float32)


def _read_npy(data: bytes, field: str, max_points: int) -> np.ndarray:
    try:
        shape = npy_shape(data)
    except Exception as exc:  # numpy raises many types for corrupt headers
        raise UnreadableCloud(field, KIND_NAMES["npy"], clean(exc)) from exc
    if len(shape) != 2 or shape[1] != 3:
        raise InputError(f"{field} is a .npy array of shape {shape}; a point cloud is (N, 3)")
    check_points(shape[0], max_points, field)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"dtype {arr.dtype} is not numeric")
    except Exception as exc:  # truncated data, object arrays
        raise UnreadableCloud(field, KIND_NAMES["npy"], clean(exc)) from exc
    return np.asarray(arr, np.float64)


def _read_pcd(data: bytes, field: str, max_points: int) -> np.ndarray:
    meta = pcd_header(data, field)
    check_points(max(meta.points, meta.width * meta.height), max_points, field)
    if meta.points != meta.width * meta.height:
        raise InputError(
            f"{field} declares {meta.points} points for WIDTH {meta.width} x HEIGHT {meta.height}"
        )
    return pcd_xyz(data, meta, field)


def _read_ply(data: bytes, field: str, max_points: int) -> np.ndarray:
    check_points(ply_header(data, field)["vertex"].count, max_points, field)
    return ply_vertices(data, field)[1]


def read_points(
    data: bytes, filename: str | None, field: str, max_points: int = DEFAULT_MAX_POINTS
) -> np.ndarray:
    """The (N, 3) float32 points of a PCD, PLY or ``.npy`` file, in the file's order and unit.

    The count is checked from the header first (PayloadTooLargeError above ``max_points``). Every point is
    finite, so ``N`` is the file's point count and score ``i`` belongs to its point ``i``: a cloud with a NaN
    or infinite point is refused, never silently shortened. InputError naming ``field`` for anything malformed
    (unknown format, missing x/y/z, truncated data, fewer than :data:`MIN_POINTS` points).
    """
    try:
        fmt = detect_format(data, filename, field) if data else None
    except InputError:  # its message lists the organized formats of an RGB + 3D bank
        fmt = None
    if fmt not in POINT_FORMATS:
        what = "empty" if not data else f"a {KIND_NAMES[fmt]} image" if fmt else "not a point cloud"
        raise InputError(f"{field} is {what}; a 3D-only bank reads {POINTS_ACCEPTED}")
    reader = {"pcd": _read_pcd, "ply": _read_ply, "npy": _read_npy}[fmt]
    return _finite(reader(data, field, max_points), field)


def read_labels(
    data: bytes, field: str, max_points: int = DEFAULT_MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Real3D-AD's ground truth of one cloud: its (N, 3) float32 points and (N,) bool labels (True =
    anomalous), one line ``x y z label`` per point. PayloadTooLargeError above ``max_points`` lines (counted
    before parsing); InputError naming ``field`` for fewer than four columns, unreadable numbers, a
    coordinate that is not finite or a negative label."""
    check_points(data.count(b"\n") + (not data.endswith(b"\n")), max_points, field)
    try:
        text = data.decode("utf-8").replace(",", " ")
        table = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{field} is not a table of numbers 'x y z label': {clean(exc)}") from exc
    if table.shape[0] == 0 or table.shape[1] < LABEL_COLUMNS:
        raise InputError(
            f"{field} has {table.shape[1]} columns; the labels need {LABEL_COLUMNS}: x y z label per point"
        )
    labels = table[:, LABEL_COLUMNS - 1]
    if not np.isfinite(labels).all() or (labels < 0).any():
        raise InputError(f"{field}: labels must be 0 (good) or positive (anomalous)")
    return _finite(table[:, :3], field), labels > 0
