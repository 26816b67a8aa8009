"""Reading each point cloud format a 3D sensor writes, header first: the size a file declares is checked
against ``max_pixels`` before its data is decoded, so a few kilobytes cannot claim gigabytes.

Each reader returns what the file holds (:class:`Decoded`: an xyz array or a depth image) and raises
:class:`InputError` naming the field; :mod:`patchbank.clouds` turns that into metres. The PLY and PCD
conventions for organized clouds are described there. Library messages are passed on without memory
addresses or server paths (:func:`clean`).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from patchbank.errors import InputError, PayloadTooLargeError, redact

ACCEPTED = (
    "an organized xyz TIFF or .npy (H x W x 3), an organized PLY (obj_info num_cols / num_rows) or PCD "
    "(WIDTH x HEIGHT), or a depth image (float TIFF, 16-bit PNG, or H x W .npy) with camera intrinsics"
)
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x93NUMPY", "npy"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"ply\n", "ply"),
    (b"ply\r", "ply"),
    (b"# .PCD", "pcd"),
    (b"VERSION", "pcd"),
)
SUFFIXES = {".npy": "npy", ".tif": "tiff", ".tiff": "tiff", ".png": "png", ".ply": "ply", ".pcd": "pcd"}
KIND_NAMES = {"npy": ".npy array", "tiff": "TIFF", "png": "PNG", "ply": "PLY", "pcd": "PCD"}
# Decoded pixels (width x height) an input may have, checked from its header before it is decoded: 16
# million (4000 x 4000) is generous for inspection sensors (MVTec 3D-AD is 800 x 800) and bounds one xyz
# at 192 MB of float32. A few kilobytes of compressed zeros must not become gigabytes.
DEFAULT_MAX_PIXELS = 16_000_000
PNG_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# The fewest pixels either side of an input may have: a 2 x 2 image holds no part to inspect (and, upscaled to
# the model's resolution, was scored NG with confidence).
MIN_SIDE = 32


@dataclass(frozen=True)
class Decoded:
    """What a file holds: ``xyz`` (H, W, 3) coordinates or ``depth`` (H, W) in depth units."""

    kind: Literal["xyz", "depth"]
    array: np.ndarray
    description: str  # how messages name it, e.g. "a 16-bit PNG depth image"


def clean(exc: BaseException) -> str:
    """A library's exception text fit for a one-line message: its first line, without memory addresses
    (``<_io.BytesIO object at 0x...>``) or server paths (only a path's last name is kept)."""
    lines = redact(str(exc)).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def check_pixels(width: int, height: int, max_pixels: int, field: str) -> None:
    """PayloadTooLargeError (413) naming the limit when a ``width`` x ``height`` input is over it."""
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"{field} is {width} x {height} = {width * height:,} pixels decoded; the limit is "
            f"{max_pixels:,} (PATCHBANK_MAX_PIXELS)"
        )


def check_min_side(width: int, height: int, field: str) -> None:
    """An InputError (400) when either side of an input is under :data:`MIN_SIDE` pixels."""
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"{field} is {width} x {height} pixels; the smallest accepted is {MIN_SIDE} pixels on each side"
        )


def detect_format(data: bytes, filename: str | None, field: str) -> str:
    """``npy``, ``tiff``, ``png``, ``ply`` or ``pcd``: from the magic bytes, else the name's extension."""
    head = data[:16].lstrip()
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            return fmt
    suffix = Path(filename or "").suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise InputError(f"{field} is not a point cloud Patchbank reads; it accepts {ACCEPTED}")


# -- readers: header first, then the data -------------------------------------------------------------------


class UnreadableCloud(InputError):
    """A file of a known format that its library cannot read (corrupt or truncated)."""

    def __init__(self, field: str, kind: str, reason: str) -> None:
        super().__init__(f"{field} is not a readable {kind}: {reason}")
        self.kind = kind
        self.reason = reason


def _unreadable(field: str, fmt: str, exc: BaseException) -> UnreadableCloud:
    return UnreadableCloud(field, KIND_NAMES[fmt], clean(exc))


def _kind_of(shape: tuple[int, ...], fmt: str) -> tuple[Literal["xyz", "depth"], str]:
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return "depth", f"a {KIND_NAMES[fmt]} depth image (H x W)"
    return "xyz", f"an xyz {KIND_NAMES[fmt]}"


