"""Decoding one uploaded sample in memory: an RGB image and an organized point cloud.

Nothing is written to disk and nothing is unpickled (``.npy`` loads with ``allow_pickle=False``). Every
problem is an :class:`InputError` whose message names the field and the problem.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from patchbank.data import check_xyz
from patchbank.errors import DataError, InputError, PayloadTooLargeError
from patchbank.preprocess import valid_points

RGB_FORMATS = ("PNG", "JPEG", "TIFF")
NPY_MAGIC = b"\x93NUMPY"
ASPECT_TOLERANCE = 0.01
# Decoded pixels (width x height) an input may have, checked from its header before it is decoded: 16
# million (4000 x 4000) is generous for inspection sensors (MVTec 3D-AD is 800 x 800) and bounds one xyz
# at 192 MB of float32. A few kilobytes of compressed zeros must not become gigabytes.
DEFAULT_MAX_PIXELS = 16_000_000


def check_pixels(width: int, height: int, max_pixels: int, field: str) -> None:
    """PayloadTooLargeError (413) naming the limit when a ``width`` x ``height`` input is over it."""
    if width * height > max_pixels:
        raise PayloadTooLargeError(
            f"{field} is {width} x {height} = {width * height:,} pixels decoded; the limit is "
            f"{max_pixels:,} (PATCHBANK_MAX_PIXELS)"
        )


def _xyz_header_shape(data: bytes, is_npy: bool) -> tuple[int, ...]:
    """The array shape an xyz file declares, read from its header without decoding its data."""
    buf = io.BytesIO(data)
    if is_npy:
        fmt = np.lib.format
        version = fmt.read_magic(buf)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, _ = read(buf)
        return tuple(int(n) for n in shape)
    with tifffile.TiffFile(buf) as tif:
        series = tif.series[0]
        return tuple(int(n) for n in series.shape)


def decode_rgb(data: bytes, field: str = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """PNG/JPEG/TIFF bytes -> an RGB PIL image (fully decoded, so corrupt data fails here); its size is
    checked against ``max_pixels`` from the header, before decoding."""
    if not data:
        raise InputError(f"{field} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in RGB_FORMATS:
                raise InputError(f"{field} must be a PNG, JPEG or TIFF image, got {im.format}")
            check_pixels(*im.size, max_pixels, field)
            im.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{field} is not a readable PNG, JPEG or TIFF image: {exc}") from exc
    return im.convert("RGB")


def decode_xyz(
    data: bytes, filename: str | None = None, field: str = "xyz", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """TIFF or .npy bytes -> (H, W, 3) float32 metres; non-finite points become missing (0, 0, 0). The
    declared size is checked against ``max_pixels`` from the header, before decoding."""
    if not data:
        raise InputError(f"{field} is empty")
    is_npy = data.startswith(NPY_MAGIC) or (filename or "").lower().endswith(".npy")
    try:
        shape = _xyz_header_shape(data, is_npy)
    except Exception as exc:  # numpy and tifffile raise many types for corrupt headers
        kind = ".npy array" if is_npy else "TIFF"
        raise InputError(f"{field} is not a readable {kind}: {exc}") from exc
    if len(shape) >= 2:
        check_pixels(shape[1], shape[0], max_pixels, field)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False) if is_npy else tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # numpy and tifffile raise many types for corrupt data
        kind = ".npy array" if is_npy else "TIFF"
        raise InputError(f"{field} is not a readable {kind}: {exc}") from exc
    try:
        xyz = check_xyz(np.asarray(arr), field)
    except DataError as exc:
        raise InputError(str(exc)) from exc
    if not valid_points(xyz).any():
        raise InputError(f"{field} has no valid points: every point is missing (0, 0, 0) or not finite")
    return xyz


def check_pair(image: Image.Image, xyz: np.ndarray, fields: tuple[str, str] = ("rgb", "xyz")) -> None:
    """RGB and xyz may differ in resolution, not in aspect ratio (more than 1%)."""
    (w, h), (xh, xw) = image.size, xyz.shape[:2]
    a, b = w / h, xw / xh
    if abs(a - b) > ASPECT_TOLERANCE * a:
        raise InputError(
            f"{fields[0]} ({w}x{h}) and {fields[1]} ({xw}x{xh}) have different aspect ratios "
            f"({a:.3f} vs {b:.3f})"
        )