def read_tiff(data: bytes, field: str, max_pixels: int) -> Decoded:
    """An xyz TIFF (H x W x 3) or a depth TIFF (H x W): the first series."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            shape = tuple(int(n) for n in tif.series[0].shape)
            if len(shape) >= 2:
                check_pixels(shape[1], shape[0], max_pixels, field)
            arr = tif.series[0].asarray()
    except PayloadTooLargeError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise _unreadable(field, "tiff", exc) from exc
    kind, description = _kind_of(shape, "tiff")
    return Decoded(kind, arr.reshape(arr.shape[:2]) if kind == "depth" else arr, description)


def npy_shape(data: bytes) -> tuple[int, ...]:
    """The shape an ``.npy`` array's header declares (nothing decoded; numpy's errors for a corrupt header)."""
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read(buf)
    return tuple(int(n) for n in shape)


def read_npy(data: bytes, field: str, max_pixels: int) -> Decoded:
    """An ``.npy`` array: (H, W, 3) xyz or (H, W) depth; never unpickled."""
    try:
        shape = npy_shape(data)
        if len(shape) >= 2:
            check_pixels(int(shape[1]), int(shape[0]), max_pixels, field)
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except PayloadTooLargeError:
        raise
    except Exception as exc:  # numpy raises many types for corrupt headers and data
        raise _unreadable(field, "npy", exc) from exc
    kind, description = _kind_of(tuple(arr.shape), "npy")
    return Decoded(kind, arr.reshape(arr.shape[:2]) if kind == "depth" else arr, description)


def read_png(data: bytes, field: str, max_pixels: int) -> Decoded:
    """A 16-bit single-channel PNG depth image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            im = Image.open(io.BytesIO(data))
            check_pixels(*im.size, max_pixels, field)
            if im.mode not in PNG_DEPTH_MODES:
                raise InputError(
                    f"{field} is a PNG of mode {im.mode}, not a depth image: a depth PNG is single-channel "
                    "16-bit (depth units; the intrinsics' depth_scale gives metres)"
                )
            arr = np.asarray(im)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(f"{field} is over the decoded size limit: {clean(exc)}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(field, "png", exc) from exc
    return Decoded("depth", arr, "a 16-bit PNG depth image")


def _ply_grid(obj_info: list[str]) -> tuple[int | None, int | None]:
    """(num_cols, num_rows) from a PLY header's ``obj_info`` lines (None when absent)."""
    found: dict[str, int] = {}
    for line in obj_info:
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("num_cols", "num_rows") and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found.get("num_cols"), found.get("num_rows")


def _unorganized(field: str, fmt: str, why: str) -> InputError:
    return InputError(
        f"{field} is an unorganized {fmt} ({why}): Patchbank needs an organized cloud (width x height), "
        "one point per sensor pixel"
    )


def ply_header(data: bytes, field: str) -> Any:
    """A PLY's parsed header (nothing decoded), checked to have vertices with x, y, z."""
    from plyfile import PlyData

    try:
        # The header only (sizes before data); plyfile keeps this step private, hence the pinned version.
        header = PlyData._parse_header(io.BytesIO(data))
    except Exception as exc:  # plyfile raises its own and Unicode errors for corrupt headers
        raise _unreadable(field, "ply", exc) from exc
    if "vertex" not in header:
        raise InputError(f"{field} is a PLY without a vertex element")
    names = {p.name for p in header["vertex"].properties}
    if not {"x", "y", "z"} <= names:
        raise InputError(
            f"{field} is a PLY whose vertices lack x, y, z (they have {', '.join(sorted(names))})"
        )
    return header


def ply_vertices(data: bytes, field: str) -> tuple[Any, np.ndarray]:
    """A PLY whose header :func:`ply_header` checked, decoded: the PlyData and its (N, 3) float64 vertices."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(io.BytesIO(data), mmap=False)
        vertex = ply["vertex"].data
        return ply, np.stack([np.asarray(vertex[c], np.float64) for c in ("x", "y", "z")], axis=1)
    except Exception as exc:  # plyfile raises several types for truncated or corrupt data
        raise _unreadable(field, "ply", exc) from exc


def read_ply(data: bytes, field: str, max_pixels: int) -> Decoded:
    """An organized PLY (the convention: :mod:`patchbank.clouds`)."""
    header = ply_header(data, field)
    n = header["vertex"].count
    width, height = _ply_grid(header.obj_info)
    if width is None or height is None:
        raise _unorganized(field, "PLY", f"{n} points, no 'obj_info num_cols W' / 'obj_info num_rows H'")
    check_pixels(width, height, max_pixels, field)
    if height == 1 or width == 1:
        raise _unorganized(field, "PLY", f"height {height}, width {width}: one line of {n} points")
    grid = "range_grid" in header
    if grid and "vertex_indices" not in {p.name for p in header["range_grid"].properties}:
        raise InputError(f"{field} is a PLY whose range_grid has no vertex_indices list")
    if n > width * height or (n != width * height and not grid):
        raise InputError(
            f"{field} declares a {width} x {height} grid but has {n} vertices and no range_grid element"
        )
    ply, points = ply_vertices(data, field)
    try:
        if grid:
            lists = ply["range_grid"].data["vertex_indices"]
            if len(lists) != width * height:
                raise InputError(f"{field}: range_grid has {len(lists)} cells, not {width} x {height}")
            xyz = np.full((width * height, 3), np.nan)
            cells = np.fromiter((len(c) > 0 for c in lists), bool, len(lists))
            rows = np.fromiter((c[0] for c in lists[cells]), np.int64, int(cells.sum()))
            if rows.size and (rows.min() < 0 or rows.max() >= n):
                raise InputError(f"{field}: range_grid points at vertices that do not exist")
            xyz[cells] = points[rows]
        else:
            xyz = points
    except InputError:
        raise
    except Exception as exc:  # plyfile raises several types for truncated or corrupt data
        raise _unreadable(field, "ply", exc) from exc
    return Decoded("xyz", xyz.reshape(height, width, 3).astype(np.float32), "an organized PLY")


def _pcd_header(buf: io.BytesIO) -> list[str]:
    """The header lines of a PCD up to DATA (comments dropped), read as pypcd4 reads them."""
    lines: list[str] = []
    for raw in buf:
        line = raw.decode("utf-8").strip()
        if line.startswith("#") or not line:
            continue
        lines.append(line)
        if line.startswith("DATA") or len(lines) >= 10:
            break
    return lines


def pcd_header(data: bytes, field: str) -> Any:
    """A PCD's header as pypcd4's MetaData (nothing decoded); UnreadableCloud when it is not one."""
    from pypcd4.pypcd4 import MetaData

    try:
        meta = MetaData.parse_header(_pcd_header(io.BytesIO(data)))
        meta.build_dtype()
    except ValidationError as exc:
        keys = sorted({str(e["loc"][0]).upper() for e in exc.errors() if e["loc"]})
        raise UnreadableCloud(field, "PCD", f"its header lacks or misstates {', '.join(keys)}") from exc
    except Exception as exc:  # Unicode and key errors for corrupt headers
        raise _unreadable(field, "pcd", exc) from exc
    return meta


def pcd_xyz(data: bytes, meta: Any, field: str) -> np.ndarray:
    """The (POINTS, 3) float64 x, y, z of a PCD whose header is ``meta``: InputError unless it has x, y, z
    fields and, compressed, claims the bytes its points need (checked before anything is decompressed)."""
    from pypcd4 import PointCloud
    from pypcd4.pypcd4 import Encoding

    if not {"x", "y", "z"} <= set(meta.fields):
        raise InputError(f"{field} is a PCD without x, y, z fields (it has {', '.join(meta.fields)})")
    if meta.data == Encoding.BINARY_COMPRESSED:
        buf = io.BytesIO(data)
        _pcd_header(buf)
        sizes = buf.read(8)
        itemsize = meta.build_dtype().itemsize
        if len(sizes) == 8:
            claimed = struct.unpack("II", sizes)[1]
            if claimed != meta.points * itemsize:
                raise InputError(
                    f"{field} is a compressed PCD that claims {claimed:,} bytes for {meta.points} points "
                    f"of {itemsize} bytes"
                )
    try:
        pc = PointCloud.from_fileobj(io.BytesIO(data))  # type: ignore[arg-type]
        xyz = np.asarray(pc.numpy(("x", "y", "z")), np.float64)
        if xyz.shape != (meta.points, 3):
            raise ValueError(f"read {xyz.shape[0]} of {meta.points} points")
    except Exception as exc:  # truncated or corrupt data
        raise _unreadable(field, "pcd", exc) from exc
    return xyz


def read_pcd(data: bytes, field: str, max_pixels: int) -> Decoded:
    """An organized PCD (HEIGHT > 1); NaN points are missing."""
    meta = pcd_header(data, field)
    check_pixels(meta.width, meta.height, max_pixels, field)
    if meta.height <= 1:
        raise _unorganized(field, "PCD", f"height {meta.height}: {meta.points} points in one row")
    if meta.points != meta.width * meta.height:
        raise InputError(f"{field} declares {meta.points} points for a {meta.width} x {meta.height} grid")
    xyz = pcd_xyz(data, meta, field)
    return Decoded("xyz", xyz.reshape(meta.height, meta.width, 3).astype(np.float32), "an organized PCD")


READERS: dict[str, Callable[[bytes, str, int], Decoded]] = {
    "npy": read_npy,
    "tiff": read_tiff,
    "png": read_png,
    "ply": read_ply,
    "pcd": read_pcd,
}
